"""The downtime limit the source gives QEMU, budgeted from what this host measures.

QEMU stops the guest once it estimates that what is left fits its `downtime-limit` at the
bandwidth it measured on its own socket. That estimate misses two costs of ours:

- bytes QEMU counts as sent that are still on this host: read by a relay but not yet handed to
  the kernel, or in the channel socket's send queue (relay.Flow.in_flight). They drain at the
  rate the relays really carry, before the destination has the last byte;
- what follows the last byte: the destination loading the device state, "received", the commit
  and `cont` — plus whatever the destination's own buffers held. Neither is visible from here
  while the migration runs, so it is learned: each completed session records how much its
  real pause took beyond QEMU's downtime (`CommitCosts`), and the next sessions keep that much
  back;
- the guest's disk writes the host has not written back yet, which the stop flushes
  (`flush`: the seconds migration/flush.py expects that to take, from its rounds during pre-copy).

    limit = (max_downtime × (1 − MARGIN) − overhead − ram_check − flush − in_flight / rate) / overrun
            clamped to [FLOOR × max_downtime, max_downtime]

`overrun` is how far QEMU's own stop-and-copy runs past the limit it stopped under, as a ratio
(`QemuOverruns`): QEMU stops once what is left fits the limit at its bandwidth estimate, and that
estimate, taken over 100 ms windows of its writes into our sockets, reads high here: a 1 GiB
guest's downtime was 285–311 ms at a limit of 210 (bench/migration.py), while the relays carried
0.8–1.1 GB/s through the stop. The error grows with the limit, so it is learned as a ratio (an
additive cost learned at a small limit fell short at a larger one), and never taken below
PRIOR_OVERRUN. `overhead` is then the commit's own cost: the pause beyond QEMU's downtime.

`ram_check` is the RAM comparison of live/ramcheck.py (TCG before QEMU 9.0 only): the guest's
memory size times the seconds per byte this host's recent comparisons took (`RamCheckCosts`).

`rate` is what the relays carried over the last second. The destination keeps its queues short
(streams/carrier.accept_stream), so a backlog waits in this host's sockets where it is counted.
Past --max-iterations the source stops the guest itself, but with auto-converge on only once
`fits` says the pause stays within max-downtime (the throttle keeps rising meanwhile; --timeout
bounds the wait): the pause promise holds for a forced stop too, and every pass keeps the margin
and the costs back (the whole max-downtime in the last passes let QEMU's own misestimate
through: a 2 GiB guest paused 348 ms at 300). Without auto-converge nothing would ever make it
fit, so the stop comes at --max-iterations, as the spec says, and pauses for all that is left;
then, as a smaller limit makes pre-copy harder to finish, QEMU gets the whole max-downtime in
the last LAST_PASSES passes before it.

The limit also ramps up over the first passes (RAMP, shares of the budget; as OpenStack Nova's
downtime steps): QEMU stops the guest as soon as what is left fits its limit at its bandwidth, so
with the whole budget from the start it stops right after the bulk pass with up to that much
still dirty, pausing even an idle guest for most of --max-downtime. A low first limit sends that
remainder with the guest running; a guest that dirties faster than the link reaches the whole
budget by pass 4. The first limit is set before `migrate` (`start`), and each pass's as QEMU
reports the pass: the transfer loop's poll (every 250 ms) comes too late for a guest whose bulk
pass is shorter (an idle 256 MiB guest's takes ~200 ms here, and half its moves paused for
100–140 ms under the whole budget).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ...contract.flags import THROTTLE_MAX

log = logging.getLogger(__name__)

MARGIN = 0.1  # of max-downtime, kept for the noise of a loaded host
FLOOR = 0.1  # never ask QEMU for less than this share of max-downtime: below it nothing converges
PRIOR_OVERHEAD = 0.06  # seconds of commit assumed beyond QEMU's downtime before this host measured one
PRIOR_OVERRUN = 1.5  # QEMU's downtime ÷ its limit assumed before this host measured one (1.33–1.48 seen)
INFORMATIVE = 0.8  # a QEMU downtime under this share of its limit says nothing of QEMU's estimate…
OVERRUN_MIN_LIMIT = 0.1  # …nor one under a limit this small (seconds): QEMU's fixed costs dominate it
SAMPLES = 6  # sessions remembered; the worst of them is kept back
MIN_CHANGE = 0.002  # seconds: smaller changes of the limit are not worth a QMP round trip
RATE_WINDOW = 1.0  # seconds the carried-bytes rate is averaged over
LAST_PASSES = 3  # passes before --max-iterations in which QEMU gets the whole max-downtime
PRIOR_RAM_CHECK = 0.5e-9  # seconds per byte of RAM compared (2 GB/s) before this host measured one
RAMP = (0.15, 0.35, 0.6)  # share of the budget QEMU gets in passes 1, 2, 3 (1 = the bulk pass); then all


# Past --max-iterations a stop waits for the pause to fit (FitWait): at most FIT_PASSES passes with
# the throttle at its ceiling (its effect lags a pass or two: up to ~1 s of sleep at 99 %), or
# FIT_SECONDS if QEMU never raises it that far.
FIT_PASSES = 10
FIT_SECONDS = 10.0
# QEMU's next throttle raise goes straight to the ceiling (its default max-cpu-throttle, 99 %)
CEILING = {"cpu-throttle-initial": THROTTLE_MAX, "cpu-throttle-increment": THROTTLE_MAX}


class QMP(Protocol):
    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...


class _Worst:
    """The worst of a host's last `keep` samples, `prior` before the first (one agent process:
    migrations run concurrently, so a lock)."""

    def __init__(self, prior: float, keep: int) -> None:
        self._lock = threading.Lock()
        self._prior = prior
        self._samples: collections.deque[float] = collections.deque(maxlen=keep)

    def worst(self) -> float:
        with self._lock:
            return max(self._samples) if self._samples else self._prior

    def add(self, sample: float) -> None:
        with self._lock:
            self._samples.append(sample)


class CommitCosts(_Worst):
    """How much the pauses of this host's recent sessions exceeded what their limit accounted
    for, in seconds."""

    def __init__(self, prior: float = PRIOR_OVERHEAD, keep: int = SAMPLES) -> None:
        super().__init__(prior, keep)

    def overhead(self) -> float:
        return self.worst()

    def record(self, pause: float, accounted: float, qemu_downtime: float | None) -> float:
        """One completed session: the real pause, what its last limit and drain accounted for
        (QEMU's overrun included), and QEMU's own downtime figure. The sample is the pause beyond
        QEMU's downtime (the commit alone: QEMU's own part is `QemuOverruns`'), or beyond the
        account where QEMU gave no figure; returns it."""
        sample = max(0.0, pause - (qemu_downtime if qemu_downtime is not None else accounted))
        self.add(sample)
        return sample


COSTS = CommitCosts()


class QemuOverruns(_Worst):
    """QEMU's downtime ÷ the limit it stopped under, in this host's recent sessions (≥ 1)."""

    def __init__(self, prior: float = PRIOR_OVERRUN, keep: int = SAMPLES) -> None:
        super().__init__(prior, keep)

    def ratio(self) -> float:
        """The worst recent ratio, never below the prior: a few good sessions (1.0–1.24 seen)
        are no promise for the next (1.48 seen on the same host)."""
        return max(self._prior, self.worst())

    def record(self, qemu_downtime: float, limit: float) -> float | None:
        """One session QEMU stopped by itself; the sample, or None when it says nothing: QEMU
        stopped well inside its limit (an idle guest's remainder was small: a host of idle guests
        would otherwise forget what a busy one costs), or under a limit so small that the device
        state's fixed cost is most of its downtime."""
        if limit < OVERRUN_MIN_LIMIT or qemu_downtime < INFORMATIVE * limit:
            return None
        sample = max(1.0, qemu_downtime / limit)
        self.add(sample)
        return sample


OVERRUNS = QemuOverruns()


class RamCheckCosts(_Worst):
    """Seconds per byte of guest RAM this host's recent RAM comparisons took."""

    def __init__(self, prior: float = PRIOR_RAM_CHECK, keep: int = SAMPLES) -> None:
        super().__init__(prior, keep)

    def per_byte(self) -> float:
        return self.worst()

    def record(self, seconds: float, memory: int) -> None:
        if memory > 0:
            self.add(seconds / memory)


RAM_CHECKS = RamCheckCosts()


class FitWait:
    """How long a stop past --max-iterations waits for its pause to fit --max-downtime.

    QEMU raises the throttle at most once per two dirty-sync periods of at least 1 s each, however
    short the passes: with its steps a wait counted in passes alone ended before the guest ever
    felt the ceiling (20 → 74 % in 60 passes of 100 ms). So the waiting source sends QEMU's next
    raise straight to the ceiling (CEILING), and the wait is over once FIT_PASSES passes at the
    ceiling still did not fit — the guest dirties faster than the link carries whatever it waits —
    or after FIT_SECONDS if QEMU never raises it that far."""

    def __init__(self, since: float) -> None:
        self.since = since  # monotonic seconds
        self.ceiling_pass: int | None = None  # the first pass of the wait seen at the ceiling

    def over(self, iteration: int, throttle: int, now: float) -> bool:
        """After this poll (QEMU's pass count, throttle %, monotonic now): stop anyway?"""
        if self.ceiling_pass is None and throttle >= THROTTLE_MAX:
            self.ceiling_pass = iteration
        if self.ceiling_pass is not None:
            return iteration - self.ceiling_pass >= FIT_PASSES
        return now - self.since >= FIT_SECONDS


def budget(max_downtime: float, *, in_flight: int, rate: float, overhead: float, passes: int = len(RAMP) + 1,
           overrun: float = 1.0) -> float:
    """The downtime limit (seconds) to give QEMU in pass `passes`; `rate` in bytes/s (0 = not
    measured yet)."""
    drain = in_flight / rate if rate > 0 else 0.0
    target = (max_downtime * (1 - MARGIN) - overhead - drain) / max(1.0, overrun)
    if 1 <= passes <= len(RAMP):
        target *= RAMP[passes - 1]
    return min(max_downtime, max(FLOOR * max_downtime, target))


class DowntimeBudget:
    """Keeps QEMU's `downtime-limit` at `budget()` while pre-copy runs (call `update` per poll)."""

    def __init__(self, max_downtime: float, max_iterations: int, in_flight: Callable[[], int],
                 carried: Callable[[], int], costs: CommitCosts = COSTS,
                 ram_checks: RamCheckCosts = RAM_CHECKS, flush: Callable[[], float] = lambda: 0.0,
                 forced_stop_fits: bool = False, overruns: QemuOverruns = OVERRUNS) -> None:
        self.max_downtime, self.max_iterations = max_downtime, max_iterations
        # True when the stop at --max-iterations waits until `fits` (auto-converge on): then no
        # pass needs the whole max-downtime to escape an unbounded forced stop, and every pass
        # keeps the margin and the measured costs back
        self.forced_stop_fits = forced_stop_fits
        self._in_flight, self._carried, self._flush = in_flight, carried, flush
        self._costs, self._ram_checks, self._overruns = costs, ram_checks, overruns
        self.overrun = 1.0  # the ratio the last limit assumed
        self.ram_checked = 0  # bytes of guest RAM the pause will compare (0: no RAM check)
        self.limit: float | None = None  # last limit given to QEMU
        self.drain = 0.0  # the in-flight drain the last limit assumed
        self.rate = 0.0  # bytes/s the relays carried, as of the last update
        self._marks: collections.deque[tuple[float, int]] = collections.deque()

    def _rate(self) -> float:
        """Bytes/s the relays carried over the last RATE_WINDOW (0 until two marks exist)."""
        now, carried = time.monotonic(), self._carried()
        self._marks.append((now, carried))
        while len(self._marks) > 2 and now - self._marks[1][0] >= RATE_WINDOW:
            self._marks.popleft()
        then, before = self._marks[0]
        return (carried - before) / (now - then) if now > then else 0.0

    async def start(self, qmp: QMP) -> None:
        """Before `migrate`: the bulk pass's limit. QEMU would otherwise start with the whole
        --max-downtime (flags.py sets it), and a small guest's bulk pass can be over before the
        first update: QEMU then stops it with up to that much still to send."""
        self.drain = 0.0
        await self._set(qmp, self._limit(passes=1, in_flight=0, rate=0.0))

    async def update(self, qmp: QMP, info: dict[str, Any]) -> None:
        """Per poll and per pass (both may call it): the limit from the figures of now."""
        if info.get("status") != "active":
            return  # before setup completes there is nothing to budget; after, QEMU has decided
        rate = self._rate()
        in_flight = self._in_flight()
        self.rate = rate
        self.drain = in_flight / rate if rate > 0 else 0.0
        passes = int((info.get("ram") or {}).get("dirty-sync-count", 0))
        await self._set(qmp, self._limit(passes, in_flight, rate))

    def _overhead(self) -> float:
        return self._costs.overhead() + self.ram_checked * self._ram_checks.per_byte() + self._flush()

    def _limit(self, passes: int, in_flight: int, rate: float) -> float:
        if passes >= self.max_iterations - LAST_PASSES and not self.forced_stop_fits:
            self.overrun = 1.0
            return self.max_downtime  # converge now rather than be stopped with everything dirty
        self.overrun = self._overruns.ratio()
        return budget(self.max_downtime, in_flight=in_flight, rate=rate, overhead=self._overhead(), passes=passes,
                      overrun=self.overrun)

    def expected_pause(self, remaining: int) -> float | None:
        """Seconds a stop now would pause the guest: what QEMU still has to send and what is in
        flight, at the rate the relays carry, plus the commit's and the stop's own costs. None
        before a rate was measured."""
        if self.rate <= 0:
            return None
        return (remaining + self._in_flight()) / self.rate + self._overhead()

    def fits(self, remaining: int) -> bool:
        """Would a stop now keep the pause within max-downtime (with the noise MARGIN)?"""
        pause = self.expected_pause(remaining)
        return pause is not None and pause <= self.max_downtime * (1 - MARGIN)

    async def _set(self, qmp: QMP, limit: float) -> None:
        if self.limit is not None and abs(limit - self.limit) < MIN_CHANGE:
            return
        try:
            await qmp.execute("migrate-set-parameters", {"downtime-limit": max(1, int(limit * 1000))})
        except Exception as err:  # a limit not tuned is no reason to fail the migration: QEMU says why soon enough
            log.debug("downtime-limit %.0f ms not set: %s", limit * 1000, err)
            return
        self.limit = limit

    def learn(self, pause: float | None, qemu_downtime: float | None, forced: bool = False,
              ram_check: float | None = None) -> None:
        """After a completed session: what its pause cost beyond the account, for the next ones.
        `pause` leaves the RAM comparison out; `ram_check` is its seconds, learned per byte.
        Not after a forced stop-and-copy: that pause is the dirty memory's, not the commit's.
        The disk flush the stop was expected to do is the guest's writes', not the commit's either."""
        if ram_check is not None and self.ram_checked:
            self._ram_checks.record(ram_check, self.ram_checked)
        if pause is None or self.limit is None or forced:
            return
        pause = max(0.0, pause - self._flush())  # in the pause, not in QEMU's downtime figure
        sample = self._costs.record(pause, self.limit * self.overrun + self.drain, qemu_downtime)
        ratio = None if qemu_downtime is None else self._overruns.record(qemu_downtime, self.limit)
        log.debug("pause %.0f ms, QEMU's downtime %s against limit %.0f ms (assumed ×%.2f) + drain %.0f ms: "
                  "commit %.0f ms kept back, QEMU's overrun %s", pause * 1000,
                  "?" if qemu_downtime is None else f"{qemu_downtime * 1000:.0f} ms", self.limit * 1000,
                  self.overrun, self.drain * 1000, sample * 1000, "not learned" if ratio is None else f"×{ratio:.2f}")
