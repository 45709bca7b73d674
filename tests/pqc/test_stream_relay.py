"""A local stream carried through a PQC channel both ways (migration/streams/relay.py), over real
TCP on 127.0.0.1 and real unix socket pairs standing for the two QEMUs."""

from __future__ import annotations

import asyncio
import socket

import pytest

from qvplan.migration.streams.relay import relay
from qvplan.pqc import SecureChannel, open_channel

from .conftest import Host

pytestmark = pytest.mark.asyncio
STATE = b"device state " * 5000


async def _carried(ch: SecureChannel) -> tuple[socket.socket, asyncio.Future[None]]:
    """(the QEMU end of a socket pair, the relay carrying the other end through `ch`)."""
    qemu, ours = socket.socketpair()
    qemu.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return qemu, asyncio.ensure_future(relay(ch, reader, writer))


async def _read_to_eof(sock: socket.socket) -> bytes:
    loop, got = asyncio.get_running_loop(), b""
    while chunk := await loop.sock_recv(sock, 1 << 16):
        got += chunk
    return got


async def test_the_direction_still_open_ends_whole_after_the_other_ended(hosts: tuple[Host, Host], responder) -> None:
    """The source QEMU ends its stream first; the destination's QEMU ends its own 0.3 s later
    (as it does once it has loaded). Neither relay may cut the second direction when the first
    ends: both end without error and each QEMU reads everything the other wrote."""
    a, _ = hosts

    async def destination(ch: SecureChannel) -> bytes:
        qemu, carried = await _carried(ch)
        got = await _read_to_eof(qemu)  # the source's end of stream arrived
        await asyncio.sleep(0.3)
        await asyncio.get_running_loop().sock_sendall(qemu, b"loaded")
        qemu.close()
        await asyncio.wait_for(carried, 10)
        return got

    server = await responder(destination)
    ch = await open_channel("127.0.0.1", server.port, identity=a.identity, trust=a.trust, hello_extra=a.extra)
    qemu, carried = await _carried(ch)
    await asyncio.get_running_loop().sock_sendall(qemu, STATE)
    qemu.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(_read_to_eof(qemu), 10) == b"loaded"
    await asyncio.wait_for(carried, 10)  # no truncated stream: the destination's end of stream came
    qemu.close()
    assert await server.outcome() == STATE
