"""Loaded at start-up by a source agent the bomb test starts (PYTHONPATH): a tampered sender whose
first compressed chunk declares 1 MiB of image data and decompresses to 256 MiB of zeros."""

import zstandard

from qvplan.migration.offline import disks as offline_disks

BOMB_MIB = 256
_real = offline_disks.DiskSource.next_record


def _bomb() -> bytes:
    enc = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(4 << 20)
    return b"".join(enc.compress(zeros) for _ in range(BOMB_MIB // 4)) + enc.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


def next_record(self):
    got = _real(self)
    if got is None or getattr(self, "_bombed", False) or self._zstd is None:
        return got
    self._bombed = True
    record, length = got
    _, offset, declared = offline_disks.HEADER.unpack_from(record)
    return offline_disks.HEADER.pack(offline_disks.ZSTD, offset, declared) + _bomb(), length


offline_disks.DiskSource.next_record = next_record
