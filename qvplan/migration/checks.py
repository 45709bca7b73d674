"""What a destination checks before any VM state moves (phase 1). Pure functions over facts."""

from __future__ import annotations

from typing import Any

from ..contract.network import missing_network
from .errors import CPU_FIX, RESOURCES_FIX, STORAGE_FIX, VERSION_FIX, MigrationError, refused


def major(version: str) -> str:
    """`0.1.3` → `0.1`: the spec counts 0.1.x as one major version."""
    parts = version.split(".")
    return ".".join(parts[:2]) if parts[0] == "0" else parts[0]


def check_version(source_version: str, dest_version: str) -> MigrationError | None:
    if major(source_version) != major(dest_version):
        return refused(f"version mismatch (source {source_version}, destination {dest_version})", VERSION_FIX)
    return None


def check_cpu(vm_cpu: dict[str, Any], source_cpu: dict[str, Any], dest_cpu: dict[str, Any]) -> MigrationError | None:
    """A `host` model needs the same vendor and a superset of the source's flags; a named model
    needs every feature it asks for (`+feat`) on the destination."""
    dest_flags = set(dest_cpu.get("flags", [])) | set(dest_cpu.get("qemu_host_features", []))
    if vm_cpu.get("model", "host") in ("host", "max"):
        if source_cpu.get("vendor") != dest_cpu.get("vendor"):
            return refused(f"CPU incompatible (vendor {source_cpu.get('vendor')} → {dest_cpu.get('vendor')})",
                           CPU_FIX)
        missing = sorted(set(source_cpu.get("flags", [])) - set(dest_cpu.get("flags", [])))
    else:
        wanted = {f[1:] if f[0] in "+-" else f for f in vm_cpu.get("features", []) if not f.startswith("-")}
        missing = sorted(f for f in wanted if f not in dest_flags and f.replace(".", "_") not in dest_flags)
    if missing:
        shown = ", ".join(missing[:6]) + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else "")
        return refused(f"CPU incompatible (destination lacks {shown})", CPU_FIX)
    return None


def check_memory(need: int, free: int) -> MigrationError | None:
    if need > free:
        mib = 1 << 20
        return refused(f"Destination out of resources (needs {need // mib} MiB, {free // mib} MiB free)",
                       RESOURCES_FIX)
    return None


def check_shared_disks(disks: list[dict[str, Any]], exists: Any) -> MigrationError | None:
    for disk in disks:
        if not exists(disk["path"]):
            return refused(f"Storage not found on destination ({disk['path']})", STORAGE_FIX)
    return None


def check_network(vm: dict[str, Any], dest_bridges: list[str]) -> MigrationError | None:
    """The shared rule (qvplan.contract.network): every bridge the VM's NICs join exists here."""
    problem = missing_network(vm, dest_bridges)
    if problem is None:
        return None
    err = refused(problem.message, problem.fix)
    err.reason_code = problem.reason_code  # type: ignore[attr-defined]
    return err


def check_boot_files(paths: list[str], exists: Any) -> MigrationError | None:
    """A kernel boot's files must be on the destination too: its QEMU starts with the same -kernel."""
    for path in paths:
        if not exists(path):
            return refused(f"boot file not found on destination ({path})",
                           "copy the kernel and initrd to the same pool on the destination")
    return None
