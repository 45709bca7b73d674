"""The source's stream carrier: what QEMU sees of a stream the carrier gives up (real unix sockets)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from qvplan.migration.streams.carrier import MIGRATE_DATA, StreamCarrier


async def test_closing_the_carrier_ends_a_stream_still_waiting_for_its_channel(tmp_path: Path) -> None:
    """A stream QEMU opened while the channel's handshake hangs (the peer went away): close()
    must end it, or a QEMU thread writing to it keeps its migration "cancelling"."""
    hung = asyncio.Event()

    async def open_channel(purpose: str):
        hung.set()
        await asyncio.Event().wait()  # a handshake that never answers

    carrier = StreamCarrier(open_channel, "s" * 32, "vm-1")
    path = tmp_path / "migrate.sock"
    await carrier.serve(path, MIGRATE_DATA)
    qemu = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # QEMU's end
    qemu.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(qemu, str(path))
    await asyncio.wait_for(hung.wait(), 5)
    carrier.close()
    try:
        assert await asyncio.wait_for(loop.sock_recv(qemu, 1), 5) == b""  # the stream ended
    finally:
        qemu.close()
