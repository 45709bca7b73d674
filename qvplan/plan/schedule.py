"""Shape the moves into waves: `after:` order, limits, and memory simulated over the whole plan.

Walking moves in graph order, each goes into the earliest wave that (1) comes after the waves of
the moves it is `after:`, (2) keeps the limits (total, per-host outbound, per-host inbound), and
(3) leaves the destination's memory non-negative in that wave and every later one. A move holds
its memory on the destination from its own wave on and frees it on the source only from the next
wave: memory freed by a move counts only for moves scheduled later.

Cost: a host's memory is kept as the few waves where it changes (one per move touching it), and
full waves are skipped in one step, so a move costs about the number of moves of its two hosts,
not the number of waves: planning grows with the plan, not with its square.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from . import checks as C
from .build import Build
from .model import Action, Status, Wave


@dataclass
class HostMemory:
    """Free memory of one host wave by wave, as the waves where it changes."""

    free: int
    change: dict[int, int] = field(default_factory=dict)  # wave → change of free memory from it on
    waves: list[int] = field(default_factory=list)  # the keys of `change`, sorted

    def _add(self, wave: int, delta: int) -> None:
        if wave not in self.change:
            bisect.insort(self.waves, wave)
            self.change[wave] = 0
        self.change[wave] += delta

    def take(self, wave: int, amount: int) -> None:
        """A move into this host in `wave` holds `amount` from that wave on."""
        self._add(wave, -amount)

    def release(self, wave: int, amount: int) -> None:
        """A move out of this host in `wave` frees `amount` from the next wave on."""
        self._add(wave + 1, amount)

    def final(self) -> int:
        """Free memory once every scheduled move is done."""
        return self.free + sum(self.change.values())

    def floor(self, wave: int) -> int:
        """The lowest free memory over `wave` and every wave after it."""
        value, low = self.free, None
        for w in self.waves:
            if w > wave and low is None:
                low = value  # the value in force at `wave`
            value += self.change[w]
            if low is not None:
                low = min(low, value)
        return value if low is None else low

    def earliest(self, first: int, need: int) -> int:
        """The earliest wave ≥ `first` from which `need` fits in every later wave (floor is
        non-decreasing in the wave, so every later wave fits too)."""
        # values[i]: free memory from waves[i] on; suffix[i]: the lowest of values[i:].
        values, value = [], self.free
        for w in self.waves:
            value += self.change[w]
            values.append(value)
        suffix = values[:]
        for i in range(len(suffix) - 2, -1, -1):
            suffix[i] = min(suffix[i], suffix[i + 1])
        start = bisect.bisect_right(self.waves, first) - 1  # the segment holding `first`
        for i in range(start, len(self.waves)):
            low = suffix[i] if i >= 0 else min(self.free, suffix[0]) if suffix else self.free
            if low >= need:
                return first if i == start else self.waves[i]
        return self.waves[-1] if self.waves else first


@dataclass
class WaveLoad:
    total: int = 0
    out: Counter[str] = field(default_factory=Counter)
    inn: Counter[str] = field(default_factory=Counter)


class Waves:
    """The waves built so far, with a skip pointer over the full ones."""

    def __init__(self, parallel: int) -> None:
        self.parallel = parallel
        self.loads: list[WaveLoad] = []
        self._next_open: list[int] = []  # union-find: wave → a wave at or after it that is not full

    def open_from(self, w: int) -> int:
        """The first wave ≥ w that is not full (len(self) for a new one)."""
        root = w
        while root < len(self._next_open) and self._next_open[root] != root:
            root = self._next_open[root]
        while w < len(self._next_open) and self._next_open[w] != w:  # path compression
            self._next_open[w], w = root, self._next_open[w]
        return root

    def add(self, w: int, src: str, dst: str) -> None:
        if w == len(self.loads):
            self.loads.append(WaveLoad())
            self._next_open.append(w)
        load = self.loads[w]
        load.total += 1
        load.out[src] += 1
        load.inn[dst] += 1
        if load.total >= self.parallel:
            self._next_open[w] = w + 1

    def __len__(self) -> int:
        return len(self.loads)


def schedule(b: Build) -> None:
    limits = b.plan.spec.limits
    memory: dict[str, HostMemory] = {}
    waves = Waves(limits.parallel)
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
        if mem.final() < move.memory:
            b.add_check(vm, "memory", C.fail(C.memory_message(dst, mem.final(), move.memory), C.RESOURCES_FIX,
                                             C.Reason.OUT_OF_RESOURCES))
            move.status, move.reason = Status.BLOCKED, b.checks[f"{vm}:memory"].message
            continue
        w = waves.open_from(max(first, mem.earliest(first, move.memory)))
        while w < len(waves) and not (waves.loads[w].out[src] < limits.per_host_outbound
                                      and waves.loads[w].inn[dst] < limits.per_host_inbound):
            w = waves.open_from(w + 1)
        room = mem.floor(w)
        waves.add(w, src, dst)
        mem.take(w, move.memory)
        memory.setdefault(src, HostMemory(b.free(src))).release(w, move.memory)
        wave_of[vm] = w
        move.wave = w + 1
        b.add_check(vm, "memory", C.ok(f"{dst} has {C.format_size(room)} free "
                                       f"in wave {w + 1}, needs {C.format_size(move.memory)}"))
    members: list[list[str]] = [[] for _ in range(len(waves))]
    for vm in b.order:
        if vm in wave_of:
            members[wave_of[vm]].append(vm)
    b.waves = [Wave(i + 1, vms) for i, vms in enumerate(members)]
