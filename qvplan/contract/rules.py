"""The prerequisites of one move, judged once: `qvplan plan` and the destination's phase 1 call
these same functions with the same inputs (the facts document of each host, the VM's CPU and
memory, the plan's policies) and so reach the same verdict, reason code for reason code.

Each check returns None or a `Refusal`: the code, a short detail and the spec's fix. The plan and
the agent each put the detail into their own sentence; neither reads the other's text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..units import format_size
from .reasons import FIXES, Reason

VersionPolicy = Literal["same-major", "same-minor", "exact", "any"]
CpuPolicy = Literal["strict", "vendor", "any"]


class Policies(BaseModel):
    """How strict the version and CPU checks are (a plan's `prerequisites:`; the CLI's defaults)."""

    model_config = ConfigDict(extra="forbid")

    version: VersionPolicy = "same-major"
    cpu: CpuPolicy = Field(
        "strict", description="strict: host model needs same vendor + superset of flags; vendor: only vendor")


@dataclass(frozen=True)
class Refusal:
    code: Reason
    detail: str
    fix: str | None = None


def _refusal(code: Reason, detail: str) -> Refusal:
    return Refusal(code, detail, FIXES.get(code))


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# -- version ----------------------------------------------------------------------------------------

def version_key(version: str, policy: VersionPolicy) -> tuple[str, ...]:
    """The part of a version that must match. The spec counts 0.1.x as one major version, so for
    0.x versions "major" is the first two numbers (as in semver)."""
    parts = tuple(version.split("."))
    if policy == "exact":
        return parts
    width = 1 if policy == "same-major" else 2
    return parts[: width + (parts[0] == "0")]


def check_version(source: str, dest: str, policy: VersionPolicy) -> Refusal | None:
    if policy == "any" or version_key(source, policy) == version_key(dest, policy):
        return None
    return _refusal(Reason.VERSION_MISMATCH, f"source {source}, destination {dest}, policy {policy}")


# -- CPU --------------------------------------------------------------------------------------------

def _norm(flag: str) -> str:
    """QEMU spells features `avx512-vnni` or `sse4.2`, /proc/cpuinfo `avx512_vnni` and `sse4_2`."""
    return flag.replace(".", "_").replace("-", "_").lower()


def check_cpu(vm_cpu: dict[str, Any], source_cpu: dict[str, Any], dest_cpu: dict[str, Any],
              policy: CpuPolicy = "strict") -> Refusal | None:
    """A `host`/`max` model takes the source's CPU, so it needs the same vendor and a superset of the
    source's flags; a named model needs each `+feature` among the destination's features."""
    if policy == "any":
        return None
    model = str(_d(vm_cpu).get("model") or "host")
    s_cpu, d_cpu = _d(source_cpu), _d(dest_cpu)
    if model in ("host", "max") or policy == "vendor":
        if s_cpu.get("vendor") != d_cpu.get("vendor"):
            return _refusal(Reason.CPU_INCOMPATIBLE, f"vendor {s_cpu.get('vendor')} → {d_cpu.get('vendor')}")
        if policy == "vendor":
            return None
    if model in ("host", "max"):
        missing = sorted(set(map(_norm, _l(s_cpu.get("flags")))) - set(map(_norm, _l(d_cpu.get("flags")))))
    else:
        have = {_norm(str(f)) for f in _l(d_cpu.get("qemu_host_features")) + _l(d_cpu.get("flags"))}
        wanted = [str(f) for f in _l(_d(vm_cpu).get("features")) if not str(f).startswith("-")]
        missing = sorted({f.lstrip("+") for f in wanted if _norm(f.lstrip("+")) not in have})
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        return _refusal(Reason.CPU_INCOMPATIBLE, f"lacks {shown}")
    return None


# -- capacity ---------------------------------------------------------------------------------------

def free_memory(capacity: int, committed: int, available: int) -> int:
    """What a new VM may take on a host: the capacity offered to VMs less what they are given,
    never more than the kernel has available."""
    return max(0, min(capacity - committed, available))


def check_memory(need: int, free: int) -> Refusal | None:
    if need > free:
        return _refusal(Reason.OUT_OF_RESOURCES, f"needs {format_size(need)}, {format_size(max(free, 0))} free")
    return None


# -- shared storage ---------------------------------------------------------------------------------

def check_shared_disks(paths: Iterable[str], reachable: Callable[[str], bool]) -> Refusal | None:
    for path in paths:
        if not reachable(path):
            return _refusal(Reason.STORAGE_NOT_FOUND, path)
    return None


def check_boot_files(paths: Iterable[str], exists: Callable[[str], bool]) -> Refusal | None:
    """A kernel boot's files must be on the destination too: its QEMU starts with the same -kernel."""
    for path in paths:
        if not exists(path):
            return Refusal(Reason.STORAGE_NOT_FOUND, f"boot file {path}",
                           "copy the kernel and initrd to the same pool on the destination")
    return None


# -- one move ---------------------------------------------------------------------------------------

def judge(vm_cpu: dict[str, Any], memory: int, source: dict[str, Any], dest: dict[str, Any],
          policies: Policies, dest_free: int | None = None) -> Refusal | None:
    """The first refusal of version, CPU and memory, over the two hosts' facts documents, in the
    order the destination checks them. `dest_free` overrides the destination's free memory (the
    plan simulates earlier moves)."""
    free = _d(_d(dest).get("memory")).get("free") if dest_free is None else dest_free
    return (check_version(str(source.get("version") or "?"), str(dest.get("version") or "?"), policies.version)
            or check_cpu(vm_cpu, _d(source.get("cpu")), _d(dest.get("cpu")), policies.cpu)
            or check_memory(memory, free if isinstance(free, int) else 0))
