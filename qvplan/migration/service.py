"""The migration service of one host: its running migrations, operations, routes and recovery."""

from __future__ import annotations

from functools import partial

from aiohttp import web

from ..host.context import Host, Operation
from . import api
from .incoming import discard_uncommitted
from .job import MigrationJob
from .live import destination as live_dest
from .offline import destination as offline_dest
from .offline import recovery as offline_recovery
from .recent import RecentMigrations


class MigrationService:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.outgoing: dict[str, MigrationJob] = {}  # by VM name: its latest migration from here
        self.incoming: dict[str, live_dest.Incoming] = {}  # by session: live migrations coming in
        self.recent = RecentMigrations(self.outgoing)  # the last migrations' passes (charts, reports)
        host.events.observe(self.recent.on_event)

    def operations(self) -> dict[str, Operation]:
        """What a peer may ask on :9410 (after the PQC handshake)."""
        return {
            "migrate": partial(live_dest.handle_migrate, self.host, self.incoming),
            "migrate-data": partial(live_dest.handle_data, self.incoming),
            "storage-data": partial(live_dest.handle_data, self.incoming),
            "session-state": partial(live_dest.handle_session_state, self.host),
            "offline-receive": partial(offline_dest.handle_receive, self.host),
            "offline-state": partial(offline_dest.handle_state, self.host),
        }

    def add_routes(self, app: web.Application) -> None:
        api.add_routes(app, self.host, self.outgoing)

    def add_observe_routes(self, app: web.Application) -> None:
        """`/metrics` and the pass history (observe_api.py); the read-only listener's, once it exists."""
        from . import observe_api

        observe_api.add_routes(app, self.host, self.outgoing, self.recent)

    async def recover(self) -> None:
        """At agent start, after the registry loaded: settle what a stop left half done."""
        await discard_uncommitted(self.host.registry)
        offline_recovery.resume(self.host)
