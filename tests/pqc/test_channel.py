"""Handshake and transfer over real TCP sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from qvplan.pqc import ChannelClosed, ChannelState, HandshakeTimeout, PQCError, SecureChannel, open_channel

from .conftest import Host

pytestmark = pytest.mark.asyncio


async def _sink(ch: SecureChannel) -> tuple[str, int]:
    """Hash everything until the authenticated end of stream; answer with the digest."""
    digest, total = hashlib.sha256(), 0
    while (data := await ch.recv()) is not None:
        digest.update(data)
        total += len(data)
    await ch.send_json({"sha256": digest.hexdigest(), "bytes": total})
    await ch.close()
    return digest.hexdigest(), total


async def test_256_mib_transfer_hashes_match(hosts: tuple[Host, Host], responder) -> None:
    a, b = hosts
    server = await responder(_sink)
    ch = await open_channel("127.0.0.1", server.port, identity=a.identity, trust=a.trust, hello_extra=a.extra)
    assert ch.peer_name == "hv-b" and ch.peer_fingerprint == b.identity.fingerprint
    assert ch.kem == "ML-KEM-768" and ch.peer_hello["host"] == "hv-b" and ch.peer_hello["version"] == "0.1.0"

    pool = os.urandom(32 << 20)
    digest, total, i = hashlib.sha256(), 0, 0
    while total < 256 << 20:
        size = (1 << 20) + (i * 7919 % (5 << 20))  # 1-6 MiB: some sends span two records
        start = i * 104729 % (len(pool) - size)
        chunk = memoryview(pool)[start:start + size]
        await ch.send(chunk)
        digest.update(chunk)
        total += size
        i += 1
    await ch.end()
    reply = await asyncio.wait_for(ch.recv_json(), 30)
    assert reply == {"sha256": digest.hexdigest(), "bytes": total}
    assert await ch.recv() is None  # the responder's end of stream
    await ch.close()
    assert await server.outcome() == (digest.hexdigest(), total)


async def test_both_directions_and_peer_details(hosts: tuple[Host, Host], responder) -> None:
    a, _b = hosts

    async def echo(ch: SecureChannel) -> SecureChannel:
        while (msg := await ch.recv_json()) is not None:
            await ch.send_json({"echo": msg, "peer": ch.peer_name})
        await ch.close()
        return ch

    server = await responder(echo)
    ch = await open_channel("127.0.0.1", server.port, identity=a.identity, trust=a.trust, kem="ML-KEM-1024",
                            hello_extra=a.extra)
    for n in range(3):
        await ch.send_json({"n": n})
        assert await ch.recv_json() == {"echo": {"n": n}, "peer": "hv-a"}
    await ch.close()
    assert ch.state is ChannelState.CLOSED
    with pytest.raises(ChannelClosed):
        await ch.send(b"late")
    theirs = await server.outcome()
    assert theirs.kem == "ML-KEM-1024" and theirs.peer_fingerprint == a.identity.fingerprint
    assert theirs.peer_hello["purpose"] == "test" and theirs.transcript_hash == ch.transcript_hash


async def test_kem_preference_follows_initiator_order(hosts: tuple[Host, Host], responder) -> None:
    a, _ = hosts
    server = await responder()
    ch = await open_channel("127.0.0.1", server.port, identity=a.identity, trust=a.trust,
                            kem=("ML-KEM-1024", "ML-KEM-768"))
    assert ch.kem == "ML-KEM-1024"
    await ch.close()


async def test_handshake_timeout_initiator(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
    port = silent.sockets[0].getsockname()[1]
    with pytest.raises(HandshakeTimeout, match="handshake timeout"):
        await open_channel("127.0.0.1", port, identity=a.identity, trust=a.trust, timeout=0.3)
    silent.close()


async def test_handshake_timeout_responder(hosts: tuple[Host, Host], responder) -> None:
    server = await responder(timeout=0.3)
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)  # says nothing
    err = await server.outcome()
    assert isinstance(err, HandshakeTimeout) and isinstance(err, TimeoutError)
    writer.close()


async def test_unknown_kem_refused_before_connecting(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    with pytest.raises(PQCError, match="unsupported KEM 'ML-KEM-512'"):
        await open_channel("127.0.0.1", 9, identity=a.identity, trust=a.trust, kem="ML-KEM-512")


async def test_records_right_behind_the_handshake_are_kept(hosts: tuple[Host, Host], responder) -> None:
    """Data the responder sends with its FINISHED lands in the StreamReader; the channel must keep it."""
    a, _ = hosts

    async def greet(ch: SecureChannel) -> None:
        await ch.send_json({"hello": "from hv-b"})
        await ch.close()

    server = await responder(greet)
    ch = await open_channel("127.0.0.1", server.port, identity=a.identity, trust=a.trust)
    await asyncio.sleep(0.1)  # let the greeting and the close arrive before reading
    assert await ch.recv_json() == {"hello": "from hv-b"}
    assert await ch.recv() is None
    await ch.close()
