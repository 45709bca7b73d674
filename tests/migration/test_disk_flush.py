"""The guest's unwritten disk data is flushed during pre-copy, not in the pause, and an
offline copy's as it arrives (migration/flush.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from qvplan.migration.flush import DiskFlusher
from qvplan.migration.live import downtime
from qvplan.migration.live.downtime import MARGIN, CommitCosts, DowntimeBudget
from qvplan.migration.status import MigrationStatus

from ..agents import guest_vm, mutual_trust
from .helpers import wait_outcome
from .test_downtime import EXACT, MAX, RecordingQMP, _info

MiB = 1 << 20


def _write_unsynced(path: Path, size: int) -> None:
    """`size` bytes into `path` in place, left in the host's page cache (no sync)."""
    block = bytes(range(256)) * (MiB // 256)
    with open(path, "r+b") as f:
        for _ in range(size // MiB):
            f.write(block)


def _resident(path: Path) -> int:
    """Bytes of `path` in the page cache, as util-linux's fincore counts them (mincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def test_rounds_write_the_image_back_and_the_first_drops_its_pages(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * (64 * MiB))
    _write_unsynced(image, 64 * MiB)
    assert _resident(image) >= 32 * MiB  # the writes sit in the cache
    kept = DiskFlusher([image])  # without `drop`: written back, its pages kept
    try:
        kept.first()
        assert _resident(image) >= 32 * MiB
    finally:
        kept.close()
    _write_unsynced(image, 64 * MiB)
    flusher = DiskFlusher([image, tmp_path / "missing.raw"], drop=True)  # one it cannot open is skipped
    try:
        assert flusher.first() > 0
        assert _resident(image) < MiB  # written back (dirty pages cannot be dropped) and dropped
        assert flusher.expected() == 0.0  # the backlog is written: the stop will not flush it
        _write_unsynced(image, 32 * MiB)
        flusher.start()
        time.sleep(0.3)  # a few rounds on its thread: they write back, and keep the cache
        assert _resident(image) >= 16 * MiB
        assert flusher.expected() < 0.5
    finally:
        flusher.close()
    flusher.close()  # twice is harmless


def _dirty() -> int:
    """The host's dirty page-cache bytes (/proc/meminfo), the kernel's own count."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("Dirty:"))


def test_rounds_that_do_not_wait_still_write_the_image_back(tmp_path: Path) -> None:
    """An offline destination's rounds (wait=False) start the write-back and return at once; the
    kernel's dirty count falls well before its own write-back would start (30 s by default)."""
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * (64 * MiB))
    with open(image, "rb") as f:
        os.fsync(f.fileno())
    before = _dirty()
    _write_unsynced(image, 64 * MiB)
    assert _dirty() >= before + 48 * MiB
    flusher = DiskFlusher([image], wait=False)
    try:
        assert flusher.first() < 0.05  # no waiting for the device
        deadline = time.monotonic() + 5
        while _dirty() > before + 16 * MiB and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _dirty() <= before + 16 * MiB
    finally:
        flusher.close()


async def test_the_budget_keeps_the_expected_flush_back_and_does_not_learn_it(monkeypatch):
    monkeypatch.setattr(downtime.time, "monotonic", lambda: 100.0)
    costs = CommitCosts(prior=0.05)
    flush = [0.08]
    b = DowntimeBudget(MAX, 30, lambda: 0, lambda: 0, costs, flush=lambda: flush[0], overruns=EXACT())
    qmp = RecordingQMP()
    await b.update(qmp, _info())
    kept = MAX * (1 - MARGIN) - 0.05 - 0.08  # margin, prior commit cost, the flush
    assert qmp.calls[-1] == ("migrate-set-parameters", {"downtime-limit": round(kept * 1000)})
    # The pause held the 80 ms flush (QEMU's downtime leaves it out) and 6 ms after QEMU's
    # downtime of 100: the commit cost is the 6 ms.
    b.learn(pause=0.08 + 0.1 + 0.006, qemu_downtime=0.1)
    assert costs.overhead() == pytest.approx(0.006)


def test_migrate_status_names_a_disk_write_back_worth_noticing() -> None:
    status = MigrationStatus("vm-1", "hv-b:9410", "x", 30)
    assert "Disk Write-back" not in status.render()  # nothing to write back: no line
    status.disk_writeback = 0.004
    assert "Disk Write-back" not in status.render()
    status.disk_writeback = 0.12
    assert "Disk Write-back: ~120 ms per round, kept out of the pause" in status.render()
    assert status.as_dict()["disk_writeback"] == 0.12


def test_unwritten_disk_data_stays_out_of_the_pause(make_agent, tmp_path: Path) -> None:
    """A guest whose disk holds 600 MiB the host has not written back: the stop's flush (QEMU's
    bdrv_flush_all) and the destination's taking over the image's cached pages used to be paid
    inside the pause (334 ms at --max-downtime 300 for 800 MiB). The pause is QEMU's own STOP →
    RESUME; the cache is read by fincore, not the agents."""
    shared = tmp_path / "shared"
    shared.mkdir()
    image = shared / "data.raw"
    subprocess.run(["truncate", "-s", "768M", str(image)], check=True)
    a, b = make_agent("hv-a", start=False), make_agent("hv-b", start=False)
    for agent in (a, b):
        agent.pools["shared"] = str(shared)  # one path both hosts reach: shared storage
        agent.start()
    mutual_trust(a, b)
    a.api("POST", "vms", guest_vm("vm-1", memory="64M", working_set="8M",
                                  disks=[{"pool": "shared", "file": "data.raw", "format": "raw"}]))
    a.api("POST", "vms/vm-1/start", {})
    a.wait_markers("vm-1", 0)
    _write_unsynced(image, 600 * MiB)  # a part of the disk the test guest never touches
    assert _resident(image) >= 300 * MiB
    max_downtime = 0.15
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {"max_downtime": max_downtime}})
    status = wait_outcome(a, "vm-1", poll=0.05)
    assert status["state"] == "COMPLETED", status
    assert status["pause"] <= max_downtime, status
    assert status["disk_writeback"] < max_downtime  # what the stop was expected to flush, from the rounds
    assert _resident(image) < 300 * MiB
    b.wait_markers("vm-1", b.vm("vm-1")["serial_markers"])  # the guest runs there
