"""Carry one local byte stream (a QEMU migration or NBD socket) through a PQC channel.

Every QEMU stream — the main migration stream, each multifd channel, each NBD connection —
gets its own channel, so a relay never multiplexes and each can run on its own core.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..pqc import SecureChannel

CHUNK = 1 << 20
# A QEMU socket's reader may buffer this much, so records are big (the default 64 KiB limit made
# small records and per-record overhead dominate).
STREAM_BUFFER = 4 << 20


async def _local_to_channel(reader: asyncio.StreamReader, channel: SecureChannel) -> None:
    while data := await reader.read(CHUNK):
        await channel.send(data)
    await channel.close()


async def _channel_to_local(channel: SecureChannel, writer: asyncio.StreamWriter) -> None:
    while (data := await channel.recv()) is not None:
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()


async def relay(channel: SecureChannel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Pump both directions until either ends; then (or on any error) tear down both sides.

    A QEMU stream ends when its writer closes it; the end-of-stream record carries that to the
    far side, which closes its local socket in turn.
    """
    tasks = [asyncio.ensure_future(_local_to_channel(reader, channel)),
             asyncio.ensure_future(_channel_to_local(channel, writer))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # Once our side has sent its end-of-stream, the far side may hang up at will.
        if tasks[0] not in done or tasks[0].exception():
            for task in done:
                task.result()
    finally:
        for task in tasks:
            task.cancel()
        writer.close()
        channel.writer.close()
