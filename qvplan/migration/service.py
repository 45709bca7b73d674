"""The migration service of one host: its running migrations, operations, routes and recovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial

from aiohttp import web

from ..host.context import Host, Operation
from . import api
from .incoming import INCOMING_MARK, discard_uncommitted
from .job import MigrationJob
from .journal import journal_for
from .live import destination as live_dest
from .live import reboot, session_state
from .live import recovery as live_recovery
from .offline import destination as offline_dest
from .offline import recovery as offline_recovery
from .recent import RecentMigrations

log = logging.getLogger(__name__)
STOP_WAIT = 20.0  # seconds a stopping agent gives its migrations to roll back before the journal takes over


class MigrationService:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.journal = journal_for(host.state_dir)
        self.outgoing: dict[str, MigrationJob] = {}  # by VM name: its latest migration from here
        self.incoming: dict[str, live_dest.Incoming] = {}  # by session: live migrations coming in
        self.recent = RecentMigrations(self.outgoing)  # the last migrations' passes (charts, reports)
        host.events.observe(self.recent.on_event)

    def operations(self) -> dict[str, Operation]:
        """What a peer may ask on :9410 (after the PQC handshake)."""
        return {
            "migrate": partial(live_dest.handle_migrate, self.host, self.journal, self.incoming),
            "migrate-data": partial(live_dest.handle_data, self.journal, self.incoming),
            "storage-data": partial(live_dest.handle_data, self.journal, self.incoming),
            "session-state": partial(session_state.handle_session_state, self.host, self.journal, self.incoming),
            "offline-receive": partial(offline_dest.handle_receive, self.host),
            "offline-state": partial(offline_dest.handle_state, self.host),
        }

    def add_routes(self, app: web.Application) -> None:
        api.add_routes(app, self.host, self.outgoing, self.journal)

    def add_observe_routes(self, app: web.Application) -> None:
        """`/metrics` and the pass history (observe_api.py); the read-only listener's, once it exists."""
        from . import observe_api

        observe_api.add_routes(app, self.host, self.outgoing, self.recent)

    async def recover(self) -> None:
        """At agent start, after the registry loaded: settle what a stop left half done (the rule
        in live/recovery.py and docs/exactly-once.md)."""
        registry = self.host.registry
        for record in self.journal.open_records("destination"):
            if reboot.crashed_before_commit_flushed(record):  # first: kept by discard_uncommitted below
                reboot.mark_rebooted(self.host, self.journal, record)
            elif record.kind == "live" and record.state == "committing":
                try:
                    await live_recovery.recover_destination(self.host, self.journal, record)
                except Exception:  # one session that cannot be resumed must not keep the agent down
                    log.exception("%s: resuming after restart failed (session %s stays committing; the "
                                  "source keeps asking)", record.vm, record.session)
        await discard_uncommitted(registry, keep=lambda vm: live_recovery.may_have_run(self.journal, vm))
        for record in self.journal.open_records("destination"):
            if record.kind == "live" and record.state in ("loading", "loaded"):
                self.journal.set(record.session, "discarded", settled_by="restart")
            elif record.kind == "live" and record.state == "rebooted":  # also one an earlier start left
                reboot.ask_source_later(self.host, self.journal, record)
        self._recover_offline()
        for record in self.journal.open_records("source"):
            if record.kind != "live":
                continue
            vm = registry.vms.get(record.vm)
            if record.state in ("transferring", "awaiting-commit") and vm is not None and vm.running:
                await live_recovery.roll_back_source(self.journal, vm, record)
            elif record.state in ("transferring", "awaiting-commit") and vm is not None:
                # QEMU gone too (a host crash): a lost `committed` line cannot be told from none,
                # so the destination's word decides whether the definition stays here.
                self.journal.set(record.session, "committed", sync=True, doubt="restarted without QEMU")
                self.outgoing[vm.name] = api.settling_job(self.host, vm, record, self.journal)
            elif record.state in ("transferring", "awaiting-commit"):
                await live_recovery.roll_back_source(self.journal, vm, record)
            elif record.state == "committed":
                if vm is None:  # released already, the journal line after it missing
                    self.journal.set(record.session, "released", settled_by="restart")
                    continue
                self.outgoing[vm.name] = api.settling_job(self.host, vm, record, self.journal)
        offline_recovery.resume(self.host)

    def _recover_offline(self) -> None:
        """Offline sessions, by the same rule: before `committed` the VM stays here; from it on the
        destination's word decides (the OUTGOING mark, offline/recovery.py, asks it). Their files
        are the authority (the destination's commit point is its incoming mark's removal, run before
        this by registry.load and discard_uncommitted); the journal is brought in line with them."""
        registry = self.host.registry
        for record in self.journal.open_records():
            if record.kind != "offline":
                continue
            vm = registry.vms.get(record.vm)
            if record.role == "destination":
                ours = vm is not None and not (vm.dir / INCOMING_MARK).exists()
                self.journal.set(record.session, "landed" if ours else "discarded", settled_by="restart")
            elif record.state == "committed" and vm is None:  # released already, its line missing
                self.journal.set(record.session, "released", settled_by="restart")
            elif record.state != "committed" or not (vm.dir / offline_recovery.OUTGOING).exists():
                # the commit never left (the mark precedes it): the VM is this host's
                self.journal.set(record.session, "rolled-back", settled_by="restart",
                                 error="the source agent stopped before commit")
            # else: committed with its mark: offline_recovery.resume asks the destination and journals

    async def shutdown(self) -> None:
        """SIGTERM: roll back what has not committed, in order; leave what has to the journal."""
        waits = []
        for job in self.outgoing.values():
            record = self.journal.get(job.session)
            if job.task is None or job.task.done():
                continue
            if record is None or record.state in ("transferring", "awaiting-commit"):
                job.cancel("cancelled: the source agent is stopping")
                waits.append(job.task)
        for incoming in list(self.incoming.values()):
            if incoming.state(self.journal) in ("loading", "loaded"):
                incoming.aborted.set()
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_WAIT):
                    await asyncio.gather(*waits, return_exceptions=True)
        deadline = asyncio.get_running_loop().time() + 5
        while any(i.state(self.journal) in ("loading", "loaded") for i in self.incoming.values()):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        while self.incoming and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # their handlers remove QEMU and files
