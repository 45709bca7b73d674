"""What this host says about itself at GET /api/v1/host: the facts qvplan plans from."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .. import __version__


def meminfo() -> dict[str, int]:
    """Total and available memory in bytes, from /proc/meminfo."""
    fields: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        fields[key] = int(rest.split()[0]) * 1024
    return {"total": fields["MemTotal"], "available": fields.get("MemAvailable", fields["MemFree"])}


def pool_facts(pools: dict[str, Path]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, path in pools.items():
        usage = shutil.disk_usage(path)
        out[name] = {"path": str(path), "total": usage.total, "free": usage.free}
    return out


def storage_check(path: str) -> dict[str, Any]:
    """Can this host read (and, for a directory, write) `path`? The reason when not."""
    p = Path(path)
    if not p.exists():
        return {"path": path, "accessible": False, "reason": "not found (is the shared storage mounted?)"}
    if not os.access(p, os.R_OK):
        return {"path": path, "accessible": False, "reason": "not readable by the agent"}
    if p.is_file() and not os.access(p, os.W_OK):
        return {"path": path, "accessible": False, "reason": "not writable by the agent"}
    return {"path": path, "accessible": True, "reason": None}


def host_facts(agent: Any) -> dict[str, Any]:
    """Assemble the facts document; `agent` is the running `Agent`."""
    from ..vmm import cpu_facts, qemu_version
    from ..vmm.taps import bridges

    mem = meminfo()
    committed = agent.registry.committed_memory()
    capacity = agent.memory_capacity or mem["total"]
    return {
        "name": agent.config.host.name,
        "version": __version__,
        "qemu_version": qemu_version(),
        "accelerator": agent.accel,
        "cpu": cpu_facts(agent.accel),
        "memory": {
            "total": capacity,
            # What a new VM may take: the capacity offered to VMs less what they are given,
            # never more than the kernel has available.
            "free": max(0, min(capacity - committed, mem["available"])),
            "committed": committed,
        },
        "storage": {"pools": pool_facts(agent.pools), "shared": agent.config.storage.shared},
        "bridges": bridges(),  # host bridges VM NICs may join (in the agent's network namespace)
        "pqc": {
            "provider": agent.provider_name,
            "fingerprint": agent.identity.fingerprint,
            "trusted": {name: fp for name, fp in agent.trust.entries()},
        },
        "migration": {
            "listen": agent.config.migration.listen,
            "address": agent.config.advertised_migration,
            "pqc_required": agent.config.migration.pqc_required,
        },
        "vms": [agent.registry.describe(vm) for vm in agent.registry.vms.values()],
    }
