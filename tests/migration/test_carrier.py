"""The source's stream carrier: channels opened ahead of QEMU's streams, and what QEMU sees of a
stream the carrier gives up (real unix sockets; real agents and `ss` for the channels)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest

from qvplan.migration.streams.carrier import MIGRATE_DATA, PREPARE_AT_ONCE, StreamCarrier

from ..agents import mutual_trust
from .helpers import start_guest, wait_outcome
from .invariant import exactly_one, release_point, wait_point

PIN = "f" * 64


class Channel:
    """What the carrier uses of a channel before a relay takes it: its peer, its close."""

    def __init__(self) -> None:
        self.peer_fingerprint = PIN
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class Opener:
    """open_channel for the carrier: counts the handshakes and how many ran at once."""

    def __init__(self, fail: bool = False) -> None:
        self.opened: list[Channel] = []
        self.running = self.most = 0
        self.fail = fail

    async def __call__(self, purpose: str) -> Channel:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.01)  # a handshake takes a while
            if self.fail:
                raise ConnectionRefusedError("no route")
            self.opened.append(Channel())
            return self.opened[-1]
        finally:
            self.running -= 1


async def test_prepared_channels_are_open_before_qemu_connects_and_a_few_at_a_time() -> None:
    opener = Opener()
    carrier = StreamCarrier(opener, "s" * 32, "vm-1")
    carrier.prepare(MIGRATE_DATA, 5)
    await carrier.ready(MIGRATE_DATA)
    assert len(opener.opened) == 5
    assert opener.most == PREPARE_AT_ONCE
    assert await carrier._channel(MIGRATE_DATA) is opener.opened[0]  # QEMU's first stream takes the first
    carrier.close()
    await asyncio.sleep(0)  # the unused ones end cleanly (their closes run as tasks)
    assert [c.closed for c in opener.opened] == [False, True, True, True, True]


async def test_a_channel_that_cannot_be_prepared_fails_before_migrate() -> None:
    carrier = StreamCarrier(Opener(fail=True), "s" * 32, "vm-1")
    carrier.prepare(MIGRATE_DATA, 2)
    with pytest.raises(ConnectionRefusedError):
        await carrier.ready(MIGRATE_DATA)
    carrier.close()


def established_to(pid: int, address: str) -> int:
    """TCP connections of process `pid` to `address` (host:port), from the kernel's socket table."""
    port = address.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(f"pid={pid}," in line for line in out.splitlines())


def test_every_stream_has_its_channel_before_qemu_migrates(make_agent) -> None:
    """Multifd ×4: QEMU opens five streams. All five channels (and the control channel) are up
    before `migrate` is sent, so no handshake runs while QEMU already counts its bytes as sent."""
    a, b = make_agent("hv-a", start=False), make_agent("hv-b", start=False)
    a.env = {"QUANTAVIRT_TEST_PAUSE_AT": "source-before-migrate"}
    a.start(), b.start()
    mutual_trust(a, b)
    start_guest(a, memory="64M", working_set="8M")
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {"threads": 4}})
    wait_point(a, "source-before-migrate")
    assert established_to(a.proc.pid, b.migration) == 1 + 5
    release_point(a, "source-before-migrate")
    assert wait_outcome(a, "vm-1")["state"] == "COMPLETED"
    exactly_one(b, a)


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


async def test_closing_after_the_wait_for_prepared_channels_was_cancelled() -> None:
    """A migration cancelled while it waits in ready(): the spares are cancelled with it, and
    the teardown's close() must still go through."""
    carrier = StreamCarrier(Opener(), "s" * 32, "vm-1")
    carrier.prepare(MIGRATE_DATA, 3)
    waiting = asyncio.ensure_future(carrier.ready(MIGRATE_DATA))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    carrier.close()
