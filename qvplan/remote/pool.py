"""One SSH connection per host for a whole command, shared by everyone who needs that host.

`qvplan apply` reaches each host for its lock, its facts, the trust exchange, the agent API of
its moves and the final placement. Each SSH handshake (and each exec, which runs the login
shell's rc files) costs real time, so all of these share one connection per host. A connection
that dropped is replaced on the next `get`, never reused; whoever saw it fail says so with
`drop(host, conn)`, which leaves a replacement another caller made already alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from ..inventory import HostTarget
from .connection import HostConnection


class Connections:
    """`await pool.get(host)`: the live connection to `host`, made on first use. `close()` ends all."""

    def __init__(self, targets: Mapping[str, HostTarget]) -> None:
        self.targets = dict(targets)
        self._conns: dict[str, HostConnection] = {}
        self._connecting: dict[str, asyncio.Lock] = {}

    def __contains__(self, host: object) -> bool:
        return host in self._conns

    async def get(self, host: str) -> HostConnection:
        lock = self._connecting.setdefault(host, asyncio.Lock())
        async with lock:  # callers asking at once wait for one handshake
            conn = self._conns.get(host)
            if conn is not None and not conn.alive:
                await self._forget(host, conn)
                conn = None
            if conn is None:
                conn = HostConnection(self.targets[host])
                await conn.connect()
                self._conns[host] = conn
            return conn

    async def drop(self, host: str, conn: HostConnection | None = None) -> None:
        """Close the connection to `host` (only if it is still `conn`, when given)."""
        current = self._conns.get(host)
        if current is not None and (conn is None or current is conn):
            await self._forget(host, current)

    async def _forget(self, host: str, conn: HostConnection) -> None:
        if self._conns.get(host) is conn:
            del self._conns[host]
        with contextlib.suppress(Exception):
            await conn.close()

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
