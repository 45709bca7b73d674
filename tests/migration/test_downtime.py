"""The downtime budget's arithmetic (pure logic) and its QMP calls (a recording stand-in for QMP)."""

from __future__ import annotations

from typing import Any

import pytest

from qvplan.contract.flags import THROTTLE_MAX
from qvplan.migration.live import downtime
from qvplan.migration.live.downtime import (
    CEILING,
    FIT_PASSES,
    FIT_SECONDS,
    FLOOR,
    MARGIN,
    PRIOR_OVERRUN,
    RAMP,
    CommitCosts,
    DowntimeBudget,
    FitWait,
    QemuOverruns,
    RamCheckCosts,
    budget,
)

MAX = 0.3


def EXACT() -> QemuOverruns:
    """A QEMU whose stop-and-copy keeps its limit (the tests of everything else in the budget)."""
    return QemuOverruns(prior=1.0)


def test_nothing_in_flight_keeps_margin_and_overhead_back() -> None:
    assert budget(MAX, in_flight=0, rate=1e9, overhead=0.02) == pytest.approx(MAX * (1 - MARGIN) - 0.02)


def test_in_flight_bytes_cost_their_drain_time() -> None:
    # 50 MB in flight at 500 MB/s drain in 100 ms: that much less for QEMU's stop-and-copy.
    assert budget(MAX, in_flight=50_000_000, rate=500e6, overhead=0.0) == pytest.approx(MAX * (1 - MARGIN) - 0.1)


def test_unknown_rate_budgets_without_drain() -> None:
    assert budget(MAX, in_flight=10**9, rate=0, overhead=0.0) == pytest.approx(MAX * (1 - MARGIN))


def test_limit_is_clamped() -> None:
    assert budget(MAX, in_flight=10**10, rate=1e6, overhead=0.0) == pytest.approx(FLOOR * MAX)
    assert budget(MAX, in_flight=0, rate=1e9, overhead=-5.0) == MAX


def test_the_limit_ramps_up_over_the_first_passes() -> None:
    """A low limit in the bulk pass: QEMU sends what the guest dirtied meanwhile with the guest
    running, instead of stopping it with all of that still to send."""
    full = MAX * (1 - MARGIN) - 0.02
    limits = [budget(MAX, in_flight=0, rate=1e9, overhead=0.02, passes=n) for n in (1, 2, 3, 4, 20)]
    assert limits == pytest.approx([max(FLOOR * MAX, full * share) for share in RAMP] + [full, full])
    assert FLOOR * MAX <= limits[0] < limits[1] < limits[2] < limits[3]


def test_commit_costs_keep_the_worst_recent_sample() -> None:
    costs = CommitCosts(prior=0.05, keep=3)
    assert costs.overhead() == 0.05  # nothing measured yet: the prior
    # 40 ms of pause after QEMU's downtime of 250: the commit's own cost.
    assert costs.record(0.29, accounted=0.25, qemu_downtime=0.25) == pytest.approx(0.04)
    # QEMU's overrun is not the commit's (QemuOverruns learns it): only the 8 ms after its downtime.
    assert costs.record(0.40, accounted=0.25, qemu_downtime=0.392) == pytest.approx(0.008)
    # No downtime figure from QEMU: the pause beyond the whole account.
    assert costs.record(0.26, accounted=0.25, qemu_downtime=None) == pytest.approx(0.01)
    assert costs.overhead() == pytest.approx(0.04)
    costs.record(0.1, accounted=0.25, qemu_downtime=0.1)
    assert costs.overhead() == pytest.approx(0.01)  # the 40 ms sample aged out


class RecordingQMP:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any] | None]] = []

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        self.calls.append((command, arguments))
        return {}


def _info(status: str = "active", passes: int = 4) -> dict[str, Any]:  # past the ramp
    return {"status": status, "ram": {"dirty-sync-count": passes}}


async def test_budget_sets_the_limit_and_learns(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(downtime.time, "monotonic", lambda: clock[0])
    carried = [0]
    in_flight = [0]
    costs = CommitCosts(prior=0.05)
    b = DowntimeBudget(MAX, 30, lambda: in_flight[0], lambda: carried[0], costs, overruns=EXACT())
    qmp = RecordingQMP()

    await b.update(qmp, _info("setup"))
    assert qmp.calls == []  # nothing before pre-copy runs

    await b.update(qmp, _info())  # no rate yet: margin and prior only
    assert qmp.calls[-1] == ("migrate-set-parameters", {"downtime-limit": 220})  # 270 - 50

    clock[0] += 1.0
    carried[0] = 500_000_000  # 500 MB/s
    in_flight[0] = 25_000_000  # 50 ms of drain
    await b.update(qmp, _info())
    assert qmp.calls[-1] == ("migrate-set-parameters", {"downtime-limit": 170})
    assert b.drain == pytest.approx(0.05)

    calls = len(qmp.calls)
    clock[0] += 0.25
    carried[0] += 125_000_000
    await b.update(qmp, _info())  # the same figures: no QMP round trip for nothing
    assert len(qmp.calls) == calls

    await b.update(qmp, _info(passes=27))  # near --max-iterations: all of it, to converge
    assert qmp.calls[-1] == ("migrate-set-parameters", {"downtime-limit": 300})
    await b.update(qmp, _info(passes=26))
    assert qmp.calls[-1] == ("migrate-set-parameters", {"downtime-limit": 170})

    b.learn(pause=0.26, qemu_downtime=0.22)  # the commit: 40 ms beyond QEMU's downtime
    assert costs.overhead() == pytest.approx(0.04)
    b.learn(pause=None, qemu_downtime=None)  # a session settled without a pause figure: nothing learned
    b.learn(pause=5.0, qemu_downtime=0.03, forced=True)  # a forced stop's pause is not the commit's
    assert costs.overhead() == pytest.approx(0.04)


async def test_the_ram_comparison_is_kept_back_per_byte_of_guest_ram(monkeypatch):
    """Where the pause compares RAM (live/ramcheck.py), the budget keeps its expected time back:
    the guest's size times the seconds per byte this host's comparisons took, learned on its own."""
    clock = [100.0]
    monkeypatch.setattr(downtime.time, "monotonic", lambda: clock[0])
    checks = RamCheckCosts(prior=1e-9)  # 1 GB/s
    b = DowntimeBudget(MAX, 30, lambda: 0, lambda: 0, CommitCosts(prior=0.05), checks, overruns=EXACT())
    b.ram_checked = 100_000_000  # 100 ms at the prior rate
    qmp = RecordingQMP()
    await b.update(qmp, _info())
    assert qmp.calls[-1] == ("migrate-set-parameters", {"downtime-limit": 120})  # 270 - 50 - 100

    b.learn(pause=0.2, qemu_downtime=0.15, ram_check=0.05)  # 0.5 ns per byte measured
    assert checks.per_byte() == pytest.approx(0.5e-9)
    b.learn(pause=0.2, qemu_downtime=0.15, ram_check=0.03)
    assert checks.per_byte() == pytest.approx(0.5e-9)  # the worst recent comparison is kept
    unchecked = DowntimeBudget(MAX, 30, lambda: 0, lambda: 0, CommitCosts(prior=0.05), checks, overruns=EXACT())
    unchecked.learn(pause=0.2, qemu_downtime=0.15, ram_check=None)
    await unchecked.update(qmp, _info())
    assert qmp.calls[-1] == ("migrate-set-parameters", {"downtime-limit": 220})  # no RAM check: nothing kept back


async def test_the_bulk_pass_limit_is_set_before_migrate_and_steps_with_the_passes() -> None:
    """QEMU starts with the whole --max-downtime (flags.py): `start` lowers it to the bulk pass's
    share before `migrate`, so a bulk pass shorter than the first poll cannot end in a stop with
    most of the budget still to send; each pass then gets its share."""
    b = DowntimeBudget(MAX, 30, lambda: 0, lambda: 0, CommitCosts(prior=0.05), overruns=EXACT())
    qmp = RecordingQMP()
    await b.start(qmp)
    full = MAX * (1 - MARGIN) - 0.05
    assert qmp.calls == [("migrate-set-parameters", {"downtime-limit": int(max(FLOOR * MAX, full * RAMP[0]) * 1000)})]
    await b.update(qmp, _info(passes=2))
    assert qmp.calls[-1] == ("migrate-set-parameters", {"downtime-limit": int(full * RAMP[1] * 1000)})


async def test_a_stop_fits_only_when_the_remainder_and_costs_drain_within_max_downtime(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(downtime.time, "monotonic", lambda: clock[0])
    carried, in_flight = [0], [0]
    b = DowntimeBudget(MAX, 4, lambda: in_flight[0], lambda: carried[0], CommitCosts(prior=0.03), overruns=EXACT())
    qmp = RecordingQMP()
    await b.update(qmp, _info(passes=5))
    assert b.expected_pause(1) is None and not b.fits(0)  # no rate measured yet: never "fits"
    clock[0] += 1.0
    carried[0] = 100_000_000  # 100 MB/s
    in_flight[0] = 5_000_000  # 50 ms of it
    await b.update(qmp, _info(passes=5))
    # 20 MB left + 5 MB in flight at 100 MB/s, and the 30 ms the commit costs: 280 ms
    assert b.expected_pause(20_000_000) == pytest.approx(0.28)
    assert not b.fits(20_000_000)  # over 300 ms × (1 − MARGIN)
    assert b.fits(15_000_000)  # 230 ms


async def test_a_stop_that_waits_to_fit_keeps_the_budget_in_the_last_passes() -> None:
    """With auto-converge the forced stop waits until the pause fits, so the last passes before
    --max-iterations need not hand QEMU the whole max-downtime (its own estimate overruns it)."""
    qmp = RecordingQMP()
    waits = DowntimeBudget(MAX, 30, lambda: 0, lambda: 0, CommitCosts(prior=0.05), forced_stop_fits=True,
                           overruns=EXACT())
    await waits.update(qmp, _info(passes=27))
    assert qmp.calls[-1] == ("migrate-set-parameters", {"downtime-limit": 220})  # 270 - 50, as before the end
    spec = DowntimeBudget(MAX, 30, lambda: 0, lambda: 0, CommitCosts(prior=0.05), overruns=EXACT())
    await spec.update(qmp, _info(passes=27))
    assert qmp.calls[-1] == ("migrate-set-parameters", {"downtime-limit": 300})


def test_qemu_s_overrun_is_learned_as_a_ratio_and_never_below_the_prior() -> None:
    overruns = QemuOverruns(keep=3)
    assert overruns.ratio() == PRIOR_OVERRUN  # nothing measured yet
    assert overruns.record(0.311, 0.21) == pytest.approx(0.311 / 0.21)  # 1.48: QEMU's estimate read high
    assert overruns.record(0.05, 0.21) is None  # stopped well inside the limit: says nothing of the estimate
    assert overruns.record(0.2, 0.21) == 1.0  # within its limit: at least 1
    assert overruns.record(0.09, 0.03) is None  # a limit at the floor: the device state's fixed cost
    assert overruns.ratio() == pytest.approx(PRIOR_OVERRUN)  # 1.48 < the prior: the prior holds
    overruns.record(0.42, 0.21)  # a host where QEMU overruns 2×
    assert overruns.ratio() == pytest.approx(2.0)
    for _ in range(3):
        overruns.record(0.21, 0.21)
    assert overruns.ratio() == PRIOR_OVERRUN  # the 2× aged out


async def test_the_limit_leaves_room_for_qemu_s_overrun_and_learns_it(monkeypatch) -> None:
    """QEMU's stop-and-copy overran its limit ×1.33–1.48 on a 1 GiB guest here: the limit is the
    budget left after the commit's cost, divided by that ratio, so the pause stays inside."""
    monkeypatch.setattr(downtime.time, "monotonic", lambda: 100.0)
    overruns = QemuOverruns(keep=3)
    b = DowntimeBudget(MAX, 30, lambda: 0, lambda: 0, CommitCosts(prior=0.03), overruns=overruns)
    qmp = RecordingQMP()
    await b.update(qmp, _info())
    limit = (MAX * (1 - MARGIN) - 0.03) / PRIOR_OVERRUN  # 160 ms
    assert qmp.calls[-1] == ("migrate-set-parameters", {"downtime-limit": round(limit * 1000)})
    assert limit * 1.48 + 0.03 <= MAX  # the worst overrun seen still fits
    b.learn(pause=0.16 * 2.0 + 0.005, qemu_downtime=0.32)  # this host's QEMU overran 2×
    assert overruns.ratio() == pytest.approx(2.0)
    await b.update(qmp, _info())
    learned = (MAX * (1 - MARGIN) - 0.005) / 2  # the commit's 5 ms kept back, then QEMU's 2×
    assert qmp.calls[-1] == ("migrate-set-parameters", {"downtime-limit": round(learned * 1000)})


def test_the_wait_for_a_fit_counts_passes_at_the_throttle_s_ceiling_only() -> None:
    # QEMU raises the throttle every ~2 s whatever the passes last: 60 short passes at 20–74 % are
    # no reason to give up; the count starts at the first pass seen at the ceiling.
    wait = FitWait(since=100.0)
    assert not any(wait.over(pass_, 47, 100.0 + 0.1 * (pass_ - 30)) for pass_ in range(30, 90))
    assert not wait.over(90, THROTTLE_MAX, 106.0)
    assert not wait.over(90 + FIT_PASSES - 1, THROTTLE_MAX, 107.0)
    assert wait.over(90 + FIT_PASSES, THROTTLE_MAX, 108.0)
    # a throttle QEMU never raised (the guest dirties less than half of what is sent): time bounds it
    idle = FitWait(since=100.0)
    assert not idle.over(40, 20, 100.0 + FIT_SECONDS - 0.1)
    assert idle.over(41, 20, 100.0 + FIT_SECONDS)
    # the next raise goes straight to the ceiling, from a first raise or any later one
    assert CEILING == {"cpu-throttle-initial": THROTTLE_MAX, "cpu-throttle-increment": THROTTLE_MAX}
