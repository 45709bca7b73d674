"""Two hosts with PQC identities, a responder on 127.0.0.1:0, and a man-in-the-middle proxy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qvplan.pqc import HostIdentity, SecureChannel, TrustStore, accept_channel
from qvplan.pqc.records import HEADER, HEADER_LEN


@dataclass
class Host:
    name: str
    state: Path
    identity: HostIdentity
    trust: TrustStore

    @property
    def extra(self) -> dict[str, str]:
        return {"host": self.name, "version": "0.1.0", "purpose": "test"}

    def trusts(self, other: Host) -> None:
        self.trust.add(other.name, other.identity.public_key)


def make_host(base: Path, name: str) -> Host:
    state = base / name
    return Host(name, state, HostIdentity.load_or_create(state), TrustStore(state))


@pytest.fixture
def hosts(tmp_path: Path) -> tuple[Host, Host]:
    """hv-a (initiator) and hv-b (responder), trusting each other."""
    a, b = make_host(tmp_path, "hv-a"), make_host(tmp_path, "hv-b")
    a.trusts(b)
    b.trusts(a)
    return a, b


Handler = Callable[[SecureChannel], Awaitable[Any]]


@dataclass
class Responder:
    """An asyncio server running accept_channel; each connection's outcome lands in `outcomes`."""

    host: Host
    handler: Handler | None = None
    accept_kwargs: dict[str, Any] = field(default_factory=dict)
    outcomes: asyncio.Queue = field(default_factory=asyncio.Queue)
    port: int = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ch = await accept_channel(reader, writer, identity=self.host.identity, trust=self.host.trust,
                                      hello_extra=self.host.extra, **self.accept_kwargs)
            result = await self.handler(ch) if self.handler else ch
        except Exception as err:  # the test inspects it
            result = err
        await self.outcomes.put(result)

    async def outcome(self, timeout: float = 30) -> Any:
        return await asyncio.wait_for(self.outcomes.get(), timeout)


@pytest.fixture
async def responder(hosts: tuple[Host, Host]) -> AsyncIterator[Callable[..., Awaitable[Responder]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler | None = None, host: Host | None = None, **accept_kwargs: Any) -> Responder:
        r = Responder(host or hosts[1], handler, accept_kwargs)
        server = await asyncio.start_server(r._serve, "127.0.0.1", 0)
        servers.append(server)
        r.port = server.sockets[0].getsockname()[1]
        return r

    yield start
    for server in servers:
        server.close()


# A mangler sees each whole frame (header + body) going one way and returns what to forward
# instead (b"" drops it); returning None closes that direction right there.
Mangler = Callable[[int, bytes], bytes | None]


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mangle: Mangler | None) -> None:
    try:
        while True:
            try:
                header = await reader.readexactly(HEADER_LEN)
            except asyncio.IncompleteReadError:
                break
            rtype, length = HEADER.unpack(header)
            frame = header + await reader.readexactly(length)
            out = mangle(rtype, frame) if mangle else frame
            if out is None:
                break
            writer.write(out)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def mitm(port: int, c2s: Mangler | None = None, s2c: Mangler | None = None) -> AsyncIterator[int]:
    """A TCP proxy on 127.0.0.1 that parses the record framing and lets manglers alter it."""
    tasks: list[asyncio.Task] = []

    async def handle(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", port)
        tasks.append(asyncio.ensure_future(_pump(creader, swriter, c2s)))
        tasks.append(asyncio.ensure_future(_pump(sreader, cwriter, s2c)))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=16 << 20)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        if tasks:  # let what is in flight reach the far end before tearing down
            await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()


class Nth:
    """Mangler helper: apply `fn` to the n-th frame of type `rtype` (1-based), pass the rest."""

    def __init__(self, rtype: int, n: int, fn: Callable[[bytes], bytes | None]) -> None:
        self.rtype, self.n, self.fn, self.seen = rtype, n, fn, 0

    def __call__(self, rtype: int, frame: bytes) -> bytes | None:
        if rtype != self.rtype:
            return frame
        self.seen += 1
        return self.fn(frame) if self.seen == self.n else frame
