"""What this host says about itself at GET /api/v1/host: the facts qvplan plans from."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..contract.rules import free_memory
from .pools import PathError, Roots, confine

if TYPE_CHECKING:
    from .context import Host


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


def storage_check(path: str, roots: Roots) -> dict[str, Any]:
    """Can this host read (and, for a file, write) `path`? The reason when not. Only paths inside
    its pools and shared roots are looked at: for any other the answer says nothing about it."""
    try:
        p = confine(path, roots.all())
    except PathError as err:
        return {"path": path, "accessible": False, "reason": err.cause, "code": err.code}
    if not p.exists():
        return {"path": path, "accessible": False, "reason": "not found (is the shared storage mounted?)"}
    if not os.access(p, os.R_OK):
        return {"path": path, "accessible": False, "reason": "not readable by the agent"}
    if p.is_file() and not os.access(p, os.W_OK):
        return {"path": path, "accessible": False, "reason": "not writable by the agent"}
    return {"path": path, "accessible": True, "reason": None}


def host_facts(host: Host) -> dict[str, Any]:
    """Assemble the facts document of a running host."""
    from ..vmm import cpu_facts, qemu_version
    from ..vmm.host import qemu_machines
    from ..vmm.taps import bridges

    mem = meminfo()
    committed = host.registry.committed_memory()
    capacity = host.memory_capacity or mem["total"]
    return {
        "name": host.config.host.name,
        "version": host.version,
        "qemu_version": qemu_version(),
        "qemu_machines": sorted(qemu_machines()),  # machine types (and aliases) its QEMU runs
        "accelerator": host.accel,
        "cpu": cpu_facts(host.accel),
        "memory": {
            "total": capacity,
            "free": free_memory(capacity, committed, mem["available"]),
            "committed": committed,
        },
        "storage": {"pools": pool_facts(host.pools), "shared": host.config.storage.shared},
        "bridges": bridges(),  # host bridges VM NICs may join (in the agent's network namespace)
        "pqc": {
            "provider": host.provider_name,
            "fingerprint": host.identity.fingerprint,
            "trusted": {name: fp for name, fp in host.trust.entries()},
        },
        "migration": {
            "listen": host.config.migration.listen,
            "address": host.config.advertised_migration,
            "pqc_required": host.config.migration.pqc_required,
        },
        "vms": [host.registry.describe(vm) for vm in host.registry.vms.values()],
    }
