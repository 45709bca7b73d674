"""The stream relay over a real PQC channel on loopback TCP, between real socket pairs.

What QEMU would read on the destination is hashed by a thread of its own and compared with
what was written on the source; a proxy in between alters the records on the wire.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import random
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable

import pytest

from qvplan.migration.streams.relay import Flow, relay
from qvplan.pqc import RecordError, ReorderedRecord, SecureChannel, TamperedRecord, TruncatedStream, open_channel
from qvplan.pqc.records import DATA, HEADER_LEN
from tests.pqc.conftest import Host, Nth, mitm

pytestmark = pytest.mark.asyncio


class Reader(threading.Thread):
    """Reads one end of a socket pair to EOF (what the destination QEMU would see)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock, self.data = sock, bytearray()

    def run(self) -> None:
        buf = bytearray(1 << 20)
        while n := self.sock.recv_into(buf):
            self.data += buf[:n]


def _writer(sock: socket.socket, data: bytes, seed: int) -> threading.Thread:
    """Writes `data` in pieces of random size (records of every size, and many of them), then EOF."""
    def run() -> None:
        rng, i = random.Random(seed), 0
        try:
            while i < len(data):
                step = rng.choice((1, 17, 4096, 65536, 300_000, 1 << 20, 3 << 20))
                sock.sendall(data[i:i + step])
                i += step
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the relay gave up on an altered stream and closed its end
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def _local_pair() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, socket.socket]:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return reader, writer, theirs


async def _carry(hosts: tuple[Host, Host], responder, data: bytes, *, proxy: Callable | None = None,
                 early: int = 0) -> tuple[Reader, BaseException | None, Flow]:
    """Relay `data` from a socket pair here to one over there; the destination's relay starts
    late, so the first records wait in its channel's buffer. `early` bytes are in the source's
    asyncio buffer before its relay starts."""
    a, _ = hosts
    got: asyncio.Future[Reader] = asyncio.get_running_loop().create_future()

    async def destination(ch: SecureChannel) -> None:
        reader, writer, qemu = await _local_pair()
        sink = Reader(qemu)
        sink.start()
        got.set_result(sink)
        await asyncio.sleep(0.2)  # the source's first records arrive before this relay takes the socket
        await relay(ch, reader, writer)

    server = await responder(destination)
    flow = Flow()

    async def source(port: int) -> None:
        ch = await open_channel("127.0.0.1", port, identity=a.identity, trust=a.trust)
        reader, writer, qemu = await _local_pair()
        qemu.sendall(data[:early])
        await asyncio.sleep(0.05)  # asyncio reads it into the stream's buffer
        feeder = _writer(qemu, data[early:], seed=len(data))
        try:
            await relay(ch, reader, writer, flow)
        except (RecordError, OSError):
            if proxy is None:
                raise  # an unaltered stream must not fail here
        qemu.close()
        await asyncio.to_thread(feeder.join)

    if proxy is None:
        await source(server.port)
    else:
        async with mitm(server.port, c2s=proxy) as port:
            await source(port)
    outcome = await server.outcome()
    sink = await got
    await asyncio.to_thread(sink.join, 30)
    return sink, outcome if isinstance(outcome, BaseException) else None, flow


async def test_stream_arrives_whole_and_in_order(hosts: tuple[Host, Host], responder) -> None:
    data = os.urandom(40 << 20)
    sink, error, flow = await _carry(hosts, responder, data, early=100_000)
    assert error is None
    assert len(sink.data) == len(data)
    assert hashlib.sha256(sink.data).digest() == hashlib.sha256(data).digest()
    assert flow.taken == flow.handed == len(data)


def _flip(frame: bytes) -> bytes:
    body = bytearray(frame)
    body[HEADER_LEN + 7] ^= 0x40
    return bytes(body)


class Swap:
    """Hold the n-th DATA frame and send it after the next one."""

    def __init__(self, n: int) -> None:
        self.n, self.seen, self.held = n, 0, b""

    def __call__(self, rtype: int, frame: bytes) -> bytes:
        if rtype != DATA:
            return frame
        self.seen += 1
        if self.seen == self.n:
            self.held = frame
            return b""
        if self.seen == self.n + 1:
            return frame + self.held
        return frame


@pytest.mark.parametrize(("proxy", "error"), [
    (lambda: Nth(DATA, 4, _flip), TamperedRecord),
    (lambda: Swap(4), ReorderedRecord),
    (lambda: Nth(DATA, 4, lambda frame: None), TruncatedStream),
], ids=["tampered", "reordered", "cut"])
async def test_altered_stream_stops_with_only_authentic_bytes_delivered(
        hosts: tuple[Host, Host], responder, proxy: Callable, error: type[RecordError]) -> None:
    data = os.urandom(16 << 20)
    sink, outcome, _ = await _carry(hosts, responder, data, proxy=proxy())
    assert isinstance(outcome, error), outcome
    # Everything QEMU got is the stream's true beginning, and the stream is not complete.
    assert len(sink.data) < len(data)
    assert bytes(sink.data) == data[:len(sink.data)]


def _queued_in(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


async def test_in_flight_is_what_the_peer_has_not_received() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.socket()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sender.connect(listener.getsockname())
    peer, _ = listener.accept()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sender.setblocking(False)
    sent = 0
    chunk = os.urandom(64 << 10)
    try:
        while True:
            sent += sender.send(chunk)
    except BlockingIOError:
        pass
    qemu, ours = socket.socketpair()
    qemu.sendall(b"q" * 5000)  # QEMU wrote 5000 bytes the relay has not read
    flow = Flow()
    flow.sock, flow.local = sender, ours
    flow.taken, flow.handed = sent + 1000, sent  # 1000 bytes read from QEMU, not yet sealed
    time.sleep(0.05)
    # The peer's queue is counted by the peer's kernel; the rest has not left the sender.
    assert flow.in_flight() == pytest.approx(sent - _queued_in(peer) + 6000, abs=64 << 10)
    assert flow.in_flight() > 6000
    ours.recv(5000)
    received = 0
    peer.settimeout(5)
    while received < sent:
        received += len(peer.recv(1 << 20))
    time.sleep(0.05)
    assert flow.in_flight() == 1000
    flow.sock = None
    for s in (sender, peer, listener, qemu, ours):
        s.close()
