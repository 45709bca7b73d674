"""Compact host descriptions → full GET /api/v1/host facts, for planner cases and fuzzing.

    hv-a: {free: 4G, total: 8G, vendor: GenuineIntel, flags: [sse4_2], version: 0.1.0,
           trusted: [hv-b]  (default: every other host), shared: [/mnt/nfs],
           vms: {web-01: {memory: 1G, state: running, cpu: host | {model, features}, disks: [...]}},
           storage_checks: {...}, reachable: {...}, pools: {default: 10G}, bridges: [vmbr0]}
    (a VM's `bridges: [vmbr0]` gives it one bridged NIC per name)
"""

from __future__ import annotations

from typing import Any

from qvplan.units import parse_size

FLAGS = ["sse4_2", "avx", "avx2", "aes"]


def fp(name: str) -> str:
    return f"SHA256:fp-{name}"


def host(name: str, all_hosts: list[str], c: dict[str, Any]) -> dict[str, Any]:
    trusted = c.get("trusted", [h for h in all_hosts if h != name])
    vms = []
    for vm, v in (c.get("vms") or {}).items():
        v = v or {}
        cpu = v.get("cpu", "host")
        vms.append({
            "name": vm, "state": v.get("state", "running"), "memory": parse_size(v.get("memory", "256M")),
            "vcpus": 1, "cpu": {"model": cpu, "features": []} if isinstance(cpu, str) else cpu,
            "disks": [{"path": d["path"], "format": "qcow2", "size": parse_size(d.get("size", "1G")),
                       "pool": d.get("pool", "default"), "shared": d.get("shared", False)}
                      for d in v.get("disks", [])],
            **({"spec": {"nic": [{"type": "bridge", "bridge": b} for b in v["bridges"]]}} if "bridges" in v else {}),
        })
    return {
        "name": name, "version": c.get("version", "0.1.0"), "qemu_version": "7.2.22", "accelerator": "tcg",
        "cpu": {"vendor": c.get("vendor", "GenuineIntel"), "model": "test", "flags": c.get("flags", FLAGS),
                "qemu_host_features": [f.replace("_", ".") for f in c.get("flags", FLAGS)]},
        "memory": {"total": parse_size(c.get("total", "16G")), "free": parse_size(c.get("free", "8G")),
                   "committed": 0},
        "storage": {"pools": {p: {"path": f"/var/lib/quantavirt/{p}", "total": parse_size(sz) * 2,
                                  "free": parse_size(sz)}
                              for p, sz in (c.get("pools") or {"default": "100G"}).items()},
                    "shared": c.get("shared", [])},
        "pqc": {"provider": "cryptography", "fingerprint": c.get("fingerprint", fp(name)),
                "trusted": {t: fp(t) for t in trusted}},
        "migration": {"listen": "0.0.0.0:9410", "address": f"{name}.test:9410",
                      "pqc_required": c.get("pqc_required", True)},
        "vms": vms,
        "storage_checks": c.get("storage_checks", {}),
        "reachable": c.get("reachable", {h: True for h in all_hosts if h != name}),
        **({"bridges": c["bridges"]} if "bridges" in c else {}),
    }


def expand(compact: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = list(compact)
    return {name: host(name, names, c or {}) for name, c in compact.items()}
