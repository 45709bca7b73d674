"""Every automatic rollback of the spec: the guest ends running on exactly one host, RAM intact."""

from __future__ import annotations

import time

from ..agents import mutual_trust
from .helpers import runs_only_on, start_guest, wait_outcome
from .proxy import TapProxy

MARKER = b"QVGUEST-MARKER!!"
# A guest that dirties faster than 4 MiB/s can carry: it never converges unaided.
HEAVY = {"memory": "128M", "working_set": "48M"}
SLOW = {"bandwidth": "4M", "auto_converge": False, "max_downtime": "10ms", "threads": 1}


def wait_phase(agent, name: str, at_least: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.api("GET", f"vms/{name}/migrate")["phase"] >= at_least:
            return
        time.sleep(0.1)
    raise AssertionError(f"migration never reached phase {at_least}")


def start_slow_migration(a, dest: str) -> None:
    """A heavy guest on `a`, migrating to `dest` too slowly to converge, past setup."""
    start_guest(a, **HEAVY)
    a.api("POST", "vms/vm-1/migrate", {"dest": dest, "flags": SLOW})
    wait_phase(a, "vm-1", 2)


def assert_rolled_back(a, b, status: dict) -> None:
    assert status["state"] in ("FAILED", "CANCELLED"), status
    assert b.vm_names() == []  # nothing left on the destination, as soon as the outcome shows
    runs_only_on(a, b, "vm-1")


def test_cancel_keeps_guest_on_source(pair):
    a, b = pair
    start_slow_migration(a, b.migration)
    a.api("POST", "vms/vm-1/migrate/cancel", {})
    assert_rolled_back(a, b, wait_outcome(a, "vm-1"))


def test_timeout_rolls_back_without_auto_converge(pair):
    a, b = pair
    start_guest(a, **HEAVY)
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {**SLOW, "timeout": 4}})
    status = wait_outcome(a, "vm-1")
    assert "Timeout exceeded" in status["error"]
    assert status["iteration"] >= 1
    assert_rolled_back(a, b, status)


def test_max_iterations_forces_stop_and_copy(pair):
    a, b = pair
    start_guest(a, **HEAVY)
    flags = {"auto_converge": False, "max_downtime": "1ms", "max_iterations": 3, "bandwidth": "64M"}
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": flags})
    status = wait_outcome(a, "vm-1")
    assert status["state"] == "COMPLETED", status
    assert status["forced_stop_and_copy"] and status["iteration"] >= 3
    runs_only_on(b, a, "vm-1")


def test_destination_agent_killed_mid_transfer(pair):
    a, b = pair
    start_slow_migration(a, b.migration)
    b.kill()
    status = wait_outcome(a, "vm-1")
    b.start()  # the restarted agent cleans up what the dead one left
    assert_rolled_back(a, b, status)


def test_link_cut_rolls_back_and_no_plaintext_on_the_wire(make_agent):
    a, b = make_agent("hv-a"), make_agent("hv-b")
    mutual_trust(a, b)
    start_guest(a, **HEAVY)
    host, port = b.migration.split(":")
    tap = TapProxy(a.address, (host, int(port)))
    a.api("POST", "vms/vm-1/migrate", {"dest": tap.address, "flags": SLOW})
    wait_phase(a, "vm-1", 2)
    time.sleep(1.5)
    assert len(tap.captured) > 2 << 20  # guest memory did cross…
    assert MARKER not in tap.captured  # …but never in the clear
    tap.cut()
    assert_rolled_back(a, b, wait_outcome(a, "vm-1"))


def test_insecure_is_refused_by_pqc_required_destination(pair):
    a, b = pair
    start_guest(a)
    from ..agents import ApiError

    try:
        a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {"insecure": True}})
        raise AssertionError("plaintext migration was accepted")
    except ApiError as err:
        assert "pqc_required" in err.cause
    runs_only_on(a, b, "vm-1")



def test_destination_qemu_killed_mid_transfer(pair):
    import os
    import signal

    a, b = pair
    start_slow_migration(a, b.migration)
    os.kill(b.vm("vm-1")["pid"], signal.SIGKILL)
    assert_rolled_back(a, b, wait_outcome(a, "vm-1"))

