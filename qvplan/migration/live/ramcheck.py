"""The guest's RAM compared on both hosts before the commit, where QEMU may lose guest writes.

Under TCG, QEMU before 9.0 loses guest writes during pre-copy: the 64-page fast path of its
dirty-bitmap sync clears the migration bits without resetting the vCPUs' TLB, so a store through
an entry already marked dirty no longer marks its page, and the page is never sent again (fixed
upstream in QEMU 9.0: "physmem: Fix migration dirty bitmap coherency with TCG memory access").
The destination then holds pages of an earlier pass. Measured with QEMU 7.2 under TCG, QEMU to
QEMU over a unix socket with no qvplan in the path: 3 of 4 migrations that followed a completed
migration rolled back on the same source, 1 of 4 first migrations of a 512 KiB working set.

So when the source's QEMU is affected, both agents digest the guest's RAM while both copies are
paused (the source after its stop-and-copy, the destination loaded), and the source commits only
when the digests match. On a mismatch it rolls back: its own copy is the intact one.

The digest is part of the guest's pause, so it is made cheap: where QEMU keeps the RAM is looked
up before the pause (`locate`), the RAM is read with process_vm_readv (about twice the speed of
/proc/PID/mem) into one reused buffer, and each chunk is hashed with GMAC under a key the source
draws for the session (AES-GCM's hash: several GB/s with the CPU's carry-less multiply, six times
zlib's CRC-32 here). The key keeps the hash unpredictable to the guest whose RAM it covers.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...vmm.errors import QemuError
from ..digest import ChunkDigest

if TYPE_CHECKING:
    from ...vmm.process import QemuProcess

log = logging.getLogger(__name__)
FIXED_IN = (9, 0)  # the first QEMU release with the fix
CHUNK = 4 << 20  # bytes per hash, read into one reused buffer
DUMP = 4 * CHUNK  # bytes per pmemsave: bounds the dump file on disk
LOW_END = 0xA0000  # conventional memory ends at the VGA window; RAM resumes at 1 MiB
HIGH_START = 1 << 20
PC_BELOW_4G = 0xE0000000  # the pc machine keeps RAM below this under 4 GiB ...
PC_SPLIT = 0xC0000000  # ... and splits at 3 GiB when RAM does not fit below it (gigabyte_align)
_HVA = re.compile(r"Host virtual address for 0x[0-9a-f]+ \([^)]*\) is (0x[0-9a-f]+)")


async def affected(qmp: Any) -> bool:
    """Does this QEMU lose guest writes during pre-copy (TCG before 9.0)?"""
    if (await qmp.execute("query-kvm")).get("enabled"):
        return False
    version = (await qmp.execute("query-version"))["qemu"]
    return (int(version["major"]), int(version["minor"])) < FIXED_IN




def ram_ranges(memory: int) -> list[tuple[int, int]]:
    """(guest-physical start, size) of the pc machine's RAM, device windows left out."""
    below = memory if memory < PC_BELOW_4G else PC_SPLIT
    ranges = [(0, min(memory, LOW_END))]
    if below > HIGH_START:
        ranges.append((HIGH_START, below - HIGH_START))
    if memory > below:
        ranges.append((1 << 32, memory - below))
    return ranges


@dataclass(frozen=True, slots=True)
class RamRange:
    start: int  # guest-physical
    size: int
    host: int | None  # QEMU's virtual address of `start`; None: not one mapping, read by pmemsave


@dataclass(frozen=True, slots=True)
class GuestRam:
    """Where one QEMU keeps its guest's RAM: found once, read while the guest is paused."""

    proc: QemuProcess
    ranges: tuple[RamRange, ...]


async def locate(proc: QemuProcess, memory: int) -> GuestRam:
    """Look up QEMU's address of each RAM range (HMP `gpa2hva`). QEMU allocates guest RAM once,
    at start, so this can be done before the pause and used during it."""
    found = []
    for start, size in ram_ranges(memory):
        try:
            first, last = await _host_address(proc, start), await _host_address(proc, start + size - 1)
            host = first if last - first == size - 1 else None  # else: not one contiguous mapping
        except QemuError as err:
            log.info("%s: gpa2hva of 0x%x failed (%s): using pmemsave", proc.spec.name, start, err)
            host = None
        found.append(RamRange(start, size, host))
    return GuestRam(proc, tuple(found))


async def digest(ram: GuestRam, key: bytes) -> str:
    """A digest of the paused guest's RAM: a GMAC per chunk, all of them hashed.

    Read from QEMU's memory with process_vm_readv; where that fails, QEMU writes each chunk with
    `pmemsave` instead. The digest is the same either way."""
    chunks = _Chunks(key)
    for part in ram.ranges:
        done = False
        if part.host is not None and ram.proc.pid is not None:
            try:
                # tags join the digest once their whole range is read: a failure part-way adds none
                chunks.add_all(await asyncio.to_thread(_read_tags, ram.proc.pid, part, chunks))
                done = True
            except OSError as err:
                log.info("%s: reading RAM of pid %s failed (%s): using pmemsave", ram.proc.spec.name, ram.proc.pid, err)
        if not done:
            chunks.add_all(await _tags_by_pmemsave(ram.proc, part, chunks))
    return chunks.digest.hexdigest()


async def _host_address(proc: QemuProcess, address: int) -> int:
    said = await proc.execute("human-monitor-command", {"command-line": f"gpa2hva 0x{address:x}"})
    found = _HVA.search(str(said))
    if found is None:
        raise QemuError(f"gpa2hva answered {said!r}", "check the QEMU version")
    return int(found.group(1), 16)


class _Chunks:
    """Hashes guest RAM chunk by chunk into GMAC tags, through one reused buffer (returned to the
    kernel when the digest is done: the agent keeps big blocks off the heap, agent/memory.py)."""

    def __init__(self, key: bytes) -> None:
        self.digest = ChunkDigest(key)
        self.buf = (ctypes.c_char * CHUNK)()
        self.view = memoryview(self.buf).cast("B")
        self.address = ctypes.addressof(self.buf)

    def tag(self, guest_address: int, length: int) -> bytes:
        """The tag of the buffer's first `length` bytes; the chunk's guest address is its place."""
        return self.digest.tag(guest_address, self.view[:length])

    def add_all(self, tags: list[bytes]) -> None:
        for tag in tags:
            self.digest.add_tag(tag)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                                   ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong]


def _read_tags(pid: int, part: RamRange, chunks: _Chunks) -> list[bytes]:
    assert part.host is not None
    base = chunks.address
    local, remote = _IoVec(), _IoVec()
    tags = []
    for offset in range(0, part.size, CHUNK):
        length = min(CHUNK, part.size - offset)
        got = 0
        while got < length:  # a read may stop short at a mapping's edge
            local.base, local.len = base + got, length - got
            remote.base, remote.len = part.host + offset + got, length - got
            n = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if n <= 0:
                err = ctypes.get_errno()
                raise OSError(err, f"process_vm_readv read {got} of {length} bytes: {os.strerror(err)}")
            got += n
        tags.append(chunks.tag(part.start + offset, length))
    return tags


async def _tags_by_pmemsave(proc: QemuProcess, part: RamRange, chunks: _Chunks) -> list[bytes]:
    dump = proc.run_dir / f"ramcheck-{uuid.uuid4().hex[:8]}.bin"
    tags = []
    try:
        for offset in range(0, part.size, DUMP):
            length = min(DUMP, part.size - offset)
            await proc.execute("pmemsave", {"val": part.start + offset, "size": length,
                                            "filename": proc.qemu_path(dump)})
            tags += await asyncio.to_thread(_dump_tags, dump, chunks, part.start + offset, length)
    finally:
        dump.unlink(missing_ok=True)
    return tags


def _dump_tags(path: os.PathLike[str], chunks: _Chunks, guest_address: int, length: int) -> list[bytes]:
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb", buffering=0) as f:  # QEMU wrote it: no symlink
        if os.fstat(f.fileno()).st_size != length:
            raise QemuError(f"pmemsave wrote {os.fstat(f.fileno()).st_size} bytes, expected {length}",
                            "check the QEMU log")
        tags = []
        for offset in range(0, length, CHUNK):
            size = min(CHUNK, length - offset)
            got = 0
            while got < size:
                n = f.readinto(chunks.view[got:size])
                if not n:
                    raise OSError(f"read {got} of {size} bytes of the pmemsave dump")
                got += n
            tags.append(chunks.tag(guest_address + offset, size))
        return tags
