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
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import uuid
import zlib
from typing import TYPE_CHECKING, Any

from ...vmm.errors import QemuError

if TYPE_CHECKING:
    from ...vmm.process import QemuProcess

log = logging.getLogger(__name__)
FIXED_IN = (9, 0)  # the first QEMU release with the fix
CHUNK = 1 << 20  # bytes per CRC, read into one reused buffer (a big read each time is memory the
# allocator keeps: glibc raises its mmap threshold after freeing one, each thread's arena keeps its own)
DUMP = 16 * CHUNK  # bytes per pmemsave: bounds the dump file on disk
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


async def digest(proc: QemuProcess, memory: int) -> str:
    """A digest of the paused guest's RAM: a CRC per chunk, all of them hashed.

    Read from QEMU's memory through /proc/PID/mem (the host address of each range from HMP
    `gpa2hva`): no copy through QEMU or a file. Where that cannot be read, QEMU writes each chunk
    with `pmemsave` instead; the digest is the same either way."""
    total = hashlib.sha256()
    for start, size in ram_ranges(memory):
        try:
            crcs = await _crcs_from_memory(proc, start, size)
        except (OSError, QemuError, ValueError) as err:
            log.info("%s: reading RAM through /proc failed (%s): using pmemsave", proc.spec.name, err)
            crcs = await _crcs_by_pmemsave(proc, start, size)
        for crc in crcs:
            total.update(crc.to_bytes(4, "little"))
    return total.hexdigest()


async def _host_address(proc: QemuProcess, address: int) -> int:
    said = await proc.execute("human-monitor-command", {"command-line": f"gpa2hva 0x{address:x}"})
    found = _HVA.search(str(said))
    if found is None:
        raise QemuError(f"gpa2hva answered {said!r}", "check the QEMU version")
    return int(found.group(1), 16)


async def _crcs_from_memory(proc: QemuProcess, start: int, size: int) -> list[int]:
    first, last = await _host_address(proc, start), await _host_address(proc, start + size - 1)
    if last - first != size - 1:  # not one contiguous mapping: read it through QEMU
        raise ValueError(f"guest range 0x{start:x}+0x{size:x} is not contiguous in QEMU's memory")
    if proc.pid is None:
        raise QemuError("QEMU has no pid", "check the VM")
    return await asyncio.to_thread(_read_crcs, f"/proc/{proc.pid}/mem", first, size)


def _read_crcs(path: str, address: int, size: int) -> list[int]:
    with open(path, "rb", buffering=0) as mem:
        mem.seek(address)
        return _crcs_of(mem, size, "QEMU's memory")


def _crcs_of(f: Any, size: int, what: str) -> list[int]:
    """CRCs of the next `size` bytes of `f`, CHUNK by CHUNK."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    crcs = []
    for offset in range(0, size, CHUNK):
        length = min(CHUNK, size - offset)
        got = 0
        while got < length:
            n = f.readinto(view[got:length])
            if not n:
                raise OSError(f"read {got} of {length} bytes of {what}")
            got += n
        crcs.append(zlib.crc32(view[:length]))
    return crcs


async def _crcs_by_pmemsave(proc: QemuProcess, start: int, size: int) -> list[int]:
    dump = proc.run_dir / f"ramcheck-{uuid.uuid4().hex[:8]}.bin"
    crcs = []
    try:
        for offset in range(0, size, DUMP):
            length = min(DUMP, size - offset)
            await proc.execute("pmemsave", {"val": start + offset, "size": length, "filename": proc.qemu_path(dump)})
            crcs += await asyncio.to_thread(_dump_crcs, dump, length)
    finally:
        dump.unlink(missing_ok=True)
    return crcs


def _dump_crcs(path: os.PathLike[str], length: int) -> list[int]:
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb", buffering=0) as f:  # QEMU wrote it: no symlink
        if os.fstat(f.fileno()).st_size != length:
            raise QemuError(f"pmemsave wrote {os.fstat(f.fileno()).st_size} bytes, expected {length}",
                            "check the QEMU log")
        return _crcs_of(f, length, "the pmemsave dump")
