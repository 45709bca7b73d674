"""Shape the moves into waves: `after:` order, limits, and memory simulated over the whole plan.

Walking moves in graph order, each goes into the earliest wave that (1) comes after the waves of
the moves it is `after:`, (2) keeps the limits (total, per-host outbound, per-host inbound), and
(3) leaves the destination's memory non-negative in that wave and every later one. A move holds
its memory on the destination from its own wave on and frees it on the source only from the next
wave: memory freed by a move counts only for moves scheduled later.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from . import checks as C
from .build import Build
from .model import Action, Status, Wave


@dataclass
class HostMemory:
    free: int
    taken: list[int] = field(default_factory=list)  # taken[w]: memory moves in wave w put here
    freed: list[int] = field(default_factory=list)  # freed[w]: memory moves in wave w take away

    def grow(self, n: int) -> None:
        while len(self.taken) < n:
            self.taken.append(0)
            self.freed.append(0)

    def floor(self, waves: int) -> list[int]:
        """floor[w] = lowest free memory over waves w..end (the end stays as the last wave leaves it)."""
        self.grow(waves + 1)
        avail, freed_before, running = [], 0, self.free
        for w in range(waves + 1):
            running -= self.taken[w]
            avail.append(running + freed_before)
            freed_before += self.freed[w]
        for w in range(waves - 1, -1, -1):
            avail[w] = min(avail[w], avail[w + 1])
        return avail


@dataclass
class WaveLoad:
    total: int = 0
    out: Counter[str] = field(default_factory=Counter)
    inn: Counter[str] = field(default_factory=Counter)


def schedule(b: Build) -> None:
    limits = b.plan.spec.limits
    memory: dict[str, HostMemory] = {}
    loads: list[WaveLoad] = []
    wave_of: dict[str, int] = {}
    for vm in b.order:
        move = b.moves[vm]
        if move.action is not Action.MOVE:
            continue
        if b.failed(vm):
            move.status, move.reason = Status.BLOCKED, "; ".join(c.message for c in b.failed(vm))
            continue
        blocked_by = [a for a in move.after if a in b.moves and b.moves[a].action is not Action.NOOP
                      and (b.moves[a].status is not Status.READY or b.moves[a].action is Action.UNKNOWN
                           or a not in wave_of)]
        if blocked_by:
            move.status, move.reason = Status.SKIPPED, f"after {blocked_by[0]}, which cannot move"
            continue
        if b.facts is None or move.source is None:
            continue
        src, dst = move.source, move.dest
        first = max((wave_of[a] + 1 for a in move.after if a in wave_of), default=0)
        mem = memory.setdefault(dst, HostMemory(b.free(dst)))
        floor = mem.floor(len(loads))
        if floor[-1] < move.memory:
            b.add_check(vm, "memory", C.fail(C.memory_message(dst, floor[-1], move.memory), C.RESOURCES_FIX,
                                                    C.Reason.OUT_OF_RESOURCES))
            move.status, move.reason = Status.BLOCKED, b.checks[f"{vm}:memory"].message
            continue
        w = first
        while w < len(loads) and not (
                floor[min(w, len(floor) - 1)] >= move.memory and loads[w].total < limits.parallel
                and loads[w].out[src] < limits.per_host_outbound and loads[w].inn[dst] < limits.per_host_inbound):
            w += 1
        if w == len(loads):
            loads.append(WaveLoad())
        load = loads[w]
        load.total += 1
        load.out[src] += 1
        load.inn[dst] += 1
        mem.grow(len(loads) + 1)
        mem.taken[w] += move.memory
        out = memory.setdefault(src, HostMemory(b.free(src)))
        out.grow(len(loads) + 1)
        out.freed[w] += move.memory
        wave_of[vm] = w
        move.wave = w + 1
        b.add_check(vm, "memory", C.ok(f"{dst} has {C.format_size(floor[min(w, len(floor) - 1)])} free "
                                       f"in wave {w + 1}, needs {C.format_size(move.memory)}"))
    b.waves = [Wave(i + 1, [vm for vm in b.order if wave_of.get(vm) == i]) for i in range(len(loads))]
