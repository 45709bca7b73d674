"""QEMU under TCG before 9.0 loses guest writes during pre-copy (live/ramcheck.py): the source
compares the loaded copy's RAM with its own and never commits a stale copy.

The damage is real and QEMU's own: a source QEMU that completed a migration, was rolled back and
resumed, loses writes in its next migration most of the time (3 of 4 measured, QEMU to QEMU with
no qvplan in the path). The invariant is checked from outside the agents: /proc, serial markers
and verify-ram on whichever host runs the guest.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from qvplan.migration.digest import digest_key
from qvplan.migration.live import ramcheck
from qvplan.vmm import QemuProcess, VMSpec
from qvplan.vmm.debug import write_guest_memory

from ..agents import mutual_trust
from .helpers import migrate, start_guest
from .invariant import exactly_one, journal, lost_session, release_point, wait_point
from .test_exactly_once import POINT

MIB = 1 << 20
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")
QEMU_72 = Path(__file__).resolve().parents[2] / "guest/build/qemu-7.2/bin"  # Debian 12's QEMU, unpacked by make


@pytest.fixture
def qemu_72(monkeypatch: pytest.MonkeyPatch) -> Path:
    """QEMU 7.2 first on the PATH of this test and the agents it starts: a QEMU with the bug."""
    assert (QEMU_72 / "qemu-system-x86_64").exists(), "no QEMU 7.2 unpacked: run make setup"
    monkeypatch.setenv("PATH", f"{QEMU_72}:{os.environ['PATH']}")
    return QEMU_72


def test_ram_ranges_leave_the_device_windows_out() -> None:
    assert ramcheck.ram_ranges(64 * MIB) == [(0, 0xA0000), (MIB, 63 * MIB)]
    assert ramcheck.ram_ranges(3 * 1024 * MIB) == [(0, 0xA0000), (MIB, 3 * 1024 * MIB - MIB)]
    eight = 8 * 1024 * MIB  # more than fits below 4 GiB: split at 3 GiB, the rest above 4 GiB
    assert ramcheck.ram_ranges(eight) == [(0, 0xA0000), (MIB, 0xC0000000 - MIB), (1 << 32, eight - 0xC0000000)]


@needs_qemu
async def test_only_tcg_before_qemu_9_is_affected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = VMSpec.load({"name": "rc", "memory": "64M", "guest": {"test": {"working_set": "4M"}}})
    for path, expected in ((os.environ["PATH"], False), (f"{QEMU_72}:{os.environ['PATH']}", True)):
        monkeypatch.setenv("PATH", path)
        proc = QemuProcess(spec, run_dir=tmp_path / str(expected), accel="tcg")
        try:
            await proc.start()
            assert await ramcheck.affected(proc.qmp) is expected  # the installed QEMU (make setup) is 9.0 or later
        finally:
            await proc.stop(graceful=False)


@needs_qemu
async def test_digest_tells_a_loaded_copy_from_a_damaged_one(tmp_path: Path, qemu_72: Path) -> None:
    spec = VMSpec.load({"name": "rc", "memory": "64M", "guest": {"test": {"working_set": "4M"}}})
    source = QemuProcess(spec, run_dir=tmp_path / "src", accel="tcg")
    dest = QemuProcess(spec, run_dir=tmp_path / "dst", accel="tcg")
    try:
        await source.start()
        await source.wait_markers(0)
        assert await ramcheck.affected(source.qmp)  # TCG, QEMU 7.2
        await dest.start(incoming="defer", paused=True)
        sock = tmp_path / "dst" / "in.sock"
        await dest.execute("migrate-incoming", {"uri": f"unix:{sock}"})
        await source.execute("stop")  # a paused copy: no dirty tracking involved
        await source.execute("migrate", {"uri": f"unix:{sock}"})
        for _ in range(600):
            if (await dest.execute("query-migrate")).get("status") == "completed":
                break
            await asyncio.sleep(0.05)
        key = digest_key()
        src_ram = await ramcheck.locate(source, spec.memory_bytes)
        dst_ram = await ramcheck.locate(dest, spec.memory_bytes)
        assert all(part.host is not None for part in dst_ram.ranges)  # read straight from QEMU's memory
        mine, theirs = await asyncio.gather(ramcheck.digest(src_ram, key), ramcheck.digest(dst_ram, key))
        assert mine == theirs
        # the two ways to read RAM agree (process_vm_readv, and QEMU's pmemsave as the fallback)
        by_dump = ramcheck.GuestRam(dest, tuple(replace(part, host=None) for part in dst_ram.ranges))
        assert await ramcheck.digest(by_dump, key) == mine
        assert await ramcheck.digest(dst_ram, digest_key()) != mine  # the key is the session's
        await write_guest_memory(dest, 0x2345678, b"\x42")  # one byte of one page, far from the guest's
        assert await ramcheck.digest(dst_ram, key) != mine
        assert not list((tmp_path / "dst").glob("ramcheck-*"))  # no dump left behind
    finally:
        for proc in (source, dest):
            await proc.stop(graceful=False)


def settle_if_lost(a, b) -> None:
    """The first migration's end. Its destination QEMU was killed just before the commit: when the
    destination took the commit before noticing, the session is `lost` there and the VM waits,
    paused here, for the operator (docs/exactly-once.md), who discards the lost copy there; the
    source, asking, then resumes it here."""
    deadline = time.monotonic() + 120
    while (status := a.api("GET", "vms/vm-1/migrate"))["state"] == "MIGRATING":
        assert time.monotonic() < deadline, status
        if status.get("doubt") and lost_session(b, "vm-1"):
            b.api("POST", "vms/vm-1/migrate/settle", {"decision": "discard-here"})
        time.sleep(0.2)
    assert status["state"] == "FAILED", status


@needs_qemu
@pytest.mark.parametrize("qemu", ["7.2", "installed"])
def test_a_migration_after_a_rolled_back_one_commits_only_intact_ram(make_agent, qemu: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """On QEMU 7.2 the RAM check guards the commit; the installed QEMU (9.0 or later, make setup)
    has no bug to guard against: the same migrations land intact with no check."""
    if qemu == "7.2":
        assert (QEMU_72 / "qemu-system-x86_64").exists(), "no QEMU 7.2 unpacked: run make setup"
        monkeypatch.setenv("PATH", f"{QEMU_72}:{os.environ['PATH']}")
    a, b = make_agent("hv-a", start=False), make_agent("hv-b")
    a.env = {POINT: "source-before-commit"}
    a.start()
    mutual_trust(a, b)
    start_guest(a, memory="64M", working_set="4M")
    # 1. A migration that completed in QEMU, then rolled back: the destination QEMU dies before
    #    the commit, the source resumes its copy.
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {"threads": 1}})
    wait_point(a, "source-before-commit")
    os.kill(b.vm("vm-1")["pid"], signal.SIGKILL)
    release_point(a, "source-before-commit")
    settle_if_lost(a, b)
    exactly_one(a, b)
    # 2. Again from that QEMU, with many passes (each a chance to lose writes): the outcome is
    #    either the guest there with its RAM intact, or the guest here, never a stale copy.
    a.stop()
    a.env = {}
    a.start()
    status = migrate(a, b, "vm-1", threads=1, auto_converge=False, max_downtime="1ms", max_iterations=6)
    if qemu == "installed":
        assert status["state"] == "COMPLETED" and status["ram_check"] is None, status
        exactly_one(b, a)  # verify-ram on the destination: no write was lost
        return
    assert status["ram_check"] is not None and status["ram_check"] > 0  # the comparison ran
    if status["state"] == "COMPLETED":
        exactly_one(b, a)
    else:
        assert (status["state"], status["code"]) == ("FAILED", "ram-mismatch"), status
        exactly_one(a, b)
        assert journal(a)[-1]["state"] == "rolled-back" and journal(b)[-1]["state"] == "discarded"
