"""The migration listener on :9410: every connection is a PQC channel, then one request.

Operations are registered by name (`ping`, `storage-check`, and the migration's own), so the
channel knows nothing of migration (STYLE.md 6).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..pqc import PQCError, SecureChannel, accept_channel
from ..pqc.gate import HandshakeGate, RateLimitedLog, source_key

if TYPE_CHECKING:
    from .daemon import Agent

log = logging.getLogger(__name__)
refusals = RateLimitedLog(log)

Operation = Callable[["Agent", SecureChannel, dict[str, Any]], Awaitable[None]]
OPERATIONS: dict[str, Operation] = {}


def operation(name: str) -> Callable[[Operation], Operation]:
    def register(fn: Operation) -> Operation:
        OPERATIONS[name] = fn
        return fn

    return register


class MigrationListener:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.server: asyncio.Server | None = None
        self.gate = HandshakeGate()  # handshakes in progress: capped in all and per source address

    async def start(self) -> None:
        host, port = self.agent.config.migration_address
        self.server = await asyncio.start_server(self._serve, host, port, reuse_address=True)

    async def close(self) -> None:
        if self.server:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = source_key(str(peer[0])) if peer else "?"
        if not self.gate.enter(source):  # over a cap: closed at once, nothing read
            writer.transport.abort()
            refusals.warning(f"busy:{source}", "migration connection from %s closed: too many handshakes", source)
            return
        try:
            channel = await accept_channel(
                reader, writer, identity=self.agent.identity, trust=self.agent.trust,
                allowed_kems=("ML-KEM-768", "ML-KEM-1024"), hello_extra=self.agent.hello_extra(),
            )
        except (TimeoutError, PQCError, OSError, asyncio.IncompleteReadError) as err:
            refusals.warning(f"refused:{source}", "migration connection from %s refused: %s", peer, err)
            writer.close()
            return
        finally:
            self.gate.leave(source)
        try:
            request = await channel.recv_json()
            op = OPERATIONS.get((request or {}).get("op", ""))
            if op is None:
                await channel.send_json({"ok": False, "error": f"unknown operation {request!r}"})
                return
            await op(self.agent, channel, request)
        except Exception as err:
            log.exception("operation from %s failed: %s", peer, err)
        finally:
            if not channel.writer.is_closing():
                try:
                    await channel.close()
                except Exception:
                    channel.writer.close()


@operation("ping")
async def _ping(agent: Agent, channel: SecureChannel, _: dict[str, Any]) -> None:
    await channel.send_json({"ok": True, **agent.hello_extra(), "trusted_as": channel.peer_name})


@operation("storage-check")
async def _storage_check(agent: Agent, channel: SecureChannel, request: dict[str, Any]) -> None:
    from .facts import storage_check

    await channel.send_json({"ok": True, **storage_check(str(request.get("path", "")))})
