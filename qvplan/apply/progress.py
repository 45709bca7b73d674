"""What is running and how far it got: the model behind apply's progress views (pure).

The executor feeds the board the agents' migration events; a view (qvplan.cli.progress) draws it.
Bars never run backwards: a bar's percent, and the overall percent, are the most ever seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..contract.events import OUTCOMES
from ..contract.events import PHASE_NAMES as PHASES


@dataclass
class Bar:
    """One migration as the board knows it, from its latest event."""

    key: int
    vm: str
    source: str
    dest: str
    state: str = "running"  # running, completed, failed, cancelled
    phase: int = 1
    percent: float = 0.0
    transferred: int = 0
    total: int = 0
    transfer_rate: float = 0.0
    dirty_rate: float = 0.0
    iteration: int = 0
    max_iterations: int = 0
    error: str | None = None
    storage: str | None = None  # the Storage line while disks are mirrored (--storage-migrate)
    started: float = field(default_factory=time.time)
    label: str = ""  # e.g. "rollback" or "followed"

    @property
    def done(self) -> bool:
        return self.state != "running"

    @property
    def phase_name(self) -> str:
        return PHASES.get(self.phase, "")

    def fold(self, ev: dict[str, Any]) -> None:
        """Take one event's figures; the percent only ever grows."""
        self.phase = int(ev.get("phase") or self.phase)
        self.percent = max(self.percent, float(ev.get("percent") or 0.0))
        self.transferred = max(self.transferred, int(ev.get("transferred") or 0))
        self.total = int(ev.get("total") or self.total)
        self.transfer_rate = float(ev.get("transfer_rate") or 0.0)
        self.dirty_rate = float(ev.get("dirty_rate") or 0.0)
        self.iteration = max(self.iteration, int(ev.get("iteration") or 0))
        self.max_iterations = int(ev.get("max_iterations") or self.max_iterations)
        self.storage = ev.get("storage") if ev.get("storage_phase") else None
        kind = ev.get("event")
        if kind in OUTCOMES:
            self.state = str(kind)
            self.error = ev.get("error")
            if kind == "completed":
                self.percent = 100.0

    @property
    def eta(self) -> float | None:
        """Seconds left: what remains over the net rate (transfer less dirtying before the
        stop-and-copy). None when unknown or not converging."""
        if self.done:
            return 0.0
        remaining = max(0, self.total - self.transferred)
        if not self.total or not self.transfer_rate:
            return None
        net = self.transfer_rate - (self.dirty_rate if self.phase < 4 else 0.0)
        return remaining / net if net > 0 else None


class View(Protocol):
    """Draws the board; called on the asyncio thread after every change."""

    def line(self, text: str) -> None: ...
    def changed(self, board: Board, bar: Bar | None, event: dict[str, Any] | None) -> None: ...


class Board:
    """Every migration of one apply (or one `vm migrate`), and the apply's overall progress."""

    def __init__(self, planned: int = 0, view: View | None = None) -> None:
        self.planned = planned
        self.bars: dict[int, Bar] = {}
        self.view = view
        self.skipped = 0  # planned moves that will not run (they count as done)
        self._overall = 0.0
        self._keys = 0

    def plan_more(self, n: int) -> None:
        """More moves than first planned (rollback-all's moves back)."""
        self.planned += n

    def start(self, vm: str, source: str, dest: str, label: str = "") -> Bar:
        self._keys += 1
        bar = Bar(self._keys, vm, source, dest, label=label)
        self.bars[bar.key] = bar
        self._changed(bar, None)
        return bar

    def event(self, bar: Bar, ev: dict[str, Any]) -> None:
        bar.fold(ev)
        self._changed(bar, ev)

    def finish(self, bar: Bar, ok: bool, error: str | None = None) -> None:
        if not bar.done:
            bar.state = "completed" if ok else "failed"
            bar.error = bar.error or error
        if ok:
            bar.percent = 100.0
        self._changed(bar, None)

    def skip(self, vm: str, reason: str) -> None:
        self.skipped += 1
        self.say(f"{vm}: {reason}")
        self._changed(None, None)

    def say(self, text: str) -> None:
        if self.view is not None:
            self.view.line(text)

    @property
    def running(self) -> list[Bar]:
        return [b for b in self.bars.values() if not b.done]

    @property
    def finished(self) -> int:
        return sum(b.done for b in self.bars.values())

    @property
    def overall(self) -> float:
        """Percent of the planned moves done (a running move counts by its own percent)."""
        if self.planned:
            moved = sum(100.0 if b.done else b.percent for b in self.bars.values())
            now = (moved + 100.0 * self.skipped) / self.planned
            self._overall = max(self._overall, min(100.0, now))
        return self._overall

    def _changed(self, bar: Bar | None, ev: dict[str, Any] | None) -> None:
        if self.view is not None:
            self.view.changed(self, bar, ev)
