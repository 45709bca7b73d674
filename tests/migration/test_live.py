"""End-to-end live migration between two real agents with real QEMU test guests."""

from __future__ import annotations

import time

import pytest

from ..agents import ApiError, guest_vm, mutual_trust


def wait_outcome(agent, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = agent.api("GET", f"vms/{name}/migrate")
        if status["state"] != "MIGRATING":
            return status
        time.sleep(0.2)
    raise AssertionError(f"migration of {name} did not end")


def migrate(src, dst, name: str, **flags) -> dict:
    src.api("POST", f"vms/{name}/migrate", {"dest": dst.migration, "flags": flags})
    return wait_outcome(src, name)


def runs_only_on(host, other, name: str) -> None:
    """The guest runs on `host`, markers advancing, RAM intact, and nowhere else."""
    assert host.vm(name)["state"] == "running"
    assert name not in other.vm_names() or other.vm(name)["state"] != "running"
    markers = host.vm(name)["serial_markers"]
    host.wait_markers(name, markers)
    report = host.api("POST", f"vms/{name}/verify-ram")
    assert report["ok"], report


@pytest.fixture
def pair(make_agent):
    a, b = make_agent("hv-a"), make_agent("hv-b")
    mutual_trust(a, b)
    return a, b


def start_guest(agent, name="vm-1", **kw) -> None:
    agent.api("POST", "vms", guest_vm(name, **kw))
    agent.api("POST", f"vms/{name}/start", {})
    agent.wait_markers(name, 0)


def test_live_migration_moves_a_running_guest(pair):
    a, b = pair
    start_guest(a)
    status = migrate(a, b, "vm-1")
    assert status["state"] == "COMPLETED", status
    assert status["percent"] == 100
    assert status["pause"] is not None and status["pause"] < 2
    assert "vm-1" not in a.vm_names()
    runs_only_on(b, a, "vm-1")
    # and back again, with the other KEM and a single stream
    status = migrate(b, a, "vm-1", pqc_kem="ML-KEM-1024", threads=1)
    assert status["state"] == "COMPLETED", status
    runs_only_on(a, b, "vm-1")


def test_untrusted_source_is_refused_and_vm_untouched(make_agent):
    a, b = make_agent("hv-a"), make_agent("hv-b")
    a.trust(b)  # b does not trust a
    start_guest(a)
    with pytest.raises(ApiError) as err:
        a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {}})
    assert "untrusted host" in err.value.body["error"]
    runs_only_on(a, b, "vm-1")
    assert b.vm_names() == []


def test_destination_out_of_resources_is_refused_before_start(make_agent):
    a, b = make_agent("hv-a"), make_agent("hv-b", memory="64M")
    mutual_trust(a, b)
    start_guest(a)
    with pytest.raises(ApiError) as err:
        a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {}})
    assert "Destination out of resources" in err.value.body["error"]
    runs_only_on(a, b, "vm-1")
    assert b.vm_names() == []
