"""Bounded decompression: a chunk expands to at most its declared length, or the migration ends
with one line (reason code `bad-chunk`) and nothing lands. Real zstd bombs: one fed to the real
DiskSink, one sent by a tampered source agent through a real offline migration."""

from __future__ import annotations

import hashlib
import resource
import time
from pathlib import Path

import pytest
import zstandard

from qvplan.migration.offline.disks import CHUNK, HEADER, RAW, ZSTD, DiskSink, WireError

from ..agents import guest_vm, mutual_trust
from .helpers import migrate

MIB = 1 << 20
HOOK = Path(__file__).parent / "bomb_hook"


def bomb(expands_to: int) -> bytes:
    enc = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(4 * MIB)
    return b"".join(enc.compress(zeros) for _ in range(expands_to // len(zeros))) + \
        enc.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


def peak_rss_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def test_a_zstd_bomb_is_refused_without_expanding(tmp_path: Path) -> None:
    payload = bomb(512 * MIB)
    assert len(payload) < 64 * 1024  # ~32,000:1
    sink = DiskSink(tmp_path / "disk.raw", 8 * MIB, key=bytes(32))
    before = peak_rss_mib()
    with pytest.raises(WireError) as err:
        sink.write(HEADER.pack(ZSTD, 0, CHUNK) + payload)
    assert peak_rss_mib() - before < 32  # the process never held the 512 MiB
    assert err.value.reason_code == "bad-chunk"
    assert "bad chunk" in str(err.value) and "\n" not in str(err.value)
    sink.close()


@pytest.mark.parametrize("kind", [RAW, ZSTD])
def test_a_chunk_declaring_more_than_a_chunk_is_refused_before_any_work(tmp_path: Path, kind: int) -> None:
    sink = DiskSink(tmp_path / "disk.raw", 64 * MIB, key=bytes(32))
    with pytest.raises(WireError) as err:
        sink.write(HEADER.pack(kind, 0, 4 * MIB) + bomb(4 * MIB))
    assert err.value.reason_code == "bad-chunk"
    sink.close()
    assert (tmp_path / "disk.raw").stat().st_blocks == 0  # nothing written


def vm_hwm_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


def test_tampered_source_sending_a_bomb_lands_nothing(make_agent) -> None:
    a = make_agent("hv-a", start=False)
    a.env["PYTHONPATH"] = str(HOOK)  # this source agent's DiskSource sends a bomb as its first chunk
    a.start()
    b = make_agent("hv-b")
    mutual_trust(a, b)
    disk = a.root / "images" / "vm-1.raw"
    disk.parent.mkdir(parents=True, exist_ok=True)
    disk.write_bytes(b"qvplan" * (MIB // 2))
    original = hashlib.sha256(disk.read_bytes()).hexdigest()
    a.api("POST", "vms", guest_vm("vm-1", memory="64M",
                                  disks=[{"pool": "default", "file": "vm-1.raw", "format": "raw"}]))
    assert b.proc is not None
    before = vm_hwm_mib(b.proc.pid)
    status = migrate(a, b, "vm-1", offline=True, compress=True)
    assert status["state"] == "FAILED", status
    assert "bad chunk" in status["error"] and "\n" not in status["error"], status
    assert vm_hwm_mib(b.proc.pid) - before < 64  # the destination never expanded the 256 MiB
    deadline = time.monotonic() + 15
    while (left := [*(b.root / "images").glob("*"), *(b.state / "vms").glob("*")]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [] and b.vm_names() == []
    assert a.vm("vm-1")["state"] == "defined"
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == original
