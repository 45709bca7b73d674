"""QEMU's byte streams between hosts: every connection QEMU makes on the source is carried
through its own PQC channel into the matching local socket on the destination.

One mechanism for every kind of stream. The source serves a local unix socket per kind; QEMU
connects to it (the migration stream and each multifd channel, or an NBD client per disk); each
connection opens a channel with a data operation naming the session, and the destination relays
it into its own QEMU socket for that operation:

  operation       source socket QEMU connects to     destination socket the relay enters
  migrate-data    run/migrate.sock  (`migrate`)      QEMU's `migrate-incoming` socket
  storage-data    run/nbd.sock      (nbd blockdevs)  QEMU's NBD server socket (`nbd-server-start`)
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..pqc import SecureChannel
from .tunnel import STREAM_BUFFER, relay

log = logging.getLogger(__name__)

MIGRATE_DATA = "migrate-data"
STORAGE_DATA = "storage-data"
DATA_OPERATIONS = (MIGRATE_DATA, STORAGE_DATA)

OpenChannel = Callable[[str], Awaitable[SecureChannel]]  # purpose → an authenticated channel


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

    async def serve(self, sock: Path, operation: str) -> None:
        """Listen on `sock`; each connection QEMU makes is carried with `operation`."""
        sock.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(functools.partial(self._carry, operation), str(sock),
                                                 limit=STREAM_BUFFER)
        self._servers.append(server)

    async def _carry(self, operation: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        try:
            channel = await self._open(operation)
            await channel.send_json({"op": operation, "session": self.session})
            reply = await channel.recv_json()
            if not reply or not reply.get("ok"):
                raise StreamRefused(f"destination refused a {operation} stream: {reply}")
            await relay(channel, reader, writer)
        except Exception as err:
            # QEMU sees its socket close and fails the stream (migration or NBD requests); the
            # state machine notices that through QMP.
            log.warning("%s stream of %s broke: %s", operation, self.vm_name, err)
            writer.close()
        finally:
            self._relays.discard(task)

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._relays):
            task.cancel()


async def accept_stream(sockets: dict[str, str], channel: SecureChannel, operation: str) -> None:
    """Destination side: connect to the local QEMU socket for `operation` and relay into it."""
    target = sockets.get(operation)
    if target is None:
        await channel.send_json({"ok": False, "error": f"no {operation} socket in this session"})
        return
    reader, writer = await asyncio.open_unix_connection(target, limit=STREAM_BUFFER)
    await channel.send_json({"ok": True})
    await relay(channel, reader, writer)

