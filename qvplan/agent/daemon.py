"""The `quantavirt agent` process: one host, its migration service, the API and the listener."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from aiohttp import web

from ..host.config import AgentConfig
from ..host.context import Host
from ..migration.service import MigrationService
from .api import build_app, read_only_app
from .control import bind_control_socket
from .listener import MigrationListener

log = logging.getLogger(__name__)
SHUTDOWN_TIMEOUT = 2.0  # seconds the API waits for open requests when the agent stops


class Agent:
    """What an agent is made of: the host (config, identity, trust, VMs, events), the migration
    service on it, the control API (its Unix socket), the read-only HTTP API (:9400) and the
    migration listener (:9410)."""

    def __init__(self, config: AgentConfig, state_override: str | None = None) -> None:
        self.host = Host(config, state_override)
        self.migration = MigrationService(self.host)
        self.listener = MigrationListener(self.host, self.migration.operations())
        self._runners: list[web.AppRunner] = []
        self._stopped = asyncio.Event()
        self._stopping = False

    async def start(self) -> None:
        await self.host.registry.load()
        await self.migration.recover()
        config = self.host.config
        control = build_app(self.host, extensions=[self.migration.add_routes, self.migration.add_observe_routes])
        read_only = read_only_app(control, config.api.listen, (config.host.name, socket.gethostname()))
        host, port = config.api_address
        # Open event streams would hold shutdown for aiohttp's default 60 s; a client reconnects anyway.
        for app in (read_only, control):
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
            await runner.setup()
            self._runners.append(runner)
        # TCP first: a second agent started on the same config fails there, before it could take
        # the running agent's control socket path over.
        await web.TCPSite(self._runners[0], host, port, reuse_address=True).start()
        sock = bind_control_socket(config.api.socket, config.api.group)
        await web.SockSite(self._runners[1], sock).start()
        await self.listener.start()
        log.info("agent %s up: control %s, api %s (read-only), migration %s", config.host.name, config.api.socket,
                 config.api.listen, config.migration.listen)

    async def stop(self) -> None:
        """Stop serving. VMs keep running: a restarted agent re-attaches to them. Migrations not
        yet committed roll back first, in order; committed ones are left to the journal."""
        if self._stopping:
            return
        self._stopping = True
        await self.migration.shutdown()
        await self.listener.close()
        for runner in self._runners:
            await runner.cleanup()
        self._remove_socket()
        self._stopped.set()

    def _remove_socket(self) -> None:
        import contextlib
        import os

        with contextlib.suppress(OSError):
            if os.stat(self.host.config.api.socket).st_uid == os.geteuid():
                os.unlink(self.host.config.api.socket)

    async def run_forever(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))
        await self._stopped.wait()
