"""The `quantavirt agent` process: config, identity, VM registry, API and migration listener."""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from ..errors import QVError
from ..pqc import HostIdentity, TrustStore, get_provider
from ..units import parse_size
from .api import build_app
from .config import AgentConfig
from .events import EventHub
from .listener import MigrationListener
from .registry import Registry

log = logging.getLogger(__name__)
SHUTDOWN_TIMEOUT = 2.0  # seconds the API waits for open requests when the agent stops


class Agent:
    def __init__(self, config: AgentConfig, state_override: str | None = None) -> None:
        from ..vmm import detect_accel

        self.config = config
        self.state_dir: Path = config.state_dir(state_override)
        self.pools = config.pool_paths(state_override)
        self.memory_capacity = parse_size(config.host.memory) if config.host.memory else None
        self.identity = HostIdentity.load_or_create(self.state_dir)
        self.trust = TrustStore(self.state_dir)
        self.provider_name = get_provider().name
        self.accel = detect_accel()
        self.events = EventHub()
        self.registry = Registry(self.state_dir, self.pools, self.accel, self.events)
        self.listener = MigrationListener(self)
        # Later layers (migration) add their routes here before start().
        self.api_extensions: list[Callable[[web.Application, Agent], None]] = []
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()

    def hello_extra(self) -> dict[str, Any]:
        return {"host": self.config.host.name, "version": __version__, "provider": self.provider_name}

    def identity_document(self) -> dict[str, str]:
        return {
            "name": self.config.host.name,
            "fingerprint": self.identity.fingerprint,
            "public_key": base64.b64encode(self.identity.public_key).decode(),
        }

    def import_trust(self, name: str, public_key_b64: str, force: bool = False) -> str:
        try:
            raw = base64.b64decode(public_key_b64, validate=True)
        except ValueError:
            raise QVError("public_key is not base64", "send the key as exported by /api/v1/pqc/identity") from None
        return self.trust.add(name, raw, force=force)

    async def start(self) -> None:
        await self.registry.load()
        from ..migration import install as install_migration

        install_migration(self)
        # Open event streams would hold shutdown for aiohttp's default 60 s; a client reconnects anyway.
        self._runner = web.AppRunner(build_app(self), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        host, port = self.config.api_address
        await web.TCPSite(self._runner, host, port, reuse_address=True).start()
        await self.listener.start()
        log.info("agent %s up: api %s, migration %s", self.config.host.name,
                 self.config.api.listen, self.config.migration.listen)

    async def stop(self) -> None:
        """Stop serving. VMs keep running: a restarted agent re-attaches to them."""
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
