"""Offline migration: a stopped VM's definition and disks over the PQC channel, between real agents.

The wire tests at the bottom are pure (no agents): corruption cannot be injected end to end, because
the PQC record layer (AES-256-GCM per record) rejects any altered byte before it reaches the disk
code — so the disk digest check is tested on the records themselves.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qvplan.migration.offline import direct as direct_module
from qvplan.migration.offline import recovery
from qvplan.migration.offline.destination import check_room
from qvplan.migration.offline.direct import DirectWriter
from qvplan.migration.offline.disks import (
    HEADER,
    RAW,
    ChecksumMismatch,
    DiskSink,
    DiskSource,
    WireError,
    data_extents,
)

from ..agents import ApiError, guest_vm, mutual_trust
from .helpers import migrate, start_guest, wait_outcome
from .invariant import journal
from .proxy import TapProxy

MIB = 1 << 20
QCOW2 = {"pool": "default", "file": "vm-1.qcow2", "format": "qcow2"}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def make_qcow2(path: Path, scratch: Path, random_mib: int = 2) -> None:
    """A 1 GiB sparse qcow2 with a few MiB written by qemu-io: patterns (compressible) and random data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = scratch / "noise.bin"
    noise.write_bytes(os.urandom(random_mib * MIB))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -q -P 0xab 0 4M", "-c", "write -q -P 0x5c 512M 2M",
                    "-c", f"write -q -s {noise} 900M {random_mib}M", str(path)], check=True)


def same_image(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)]).returncode == 0


def leftovers(agent) -> list[Path]:
    """Anything on a host besides what a defined VM needs: staging folders, VM folders, images."""
    return sorted([*(agent.root / "images").glob("*"), *(agent.state / "vms").glob("*")])


def defined_only_on(host, other, name: str = "vm-1") -> None:
    assert host.vm(name)["state"] == "defined"
    assert name not in other.vm_names()
    assert not list((host.root / "images").glob(".qv-incoming-*"))
    assert not (other.root / "images" / QCOW2["file"]).exists()  # the source's copy is gone at once…
    deadline = time.monotonic() + 5
    while list((other.root / "images").glob(".qv-removed-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list((other.root / "images").glob(".qv-removed-*"))  # …and its file deleted just after


def test_disk_files_of_a_vm_that_moved_are_deleted_at_the_next_start(make_agent, tmp_path):
    """A crash between the commit and the deletion of the moved VM's disk files (renamed out of
    the way at commit) leaves them for the next start; a symlink among them is not followed."""
    a = make_agent("hv-a", start=False)
    images = a.root / "images"
    images.mkdir(parents=True, exist_ok=True)
    (images / ".qv-removed-0123456789ab-vm-1.raw").write_bytes(b"old disk")
    elsewhere = tmp_path / "precious.raw"
    elsewhere.write_bytes(b"keep")
    (images / ".qv-removed-feedfacecafe-vm-2.raw").symlink_to(elsewhere)
    (images / "vm-3.raw").write_bytes(b"a disk")
    a.start()
    assert sorted(p.name for p in images.iterdir()) == ["vm-3.raw"]
    assert elsewhere.read_bytes() == b"keep"


def starts_there(host, name: str = "vm-1") -> None:
    host.api("POST", f"vms/{name}/start", {})
    host.wait_markers(name, 0)
    host.api("POST", f"vms/{name}/stop", {})


def wait_copied(agent, name: str, at_least: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = agent.api("GET", f"vms/{name}/migrate")
        if status["transferred"] >= at_least or status["state"] != "MIGRATING":
            assert status["state"] == "MIGRATING", status
            return
        time.sleep(0.05)
    raise AssertionError(f"offline copy of {name} never reached {at_least} bytes")


def wait_empty(agent, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while leftovers(agent) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(agent) == []
    assert agent.vm_names() == []


def test_offline_round_trip_of_a_sparse_qcow2(pair, tmp_path):
    a, b = pair
    disk_a, disk_b = a.root / "images" / QCOW2["file"], b.root / "images" / QCOW2["file"]
    make_qcow2(disk_a, tmp_path)
    reference = tmp_path / "reference.qcow2"
    shutil.copyfile(disk_a, reference)
    original = sha256(disk_a)
    a.api("POST", "vms", guest_vm("vm-1", memory="64M", disks=[QCOW2]))

    # A → B, uncompressed, through the API
    status = migrate(a, b, "vm-1", offline=True)
    assert status["state"] == "COMPLETED" and status["mode"] == "offline", status
    assert status["percent"] == 100 and status["transferred"] == status["total"] >= 8 * MIB
    assert status["total"] < 32 * MIB  # the data of the image, not its 1 GiB
    assert sha256(disk_b) == original and same_image(disk_b, reference)
    defined_only_on(b, a)
    starts_there(b)

    # B → A, compressed, through the CLI, which waits and shows progress
    before = sha256(disk_b)
    run = b.cli("vm", "migrate", "vm-1", "--dest", a.migration, "--offline", "--compress")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "offline disk copy" in run.stdout and "State:           COMPLETED" in run.stdout
    assert sha256(disk_a) == before == original and same_image(disk_a, reference)  # A → B → A: same bytes
    defined_only_on(a, b)
    shown = b.cli("vm", "migrate-status", "vm-1")
    assert "COMPLETED" in shown.stdout and "zstd" in shown.stdout and "Total Time" in shown.stdout
    status = b.api("GET", "vms/vm-1/migrate")
    assert status["wire_bytes"] < status["transferred"] * 0.6, status  # 6 of 8 MiB are patterns
    starts_there(a)


def test_running_vm_is_refused_with_one_line(pair):
    a, b = pair
    start_guest(a, memory="64M")
    run = a.cli("vm", "migrate", "vm-1", "--dest", b.migration, "--offline")
    assert run.returncode == 1
    assert run.stderr.strip() == ("Error: VM 'vm-1' is running — stop it first, "
                                  "or drop --offline for a live migration (reason: vm-state)")
    assert a.vm("vm-1")["state"] == "running"
    assert b.vm_names() == []


def two_hosts_and_a_stopped_vm(make_agent, tmp_path: Path):
    """Two trusting agents, and vm-1 defined on the first with a 24 MiB-of-noise qcow2 disk:
    (source, destination, the disk's path, its SHA-256)."""
    a, b = make_agent("hv-a"), make_agent("hv-b")
    mutual_trust(a, b)
    disk = a.root / "images" / QCOW2["file"]
    make_qcow2(disk, tmp_path, random_mib=24)
    original = sha256(disk)
    a.api("POST", "vms", guest_vm("vm-1", memory="64M", disks=[QCOW2]))
    return a, b, disk, original


def test_cancel_and_link_cut_leave_vm_on_source_and_nothing_on_destination(make_agent, tmp_path):
    a, b, disk, original = two_hosts_and_a_stopped_vm(make_agent, tmp_path)
    host, port = b.migration.split(":")
    tap = TapProxy(a.address, (host, int(port)))
    slow = {"offline": True, "bandwidth": "6M"}

    a.api("POST", "vms/vm-1/migrate", {"dest": tap.address, "flags": slow})
    wait_copied(a, "vm-1", 2 * MIB)
    deadline = time.monotonic() + 15  # mid-copy, staged there (the destination may lag the source)
    while not list((b.root / "images").glob(".qv-incoming-*/vm-1.qcow2")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((b.root / "images").glob(".qv-incoming-*/vm-1.qcow2"))
    run = a.cli("vm", "migrate-cancel", "vm-1")
    assert "cancelled; vm-1 stays defined here" in run.stdout, run.stdout + run.stderr
    assert wait_outcome(a, "vm-1")["state"] == "CANCELLED"
    assert a.vm("vm-1")["state"] == "defined" and sha256(disk) == original
    wait_empty(b)

    a.api("POST", "vms/vm-1/migrate", {"dest": tap.address, "flags": slow})
    wait_copied(a, "vm-1", 2 * MIB)
    tap.cut()
    status = wait_outcome(a, "vm-1")
    assert status["state"] == "FAILED" and "Connection reset" in status["error"], status
    assert a.vm("vm-1")["state"] == "defined" and sha256(disk) == original
    wait_empty(b)


def test_destination_killed_mid_copy_is_cleaned_at_restart(make_agent, tmp_path):
    a, b = make_agent("hv-a"), make_agent("hv-b")
    mutual_trust(a, b)
    raw = a.root / "images" / "vm-1.img"  # a sparse raw image: only its data extents cross
    raw.parent.mkdir(parents=True, exist_ok=True)
    with open(raw, "wb") as f:
        f.truncate(256 * MIB)
        f.seek(64 * MIB)
        f.write(os.urandom(16 * MIB))
    original = sha256(raw)
    a.api("POST", "vms", guest_vm("vm-1", memory="64M", disks=[{"pool": "default", "file": "vm-1.img",
                                                                    "format": "raw"}]))
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {"offline": True, "bandwidth": "6M"}})
    wait_copied(a, "vm-1", 2 * MIB)
    assert a.api("GET", "vms/vm-1/migrate")["total"] == 16 * MIB  # the holes are not sent
    b.kill()
    status = wait_outcome(a, "vm-1")
    assert status["state"] == "FAILED", status
    assert a.vm("vm-1")["state"] == "defined" and sha256(raw) == original
    assert leftovers(b)  # what the killed agent wrote is still there…
    b.start()
    wait_empty(b)  # …until it starts again
    assert [(r["kind"], r["state"], r.get("settled_by")) for r in journal(b)] == [("offline", "discarded", "restart")]
    assert [(r["kind"], r["role"], r["state"]) for r in journal(a)] == [("offline", "source", "rolled-back")]


def test_source_killed_mid_copy_rolls_back_in_its_journal_at_restart(make_agent, tmp_path):
    """The offline session is journaled like a live one: a source killed before the commit finds
    it `transferring` at start and settles it `rolled-back` (the VM never left); status says so."""
    a, b, disk, original = two_hosts_and_a_stopped_vm(make_agent, tmp_path)
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {"offline": True, "bandwidth": "6M"}})
    wait_copied(a, "vm-1", 2 * MIB)
    assert journal(a)[-1]["state"] == "transferring"
    a.kill()
    wait_empty(b)  # the destination saw the channel break and discarded what it had
    assert [(r["kind"], r["role"], r["state"]) for r in journal(b)] == [("offline", "destination", "discarded")]
    a.start()
    (record,) = journal(a)
    assert (record["kind"], record["state"], record["settled_by"]) == ("offline", "rolled-back", "restart")
    status = a.api("GET", "vms/vm-1/migrate")
    assert status["state"] == "FAILED" and status["session"] == record["session"], status
    assert a.vm("vm-1")["state"] == "defined" and sha256(disk) == original


def test_source_restarted_in_doubt_asks_the_destination(pair, tmp_path):
    """A source killed after sending commit finds its marker at start and settles with the destination."""
    a, b = pair
    make_qcow2(a.root / "images" / QCOW2["file"], tmp_path)
    a.api("POST", "vms", guest_vm("vm-1", memory="64M", disks=[QCOW2]))
    assert migrate(a, b, "vm-1", offline=True)["state"] == "COMPLETED"
    # Put back what a crash right after "commit" would have left on the source: vm-1 (which the
    # destination did commit) and vm-2 (which it did not), each with its marker.
    for name in ("vm-1", "vm-2"):
        disk = {**QCOW2, "file": f"{name}.qcow2"}
        shutil.copyfile(b.root / "images" / QCOW2["file"], a.root / "images" / disk["file"])
        a.api("POST", "vms", guest_vm(name, memory="64M", disks=[disk]))
        marker = {"dest": b.migration, "session": "0" * 32, "kem": "ML-KEM-768"}
        (a.state / "vms" / name / "outgoing.json").write_text(json.dumps(marker))
    a.stop()
    a.start()
    marker_2 = a.state / "vms" / "vm-2" / "outgoing.json"
    deadline = time.monotonic() + 20
    while ("vm-1" in a.vm_names() or marker_2.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "vm-1" not in a.vm_names() and not (a.root / "images" / "vm-1.qcow2").exists()
    assert b.vm("vm-1")["state"] == "defined"
    assert a.vm("vm-2")["state"] == "defined" and (a.root / "images" / "vm-2.qcow2").exists()
    assert not marker_2.exists()


def test_dest_pool_absolute_and_uncreated_disks_and_a_clash(pair):
    a, b = pair
    elsewhere = a.root / "images" / "elsewhere" / "vm-2.raw"  # a path disk (in a folder of the pool), not shared
    elsewhere.parent.mkdir(parents=True)
    with open(elsewhere, "wb") as f:
        f.truncate(64 * MIB)
        f.write(b"boot" * 1024)
    original = sha256(elsewhere)
    never_started = {"pool": "default", "file": "vm-2-data.qcow2", "size": "1G"}  # no file yet
    a.api("POST", "vms", guest_vm("vm-2", memory="64M", disks=[{"path": str(elsewhere), "format": "raw"},
                                                               never_started]))
    status = migrate(a, b, "vm-2", offline=True, dest_pool=str(b.root / "images"))
    assert status["state"] == "COMPLETED" and status["disks"] == 1, status
    disks = b.vm("vm-2")["spec"]["disks"]
    assert disks[0] == {"pool": "default", "file": "vm-2.raw", "path": None, "size": None, "format": "raw"}
    assert sha256(b.root / "images" / "vm-2.raw") == original and not elsewhere.exists()
    assert not (b.root / "images" / "vm-2-data.qcow2").exists()  # created at its first start, as before
    # Back to A, where a file already holds the name: refused before any byte moves.
    (a.root / "images" / "vm-2.raw").write_bytes(b"not yours")
    with pytest.raises(ApiError) as err:
        b.api("POST", "vms/vm-2/migrate", {"dest": a.migration, "flags": {"offline": True}})
    assert "already exists on the destination" in err.value.cause
    assert b.vm("vm-2")["state"] == "defined" and "vm-2" not in a.vm_names()
    assert (a.root / "images" / "vm-2.raw").read_bytes() == b"not yours"


# -- the disk wire, pure ---------------------------------------------------------------------------


def sparse_file(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(64 * MIB)
        f.seek(8 * MIB)
        f.write(b"qvplan" * 300_000)  # compressible, ~1.7 MiB
        f.seek(40 * MIB)
        f.write(os.urandom(3 * MIB + 123))
    return path


def copy_records(src: Path, dst: Path, compress: bool, tamper=None, data_delta: int = 0) -> DiskSink:
    source = DiskSource(src, compress=compress, chunk=MIB)  # several chunks per extent
    sink = DiskSink(dst, source.size, key=source.key)
    try:
        n = 0
        while (item := source.next_record()) is not None:
            record = item[0] if tamper is None else tamper(n, item[0])
            sink.write(record)
            n += 1
        sink.finish(source.digest(), source.data_bytes + data_delta)
    finally:
        source.close()
        sink.close()
    return sink


@pytest.mark.parametrize("compress", [False, True])
def test_wire_round_trip_keeps_content_and_holes(tmp_path, compress):
    src = sparse_file(tmp_path / "src.img")
    dst = tmp_path / "dst.img"
    with open(src, "rb") as f:
        extents = data_extents(f.fileno(), src.stat().st_size)
    assert sum(length for _, length in extents) < 8 * MIB  # the holes are known…
    sink = copy_records(src, dst, compress)
    assert sink.written == sum(length for _, length in extents)  # …and not sent
    assert sha256(dst) == sha256(src)
    assert dst.stat().st_blocks * 512 < 8 * MIB  # and still holes here


def test_corrupted_chunk_is_refused_by_the_digest(tmp_path):
    src = sparse_file(tmp_path / "src.img")

    def flip(n: int, record: bytes) -> bytes:
        if n != 2:
            return record
        body = bytearray(record)
        body[HEADER.size + 100] ^= 0x01
        return bytes(body)

    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        copy_records(src, tmp_path / "dst.img", False, tamper=flip)
    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        copy_records(src, tmp_path / "dst2.img", True, data_delta=1)  # a byte count that does not add up


def test_malformed_chunks_are_refused(tmp_path):
    src = sparse_file(tmp_path / "src.img")

    def garble_zstd(n: int, record: bytes) -> bytes:
        return record[:HEADER.size] + b"\x00" * 64 if n == 1 else record

    def beyond_end(n: int, record: bytes) -> bytes:
        kind, _, length = HEADER.unpack_from(record)
        return HEADER.pack(kind, 64 * MIB, length) + record[HEADER.size:] if n == 0 else record

    with pytest.raises((WireError, ChecksumMismatch)):
        copy_records(src, tmp_path / "a.img", True, tamper=garble_zstd)
    with pytest.raises(WireError, match="does not fit"):
        copy_records(src, tmp_path / "b.img", False, tamper=beyond_end)


def test_digest_is_the_documented_gmac_of_the_chunks(tmp_path):
    """The test recomputes the digest with AES-GCM itself from the file (GMAC per chunk, its offset
    the nonce, SHA-256 over the tags and the size), and compares the bytes that landed."""
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    src.write_bytes(os.urandom(24 * MIB + 4096))
    source = DiskSource(src, compress=False)
    sink = DiskSink(dst, source.size, key=source.key)
    while (item := source.next_record()) is not None:  # one read buffer, reused for every record
        assert sink.write(item[0]) > 0
    expected = hashlib.sha256()
    gmac = AESGCM(source.key)
    data = src.read_bytes()
    for offset in range(0, len(data), source.chunk):
        expected.update(gmac.encrypt(offset.to_bytes(12, "big"), b"", data[offset:offset + source.chunk]))
    expected.update(struct.pack(">Q", len(data)))
    digest = source.digest()
    assert digest == expected.hexdigest()
    sink.finish(digest, len(data))
    source.close()
    sink.close()
    assert sha256(dst) == sha256(src)
    other = DiskSink(tmp_path / "other.img", len(data), key=bytes(32))  # a key the source did not draw
    for offset in range(0, len(data), source.chunk):
        piece = data[offset:offset + source.chunk]
        other.write(HEADER.pack(RAW, offset, len(piece)) + piece)
    with pytest.raises(ChecksumMismatch):
        other.finish(digest, len(data))
    other.close()


def test_after_a_bad_chunk_the_sink_writes_nothing(tmp_path):
    sink = DiskSink(tmp_path / "dst.img", 16 * MIB, key=bytes(32))
    assert sink.write(HEADER.pack(RAW, 8 * MIB, MIB) + b"\x01" * MIB) == MIB
    with pytest.raises(WireError):
        sink.write(HEADER.pack(RAW, 0, MIB) + b"\x02" * MIB)  # goes backwards: it and all after fail
    with pytest.raises(WireError):
        sink.write(HEADER.pack(RAW, 9 * MIB, MIB) + b"\x03" * MIB)
    sink.close()
    with open(tmp_path / "dst.img", "rb") as f:
        f.seek(9 * MIB)
        assert f.read(MIB) == bytes(MIB)  # nothing of the later record landed


@pytest.mark.parametrize("direct", [True, False], ids=["past-the-cache", "page-cache"])
def test_a_short_write_fails_the_disk_instead_of_landing_a_hole(tmp_path, monkeypatch, direct):
    """A file-size limit makes the kernel write part of a chunk (then EFBIG): the disk must fail
    (the old code took pwrite's short count for a whole chunk). Through the page cache the chunk's
    own write raises; past it (offline/direct.py) the writing thread's error fails the next write
    or, at the latest, `finish`, before any digest is compared."""
    if not direct:
        monkeypatch.setattr(DirectWriter, "open", classmethod(lambda cls, fd, name, chunk: None))
    sink = DiskSink(tmp_path / "dst.img", 8 * MIB, key=bytes(32))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (MIB + MIB // 2, hard))  # Python ignores SIGXFSZ
    try:
        with pytest.raises(OSError) as err:
            sink.write(HEADER.pack(RAW, MIB, MIB) + os.urandom(MIB))
            sink.finish("0" * 64, MIB)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert err.value.errno == errno.EFBIG
    assert sink.written == (MIB if direct else 0)  # queued past the cache, never finished
    assert (tmp_path / "dst.img").stat().st_blocks * 512 == MIB // 2  # the kernel did write half of it
    sink.close()


def _resident(path: Path) -> int:
    """Bytes of `path` in the page cache, as util-linux's fincore counts them (mincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def test_aligned_chunks_land_past_the_page_cache_and_an_odd_tail_through_it(tmp_path):
    """The fresh image is written with O_DIRECT (offline/direct.py): after the copy almost none of
    it is in this host's page cache (fincore), where buffered writes left all 24 MiB there."""
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    src.write_bytes(os.urandom(24 * MIB + 1000))  # 24 aligned chunks, then a 1000-byte tail
    copy_records(src, dst, compress=False)
    assert _resident(dst) <= 64 << 10  # the tail's page, not the image
    assert sha256(dst) == sha256(src)


def test_where_o_direct_is_refused_the_image_goes_through_the_page_cache(tmp_path, monkeypatch):
    """A file system that refuses O_DIRECT (EINVAL at open) gets the buffered writes, whole."""
    real_open = direct_module.os.open

    def refusing(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct_module.os, "open", refusing)
    fd = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT, 0o600)
    assert DirectWriter.open(fd, "probe", MIB) is None
    os.close(fd)
    src, dst = sparse_file(tmp_path / "src.img"), tmp_path / "dst.img"
    copy_records(src, dst, compress=True)
    assert sha256(dst) == sha256(src)
    assert _resident(dst) >= 4 * MIB  # the data extents stayed in the cache: written through it


def test_trash_is_deleted_in_steps_and_a_planted_link_keeps_its_data(tmp_path, monkeypatch):
    """recovery.remove shrinks a moved disk in DELETE_STEP truncations before the unlink (each a
    short filesystem transaction); a hard link or a symlink under a trash name is only unlinked,
    so whatever it points at keeps every byte."""
    steps = []
    real_ftruncate = os.ftruncate
    monkeypatch.setattr(recovery.os, "ftruncate", lambda fd, size: (steps.append(size), real_ftruncate(fd, size)))
    monkeypatch.setattr(recovery, "DELETE_STEP", 4 * MIB)
    disk = tmp_path / f"{recovery.TRASH_PREFIX}a-disk.img"
    disk.write_bytes(os.urandom(16 * MIB + 5))
    precious = tmp_path / "precious.img"
    precious.write_bytes(b"keep me" * MIB)
    linked = tmp_path / f"{recovery.TRASH_PREFIX}b-link.img"
    os.link(precious, linked)
    symlinked = tmp_path / f"{recovery.TRASH_PREFIX}c-symlink.img"
    symlinked.symlink_to(precious)
    recovery.remove([disk, linked, symlinked])
    assert steps == [12 * MIB + 5, 8 * MIB + 5, 4 * MIB + 5, 5]  # only the moved disk, down to one last step
    assert not disk.exists() and not linked.exists() and not symlinked.is_symlink()
    assert precious.read_bytes() == b"keep me" * MIB


def test_room_is_checked_per_filesystem():
    free = {Path("/p1"): 10 * MIB, Path("/p2"): 100 * MIB}
    assert check_room([(Path("/p1"), 10 * MIB), (Path("/p2"), 50 * MIB)], free.__getitem__) is None
    problem = check_room([(Path("/p1"), 11 * MIB)], free.__getitem__)
    assert problem is not None and "Destination out of resources" in problem.cause


def test_two_moves_into_one_pool_with_the_same_disk_file_name(make_agent, tmp_path):
    """The second move is refused while the first holds the name; nothing of either is lost."""
    a, b, c = make_agent("hv-a"), make_agent("hv-b"), make_agent("hv-c")
    mutual_trust(a, b)
    mutual_trust(c, b)
    same = {"pool": "default", "file": "data.qcow2", "format": "qcow2"}
    first, second = a.root / "images" / "data.qcow2", c.root / "images" / "data.qcow2"
    make_qcow2(first, tmp_path, random_mib=16)
    make_qcow2(second, tmp_path, random_mib=1)
    kept = tmp_path / "first.qcow2"
    shutil.copy(first, kept)
    second_sum = sha256(second)
    a.api("POST", "vms", guest_vm("vm-1", memory="64M", disks=[same]))
    c.api("POST", "vms", guest_vm("vm-2", memory="64M", disks=[same]))
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {"offline": True, "bandwidth": "6M"}})
    wait_copied(a, "vm-1", 2 * MIB)
    try:
        c.api("POST", "vms/vm-2/migrate", {"dest": b.migration, "flags": {"offline": True}})
        status = wait_outcome(c, "vm-2")
    except ApiError as err:
        status = err.as_dict()
    assert status.get("code") == "name-clash" and "data.qcow2" in status["error"], status
    assert c.vm("vm-2")["state"] == "defined" and sha256(second) == second_sum
    assert wait_outcome(a, "vm-1")["state"] == "COMPLETED"
    landed = b.root / "images" / "data.qcow2"
    assert same_image(landed, kept)  # the winner's disk, whole
    assert b.vm_names() == ["vm-1"] and not list((b.root / "images").glob(".qv-incoming-*"))
