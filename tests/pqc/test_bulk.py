"""Runs of records moved by a worker thread (pqc/bulk.py), over real TCP sockets on 127.0.0.1: the
channel's asyncio calls before and after a run see one stream, in order."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading

import pytest

from qvplan.pqc import ChannelState, SecureChannel, open_channel
from qvplan.pqc.bulk import receive_run, send_run

from .conftest import Host

pytestmark = pytest.mark.asyncio
MIB = 1 << 20


def chunks(pool: bytes, count: int, buf: bytearray) -> object:
    """`count` payloads of 1 MiB − k bytes from `pool`, each copied into the one reused `buf`.
    None starts with "{": the sink below takes that for the JSON message after the run (random
    bytes did, in one run in seven)."""
    for i in range(count):
        size = MIB - i * 1013
        start = i * 7919 % (len(pool) - size)
        buf[:size] = pool[start:start + size]
        buf[0] = 0
        yield memoryview(buf)[:size]


async def test_a_run_between_messages_arrives_whole_and_in_order(hosts: tuple[Host, Host], responder) -> None:
    a, _ = hosts

    async def sink(ch: SecureChannel) -> list[object]:
        said = [await ch.recv_json()]
        digest, count = hashlib.sha256(), 0

        def take(payload: memoryview) -> bool:
            nonlocal count
            if payload[:1] == b"{":  # the message after the run
                return False
            digest.update(payload)
            count += 1
            return True

        rest = await receive_run(ch, take, idle=10, stop=threading.Event())
        said += [count, digest.hexdigest(), rest, await ch.recv_json()]
        await ch.send_json({"ok": True})
        await ch.close()
        return said

    server = await responder(sink)
    ch = await open_channel("127.0.0.1", server.port, identity=a.identity, trust=a.trust, hello_extra=a.extra)
    pool, buf = os.urandom(8 * MIB), bytearray(MIB)
    expected = hashlib.sha256()
    for payload in chunks(pool, 40, bytearray(MIB)):
        expected.update(payload)
    await ch.send_json({"before": 1})
    await send_run(ch, chunks(pool, 40, buf), stall=10, stop=threading.Event())
    await ch.send_json({"after": 1})
    await ch.send_json({"last": 1})  # read by the channel's recv, from what the run's thread left buffered
    assert await asyncio.wait_for(ch.recv_json(), 30) == {"ok": True}
    await ch.close()
    assert await server.outcome() == [{"before": 1}, 40, expected.hexdigest(), b'{"after":1}', {"last": 1}]


async def test_an_error_of_the_consumer_leaves_the_channel_usable(hosts: tuple[Host, Host], responder) -> None:
    a, _ = hosts

    async def sink(ch: SecureChannel) -> str:
        def refuse(payload: memoryview) -> bool:
            raise ValueError("bad chunk")

        with pytest.raises(ValueError):
            await receive_run(ch, refuse, idle=10, stop=threading.Event())
        assert ch.state is ChannelState.OPEN
        await ch.send_json({"failed": "bad chunk"})
        await ch.close()
        return "told"

    server = await responder(sink)
    ch = await open_channel("127.0.0.1", server.port, identity=a.identity, trust=a.trust, hello_extra=a.extra)
    await send_run(ch, [b"x" * 1000], stall=10, stop=threading.Event())
    assert await asyncio.wait_for(ch.recv_json(), 30) == {"failed": "bad chunk"}
    await ch.close()
    assert await server.outcome() == "told"


async def test_a_cancelled_receive_stops_its_thread_before_returning(hosts: tuple[Host, Host], responder) -> None:
    """The sender goes quiet mid-run; cancelling the receiver ends its thread at once (not after
    the idle timeout), before the cancellation returns: the caller closes the file it wrote to."""
    a, _ = hosts
    got: list[int] = []
    running = threading.Event()

    async def sink(ch: SecureChannel) -> float:
        def take(payload: memoryview) -> bool:
            got.append(len(payload))
            running.set()
            return True

        task = asyncio.ensure_future(receive_run(ch, take, idle=60, stop=threading.Event()))
        await asyncio.to_thread(running.wait, 10)
        started = asyncio.get_running_loop().time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return asyncio.get_running_loop().time() - started

    server = await responder(sink)
    ch = await open_channel("127.0.0.1", server.port, identity=a.identity, trust=a.trust, hello_extra=a.extra)
    await send_run(ch, [b"y" * 4096], stall=10, stop=threading.Event())
    assert await server.outcome() < 5
    with contextlib.suppress(Exception):  # whatever comes later reaches no thread
        await send_run(ch, [b"w" * 4096], stall=10, stop=threading.Event())
    await asyncio.sleep(0.2)
    assert got == [4096]
    await ch.close()


async def test_stop_ends_a_send_between_records(hosts: tuple[Host, Host], responder) -> None:
    a, _ = hosts

    async def sink(ch: SecureChannel) -> int:
        count = 0

        def take(payload: memoryview) -> bool:
            nonlocal count
            count += 1
            return payload[:1] != b"{"

        await receive_run(ch, take, idle=10, stop=threading.Event())
        return count

    server = await responder(sink)
    ch = await open_channel("127.0.0.1", server.port, identity=a.identity, trust=a.trust, hello_extra=a.extra)
    stop = threading.Event()

    def endless() -> object:
        n = 0
        while True:
            n += 1
            if n == 5:
                stop.set()
            yield b"z" * 1024

    await send_run(ch, endless(), stall=10, stop=stop)
    await ch.send_json({"done": True})  # the stream is whole: this arrives as a record
    assert await server.outcome() == 5  # four records, then the message
    await ch.close()
