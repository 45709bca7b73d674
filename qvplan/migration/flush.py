"""Disk images written back to their device by a thread of their own, while the data still moves.

Two moves pay for a host's writeback at a bad moment unless it starts early:

- live migration (live/source.py): QEMU writes a guest's disks through this host's page cache
  (its default, cache=writeback), and stopping the guest for the switchover flushes them
  (bdrv_flush_all): whatever the guest wrote that the host has not yet written back is paid
  inside the pause, and QEMU's downtime figure and estimate leave it out. A test guest moved
  right after 800 MiB were written to its disk paused 334 ms against a 300 ms --max-downtime
  while QEMU reported 15 ms of downtime. The source flushes the images once before pre-copy
  starts (the backlog, with the guest running), then in rounds until the guest stops; what the
  stop still writes is what the guest wrote during the last round, so the longest recent round
  (or the one under way, if longer) is what the downtime budget keeps back (live/downtime.py).
  The first round also drops the images' clean cached pages (`drop`): a VM that is leaving has
  no use for the backlog's pages here, and where both hosts share one page cache (the lab's
  hosts share a kernel) the destination's QEMU drops them at `cont`, inside the pause, as it
  takes the images over (1.5 GiB cached: ~100 ms of pause). Later rounds keep the cache: a guest
  reading its disk during pre-copy keeps its cached pages until it leaves.
- offline migration (offline/destination.py): each disk is made durable before the commit; an
  fsync at the end wrote the whole image then (110–150 ms of a 384 MiB move that took ~360 ms).
  Rounds while the disk arrives leave that fsync 0–50 ms (for what goes through the page cache:
  offline/direct.py writes aligned chunks past it). Those rounds only start the write-back
  (`wait=False`: sync_file_range, SYNC_FILE_RANGE_WRITE) and never wait for it: an fdatasync
  every 50 ms held the receiving thread's writes back (the copy of 384 MiB took 315–330 ms with
  fdatasync rounds, 230–300 with these; the final fsync stays 3–35 ms; bench/storage.py).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

INTERVAL = 0.05  # seconds between rounds: a clean image's fdatasync is cheap, a dirty one should not wait
ROUNDS = 4  # recent rounds the estimate looks at
SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writing the dirty pages back, do not wait


def _sync_file_range() -> Callable[[int], None] | None:
    """libc's sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) (not in Python's os module), or
    None where libc lacks it (rounds then fall back to fdatasync)."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]

    def start(fd: int) -> None:
        if call(fd, 0, 0, SYNC_FILE_RANGE_WRITE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return start


START_WRITEBACK = _sync_file_range()


class DiskFlusher:
    """fdatasync of disk images: `first()` once if wanted (with `drop`, the images' clean pages
    dropped from the cache then), `start()` rounds until `stop()`; `close()` at the end. With
    `wait=False` the rounds only start the write-back (and `expected()` means nothing)."""

    def __init__(self, images: Iterable[Path], *, drop: bool = False, wait: bool = True) -> None:
        self._drop = drop
        self._flush = os.fdatasync if wait or START_WRITEBACK is None else START_WRITEBACK
        self._fds: list[int] = []
        for path in images:
            try:  # read-only is enough for fdatasync; a disk that is a symlink is not ours to open
                self._fds.append(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK))
            except OSError as err:
                log.debug("disk %s not flushed ahead of the switchover: %s", path, err.strerror)
        self._rounds: collections.deque[float] = collections.deque(maxlen=ROUNDS)
        self._round_started: float | None = None  # monotonic start of the round under way
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def first(self) -> float:
        """One round now, on the calling thread (a backlog to write first); its seconds. Not part
        of `expected()`: the backlog is gone once it is written."""
        return self._round(drop=self._drop, counted=False)

    def start(self) -> None:
        if self._fds and self._thread is None and not self._stopped.is_set():
            self._thread = threading.Thread(target=self._loop, name="disk-flush", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """No more rounds (e.g. the guest stopped: QEMU flushes the rest itself). Returns at once."""
        self._stopped.set()

    @property
    def has_images(self) -> bool:
        """Whether there is anything to flush (a VM without disks has nothing: no thread, no hop)."""
        return bool(self._fds)

    def close(self) -> None:
        """Stop the rounds and release the images; returns at once (a round under way finishes
        its fdatasync on its thread, which then closes them)."""
        self.stop()
        if self._thread is None:
            self._close_fds()

    def _close_fds(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def expected(self) -> float:
        """Seconds the guest's stop is expected to spend flushing: the longest of the recent
        rounds, or the one under way if it has taken longer already."""
        with self._lock:
            worst = max(self._rounds, default=0.0)
            if self._round_started is not None:
                worst = max(worst, time.monotonic() - self._round_started)
        return worst

    def _loop(self) -> None:
        while not self._stopped.wait(INTERVAL):
            self._round()
        self._close_fds()

    def _round(self, drop: bool = False, counted: bool = True) -> float:
        started = time.monotonic()
        with self._lock:
            self._round_started = started if counted else None
        for fd in list(self._fds):
            with contextlib.suppress(OSError):  # an image we cannot flush here is flushed by its owner later
                self._flush(fd)
                if drop:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        took = time.monotonic() - started
        with self._lock:
            self._round_started = None
            if counted:
                self._rounds.append(took)
        return took
