"""The Linux guest's own files through a live + storage migration (while it writes) and an
offline migration: the guest verifies them itself, and e2fsck finds the copied image clean."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from qvplan.lab.linuxguest import address_of, control, linux_vm, serial_text, wait_serial

from .conftest import Hosts

pytestmark = pytest.mark.qemu
DISK = "lxw-1.raw"


def wait_state(hosts: Hosts, host: str, name: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while hosts.api(host, "GET", f"vms/{name}")["state"] != state:
        assert time.monotonic() < deadline, f"{name} on {host} never became {state}"
        time.sleep(0.2)


def files_ok(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"QV-FILES-OK n=(\d+)", text)]


def test_files_survive_storage_and_offline_migration(hosts: Hosts) -> None:
    lab = hosts.lab
    a, b = lab.host("hv-a"), lab.host("hv-b")
    image = a.file("state") / "images" / DISK
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    vm = linux_vm(lab, "lx-w", 2, writer=True, files=120,
                  disk={"pool": "default", "file": DISK, "format": "raw"})
    addr = address_of(vm)
    hosts.api("hv-a", "POST", "vms", vm)
    hosts.api("hv-a", "POST", "vms/lx-w/start", {})
    wait_serial(a, "lx-w", "QV-READY")
    time.sleep(2)  # the writer is under way

    # Live + storage: the writer keeps writing during the move; the source copy goes afterwards.
    moved = hosts.migrate("lx-w", "hv-a", "hv-b", storage_migrate=True, delete_source_disks=True)
    assert moved["state"] == "COMPLETED", moved
    answer = control(lab, addr, "verify")
    assert answer.startswith("QV-FILES-OK"), answer
    first = int(answer.split("n=")[1])
    time.sleep(1)
    again = control(lab, addr, "verify")  # still writing on the new disk, still good
    assert again.startswith("QV-FILES-OK") and int(again.split("n=")[1]) > first > 0, (answer, again)
    assert control(lab, addr, "halt").startswith("QV-HALTED")
    wait_state(hosts, "hv-b", "lx-w", "defined")
    copy = b.file("state") / "images" / DISK
    fsck = subprocess.run(["e2fsck", "-n", "-f", str(copy)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    written = max(files_ok(serial_text(b, "lx-w")))

    # Offline back to hv-a: it boots there and checks its files at boot.
    back = hosts.migrate("lx-w", "hv-b", "hv-a", offline=True)
    assert back["state"] == "COMPLETED", back
    hosts.api("hv-a", "POST", "vms/lx-w/start", {})
    booted = wait_serial(a, "lx-w", r"QV-FILES-(OK n=\d+|BAD.*)")
    assert booted.group(0).startswith("QV-FILES-OK") and int(booted.group(0).split("n=")[1]) >= written
    assert control(lab, addr, "halt").startswith("QV-HALTED")
    wait_state(hosts, "hv-a", "lx-w", "defined")
