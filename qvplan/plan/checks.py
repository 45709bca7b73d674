"""The checks of one move: pure functions over facts, each answering (ok, message, fix).

Failure messages use the spec's troubleshooting wording ("untrusted host", "CPU incompatible",
"Storage not found on destination", "Destination out of resources") so an operator can look them up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..contract import rules
from ..contract.machine import unsupported_machine
from ..contract.network import missing_network
from ..contract.ports import MIGRATION_PORT
from ..contract.reasons import FIXES, PORT_FIX, Reason
from ..units import format_size

TRUST_FIX = ("exchange and import PQC keys between hosts (`quantavirt pqc key-export host-identity --public` "
             "on one, `quantavirt pqc key-import --name HOST` on the other), or set trust.exchange: true")
CPU_FIX = FIXES[Reason.CPU_INCOMPATIBLE]
STORAGE_FIX = FIXES[Reason.STORAGE_NOT_FOUND]
RESOURCES_FIX = "free memory on the destination, pick another host, or order moves with after:"
VERSION_FIX = FIXES[Reason.VERSION_MISMATCH]
NETWORK_FIX = PORT_FIX.format(port=MIGRATION_PORT)


@dataclass(frozen=True)
class Result:
    ok: bool
    message: str
    fix: str | None = None
    code: str | None = None  # the reason code of a failure


def ok(message: str) -> Result:
    return Result(True, message)


def fail(message: str, fix: str | None, code: Reason = Reason.ERROR) -> Result:
    return Result(False, message, fix, code.value)


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# -- trust ------------------------------------------------------------------------------------------

def fingerprint(facts: dict[str, Any]) -> str | None:
    fp = _d(facts.get("pqc")).get("fingerprint")
    return fp if isinstance(fp, str) else None


def trusted_fingerprints(facts: dict[str, Any]) -> frozenset[str]:
    """The fingerprints a host trusts (whatever names they were imported as)."""
    return frozenset(v for v in _d(_d(facts.get("pqc")).get("trusted")).values() if isinstance(v, str))


def check_trust(src: str, dst: str, facts: dict[str, dict[str, Any]], exchange: bool,
                pinned: dict[str, str], insecure: bool,
                trusted: Callable[[str], frozenset[str]] | None = None) -> tuple[Result, list[tuple[str, str]]]:
    """Both directions: the source must trust the destination and the destination the source.
    Returns the result and the key imports apply must do: (importing host, host whose key).
    `trusted(host)` gives a host's trusted fingerprints (the planner keeps them per host)."""
    trusted = trusted or (lambda host: trusted_fingerprints(facts[host]))
    fps = {src: fingerprint(facts[src]), dst: fingerprint(facts[dst])}
    for host in (src, dst):
        want, got = pinned.get(host), fps[host]
        if want is not None and want != got:
            return fail(f"untrusted host: {host}'s key is {got}, trust.pinned expects {want}",
                        "verify the host (reinstalled? impostor?) and update trust.pinned", Reason.UNTRUSTED_HOST), []
    if insecure and _d(facts[dst].get("migration")).get("pqc_required"):
        return fail(f"{dst} requires PQC (pqc_required = true) but the move is insecure",
                    "drop insecure: true", Reason.PQC_REQUIRED), []
    missing = [(a, b) for a, b in ((src, dst), (dst, src)) if fps[b] is None or fps[b] not in trusted(a)]
    if not missing:
        return ok(f"{src} ⇄ {dst} trusted"), []
    if exchange:
        unknown = [b for _, b in missing if fps[b] is None]
        if unknown:
            return fail(f"untrusted host: {unknown[0]} reports no key fingerprint", TRUST_FIX,
                        Reason.UNTRUSTED_HOST), []
        shown = ", ".join(f"{a} imports {b}" for a, b in missing)
        return ok(f"{src} ⇄ {dst} keys will be exchanged at apply ({shown})"), missing
    a, b = missing[0]
    return fail(f"untrusted host: {a} has not imported the key of {b}", TRUST_FIX, Reason.UNTRUSTED_HOST), []


# -- version and CPU: the rule book's verdict, in the plan's words --------------------------------

def check_version(src: str, dst: str, facts: dict[str, dict[str, Any]], policy: rules.VersionPolicy) -> Result:
    a, b = str(facts[src].get("version") or "?"), str(facts[dst].get("version") or "?")
    if rules.check_version(a, b, policy) is None:
        return ok(f"versions {a} / {b} ({policy})")
    return fail(f"version mismatch: {src} runs {a}, {dst} runs {b} (policy {policy})", VERSION_FIX,
                Reason.VERSION_MISMATCH)


def cpu_problem(vm: dict[str, Any], src: dict[str, Any], dst: dict[str, Any],
                policy: rules.CpuPolicy = "strict") -> str | None:
    """Why `vm` cannot run on `dst`'s CPU, or None (the rule book's detail)."""
    refusal = rules.check_cpu(_d(vm.get("cpu")), _d(src.get("cpu")), _d(dst.get("cpu")), policy)
    return refusal.detail if refusal else None


def check_cpu(vm: dict[str, Any], src: str, dst: str, facts: dict[str, dict[str, Any]],
              policy: rules.CpuPolicy) -> Result:
    model = _d(vm.get("cpu")).get("model") or "host"
    problem = cpu_problem(vm, facts[src], facts[dst], policy)
    if problem:
        return fail(f"CPU incompatible: {dst} {problem} (cpu.model {model})", CPU_FIX, Reason.CPU_INCOMPATIBLE)
    machine = unsupported_machine(_d(vm.get("spec")), facts[dst].get("qemu_machines"))
    if machine is not None:  # the platform beside the CPU: the destination's QEMU must run its type
        return fail(f"{dst}'s QEMU {facts[dst].get('qemu_version', '?')} does not run {machine.detail}",
                    machine.fix, machine.code)
    return ok(f"cpu.model {model} runs on {dst}")


# -- VM state ---------------------------------------------------------------------------------------

def check_state(vm: dict[str, Any], mode: str) -> Result:
    state = vm.get("state")
    if mode == "live" and state in ("running", "paused"):
        return ok(f"{state}, live migration")
    if mode == "offline" and state == "defined":
        return ok("stopped, offline migration")
    if state == "migrating":
        return fail(f"{vm.get('name')} is already migrating", "wait for it or run `quantavirt vm migrate-cancel`",
                    Reason.VM_STATE)
    if mode == "live":
        return fail(f"{vm.get('name')} is {state}: live migration needs it running", "start it, or set mode: offline",
                    Reason.VM_STATE)
    return fail(f"{vm.get('name')} is {state}: offline migration needs it stopped", "stop it first, or set mode: live",
                Reason.VM_STATE)


# -- storage ----------------------------------------------------------------------------------------

def _under(path: str, prefixes: list[Any]) -> bool:
    return any(isinstance(p, str) and p and path.startswith(p.rstrip("/") + "/") for p in prefixes)


def _checked(checks: dict[str, Any], path: str) -> Any:
    """The storage check for `path`, or for the deepest checked folder holding it."""
    if path in checks:
        return checks[path]
    folder = path.rstrip("/")
    while "/" in folder:  # the folders holding it, deepest first (a check may be keyed with a trailing /)
        folder = folder.rsplit("/", 1)[0]
        for key in (folder or "/", folder + "/"):
            if key in checks:
                return checks[key]
    return None


def find_pool(dst_facts: dict[str, Any], wanted: str) -> tuple[str, dict[str, Any]] | None:
    pools = _d(_d(dst_facts.get("storage")).get("pools"))
    if wanted in pools:
        return wanted, _d(pools[wanted])
    for name, pool in pools.items():  # the spec's --dest-pool takes a path
        if isinstance(pool, dict) and str(pool.get("path", "")).rstrip("/") == wanted.rstrip("/"):
            return str(name), pool
    return None


def check_storage(vm: dict[str, Any], src: str, dst: str, facts: dict[str, dict[str, Any]],
                  shared_prefixes: list[str], migrate: bool, dest_pool: str | None,
                  pool_used: dict[tuple[str, str], int]) -> Result:
    """Shared disks must be reachable from the destination; local ones need storage migration into a
    pool with room (`pool_used` carries what earlier moves already put there)."""
    disks = [d for d in _l(vm.get("disks")) if isinstance(d, dict) and isinstance(d.get("path"), str)]
    if not disks:
        return ok("no disks")
    s, d = facts[src], facts[dst]
    shared_lists = shared_prefixes + _l(_d(s.get("storage")).get("shared")) + _l(_d(d.get("storage")).get("shared"))
    checks = _d(d.get("storage_checks"))
    local: list[dict[str, Any]] = []
    for disk in disks:
        path = disk["path"]
        if not (disk.get("shared") or _under(path, shared_lists)):
            local.append(disk)
            continue
        seen = _checked(checks, path)
        if seen is False or (isinstance(seen, dict) and not seen.get("accessible")):
            return fail(f"Storage not found on destination: {dst} cannot reach {path}", STORAGE_FIX,
                        Reason.STORAGE_NOT_FOUND)
        if seen is None and not _under(path, _l(_d(d.get("storage")).get("shared"))):
            return fail(f"Storage not found on destination: {path} not checked or not shared on {dst}",
                        STORAGE_FIX + " (or gather facts with storage checks)", Reason.STORAGE_NOT_FOUND)
    if not local:
        return ok(f"{len(disks)} shared disk(s) reachable from {dst}")
    if not migrate:
        return fail(f"Storage not found on destination: {local[0]['path']} is local to {src}",
                    "set storage: {migrate: true} to copy it, or put it on shared storage", Reason.STORAGE_NOT_FOUND)
    need = sum(int(x.get("size") or 0) for x in local if isinstance(x.get("size") or 0, int))
    wanted = dest_pool or str(local[0].get("pool") or "default")
    found = find_pool(d, wanted)
    if found is None:
        return fail(f"Storage not found on destination: {dst} has no pool {wanted!r}",
                    "set storage.dest_pool to one of the destination's pools", Reason.STORAGE_NOT_FOUND)
    name, pool = found
    free = int(pool.get("free") or 0) - pool_used.get((dst, name), 0)
    if need > free:
        return fail(f"Destination out of resources: pool {name} on {dst} has {format_size(max(free, 0))} free, "
                    f"disks need {format_size(need)}", "free space in the pool or pick another pool",
                    Reason.OUT_OF_RESOURCES)
    pool_used[(dst, name)] = pool_used.get((dst, name), 0) + need
    return ok(f"{len(local)} disk(s) copied to pool {name} on {dst} ({format_size(need)})")


# -- network ----------------------------------------------------------------------------------------

def check_network(src: str, dst: str, facts: dict[str, dict[str, Any]], address: str | None,
                  vm: dict[str, Any] | None = None) -> Result:
    """The migration port, then the VM's networks: the rule book's bridge rule over the
    destination's `bridges` fact (the same function the destination agent judges by)."""
    problem = missing_network(_d(_d(vm).get("spec")), _l(facts[dst].get("bridges")))
    if problem is not None:
        return fail(f"network not found on destination: {problem.detail} ({dst})", problem.fix, problem.code)
    seen = _d(facts[src].get("reachable")).get(dst)
    if seen is False:
        return fail(f"migration port unreachable: {src} cannot reach {dst} at {address}", NETWORK_FIX,
                    Reason.CONNECT_FAILED)
    if seen is None:
        return ok(f"{dst} at {address} (not probed by gather; assumed reachable)")
    return ok(f"{src} reaches {dst} at {address}")


def migration_address(dst: str, facts: dict[str, Any] | None, host_spec: Any) -> str | None:
    """Where peers reach the destination's migration listener: facts, else plan/inventory, else
    address:9410."""
    addr = _d(_d(facts).get("migration")).get("address")
    if isinstance(addr, str) and addr:
        return addr
    if host_spec is not None:
        return host_spec.migration or f"{host_spec.address}:{MIGRATION_PORT}"
    return None


def memory_message(dst: str, free: int, need: int) -> str:
    return (f"Destination out of resources: {dst} has {format_size(max(free, 0))} free after earlier "
            f"moves, needs {format_size(need)}")
