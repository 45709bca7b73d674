"""Disk images on the wire for an offline migration: data extents, chunk records, zstd, a digest.

A disk crosses as a run of chunk records, one PQC record each, never more than `CHUNK` bytes of
image data:

    header ">BQI"   kind (RAW | ZSTD), offset in the image, length of the image data
    payload         the data, or its zstd encoding

Only the file's data extents are sent (found with SEEK_DATA/SEEK_HOLE, so a sparse raw image sends
its data and not its holes; a qcow2 file is already compact and is simply its own data). The
receiver creates the file at its full size and writes each chunk at its offset, so holes stay holes.

With compression, one streaming zstd compressor serves a whole disk (later chunks reuse the context
of earlier ones) and is flushed at the end of every chunk, so each record decodes as it arrives.

The disk digest (migration/digest.py) is a GMAC of each chunk as sent, its offset the nonce, under
a key the source draws for the disk and sends in the disk's opening message; then SHA-256 over the
tags and the image size. That covers every byte of the image — a hole is the implied zeros between
two chunks — without reading the holes. The source computes it while reading, the destination over
the bytes it wrote; a difference refuses the disk. GMAC is cheap enough (≈17 GB/s) to run inline
in the thread that reads or writes the disk.

Control messages on the same channel are JSON objects; they start with `{`, which no chunk kind is.
"""

from __future__ import annotations

import errno
import hmac
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zstandard

from ...contract.errors import MigrationError
from ..digest import ChunkDigest, digest_key
from .direct import DirectWriter

RAW, ZSTD = 0, 1
HEADER = struct.Struct(">BQI")
# Image bytes per chunk (one PQC record). Measured against 2 MiB and 4 MiB − 64 KiB (bench/storage.py):
# no less CPU per byte, and slower on a loaded host, where smaller records keep the pipeline full.
CHUNK = 1 << 20
ZSTD_LEVEL = 1  # as QEMU's multifd-zstd-level default: on these images level 3 compresses no better
BLOCK = 4096
# The decoder's output buffer: larger than any chunk, so a chunk that fits never fills it (zstd then
# has nothing left inside) and one that does not overflows `_Bounded` at the first buffer.
DECODE_STEP = CHUNK + 1


class WireError(MigrationError):
    """A chunk that does not fit the disk it claims to belong to."""

    code = "protocol-error"


class BadChunk(WireError):
    """A chunk larger than a chunk, or one that expands past its declared length (a zstd bomb)."""

    reason_code = code = "bad-chunk"


CHUNK_FIX = "the source sent a malformed disk chunk: run the same QuantaVirt version on both hosts and retry"


class ChecksumMismatch(MigrationError):
    """The disk written here is not the disk the source read."""

    code = "storage-failed"


def is_chunk(record: bytes) -> bool:
    return bool(record) and record[0] in (RAW, ZSTD)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of every data extent of an open file; all of it where holes are unknown."""
    extents: list[tuple[int, int]] = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:  # only a hole from here to the end
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            extents.append((start, end - start))
            offset = end
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        return [(0, size)] if size else []
    return extents


def split(extents: list[tuple[int, int]], chunk: int = CHUNK) -> Iterator[tuple[int, int]]:
    for start, length in extents:
        for off in range(start, start + length, chunk):
            yield off, min(chunk, start + length - off)


def allocated(extents: list[tuple[int, int]]) -> int:
    """Bytes the extents take on a destination filesystem (whole blocks)."""
    return sum(-(-length // BLOCK) * BLOCK for _, length in extents)


class DiskSource:
    """Reads one image chunk by chunk into records, hashing as it reads, through one buffer: a
    record is overwritten by the next `next_record`, so send it before asking for the next (the
    bulk sender does, pqc/bulk.py). Not thread-safe; `key` is the disk's digest key (drawn here
    unless given), which the destination needs."""

    def __init__(self, path: Path, *, compress: bool, chunk: int = CHUNK, key: bytes | None = None) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        st = os.fstat(self.fd)
        self.size = st.st_size
        self.mode = st.st_mode & 0o777
        self.extents = data_extents(self.fd, self.size)
        self.data_bytes = sum(length for _, length in self.extents)
        self.chunk = min(chunk, CHUNK)
        self.key = key or digest_key()
        self._chunks = split(self.extents, self.chunk)
        self._digest = ChunkDigest(self.key)
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj() if compress else None
        self._buf: bytearray | None = None  # allocated at the first read (a VM's disks are all opened at setup)

    def next_record(self) -> tuple[bytes | bytearray | memoryview, int] | None:
        """(record, image bytes it carries), or None after the last chunk."""
        nxt = next(self._chunks, None)
        if nxt is None:
            return None
        offset, length = nxt
        if self._buf is None:
            self._buf = bytearray(HEADER.size + self.chunk)
        record = memoryview(self._buf)[:HEADER.size + length]  # read straight in behind the header
        data = record[HEADER.size:]
        if os.preadv(self.fd, [data], offset) != length:
            raise MigrationError(f"disk {self.path} shrank while it was being copied",
                                 "keep the VM stopped and its disk untouched during an offline migration",
                                 code="storage-failed")
        self._digest.add(offset, data)
        if self._zstd is None:
            HEADER.pack_into(record, 0, RAW, offset, length)
            return record, length
        packed = self._zstd.compress(data) + self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return HEADER.pack(ZSTD, offset, length) + packed, length

    def records(self, sent: Callable[[int, int], None]) -> Iterator[bytes | bytearray | memoryview]:
        """Every record in turn; `sent(image bytes, record bytes)` is called once each has gone."""
        while (item := self.next_record()) is not None:
            record, data = item
            yield record
            sent(data, len(record))

    def digest(self) -> str:
        """The disk digest; call once, after the last record."""
        return self._digest.hexdigest(self.size)

    def close(self) -> None:
        self._buf = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Bounded:
    """Where a chunk decompresses to: refuses to grow past the chunk's declared length, so a
    zstd bomb stops after at most one output buffer (DECODE_STEP) past it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        if len(self.data) + len(data) > self.limit:
            raise _Overflow
        self.data += data
        return len(data)


class _Overflow(Exception):
    pass


class DiskSink:
    """Writes one incoming image from chunk records, hashing what it writes, one record at a time
    in the caller's thread (the bulk receiver's, pqc/bulk.py). After one bad record it writes
    nothing more. `key` is the digest key the source drew for this disk."""

    def __init__(self, path: Path, size: int, mode: int = 0o644, *, key: bytes) -> None:
        self.path = path
        self.size = size
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        os.ftruncate(self.fd, size)
        self._direct = DirectWriter.open(self.fd, path.name, CHUNK)  # aligned chunks: past the page cache
        self.written = 0
        self._next = 0  # chunks come in increasing offsets, never overlapping
        self._digest = ChunkDigest(key)
        self._failed: BaseException | None = None
        self._zstd: Any = None  # the disk's streaming zstd decoder (a stream_writer into _Bounded)
        self._out: _Bounded | None = None

    def write(self, record: bytes | bytearray | memoryview) -> int:
        """Apply one chunk record; return the image bytes it carried."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._write(record)
        except BaseException as err:
            self._failed = err
            raise

    def _write(self, record: bytes | bytearray | memoryview) -> int:
        if len(record) < HEADER.size:
            raise WireError(f"short chunk record for {self.path.name}")
        kind, offset, length = HEADER.unpack_from(record)
        payload = memoryview(record)[HEADER.size:]
        if length > CHUNK or offset < self._next or offset + length > self.size:  # before any work
            raise BadChunk(f"Migration rejected: bad chunk for {self.path.name} (at {offset}, +{length}) "
                           f"does not fit the {self.size}-byte image in chunks of at most {CHUNK} bytes", CHUNK_FIX)
        if kind == RAW:
            data: bytes | bytearray | memoryview = payload
        elif kind == ZSTD:
            data = self._decompress(payload, offset, length)
        else:
            raise WireError(f"unknown chunk kind {kind} for {self.path.name}")
        if len(data) != length:
            raise WireError(f"chunk of {self.path.name} at {offset} (+{length}, got {len(data)}) does not fit "
                            f"the {self.size}-byte image")
        if self._direct is not None and self._direct.aligned(offset, length):
            data = self._direct.write(data, offset)  # hashed below as written: the copy it writes
        else:
            self._pwrite_all(data, offset)
        self._next = offset + length
        self._digest.add(offset, data)
        self.written += length
        return length

    def _pwrite_all(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """pwrite may write less than asked (a full disk, a signal): go on from where it stopped."""
        view = memoryview(data)
        done = 0
        while done < len(view):
            n = os.pwrite(self.fd, view[done:], offset + done)
            if n <= 0:
                raise OSError(errno.ENOSPC, f"no room to write {self.path.name} at {offset + done}")
            done += n

    def _decompress(self, payload: memoryview, offset: int, length: int) -> bytearray:
        """One chunk of the disk's zstd stream, never more than its declared `length` bytes."""
        if self._zstd is None:
            self._out = _Bounded(length)
            self._zstd = zstandard.ZstdDecompressor().stream_writer(self._out, write_size=DECODE_STEP,
                                                                      write_return_read=True, closefd=False)
        assert self._out is not None
        self._out.limit, self._out.data = length, bytearray()
        try:
            self._zstd.write(payload)
            self._zstd.flush()
        except _Overflow:
            raise BadChunk(f"Migration rejected: bad chunk for {self.path.name} at {offset} expands past "
                           f"its declared {length} bytes (a zstd bomb?)", CHUNK_FIX) from None
        except zstandard.ZstdError as err:
            raise WireError(f"chunk of {self.path.name} at {offset} does not decompress: {err}") from None
        return self._out.data

    def finish(self, digest: str, data_bytes: int) -> None:
        """Check the source's digest and byte count, then make the image durable."""
        if self._direct is not None:
            self._direct.drain()
        mine = self._digest.hexdigest(self.size)
        if self.written != data_bytes or not hmac.compare_digest(mine, str(digest)):
            raise ChecksumMismatch(
                f"Migration rejected: checksum mismatch on {self.path.name} (digest {mine[:16]}… here, "
                f"{str(digest)[:16]}… at the source; {self.written} of {data_bytes} bytes)",
                "retry the migration; if it repeats, check the source disk and both hosts' memory")
        os.fsync(self.fd)

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
