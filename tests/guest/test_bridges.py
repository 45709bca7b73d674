"""Bridged NICs at the edges: a bridge missing on the destination (plan and agent refuse before
anything moves), and the destination's tap gone after a rollback. The toy test guest is enough
here (no Linux boot): what is checked is the host side."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qvplan.remote import AgentError
from qvplan.vmm.taps import tap_name

from .conftest import Hosts

pytestmark = pytest.mark.qemu


def toy(name: str, bridge: str, memory: str = "128M", working_set: str = "16M") -> dict:
    return {"name": name, "memory": memory, "nic": {"type": "bridge", "bridge": bridge},
            "guest": {"test": {"working_set": working_set, "marker_every": 4}}}


def test_missing_bridge_is_refused_by_plan_and_agent(hosts: Hosts, tmp_path: Path) -> None:
    lab = hosts.lab
    ns_a = lab.host("hv-a").netns
    subprocess.run(["ip", "-n", ns_a, "link", "add", "vmbr9", "type", "bridge"], check=True)
    try:
        hosts.api("hv-a", "POST", "vms", toy("br-1", "vmbr9"))
        hosts.api("hv-a", "POST", "vms/br-1/start", {})
        plan = tmp_path / "plan.yaml"
        plan.write_text(f"inventory: {lab.inventory_path}\ntrust: {{exchange: true}}\nvms: {{br-1: hv-b}}\n")
        done = subprocess.run([str(Path(sys.executable).parent / "qvplan"), "plan", str(plan)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0
        assert "network not found on destination: bridge vmbr9" in done.stdout + done.stderr, done.stdout
        with pytest.raises(AgentError) as refused:
            hosts.api("hv-a", "POST", "vms/br-1/migrate", {"dest": lab.host("hv-b").migration, "flags": {}})
        assert "Migration rejected: network not found on destination: bridge vmbr9" in str(refused.value)
        status = hosts.api("hv-a", "GET", "vms/br-1/migrate")
        assert status["state"] == "FAILED" and status["code"] == "network-not-found"
        # Nothing moved: the VM runs on hv-a, hv-b never heard of it and has no tap for it.
        assert hosts.api("hv-a", "GET", "vms/br-1")["state"] == "running"
        assert "br-1" not in [v["name"] for v in hosts.api("hv-b", "GET", "vms")]
        assert tap_name("br-1", 0) not in hosts.links("hv-b")
        hosts.api("hv-a", "POST", "vms/br-1/stop", {})
        assert tap_name("br-1", 0) not in hosts.links("hv-a")
    finally:
        subprocess.run(["ip", "-n", ns_a, "link", "del", "vmbr9"], check=False)


def test_rollback_removes_the_destination_tap(hosts: Hosts) -> None:
    tap = tap_name("br-2", 0)
    hosts.api("hv-a", "POST", "vms", toy("br-2", "vmbr0", memory="256M", working_set="128M"))
    hosts.api("hv-a", "POST", "vms/br-2/start", {})
    hosts.api("hv-a", "POST", "vms/br-2/migrate",
              {"dest": hosts.lab.host("hv-b").migration, "flags": {"bandwidth": "8M"}})
    deadline = time.monotonic() + 30
    while tap not in hosts.links("hv-b"):  # the destination's QEMU -incoming is up, with its tap
        assert time.monotonic() < deadline, "no tap on the destination"
        time.sleep(0.1)
    cancelled = hosts.api("hv-a", "POST", "vms/br-2/migrate/cancel", {})
    assert cancelled["state"] == "CANCELLED", cancelled
    assert tap not in hosts.links("hv-b") and tap in hosts.links("hv-a")
    assert hosts.api("hv-a", "GET", "vms/br-2")["state"] == "running"
    hosts.api("hv-a", "POST", "vms/br-2/stop", {})
    assert tap not in hosts.links("hv-a")


def test_tap_goes_with_a_killed_qemu_and_a_missing_bridge_fails_the_start(hosts: Hosts) -> None:
    tap = tap_name("br-3", 0)
    hosts.api("hv-a", "POST", "vms", toy("br-3", "vmbr0"))
    pid = hosts.api("hv-a", "POST", "vms/br-3/start", {})["pid"]
    assert tap in hosts.links("hv-a")
    os.kill(pid, signal.SIGKILL)  # not the agent's doing: the kernel drops QEMU's tap
    deadline = time.monotonic() + 5
    while tap in hosts.links("hv-a"):
        assert time.monotonic() < deadline, "tap outlived its QEMU"
        time.sleep(0.1)
    hosts.api("hv-a", "DELETE", "vms/br-3")

    hosts.api("hv-a", "POST", "vms", toy("br-4", "vmbr7"))
    with pytest.raises(AgentError) as failed:
        hosts.api("hv-a", "POST", "vms/br-4/start", {})
    assert "cannot attach tap" in str(failed.value) and "bridge vmbr7" in str(failed.value)
    assert hosts.api("hv-a", "GET", "vms/br-4")["state"] == "defined"
    assert tap_name("br-4", 0) not in hosts.links("hv-a")
    hosts.api("hv-a", "DELETE", "vms/br-4")
