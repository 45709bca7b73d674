"""Shared steps of the migration tests."""

from __future__ import annotations

import time

from ..agents import guest_vm


def wait_outcome(agent, name: str, timeout: float = 120, poll: float = 0.2) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = agent.api("GET", f"vms/{name}/migrate")
        if status["state"] != "MIGRATING":
            return status
        time.sleep(poll)
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


def start_guest(agent, name="vm-1", **kw) -> None:
    agent.api("POST", "vms", guest_vm(name, **kw))
    agent.api("POST", f"vms/{name}/start", {})
    agent.wait_markers(name, 0)
