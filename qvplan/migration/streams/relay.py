"""Carry one local byte stream (a QEMU migration or NBD socket) through a PQC channel.

Every QEMU stream — the main migration stream, each multifd channel, each NBD connection —
gets its own channel, and each direction of it its own thread with blocking sockets: the event
loop only sets the stream up and waits. Measured against the asyncio relay this replaced
(bench/migration.py), the threads cost less CPU per byte (no event-loop round per chunk, no
StreamReader copy) and keep far less data in flight: a blocked `sendall` stops the next `recv`,
so QEMU's bandwidth estimate, and with it the downtime it picks, holds end to end.
"""

from __future__ import annotations

import _thread as _lowthread
import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
import threading
from collections.abc import Callable
from typing import Any

from ...pqc import SecureChannel
from ...pqc.records import DATA, END, HEADER_LEN, TAG_LEN

log = logging.getLogger(__name__)

# Largest read from QEMU's socket, so the largest record: big enough that per-record costs vanish.
CHUNK = 1 << 20
# Asyncio reader limit for the local socket until the relay takes it over (kept for callers).
STREAM_BUFFER = 1 << 20
# Kernel buffers of the channel's TCP socket: enough to keep a fast link busy, small enough that
# little of a stop-and-copy sits in queues when QEMU believes it is sent. From 1 MiB to 256 KiB
# (with carrier.MIGRATE_RECEIVE_BUFFER): bench/soak.py's pause − QEMU downtime, 100 migrations
# each, p50/p95 5.0/7.9 → 4.5/6.9 ms; bench/migration.py's totals moved within their noise.
CHANNEL_SOCKET_BUFFER = 256 << 10
# Seconds a stream's second direction may take to end by itself once the first ended cleanly.
LINGER = 2.0


class Traffic:
    """Bytes of QEMU streams this process carried through PQC channels (the agent's metrics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent = 0
        self.received = 0

    def add(self, sent: int = 0, received: int = 0) -> None:
        with self._lock:  # two relay threads per stream add at once
            self.sent += sent
            self.received += received


TRAFFIC = Traffic()


def _thread(fn: Callable[[], None]) -> asyncio.Future[None]:
    """Run `fn` on a thread of its own (never the default pool: a migration needs up to 2 per
    stream, all at once), as a future of the running loop.

    Started with the low-level `_thread` API, which does not wait for the thread to run:
    `threading.Thread.start` does, and with multifd ×4 under way that wait (the new thread must
    get a CPU and the GIL) blocked the event loop 10 ms per stream at the median and up to 50 ms,
    while the other streams' requests and QEMU's events queued behind it. `fn` never touches
    threading's per-thread state (`current_thread`, so no logging either)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error else future.set_result(None)

    def run() -> None:
        error: BaseException | None = None
        try:
            fn()
        except BaseException as exc:  # handed to the loop, raised there
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(settle, error)

    _lowthread.start_new_thread(run, ())
    return future


def _take_socket(writer: asyncio.StreamWriter) -> socket.socket:
    """A blocking duplicate of a stream's socket; the asyncio transport stops reading it."""
    writer.transport.pause_reading()  # type: ignore[attr-defined]
    dup: socket.socket = writer.get_extra_info("socket").dup()
    dup.setblocking(True)
    return dup


class Flow:
    """What one carried stream has in flight on this side, for the downtime budget (live/downtime.py).

    Written by the stream's outbound thread, read by the event loop: plain ints, no lock needed.
    """

    def __init__(self) -> None:
        self.taken = 0  # payload bytes read from the local socket
        self.handed = 0  # payload bytes whose record the channel's socket accepted
        self.sock: socket.socket | None = None  # the channel's TCP socket, once the relay runs
        self.local: socket.socket | None = None  # our end of QEMU's socket, once the relay runs

    def in_flight(self) -> int:
        """Bytes QEMU believes sent that have not left this host: waiting in its socket for the
        relay (SIOCINQ), read but not yet handed to the kernel, and what the channel's socket
        still holds (SIOCOUTQ: unsent or unacknowledged)."""
        return _queued(self.local, termios.FIONREAD) + self.taken - self.handed + _queued(self.sock, termios.TIOCOUTQ)


def _queued(sock: socket.socket | None, request: int) -> int:
    if sock is None:
        return 0
    with contextlib.suppress(OSError, ValueError):  # closed meanwhile: nothing queued
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0])
    return 0


def _local_to_channel(local: socket.socket, remote: socket.socket, channel: SecureChannel, first: bytes,
                      flow: Flow) -> None:
    # Two buffers for the whole stream: plaintext in, record out. Nothing is allocated per record.
    seal_into = channel.sealer.seal_into
    plain = bytearray(CHUNK)
    record = bytearray(HEADER_LEN + CHUNK + TAG_LEN)
    with memoryview(plain) as pview, memoryview(record) as rview:
        if first:
            remote.sendall(channel.sealer.seal(first))
            flow.taken += len(first)
            flow.handed += len(first)
            TRAFFIC.add(sent=len(first))
        while n := local.recv_into(plain):
            flow.taken += n
            with pview[:n] as data:
                size = seal_into(data, record)
            with rview[:size] as out:
                remote.sendall(out)
            flow.handed += n
            TRAFFIC.add(sent=n)
    remote.sendall(channel.sealer.seal_end())


class _CutInRecord(Exception):
    """The channel's socket ended inside a record (the opener names it: truncation)."""


def _recv_exactly(sock: socket.socket, view: memoryview) -> bool:
    """Fill `view` from `sock` (MSG_WAITALL: one call in the usual case); False on EOF before
    the first byte, _CutInRecord on EOF after it."""
    got = 0
    while got < len(view):
        with view[got:] as rest:
            n = sock.recv_into(rest, len(rest), socket.MSG_WAITALL)
        if not n:
            if got:
                raise _CutInRecord
            return False
        got += n
    return True


def _channel_to_local(remote: socket.socket, local: socket.socket, channel: SecureChannel) -> None:
    opener = channel.opener
    # Records the channel's protocol buffered before the relay took the socket, then any partial
    # record, go through the opener's own buffer; from a record boundary on, each record is read
    # whole (header, then body) into one reused buffer and decrypted into another.
    if opener.ended:  # END came with the stream's first bytes
        _deliver(local, END, b"")
        return
    while opener.pending:
        while (record := opener.pull()) is not None:
            rtype, payload = record
            if _deliver(local, rtype, payload):
                return
        if not opener.pending:
            break
        with opener.get_buffer(CHUNK) as space:
            n = remote.recv_into(space)
        if not n:
            opener.eof()
            return
        opener.buffer_updated(n)
    header = bytearray(HEADER_LEN)
    body = bytearray(opener.max_record + TAG_LEN)
    plain = bytearray(opener.max_record)
    with memoryview(header) as hview, memoryview(body) as bview, memoryview(plain) as pview:
        while True:
            try:
                if not _recv_exactly(remote, hview):
                    opener.eof()  # raises unless END came: a cut connection is not a clean end
                    return
                _, length = opener.parse_header(header)
                with bview[:length] as framed:
                    if not _recv_exactly(remote, framed):
                        raise _CutInRecord
                    rtype, n = opener.open_into(header, framed, plain)
            except _CutInRecord:
                opener.eof()  # raises the opener's own error: a truncated stream
                raise
            with pview[:n] as payload:
                if _deliver(local, rtype, payload):
                    return


def _deliver(local: socket.socket, rtype: int, payload: bytes | memoryview) -> bool:
    """Hand one opened record to the local socket; True once the stream ended."""
    if rtype == END:
        with contextlib.suppress(OSError):
            local.shutdown(socket.SHUT_WR)
        return True
    if rtype != DATA:
        raise ConnectionError(f"unexpected record type {rtype:#04x} in a stream")
    local.sendall(payload)
    TRAFFIC.add(received=len(payload))
    return False


async def relay(channel: SecureChannel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                flow: Flow | None = None, receive_buffer: int | None = None) -> None:
    """Pump both directions until both end (the second gets LINGER seconds once the first ended
    cleanly); on any error or cancel, tear both down at once.

    A QEMU stream ends when its writer closes it; the end-of-stream record carries that to the
    far side, which half-closes its local socket in turn. Tearing down as soon as one direction
    ended cut the other before its own end-of-stream record left (the destination's QEMU closes
    its side a moment after the source's): the far side then saw a truncated stream and warned
    of a broken migration stream after a good migration. `receive_buffer` narrows the channel
    socket's receive buffer (see carrier.accept_stream).
    """
    first = bytes(reader._buffer)  # read by asyncio before we took over (no public accessor)
    reader._buffer.clear()
    local = _take_socket(writer)
    remote = _take_socket(channel.writer)
    if receive_buffer:
        with contextlib.suppress(OSError):
            remote.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    flow = flow or Flow()
    flow.sock, flow.local = remote, local
    with contextlib.suppress(OSError):
        remote.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_SOCKET_BUFFER)
    tasks = [_thread(lambda: _local_to_channel(local, remote, channel, first, flow)),
             _thread(lambda: _channel_to_local(remote, local, channel))]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a direction that failed ends both now
        if pending:
            done, _ = await asyncio.wait(pending, timeout=LINGER)
            for task in done:
                task.result()
    finally:
        _shut(local, remote)
        await asyncio.gather(*tasks, return_exceptions=True)  # threads end once sockets are shut
        flow.sock = flow.local = None
        if flow.taken:  # records per byte decide the per-record costs (bench/migration.py)
            log.debug("relay out: %d bytes in %d records", flow.taken, channel.sealer.seq)
        for s in (local, remote):
            s.close()
        writer.close()
        channel.writer.close()


def _shut(*socks: Any) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
