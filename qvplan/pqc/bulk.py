"""Runs of records on an open channel, moved by a worker thread instead of the event loop.

An offline disk copy sends hundreds of 1 MiB records in a row. Through the channel's asyncio calls
each costs event-loop rounds, a fresh record buffer to seal into and a fresh payload to open into,
and a thread hop to read or write the disk. Here one worker thread does the whole run: it seals
into (or opens from) buffers it reuses, and produces or consumes the payloads itself. Measured in
bench/storage.py.

The thread uses a duplicate of the channel's socket with a timeout: Python then waits with poll()
and the shared file stays non-blocking, as the event loop needs it. Both functions carry on the
channel's own record sequence, so its asyncio calls pick up where a run stopped.

- `send_run`: nothing else may send on the channel meanwhile (the channel's own reading goes on);
- `receive_run`: the channel stops reading the socket meanwhile; bytes the thread reads past the
  run stay in the opener's buffer for the channel's next `recv`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from .channel import ChannelState, SecureChannel
from .errors import ProtocolError, RecordError
from .records import DATA, END, HEADER_LEN, TAG_LEN

Payload = bytes | bytearray | memoryview
T = TypeVar("T")


async def send_run(channel: SecureChannel, payloads: Iterable[Payload], *, stall: float,
                   stop: threading.Event) -> None:
    """Send each payload that `payloads` yields as one DATA record. The worker thread iterates
    `payloads`, so producing them (reading a disk) runs there too; a payload may be reused once the
    next one is asked for. Stops between records once `stop` is set. A record that cannot leave
    within `stall` seconds raises TimeoutError; a socket error fails the channel, an error of
    `payloads` leaves it usable."""
    channel.require_open()
    transport = channel.writer.transport
    while transport.get_write_buffer_size():  # what the loop has queued goes first, in order
        await asyncio.sleep(0.001)
    sock = _duplicate(channel, stall)
    seal_into = channel.sealer.seal_into
    record = bytearray(HEADER_LEN + channel.sealer.max_record + TAG_LEN)
    broken = False

    def pump() -> None:
        nonlocal broken
        with memoryview(record) as out:
            for payload in payloads:
                if stop.is_set():
                    return
                n = seal_into(payload, out)
                with out[:n] as wire:
                    try:
                        sock.sendall(wire)
                    except OSError:  # the record may be half sent: nothing can follow it
                        broken = True
                        raise

    try:
        await _run(pump, sock, stop)
    except OSError:
        if broken:
            channel.state = ChannelState.FAILED
        raise
    finally:
        sock.close()


async def receive_run(channel: SecureChannel, consume: Callable[[memoryview], bool], *, idle: float,
                      stop: threading.Event) -> bytes | None:
    """Hand each DATA record's payload to `consume` in the worker thread (a view of a buffer
    reused for the next record) for as long as it returns True. Returns the payload it declined
    (copied), or None when the peer ended its stream; stops between records once `stop` is set
    (returning None). Waiting longer than `idle` for the peer raises TimeoutError. A socket or
    record error fails the channel; an error of `consume` leaves it usable."""
    channel.require_open()
    opener, proto = channel.opener, channel.protocol
    sock = _duplicate(channel, idle)
    plain = bytearray(opener.max_record)
    ended = broken = False

    def pump() -> bytes | None:
        nonlocal ended, broken
        with memoryview(plain) as out:
            while not stop.is_set():
                try:
                    got = opener.pull_into(out)
                    if got is None:
                        with opener.get_buffer() as room:
                            n = sock.recv_into(room)
                        if not n:
                            ended = True
                            opener.eof()  # raises unless the peer ended its stream
                            return None
                        opener.buffer_updated(n)
                        continue
                except (OSError, RecordError):
                    broken = True
                    raise
                rtype, length = got
                if rtype == END:
                    return None
                if rtype != DATA:
                    broken = True
                    raise ProtocolError(f"unexpected record type {rtype:#04x} after the handshake",
                                        "the peer is not speaking qvplan-pqc/1")
                with out[:length] as payload:
                    if not consume(payload):
                        return bytes(payload)
        return None

    proto.detach()
    try:
        return await _run(pump, sock, stop)
    except BaseException:
        if broken:
            channel.abort()  # as the channel's own recv does
        raise
    finally:
        proto.attach(ended)
        sock.close()


async def _run(pump: Callable[[], T], sock: socket.socket, stop: threading.Event) -> T:
    """`pump` in a worker thread. Cancelled, it stops the thread (a blocked send or receive is
    woken by shutting the socket down: the channel is going anyway) and waits for it, so nothing
    still runs on buffers or files the caller is about to close."""
    work = asyncio.ensure_future(asyncio.to_thread(pump))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        await asyncio.wait({work})
        raise


def _duplicate(channel: SecureChannel, timeout: float) -> socket.socket:
    sock: socket.socket = channel.writer.get_extra_info("socket").dup()
    sock.settimeout(timeout)  # Python polls; O_NONBLOCK on the shared file stays as asyncio set it
    return sock
