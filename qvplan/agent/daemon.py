"""The `quantavirt agent` process: one host, its migration service, the API and the listener."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from ..host.config import AgentConfig
from ..host.context import Host
from ..migration.service import MigrationService
from .api import build_app
from .listener import MigrationListener

log = logging.getLogger(__name__)
SHUTDOWN_TIMEOUT = 2.0  # seconds the API waits for open requests when the agent stops


class Agent:
    """What an agent is made of: the host (config, identity, trust, VMs, events), the migration
    service on it, the HTTP API (:9400) and the migration listener (:9410)."""

    def __init__(self, config: AgentConfig, state_override: str | None = None) -> None:
        self.host = Host(config, state_override)
        self.migration = MigrationService(self.host)
        self.listener = MigrationListener(self.host, self.migration.operations())
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        self._stopping = False

    async def start(self) -> None:
        await self.host.registry.load()
        await self.migration.recover()
        app = build_app(self.host, extensions=[self.migration.add_routes, self.migration.add_observe_routes])
        # Open event streams would hold shutdown for aiohttp's default 60 s; a client reconnects anyway.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        config = self.host.config
        host, port = config.api_address
        await web.TCPSite(self._runner, host, port, reuse_address=True).start()
        await self.listener.start()
        log.info("agent %s up: api %s, migration %s", config.host.name, config.api.listen, config.migration.listen)

    async def stop(self) -> None:
        """Stop serving. VMs keep running: a restarted agent re-attaches to them. Migrations not
        yet committed roll back first, in order; committed ones are left to the journal."""
        if self._stopping:
            return
        self._stopping = True
        await self.migration.shutdown()
        await self.listener.close()
        if self._runner:
            await self._runner.cleanup()
        self._stopped.set()

    async def run_forever(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))
        await self._stopped.wait()
