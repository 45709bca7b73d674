"""A real Linux guest with a bridged NIC moves A → B → A live while a client keeps talking to it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from qvplan.lab import vmnet
from qvplan.lab.linuxguest import Capture, Client, address_of, guest_mac, linux_vm, wait_serial
from qvplan.vmm.taps import tap_name

from .conftest import Hosts

pytestmark = pytest.mark.qemu


def learned(ports: Callable[[], list[str]], want: str | None = None, timeout: float = 3.0) -> list[str]:
    """The ports a bridge learned the MAC on, once it has (frames cross the bridges asynchronously)."""
    deadline = time.monotonic() + timeout
    while (got := ports()) == [] or (want is not None and got != [want]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return got


def test_client_keeps_its_connection_through_two_moves(hosts: Hosts, tmp_path: Path) -> None:
    lab = hosts.lab
    vm = linux_vm(lab, "lx-1", 1)
    hosts.api("hv-a", "POST", "vms", vm)
    hosts.api("hv-a", "POST", "vms/lx-1/start", {})
    a, b = lab.host("hv-a"), lab.host("hv-b")
    wait_serial(a, "lx-1", "QV-READY")
    tap, mac = tap_name("lx-1", 0), guest_mac("lx-1")
    assert tap in hosts.links("hv-a") and tap not in hosts.links("hv-b")

    client = Client(lab, address_of(vm))
    capture = Capture(lab, mac, tmp_path / "announce.txt")
    try:
        there = hosts.migrate("lx-1", "hv-a", "hv-b", threads=1)
        assert there["state"] == "COMPLETED", there
        # The source's tap went with its QEMU; the bridges learned the MAC on its new port.
        assert tap not in hosts.links("hv-a") and tap in hosts.links("hv-b")
        assert learned(lambda: vmnet.fdb(b, vmnet.HOST_BRIDGE, mac), tap) == [tap]
        assert learned(lambda: vmnet.fdb(None, lab.spec.vm_segment, mac), b.vm_uplink) == [b.vm_uplink]
        back = hosts.migrate("lx-1", "hv-b", "hv-a", threads=4)
        assert back["state"] == "COMPLETED", back
        assert tap not in hosts.links("hv-b") and tap in hosts.links("hv-a")
        assert learned(lambda: vmnet.fdb(None, lab.spec.vm_segment, mac), a.vm_uplink) == [a.vm_uplink]
        time.sleep(1.0)  # probes keep flowing after the moves
    finally:
        seen = client.stop()
        frames = capture.stop()
    udp, tcp = seen["udp"], seen["tcp"]
    assert tcp["survived"] and tcp["intact"] and tcp["echoed_bytes"] == tcp["sent_bytes"] > 0, tcp["errors"]
    # UDP is not retransmitted: what the guest could not answer while it moved is lost, at most
    # 1.5 s worth of 1 ms probes over the two moves (a loaded 2-core TCG box), and answers resumed.
    assert tcp["errors"] == [] and udp["sent"] - udp["answered"] < 1500, seen
    assert udp["gap_to"] is not None and udp["longest_gap_ms"] < 1500, seen
    # Each move announced the guest: RARP frames (QEMU) and ARP (the guest's virtio announce).
    rarp = [f for f in frames if "Reverse Request" in f or "rarp" in f.lower()]
    assert len(rarp) >= 2, frames
    print(f"\nclient: udp longest gap {udp['longest_gap_ms']} ms ({udp['answered']}/{udp['sent']}), "
          f"tcp longest gap {tcp['longest_gap_ms']} ms; pauses {there.get('pause')} / {back.get('pause')} s")
    hosts.api("hv-a", "POST", "vms/lx-1/stop", {})
    assert tap not in hosts.links("hv-a")
