"""A migration's passes over guest memory, and the true dirty rate of each, from QEMU's figures.

QEMU refreshes `ram.dirty-pages-rate` only once a second, so a migration whose passes are shorter
than that shows a dirty rate of 0 however fast the guest writes. The figures `query-migrate`
gives on every call are enough to do better:

- `ram.remaining` is the dirty bitmap's page count (times the page size): it only *grows* at a
  dirty-sync (`dirty-sync-count` + 1, the `MIGRATION_PASS` event), by the pages the guest dirtied
  since the previous sync that were clean in the bitmap.
- `ram.normal` + `ram.duplicate` count the pages sent (full or as zero pages): every page sent
  leaves the bitmap, so within a pass `remaining / page + normal + duplicate` stays constant.

That sum, sampled once in each pass, jumps at each sync by exactly the pages re-dirtied during
the pass before; divided by the time between the two syncs (QEMU's own event timestamps) it is
the pass's dirty rate. "Est. Downtime" is what a stop at the next sync would have to send, at the
rate the last pass moved: `dirty bytes of the last pass / its transfer rate`.

Pure arithmetic: no QEMU, no clock (callers pass the times), so unit tests feed it numbers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

MAX_PASSES = 1000  # passes kept per migration (a pathological one may run many thousands)
# A pass in which the guest ran less than this says little about its rate: a few pages either
# way, and a sync may hold the vCPU for a millisecond or two. Its figures are kept, not shown live.
MIN_WINDOW = 0.010
# The guest outpaces pre-copy when, in each of the last OUTPACED_PASSES passes after the bulk pass,
# it re-dirtied at least OUTPACED_SHARE of what the pass sent: the dirty set is not shrinking.
OUTPACED_PASSES = 2
OUTPACED_SHARE = 0.9


@dataclass
class Pass:
    """One pass over guest memory: from dirty-sync `number` to the next."""

    number: int  # QEMU's dirty-sync-count that started it
    started: float  # wall clock of that sync (QEMU's MIGRATION_PASS timestamp when known)
    remaining: int  # bytes left to send when first seen in the pass
    transferred: int  # ram.transferred when first seen in the pass
    cpu_throttle: int = 0  # auto-converge's vCPU throttle during the pass, %
    ended: float | None = None  # the next sync
    sent: int = 0  # bytes QEMU sent during the pass
    dirtied: int = 0  # bytes the guest re-dirtied during the pass (found dirty at the next sync)
    dirty_rate: float = 0.0  # dirtied / the time the guest ran in the pass, bytes/s
    transfer_rate: float = 0.0  # sent / duration, bytes/s
    paused: bool = False  # the guest was paused (stop-and-copy): nothing it could dirty
    stopped_at: float | None = None  # the guest stopped during this pass (its dirty window ends there)
    syncs: int = 1  # syncs it spans: 2+ when passes were too short to be seen apart
    measured: bool = False  # the guest ran at least MIN_WINDOW in it: its dirty rate means something

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "duration": self.duration}


@dataclass
class _Sample:
    number: int
    pages: int  # remaining / page + normal + duplicate: constant within a pass
    transferred: int


class PassHistory:
    """The passes of one migration, fed with every `query-migrate` answer (`observe`) and the
    sync timestamps of QEMU's `MIGRATION_PASS` events (`synced`)."""

    def __init__(self, max_passes: int = MAX_PASSES) -> None:
        self.passes: deque[Pass] = deque(maxlen=max_passes)
        self._first: _Sample | None = None  # the open pass's first sample
        self._sync_times: dict[int, float] = {}
        self.paused = False  # set by the caller once the guest is stopped for stop-and-copy
        self.stop_time: float | None = None  # the guest's STOP (QEMU's timestamp), see stopped()
        self.page_size = 4096

    @property
    def current(self) -> Pass | None:
        return self.passes[-1] if self.passes and self.passes[-1].ended is None else None

    @property
    def last_closed(self) -> Pass | None:
        for p in reversed(self.passes):
            if p.ended is not None:
                return p
        return None

    def synced(self, number: int, at: float) -> None:
        """QEMU's timestamp of dirty-sync `number` (a MIGRATION_PASS event)."""
        self._sync_times[number] = at
        for before, p in zip([None, *self.passes], self.passes, strict=False):
            if p.number == number and p.started > at:  # seen by polling first: the event is exact
                p.started = at
                if before is not None and before.ended is not None:
                    before.ended = max(at, before.started)
                    _rates(before)
        if len(self._sync_times) > 4 * self.passes.maxlen:  # type: ignore[operator]
            for key in sorted(self._sync_times)[: len(self._sync_times) // 2]:
                del self._sync_times[key]

    def stopped(self, at: float) -> None:
        """The guest stopped at `at` (QEMU's STOP event): passes from then on dirty nothing."""
        self.stop_time = at
        if (current := self.current) is not None and current.started < at:
            current.stopped_at = at
        elif current is not None:
            current.paused = True

    def observe(self, info: dict[str, Any], now: float) -> Pass | None:
        """Fold one `query-migrate` answer in; return the pass it closed, if any."""
        ram = info.get("ram") or {}
        number = int(ram.get("dirty-sync-count", 0))
        if number <= 0:
            return None
        self.page_size = int(ram.get("page-size", self.page_size)) or 4096
        remaining = int(ram.get("remaining", 0))
        transferred = int(ram.get("transferred", 0))
        pages = remaining // self.page_size + int(ram.get("normal", 0)) + int(ram.get("duplicate", 0))
        throttle = int(info.get("cpu-throttle-percentage", 0))
        closed = None
        if self._first is None or number > self._first.number:
            started = self._sync_times.get(number, now)
            closed = self._close(started, pages, transferred)
            self._first = _Sample(number, pages, transferred)
            if closed is not None:
                closed.syncs = number - closed.number
            paused = self.paused or (self.stop_time is not None and started >= self.stop_time)
            self.passes.append(Pass(number, started, remaining, transferred, throttle, paused=paused))
        elif self.current is not None:
            current = self.current
            current.cpu_throttle = max(current.cpu_throttle, throttle)
            current.paused = current.paused or self.paused
        return closed

    def _close(self, at: float, pages: int, transferred: int) -> Pass | None:
        current, first = self.current, self._first
        if current is None or first is None:
            return None
        current.ended = max(at, current.started)
        current.sent = max(0, transferred - first.transferred)
        current.dirtied = max(0, pages - first.pages) * self.page_size
        if self.stop_time is not None and current.started < self.stop_time < current.ended:
            current.stopped_at = self.stop_time
        _rates(current)
        return current

    def finish(self, at: float, transferred: int | None = None, completed: bool = False) -> None:
        """The migration ended at `at`: close the open pass (its bytes from the final total). The
        last pass of a completed migration is QEMU's stop-and-copy: the guest was paused."""
        current, first = self.current, self._first
        if current is not None:
            current.ended = max(at, current.started)
            current.paused = current.paused or completed
            if transferred is not None and first is not None:
                current.sent = max(0, transferred - first.transferred)
            _rates(current)
        self._first = None

    def dirty_rate(self) -> float | None:
        """The latest measured pass's dirty rate, bytes/s (None before one has finished, or once
        the latest finished pass is paused: the guest dirties nothing)."""
        last = self.last_closed
        if last is None or last.paused:
            return None
        for p in reversed(self.passes):
            if p.ended is not None and p.measured:
                return p.dirty_rate
        return last.dirty_rate

    def outpaced(self) -> bool:
        """Is the guest re-dirtying memory as fast as pre-copy sends it (OUTPACED_SHARE)?"""
        last: list[Pass] = []
        for p in reversed(self.passes):  # asked every poll: only the latest passes are read
            if p.ended is not None and p.number >= 2 and not p.paused:
                last.append(p)
                if len(last) == OUTPACED_PASSES:
                    return all(0 < q.sent <= q.dirtied / OUTPACED_SHARE for q in last)
        return False

    def dirtied_since_sync(self, now: float) -> int:
        """Bytes the guest has dirtied since the open pass's sync, at the latest measured dirty
        rate (0 before one was measured). `remaining` counts only what that sync found: late in
        a pass it reads near 0 while the guest has re-dirtied its working set, and a stop then
        sends both (its final sync finds these)."""
        current, rate = self.current, self.dirty_rate()
        if current is None or not rate or current.paused:
            return 0
        until = now if self.stop_time is None else min(now, self.stop_time)  # a stopped guest dirties nothing
        return int(rate * max(0.0, until - current.started))

    def expected_downtime(self) -> float | None:
        """Seconds a stop at the next sync would need: the last pass's dirtied bytes at its rate."""
        last = self.last_closed
        if last is None or last.transfer_rate <= 0:
            return None
        return last.dirtied / last.transfer_rate

    def as_list(self) -> list[dict[str, Any]]:
        return [p.as_dict() for p in self.passes]


def _rates(p: Pass) -> None:
    """A closed pass's rates: bytes sent over its duration, bytes re-dirtied over the time the
    guest ran in it (up to a STOP inside it; none at all in a paused pass)."""
    duration = p.duration or 0.0
    p.transfer_rate = p.sent / duration if duration > 0 else 0.0
    running = 0.0 if p.paused else ((p.stopped_at or p.ended or p.started) - p.started)
    p.dirty_rate = p.dirtied / running if running > 0 else 0.0
    p.measured = running >= MIN_WINDOW
