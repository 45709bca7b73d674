"""Which moves may start now (pure: no I/O, so every rule is testable alone).

The plan's waves are a safe schedule; apply does not wait for a whole wave to end before the next
starts. A move starts as soon as:
  - every move it comes `after:` has finished well (a failed one makes it skipped, and so on down),
  - its destination has the memory: given the hosts' free memory (the plan's `capacity`: what its
    capacity simulation started from), the VM fits beside what moves into that host have taken, counting memory freed
    only by moves out of it that completed. Without those figures, the plan's memory order: moves
    of earlier waves that leave its destination have ended (the planner counted what they free),
  - the limits have room: total running, per-host outbound, per-host inbound.
Ties go to the earlier wave, then to plan order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..plan.model import Move, Plan


@dataclass(frozen=True)
class Limits:
    parallel: int = 1
    per_host_outbound: int = 1
    per_host_inbound: int = 1

    @classmethod
    def from_settings(cls, limits: dict[str, Any] | None) -> Limits:
        limits = limits or {}
        return cls(int(limits.get("parallel") or 1), int(limits.get("per_host_outbound") or 1),
                   int(limits.get("per_host_inbound") or 1))


@dataclass
class Scheduler:
    moves: list[Move]
    limits: Limits
    free: dict[str, int] | None = None  # host → free memory when the plan was made
    pending: list[Move] = field(init=False)
    running: dict[str, Move] = field(default_factory=dict)
    outcome: dict[str, bool] = field(default_factory=dict)  # vm → ok, for finished moves
    skipped: dict[str, str] = field(default_factory=dict)   # vm → why

    @classmethod
    def of_plan(cls, plan: Plan, moves: list[Move]) -> Scheduler:
        """The scheduler of a plan's graph: its `after:` edges and waves (on the moves), its limits,
        and the free memory its capacity simulation started from."""
        return cls(moves, Limits.from_settings(plan.settings.get("limits")), plan.capacity or None)

    def __post_init__(self) -> None:
        self.pending = sorted(self.moves, key=lambda m: (m.wave or 0, m.index))
        self._in_run = {m.vm for m in self.moves}

    @property
    def done(self) -> bool:
        return not self.pending and not self.running

    def _load(self) -> tuple[int, Counter[str], Counter[str]]:
        out = Counter(m.source for m in self.running.values() if m.source)
        inn = Counter(m.dest for m in self.running.values())
        return len(self.running), out, inn

    def room(self, host: str) -> int | None:
        """Free memory on `host` now: free at plan time, less what moves into it took, plus what
        completed moves out of it freed. None when the facts did not say."""
        if self.free is None or host not in self.free:
            return None
        taken = sum(m.memory for m in self.moves if m.dest == host
                    and (m.vm in self.running or self.outcome.get(m.vm)))
        freed = sum(m.memory for m in self.moves if m.source == host and self.outcome.get(m.vm))
        return self.free[host] - taken + freed

    def _waits_for(self, move: Move) -> bool:
        """True while something this move needs has not finished yet."""
        for dep in move.after:
            if dep in self._in_run and dep not in self.outcome:
                return True
        room = self.room(move.dest)
        if room is not None:
            return room < move.memory
        wave = move.wave or 0
        return any((m.wave or 0) < wave and m.source == move.dest and m.vm not in self.outcome
                   for m in self.moves if m.vm not in self.skipped)

    def _skip_dependants(self) -> None:
        """Moves that come after a failed or skipped move cannot run (transitively)."""
        changed = True
        while changed:
            changed = False
            for move in list(self.pending):
                bad = [d for d in move.after if self.outcome.get(d) is False or d in self.skipped]
                if bad:
                    self.pending.remove(move)
                    self.skipped[move.vm] = f"skipped: after {bad[0]}, which " + \
                        ("failed" if self.outcome.get(bad[0]) is False else "was skipped")
                    changed = True

    def ready(self) -> list[Move]:
        """The moves to start now (they count as running once returned)."""
        self._skip_dependants()
        total, out, inn = self._load()
        chosen = []
        for move in list(self.pending):
            if total >= self.limits.parallel:
                break
            src = move.source or ""
            if out[src] >= self.limits.per_host_outbound or inn[move.dest] >= self.limits.per_host_inbound:
                continue
            if self._waits_for(move):
                continue
            self.pending.remove(move)
            self.running[move.vm] = move
            chosen.append(move)
            total, out[src], inn[move.dest] = total + 1, out[src] + 1, inn[move.dest] + 1
        return chosen

    def finished(self, vm: str, ok: bool) -> None:
        self.running.pop(vm, None)
        self.outcome[vm] = ok

    def skip(self, vm: str, reason: str) -> None:
        """Do not run this move (its dependants are skipped too)."""
        self.pending = [m for m in self.pending if m.vm != vm]
        self.skipped[vm] = reason

    def stuck(self) -> list[Move]:
        """With nothing running: the pending moves that wait on no other move (all, if none)."""
        free = [m for m in self.pending if not any(d in self._in_run and d not in self.outcome for d in m.after)]
        return free or list(self.pending)

    def why_waiting(self, move: Move) -> str:
        room = self.room(move.dest)
        if room is not None and room < move.memory:
            return f"skipped: {move.dest} has no room for it ({room} bytes free, needs {move.memory})"
        return "skipped: could not be scheduled"

    def halt(self, reason: str) -> list[str]:
        """Start nothing more: every pending move is skipped with `reason`. Returns their VMs."""
        names = [m.vm for m in self.pending]
        for vm in names:
            self.skipped[vm] = reason
        self.pending.clear()
        return names

