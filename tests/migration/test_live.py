"""End-to-end live migration between two real agents with real QEMU test guests."""

from __future__ import annotations

import pytest

from ..agents import ApiError, mutual_trust
from .helpers import migrate, runs_only_on, start_guest


def test_live_migration_moves_a_running_guest(pair):
    a, b = pair
    start_guest(a)
    status = migrate(a, b, "vm-1")
    assert status["state"] == "COMPLETED", status
    assert status["percent"] == 100
    assert status["pause"] is not None and status["pause"] < 2
    assert "vm-1" not in a.vm_names()
    runs_only_on(b, a, "vm-1")
    # and back again through the CLI (it follows the agent's events), with the other KEM and one stream
    run = b.cli("vm", "migrate", "vm-1", "--dest", a.migration, "--pqc-kem", "ML-KEM-1024", "--threads", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"vm-1 → {a.migration}: [phase] phase " in run.stdout, run.stdout  # plain lines, no TTY
    assert "State:" in run.stdout and "COMPLETED" in run.stdout and "ML-KEM-1024" in run.stdout, run.stdout
    status = b.api("GET", "vms/vm-1/migrate")
    assert status["state"] == "COMPLETED" and status["encryption"].startswith("ML-KEM-1024"), status
    runs_only_on(a, b, "vm-1")


def test_untrusted_source_is_refused_and_vm_untouched(make_agent):
    a, b = make_agent("hv-a"), make_agent("hv-b")
    a.trust(b)  # b does not trust a
    start_guest(a)
    with pytest.raises(ApiError) as err:
        a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {}})
    assert "untrusted host" in err.value.cause
    runs_only_on(a, b, "vm-1")
    assert b.vm_names() == []


def test_destination_out_of_resources_is_refused_before_start(make_agent):
    a, b = make_agent("hv-a"), make_agent("hv-b", memory="64M")
    mutual_trust(a, b)
    start_guest(a)
    with pytest.raises(ApiError) as err:
        a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {}})
    assert "Destination out of resources" in err.value.cause
    runs_only_on(a, b, "vm-1")
    assert b.vm_names() == []
