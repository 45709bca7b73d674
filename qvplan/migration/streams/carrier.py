"""QEMU's byte streams between hosts: every connection QEMU makes on the source is carried
through its own PQC channel into the matching local socket on the destination.

One mechanism for every kind of stream: each QEMU connection on the source opens a channel with
a data operation naming the session, and the destination relays it into its own QEMU socket for
that operation. On the source QEMU reaches the carrier in one of two ways:

  operation     source side                                   destination socket the relay enters
  migrate-data  serve(): run/migrate.sock QEMU connects to    QEMU's `migrate-incoming` socket
                (`migrate`; multifd opens several connections)
  storage-data  pair(): one end of a socket pair per NBD      QEMU's NBD server (`nbd-server-start`)
                client, handed to QEMU by fd (`getfd`)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from ...contract.errors import MigrationError, failure
from ...contract.reasons import Reason
from ...pqc import SecureChannel
from .relay import STREAM_BUFFER, Flow, relay

log = logging.getLogger(__name__)

MIGRATE_DATA = "migrate-data"
STORAGE_DATA = "storage-data"
DATA_OPERATIONS = (MIGRATE_DATA, STORAGE_DATA)

OpenChannel = Callable[[str], Awaitable[SecureChannel]]  # purpose → an authenticated channel
# Handshakes `prepare` runs at once: each is CPU-bound (signatures, key exchange), and the
# destination refuses a source with more than pqc.gate.MAX_HANDSHAKES_PER_SOURCE in progress.
PREPARE_AT_ONCE = 2


class StreamRefused(ConnectionError):
    """The destination would not take a stream (no such session, or it is past loading)."""


class StreamCarrier:
    """The source's local sockets for one migration session, and the relays behind them."""

    def __init__(self, open_channel: OpenChannel, session: str, vm_name: str) -> None:
        self._open = open_channel
        self.session = session
        self.vm_name = vm_name
        self._servers: list[asyncio.AbstractServer] = []
        self._relays: set[asyncio.Task[None]] = set()
        self.broken: str | None = None  # why the first carried stream broke, if one did
        # Pinning: the fingerprint the session's control channel presented. A data channel whose
        # peer is anyone else (even a trusted host) carries nothing, and ends the migration.
        self.pin: str | None = None
        self.refusal: MigrationError | None = None
        self._flows: list[tuple[str, Flow]] = []  # every stream carried, ended ones too (their bytes count)
        self._spares: dict[str, list[asyncio.Future[SecureChannel]]] = {}  # prepare(): channels not yet taken
        self._closing: set[asyncio.Task[None]] = set()

    def in_flight(self, operation: str = MIGRATE_DATA) -> int:
        """Bytes QEMU wrote to `operation`'s streams that have not left this host yet."""
        return sum(flow.in_flight() for op, flow in self._flows if op == operation)

    def carried(self, operation: str = MIGRATE_DATA) -> int:
        """Payload bytes of `operation`'s streams handed to the channels' sockets so far."""
        return sum(flow.handed for op, flow in self._flows if op == operation)

    def prepare(self, operation: str, count: int) -> None:
        """Open `count` channels for `operation`'s streams now, before QEMU connects. A channel
        opened when QEMU connects costs a handshake (~10 ms of CPU a side) while QEMU already
        counts its bytes as sent: with multifd, the destination QEMU starts loading only once
        every stream is connected, and meanwhile the source QEMU fills our sockets, believes the
        transfer fast, and may stop the guest before the destination has loaded a byte."""
        limit = asyncio.Semaphore(PREPARE_AT_ONCE)

        async def one() -> SecureChannel:
            async with limit:
                return await self._open(operation)

        self._spares.setdefault(operation, []).extend(asyncio.ensure_future(one()) for _ in range(count))

    async def ready(self, operation: str) -> None:
        """Until every channel `prepare` opens for `operation` is up; raises the first failure."""
        spares = list(self._spares.get(operation, []))
        if spares:
            await asyncio.gather(*spares)

    async def _channel(self, operation: str) -> SecureChannel:
        spares = self._spares.get(operation)
        return await (spares.pop(0) if spares else self._open(operation))

    async def serve(self, sock: Path, operation: str) -> None:
        """Listen on `sock`; each connection QEMU makes is carried with `operation`."""
        sock.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(functools.partial(self._carry, operation), str(sock),
                                                 limit=STREAM_BUFFER)
        self._servers.append(server)

    async def pair(self, operation: str) -> socket.socket:
        """A connected socket pair instead of a listening socket, for a stream QEMU opens once
        (an NBD client): the caller hands the returned end to QEMU by fd, the other end is
        carried with `operation` at once. Creating QEMU's end lets us widen its send buffer,
        which QEMU itself leaves at the system default (~200 KiB)."""
        ours, theirs = socket.socketpair()
        for end in (ours, theirs):
            widen(end)
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=STREAM_BUFFER)
        self._relays.add(asyncio.ensure_future(self._carry(operation, reader, writer)))
        return theirs

    async def _carry(self, operation: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        try:
            channel = await self._channel(operation)
            if channel.peer_fingerprint != self.pin:
                self.refusal = self.refusal or mismatch(operation, channel, self.pin)  # before QEMU sees the close
                await channel.close()
                raise StreamRefused(self.refusal.cause)
            await channel.send_json({"op": operation, "session": self.session})
            reply = await channel.recv_json()
            if not reply or not reply.get("ok"):
                raise StreamRefused(f"destination refused a {operation} stream: {reply}")
            flow = Flow()
            self._flows.append((operation, flow))
            await relay(channel, reader, writer, flow)
        except Exception as err:
            # QEMU sees its socket close and fails the stream (migration or NBD requests); the
            # state machine notices that through QMP.
            log.warning("%s stream of %s broke: %s", operation, self.vm_name, err)
            self.broken = self.broken or f"{operation} stream: {err or type(err).__name__}"
        finally:
            # Also when cancelled (close()) before the relay took the stream, e.g. while the
            # channel's handshake waits on a peer that went away: a QEMU thread writing to a
            # socket nobody reads or closes keeps its migration "cancelling".
            writer.close()
            self._relays.discard(task)

    def check(self) -> None:
        """Raise the pinning refusal once a data channel met the wrong host."""
        if self.refusal is not None:
            raise self.refusal

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._relays):
            task.cancel()
        for spare in (spare for spares in self._spares.values() for spare in spares):
            if not spare.done():
                spare.cancel()
            elif not spare.cancelled() and spare.exception() is None:  # opened, never used: end it cleanly
                closing = asyncio.ensure_future(spare.result().close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
            # a failed one: exception() above retrieved its error (no "never retrieved" at exit)
        self._spares.clear()


def mismatch(operation: str, channel: SecureChannel, pin: str | None) -> MigrationError:
    return failure(Reason.PEER_MISMATCH, f"Migration rejected: a {operation} channel came from {channel.peer_name} "
                   f"({channel.peer_fingerprint}), not from this session's peer ({pin or 'none yet'})")


async def accept_stream(sockets: dict[str, str], channel: SecureChannel, operation: str,
                        pin: str | None = None) -> None:
    """Destination side: connect to the local QEMU socket for `operation` and relay into it, if
    the channel comes from the host of the session's control channel (`pin`)."""
    if channel.peer_fingerprint != pin:
        why = mismatch(operation, channel, pin)
        log.warning("%s", why.cause)
        await channel.send_json({"ok": False, **why.as_dict()})
        return
    target = sockets.get(operation)
    if target is None:
        await channel.send_json({"ok": False, "error": f"no {operation} socket in this session"})
        return
    reader, writer = await asyncio.open_unix_connection(target, limit=STREAM_BUFFER)
    if operation == MIGRATE_DATA:
        # Keep the destination's queues short, so that what the source's QEMU counts as sent but
        # the destination's has not loaded waits in the source's socket, where the source sees
        # it (relay.Flow.in_flight) and budgets the downtime for it (live/downtime.py).
        await channel.send_json({"ok": True})
        await relay(channel, reader, writer, receive_buffer=MIGRATE_RECEIVE_BUFFER)
        return
    widen(writer.get_extra_info("socket"))
    await channel.send_json({"ok": True})
    await relay(channel, reader, writer)

# Measured with bench/storage_mirror.py: 4 MiB beat the ~200 KiB default clearly.
LOCAL_SOCKET_BUFFER = 4 << 20
# The destination channel socket's receive buffer for a migration stream (bench/migration.py,
# bench/soak.py: see relay.CHANNEL_SOCKET_BUFFER).
MIGRATE_RECEIVE_BUFFER = 256 << 10


def widen(sock: socket.socket | None) -> None:
    """Let one write hand a whole record (or NBD request) to the kernel. A unix socket's send
    buffer bounds the bytes in flight to the reader; at the default ~200 KiB every MiB needs
    several wake-ups of both processes, which on a busy host each wait for a CPU."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LOCAL_SOCKET_BUFFER)
