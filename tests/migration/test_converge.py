"""Convergence control: a write-heavy guest that only auto-converge brings home in time.

The guest re-dirties its 12 MiB working set faster than the 8 MiB/s the migration may use
(measured here: ~65 MiB/s on a quiet machine, ~30 MiB/s with other QEMU tests running; it
must only stay above 8), so every pre-copy pass finds the whole working set dirty again. Without
auto-converge the dirty set never gets under what 100 ms of downtime can carry, and
--max-iterations ends the migration with a forced stop-and-copy (a pause of ~1.5 s). With
auto-converge QEMU throttles the vCPU (20 % at pass 3, 99 % at pass 5 for this budget of 20, see
MigrateFlags.throttle_increment): the dirty set shrinks to a few hundred KiB and the migration
converges by itself, typically by pass 8–13. The budget is generous because under TCG every pass
at 99 % waits up to a second for the vCPU's throttle sleep and the last passes end only when a
sync falls between two of the guest's 10 ms bursts.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from pydantic import ValidationError

from qvplan.contract.flags import MigrateFlags
from qvplan.migration.live.downtime import FIT_PASSES

from .helpers import migrate, runs_only_on, start_guest, wait_outcome

MIB = 1 << 20
WORKING_SET = 12 * MIB
BANDWIDTH = 8 * MIB
MAX_ITERATIONS = 20
FORCED_AT = 10  # passes before the forced stop-and-copy of the test without auto-converge
# pace 12000: ~50 µs of busy loop per page under TCG here; marker_every 1: a serial line per sweep.
HEAVY = {"memory": "128M", "working_set": "12M", "pace": 12000, "marker_every": 1}
FLAGS = {"bandwidth": "8M", "max_downtime": "100ms", "max_iterations": MAX_ITERATIONS, "threads": 1}


def dirty_rate(agent, name: str, seconds: float = 2.0) -> float:
    """Bytes the guest dirties per second (page-granular), from its sweep markers."""
    first = agent.wait_markers(name, agent.vm(name)["serial_markers"])
    start = time.monotonic()
    time.sleep(seconds)
    last = agent.vm(name)["serial_markers"]
    return (last - first) * WORKING_SET / (time.monotonic() - start)


def follow_events(agent, name: str) -> subprocess.Popen[str]:
    """`curl -N` on the migration's event stream, as an operator would run it."""
    url = f"http://{agent.address}:{agent.api_port}/api/v1/vms/{name}/migrate/events"
    return subprocess.Popen(["curl", "-sSN", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_events(curl: subprocess.Popen[str]) -> list[dict]:
    out, err = curl.communicate(timeout=30)
    assert curl.returncode == 0, err
    return [json.loads(line[5:]) for line in out.splitlines() if line.startswith("data:")]


def migrate_watched(src, dst, name: str, **flags) -> tuple[dict, list[dict]]:
    src.api("POST", f"vms/{name}/migrate", {"dest": dst.migration, "flags": flags})
    curl = follow_events(src, name)
    return wait_outcome(src, name), read_events(curl)


def assert_one_pass_event_per_iteration(events: list[dict], outcome: dict) -> list[dict]:
    """The stream opens with a status snapshot, then one `pass` per QEMU pass, in order, to the end."""
    assert events[0]["event"] == "status" and events[-1]["event"] == outcome["state"].lower(), events[-1]
    passes = [e for e in events if e["event"] == "pass"]
    numbers = [e["iteration"] for e in passes]
    first = max(1, events[0]["iteration"] + 1)  # the snapshot may already show the first pass
    assert numbers == list(range(first, outcome["iteration"] + 1)), numbers
    return passes


def show_passes(events: list[dict]) -> None:
    print("\npass: vCPU throttle, left to send, seconds: " + ", ".join(
        f"{e['iteration']}: {e['cpu_throttle']}% {(e['total'] - e['transferred']) / MIB:.1f} MiB "
        f"{e['time'] - e['started']:.1f}s" for e in events if e["event"] == "pass"))


def test_without_auto_converge_only_a_forced_stop_and_copy_completes(pair):
    a, b = pair
    start_guest(a, **HEAVY)
    rate = dirty_rate(a, "vm-1")
    print(f"\nguest dirties {rate / MIB:.0f} MiB/s against a bandwidth of {BANDWIDTH / MIB:.0f} MiB/s")

    flags = {**FLAGS, "auto_converge": False, "max_iterations": FORCED_AT}
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": flags})
    curl = follow_events(a, "vm-1")
    # Mid-way, `migrate-status` shows the live pass count against the budget.
    time.sleep(4)
    live = a.cli("vm", "migrate-status", "vm-1")
    assert live.returncode == 0, live.stderr
    assert "MIGRATING (phase" in live.stdout, live.stdout
    n = int(re.search(rf"Iteration:\s+(\d+) / {FORCED_AT}\n", live.stdout).group(1))
    assert 1 <= n < FORCED_AT, live.stdout
    status, events = wait_outcome(a, "vm-1"), read_events(curl)
    show_passes(events)

    assert status["state"] == "COMPLETED", status
    assert status["forced_stop_and_copy"] and status["iteration"] == FORCED_AT, status
    assert status["cpu_throttle"] == 0, status
    passes = assert_one_pass_event_per_iteration(events, status)
    forced = [e for e in events if e["event"] == "phase" and e.get("forced")]
    assert len(forced) == 1 and forced[0]["iteration"] == FORCED_AT, forced
    # It never converged: up to the forced stop every pass found most of the working set dirty.
    assert all(e["total"] - e["transferred"] > WORKING_SET / 2 for e in passes
               if 2 <= e["iteration"] <= FORCED_AT), passes
    print(f"forced stop-and-copy after {FORCED_AT} passes, {status['transferred'] / MIB:.0f} MiB sent, "
          f"pause {status['pause']}s")
    runs_only_on(b, a, "vm-1")

    done = a.cli("vm", "migrate-status", "vm-1")
    assert f"Iteration:       {status['iteration']} / {FORCED_AT} (forced stop-and-copy)" in done.stdout
    as_json = json.loads(a.cli("vm", "migrate-status", "vm-1", "--json").stdout)
    assert (as_json["iteration"], as_json["max_iterations"]) == (status["iteration"], FORCED_AT)


def test_auto_converge_converges_before_the_forced_stop_and_copy(pair):
    a, b = pair
    start_guest(a, **HEAVY)
    status, events = migrate_watched(a, b, "vm-1", **FLAGS, auto_converge=True)
    show_passes(events)

    assert status["state"] == "COMPLETED", status
    assert not status["forced_stop_and_copy"] and status["cpu_throttle"] > 0, status
    passes = assert_one_pass_event_per_iteration(events, status)
    assert not any(e["event"] == "phase" and e.get("forced") for e in events)
    # Throttled, the dirty set finally shrank (it never does without auto-converge), and the
    # throttle shows in the pass events while it works, not only in the outcome.
    assert any(e["cpu_throttle"] > 0 and e["total"] - e["transferred"] < WORKING_SET / 2 for e in passes), passes
    print(f"converged at pass {status['iteration']} of {MAX_ITERATIONS} with the vCPU throttled to "
          f"{status['cpu_throttle']}%, pause {status['pause']}s, QEMU downtime {status['downtime']}s")
    runs_only_on(b, a, "vm-1")
    done = a.cli("vm", "migrate-status", "vm-1")
    assert f"Iteration:       {status['iteration']} / {MAX_ITERATIONS}\n" in done.stdout, done.stdout


def test_past_max_iterations_auto_converge_stops_the_guest_only_once_the_pause_fits(pair):
    """The pause promise at --max-iterations: a budget of 4 passes ends before auto-converge
    has throttled the guest enough (20 % from pass 3), so a stop there would pause it for the
    whole 12 MiB working set at 8 MiB/s (~1.5 s, like the test without auto-converge above).
    The source holds the stop instead, says so, and the guest pauses within --max-downtime.
    The pause is QEMU's (source STOP → destination RESUME event times)."""
    a, b = pair
    start_guest(a, **HEAVY)
    budget = 4
    status, events = migrate_watched(a, b, "vm-1", **{**FLAGS, "max_iterations": budget}, auto_converge=True)
    show_passes(events)

    assert status["state"] == "COMPLETED", status
    assert status["iteration"] > budget and status["cpu_throttle"] > 0, status
    assert 0 < status["pause"] <= 0.1, status  # FLAGS' max-downtime
    held = [e for e in events if e.get("waiting_to_fit")]
    assert held and all(e["iteration"] >= budget for e in held), events
    assert not status["waiting_to_fit"], status
    runs_only_on(b, a, "vm-1")


def test_a_guest_that_never_fits_gets_the_forced_stop_after_a_bounded_wait(pair):
    """The same budget of 4 passes, but a guest that sweeps 12 MiB at full speed (pace 0): even at
    the 99 % throttle it re-dirties more than 8 MiB/s, so no stop can fit 100 ms. The wait for a
    fit ends after FIT_PASSES passes with the throttle at its ceiling (not before: a wait counted
    in passes alone ended at 74 % when the passes were short, QEMU raising it only every ~2 s) and
    the spec's forced stop-and-copy runs (its pause, over --max-downtime, is the documented
    exception), instead of passes until --timeout."""
    a, b = pair
    start_guest(a, memory="128M", working_set="12M")
    budget = 4
    status, events = migrate_watched(a, b, "vm-1", **{**FLAGS, "max_iterations": budget}, auto_converge=True)
    show_passes(events)

    assert status["state"] == "COMPLETED", status
    assert status["forced_stop_and_copy"] and status["cpu_throttle"] == 99, status
    at_ceiling = min(e["iteration"] for e in events if e["event"] == "pass" and e["cpu_throttle"] == 99)
    # it did wait for a fit first, with the throttle at its ceiling…
    assert status["iteration"] >= max(budget, at_ceiling) + FIT_PASSES, status
    assert any(e.get("waiting_to_fit") for e in events), events
    assert status["elapsed"] < 150, status  # …but not until the 300 s --timeout
    assert status["pause"] > 0.1, status  # all of the working set at 8 MiB/s
    runs_only_on(b, a, "vm-1")


def test_a_guest_that_outpaces_short_passes_gets_the_throttle_s_ceiling_in_one_step(pair):
    """QEMU raises the throttle at most every ~2 s, however short the passes. With the default
    budget of 30 passes its steps are +27 % (20, 47, 74, 99), meant to reach the ceiling by pass
    10; at 32 MiB/s this guest's passes last ~0.4 s, so QEMU's own steps would reach it only by
    pass ~25. The guest re-dirties all a pass sends (passes.py: it outpaces pre-copy), so the
    source sends QEMU's next raise straight to the ceiling: the pass events show the throttle at
    99 %, at most after one step of 20 %, never 47 or 74, and the guest converges by itself."""
    a, b = pair
    start_guest(a, memory="128M", working_set="12M", pace=3000)  # dirties far more than 32 MiB/s, little at 99 %
    status, events = migrate_watched(a, b, "vm-1", bandwidth="32M", max_downtime="300ms", max_iterations=30,
                                     threads=1, auto_converge=True)
    show_passes(events)

    assert status["state"] == "COMPLETED", status
    assert MigrateFlags(max_iterations=30).throttle_increment == 27  # QEMU's own steps would go via 47 and 74
    assert not status["forced_stop_and_copy"], status
    seen = [e["cpu_throttle"] for e in events if e["event"] == "pass" and e["cpu_throttle"]]
    assert seen and seen[-1] == 99, seen
    assert set(seen) <= {20, 99}, seen
    assert status["pause"] <= 0.3, status
    runs_only_on(b, a, "vm-1")


def test_throttle_reaches_its_ceiling_in_the_first_third_of_the_budget():
    # QEMU can raise the throttle at passes 3, 5, 7, ...: the last step must fit in the first third.
    for budget in (4, 8, 12, 20, 30, 60):
        step = MigrateFlags(max_iterations=budget).throttle_increment
        raises = -(-79 // step)  # 20 % → 99 %
        assert raises == 1 or 3 + 2 * raises <= budget // 3, (budget, step)
        assert step >= 10  # never gentler than QEMU's default
    assert "cpu-throttle-increment" not in MigrateFlags(auto_converge=False).qemu_parameters()


def test_xbzrle_converges_without_auto_converge_where_plain_pages_never_do(pair):
    """The same guest and bandwidth as the forced stop-and-copy test above, auto-converge off, but
    --xbzrle-cache: a re-dirtied page (one byte changed per sweep) crosses as a delta of a few bytes,
    so the dirty set fits the downtime budget after the cache has filled, with no throttling."""
    a, b = pair
    start_guest(a, **HEAVY)
    status = migrate(a, b, "vm-1", **FLAGS, auto_converge=False, xbzrle_cache="32M")
    assert status["state"] == "COMPLETED", status
    assert not status["forced_stop_and_copy"] and status["iteration"] < MAX_ITERATIONS, status
    assert status["cpu_throttle"] == 0, status
    # Far less than one full working set per pass (which is what plain pages cost above).
    assert status["transferred"] < status["iteration"] * WORKING_SET, status
    print(f"xbzrle: converged at pass {status['iteration']}, {status['transferred'] / MIB:.1f} MiB sent, "
          f"pause {status['pause']}s")
    runs_only_on(b, a, "vm-1")  # the guest's RAM checks out there: the deltas rebuilt every page


def test_xbzrle_flag_maps_to_qemu_and_refuses_what_qemu_would_ignore():
    flags = MigrateFlags(xbzrle_cache="512M")
    caps = {c["capability"]: c["state"] for c in flags.qemu_capabilities()}
    assert caps["xbzrle"] and not caps["multifd"] and flags.threads == 1
    assert flags.qemu_parameters()["xbzrle-cache-size"] == 512 * MIB
    assert MigrateFlags.model_validate(flags.model_dump(mode="json")) == flags  # the wire form round-trips
    default = MigrateFlags()
    assert {c["capability"]: c["state"] for c in default.qemu_capabilities()}["xbzrle"] is False
    assert "xbzrle-cache-size" not in default.qemu_parameters() and default.threads == 4  # the spec's default
    for bad, words in (({"threads": 4}, "one channel"), ({"compress": True}, "exclude each other"),
                       ({"xbzrle_cache": "100M"}, "power of two")):
        with pytest.raises(ValidationError, match=words):
            MigrateFlags(**{"xbzrle_cache": "64M", **bad})
