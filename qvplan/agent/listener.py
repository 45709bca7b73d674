"""The migration listener on :9410: every connection is a PQC channel, then one request.

Operations are handed in by name (`ping`, `storage-check`, and the migration service's own), so
the channel knows nothing of migration (STYLE.md 6).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from ..host.context import Host, Operation
from ..host.facts import storage_check
from ..pqc import PQCError, SecureChannel, accept_channel
from ..pqc.gate import HandshakeGate, RateLimitedLog, source_key

log = logging.getLogger(__name__)
refusals = RateLimitedLog(log)


class MigrationListener:
    def __init__(self, host: Host, operations: Mapping[str, Operation]) -> None:
        self.host = host
        self.operations: dict[str, Operation] = {"ping": self._ping, "storage-check": self._storage_check,
                                                 **operations}
        self.server: asyncio.Server | None = None
        self.gate = HandshakeGate()  # handshakes in progress: capped in all and per source address

    async def start(self) -> None:
        host, port = self.host.config.migration_address
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
                reader, writer, identity=self.host.identity, trust=self.host.trust,
                allowed_kems=("ML-KEM-768", "ML-KEM-1024"), hello_extra=self.host.hello_extra(),
            )
        except (TimeoutError, PQCError, OSError, asyncio.IncompleteReadError) as err:
            refusals.warning(f"refused:{source}", "migration connection from %s refused: %s", peer, err)
            code = getattr(err, "code", None) or (
                "handshake-timeout" if isinstance(err, TimeoutError) else "connection-reset")
            self.host.events.publish("host", "handshake-refused", code=code)  # counted by the metrics
            writer.close()
            return
        finally:
            self.gate.leave(source)
        try:
            request = await channel.recv_json()
            if request is None:  # ended without asking: a data channel the source opened ahead and never used
                return
            op = self.operations.get(request.get("op", "") if isinstance(request, dict) else "")
            if op is None:
                await channel.send_json({"ok": False, "error": f"unknown operation {request!r}"})
                return
            await op(channel, request)
        except Exception as err:
            log.exception("operation from %s failed: %s", peer, err)
        finally:
            if not channel.writer.is_closing():
                try:
                    await channel.close()
                except Exception:
                    channel.writer.close()

    async def _ping(self, channel: SecureChannel, _: dict[str, Any]) -> None:
        await channel.send_json({"ok": True, **self.host.hello_extra(), "trusted_as": channel.peer_name})

    async def _storage_check(self, channel: SecureChannel, request: dict[str, Any]) -> None:
        await channel.send_json({"ok": True, **storage_check(str(request.get("path", "")), self.host.registry.roots)})
