"""The plan graph, built by a short ordered list of small transformers (see `TRANSFORMERS`).

Nodes are moves and checks; a move depends on its own checks (`Build.checks`) and on the moves it
comes `after:` (`Build.after`). Each transformer takes the `Build` and adds to it; each can be tested alone.
"""

from __future__ import annotations

import graphlib
import heapq
import itertools
from collections.abc import Callable
from typing import Any

from . import checks as C
from .build import Build
from .facts import Facts
from .model import Action, Move
from .schedule import schedule
from .schema import resolve_flags

KIND_ORDER = ("vm", "host", "state", "after", "trust", "version", "cpu", "storage", "network", "memory")


def vm_index(facts: Facts) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """VM name → the hosts holding it, with its facts (a VM left behind as `migrated` does not
    count): one pass over the facts, so finding every VM of a plan costs no more than reading them."""
    index: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for host, f in facts.items():
        for v in (f.get("vms") if isinstance(f, dict) else None) or []:
            if isinstance(v, dict) and v.get("state") != "migrated":
                index.setdefault(str(v.get("name")), []).append((host, v))
    return index


def locate(facts: Facts, vm: str) -> list[tuple[str, dict[str, Any]]]:
    """Hosts holding `vm` (a VM left behind as `migrated` does not count)."""
    return vm_index(facts).get(vm, [])


def add_moves(b: Build) -> None:
    """One Move per placement; where the VM is now decides MOVE, NOOP or UNKNOWN."""
    spec = b.plan.spec
    index = vm_index(b.facts) if b.facts is not None else {}
    for i, (vm, p) in enumerate(b.plan.placements.items()):
        flags = resolve_flags(spec.defaults, p)
        flags.update(storage_migrate=p.storage.migrate, dest_pool=p.storage.dest_pool,
                     offline=p.mode == "offline")
        move = Move(vm=vm, source=None, dest=p.host, mode=p.mode, flags=flags, after=list(p.after),
                    index=i, where=b.plan.where.get(vm))
        b.moves[vm] = move
        b.after[vm] = set()
        if b.facts is None:
            continue
        found = index.get(vm, [])
        if len(found) != 1:
            move.action = Action.UNKNOWN
            where = " and ".join(h for h, _ in found)
            b.add_check(vm, "vm", C.fail(f"VM {vm} is on {where}" if found else f"VM {vm} not found on any host",
                                         "check the VM name and the plan's hosts, then gather facts again",
                                         C.Reason.UNKNOWN_VM))
            continue
        move.source, vmf = found[0]
        b.vm_facts[vm] = vmf
        mem = vmf.get("memory")
        move.memory = mem if isinstance(mem, int) else 0
        move.action = Action.NOOP if move.source == move.dest else Action.MOVE
        if move.action is Action.MOVE:
            move.flags["storage_migrate"] = p.storage.migrate or (
                p.mode == "offline" and any(not d.get("shared") for d in vmf.get("disks") or []
                                            if isinstance(d, dict)))
        move.dest_address = C.migration_address(move.dest, b.facts.get(move.dest), b.plan.hosts.get(move.dest))


def add_checks(b: Build) -> None:
    """The checks of each move that changes something, in KIND_ORDER."""
    spec, facts = b.plan.spec, b.facts
    pool_used: dict[tuple[str, str], int] = {}
    for move in b.moves.values():
        if move.action is not Action.MOVE and facts is not None:
            continue
        vm, src, dst = move.vm, move.source, move.dest
        unknown = [h for h in (src, dst) if h is not None and (h not in b.plan.hosts or
                                                               (facts is not None and h not in facts))]
        if unknown:
            h = unknown[0]
            why = "not in the plan's hosts or inventory" if h not in b.plan.hosts else "no facts gathered"
            b.add_check(vm, "host", C.fail(f"unknown host {h} ({why})",
                                           "add it to hosts: or the inventory, and gather its facts",
                                           C.Reason.BAD_REQUEST))
            continue
        b.add_check(vm, "host", C.ok(f"{src or '?'} → {dst}"))
        if facts is None or src is None:
            continue
        vmf = b.vm_facts[vm]
        b.add_check(vm, "state", C.check_state(vmf, move.mode))
        result, exchange = C.check_trust(src, dst, facts, spec.trust.exchange, spec.trust.pinned,
                                         bool(move.flags["insecure"]), b.trusted)
        b.add_check(vm, "trust", result)
        b.trust_exchange.update(exchange)
        b.add_check(vm, "version", C.check_version(src, dst, facts, spec.prerequisites.version))
        b.add_check(vm, "cpu", C.check_cpu(vmf, src, dst, facts, spec.prerequisites.cpu))
        b.add_check(vm, "storage", C.check_storage(vmf, src, dst, facts, spec.prerequisites.shared_storage,
                                                   move.flags["storage_migrate"], move.flags["dest_pool"],
                                                   pool_used))
        b.add_check(vm, "network", C.check_network(src, dst, facts, move.dest_address, vmf))


def add_after_edges(b: Build) -> None:
    """`after:` must name VMs of the plan and have no cycle; each becomes a move → move edge."""
    edges: dict[str, set[str]] = {}
    for move in b.moves.values():
        where = b.plan.after_where.get(move.vm)
        unknown = [a for a in move.after if a not in b.moves]
        if unknown:
            b.add_check(move.vm, "after", C.fail(f"after: {unknown[0]} is not a VM of this plan",
                                                 "name a VM placed under vms: (or by a module)",
                                                 C.Reason.BAD_REQUEST), where)
        edges[move.vm] = {a for a in move.after if a in b.moves}
    cycles = _cycles(edges)
    for cycle in cycles:
        text = " → ".join(cycle)
        for vm in dict.fromkeys(cycle):
            b.add_check(vm, "after", C.fail(f"cycle in after: {text}", "remove one of these after: entries",
                                                 C.Reason.BAD_REQUEST),
                        b.plan.after_where.get(vm))
    for vm, targets in edges.items():
        b.after[vm].update(targets)
    for move in b.moves.values():
        if move.after and f"{move.vm}:after" not in b.checks and b.facts is not None \
                and move.action is Action.MOVE:
            b.add_check(move.vm, "after", C.ok("after " + ", ".join(move.after)),
                        b.plan.after_where.get(move.vm))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle graphlib finds, removing each one's edges until the rest sorts."""
    found = []
    while True:
        try:  # only VMs that wait for another can be on a cycle
            graphlib.TopologicalSorter({vm: after for vm, after in edges.items() if after}).prepare()
            return found
        except graphlib.CycleError as err:
            cycle = list(reversed(err.args[1]))  # graphlib lists it against the edge direction
            found.append(cycle)
            for a, c in itertools.pairwise(cycle):
                edges[a].discard(c)


def order_nodes(b: Build) -> None:
    """Topological order of the moves, ties broken by plan order. Checks wait for nothing, so
    the order of the move nodes alone over their `after:` edges is the order of the whole graph."""
    ts = graphlib.TopologicalSorter(b.after)
    ts.prepare()
    heap = [(b.moves[vm].index, vm) for vm in ts.get_ready()]
    heapq.heapify(heap)
    while heap:
        _, vm = heapq.heappop(heap)
        b.order.append(vm)
        ts.done(vm)
        for n in ts.get_ready():
            heapq.heappush(heap, (b.moves[n].index, n))


def transformers() -> list[Callable[[Build], None]]:
    return [add_moves, add_checks, add_after_edges, order_nodes, schedule]
