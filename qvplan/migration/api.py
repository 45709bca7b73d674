"""Migration routes of the agent API: start, status, cancel, events (SSE)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from ..contract.errors import refused
from ..contract.events import OUTCOMES
from ..contract.flags import MigrateFlags
from ..contract.ports import MIGRATION_PORT
from ..contract.reasons import Reason
from ..contract.rules import Policies
from ..errors import QVError, UsageError
from ..host.events import drain
from ..host.http import sse
from ..host.registry import VMError
from .job import MigrationJob
from .journal import Journal, Record
from .live import lost
from .live import recovery as live_recovery
from .live.source import SourceMigration
from .offline.source import OfflineMigration
from .status import MigrationStatus

if TYPE_CHECKING:
    from ..host.context import Host
    from ..host.registry import VM

_JOURNAL_STATES = {"released": "COMPLETED", "running": "COMPLETED", "landed": "COMPLETED",
                   "rolled-back": "FAILED", "discarded": "FAILED", "lost": "FAILED"}


def no_migration(name: str) -> QVError:
    return QVError(f"no migration of {name!r} on this host",
                   f"start one with `quantavirt vm migrate {name} --dest HOST:{MIGRATION_PORT}`",
                   code=Reason.NO_MIGRATION)


def _is_session(text: str) -> bool:
    return text.isalnum() and 8 <= len(text) <= 64


def refused_settle(name: str) -> VMError:
    return VMError(f"VM {name!r} has no migration in doubt on this host",
                   f"see `quantavirt vm migrate-status {name}`; settle only a VM paused in doubt")


class Settling(MigrationJob):
    """A source session a restarted agent found `committed`: paused here until the destination
    (or the operator) decides. Behaves as a job for status, events and settle."""

    def __init__(self, host: Host, vm: VM, record: Record, journal: Journal) -> None:
        kem = str(record.extra.get("kem", "ML-KEM-768"))
        status = MigrationStatus(vm.name, record.peer, f"{kem} / AES-256-GCM ({host.provider_name})", 0)
        status.phase = 5
        status.session = record.session
        flags = MigrateFlags(pqc_kem=kem)
        super().__init__(host, vm, record.peer, flags, None, status)
        self.session = record.session

    async def _run(self) -> None:
        outcome = await live_recovery.settle_source(self.host, self.journal, self.vm, self.session, self.dest,
                                                    self.flags.pqc_kem, self.status, self.decision)
        self.status.state = "COMPLETED" if outcome == "released" else "FAILED"
        if outcome != "released":
            self.status.error = "the destination did not take the VM after the commit; it resumed here"
            self.status.code = Reason.IN_DOUBT.value
        self.status.finished = time.time()
        self._publish("completed" if outcome == "released" else "failed")


def _latest(journal: Journal, name: str) -> Record | None:
    """The newest session of `name` on this host, whichever role it had here."""
    records = [r for r in (journal.latest_for(name, "source"), journal.latest_for(name, "destination")) if r]
    return max(records, key=lambda r: r.updated, default=None)


def _journal_status(record: Record) -> dict[str, Any]:
    status = {"vm": record.vm, "state": _JOURNAL_STATES.get(record.state, "MIGRATING"), "journal": record.as_dict(),
              "session": record.session}
    if record.role == "destination" and record.state == "rebooted":
        status["doubt"] = (f"this host restarted before the commit's record reached its disk: the guest may have "
                           f"run here; asking the source {record.peer} whether it committed (definition and images "
                           f"kept meanwhile); if it never answers, settle with "
                           f"`quantavirt vm migrate-settle {record.vm} --discard-here` (the source then resumes it)")
    if record.role == "destination" and record.state == "lost":
        why = ("the incoming QEMU died after the commit" if "source_state" not in record.extra else
               f"this host restarted before the commit's record reached its disk and the source says "
               f"{record.extra['source_state']}: the guest may have run here")
        status["doubt"] = (f"{why}; definition and images kept here, the source "
                           f"{record.peer} keeps its copy paused; settle with "
                           f"`quantavirt vm migrate-settle {record.vm} --discard-here` (the source then resumes it)")
    return status


def settling_job(host: Host, vm: VM, record: Record, journal: Journal) -> MigrationJob:
    job = Settling(host, vm, record, journal)
    job.start()
    vm.busy = "migrating"
    return job


def add_routes(app: web.Application, host: Host, jobs: dict[str, MigrationJob], journal: Journal) -> None:
    """The migration routes; `jobs` holds each VM's latest outgoing migration."""
    routes = web.RouteTableDef()

    @routes.post("/api/v1/vms/{name}/migrate")
    async def migrate(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.json()
        vm = host.registry.get(name)
        try:
            flags = MigrateFlags.model_validate(body.get("flags", {}))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            raise QVError(f"invalid migrate flags: {where + ': ' if where else ''}{message}",
                          "see `quantavirt vm migrate --help`", code=Reason.BAD_REQUEST) from None
        dest = str(body.get("dest", ""))
        if vm.busy:
            raise VMError(f"VM {name!r} is already {vm.busy}", f"see `quantavirt vm migrate-status {name}`")
        if not vm.running:
            if not flags.offline:
                raise VMError(f"VM {name!r} is not running", "start it, or use --offline for a stopped VM")
        elif flags.offline:
            raise VMError(f"VM {name!r} is running", "stop it first, or drop --offline for a live migration")
        if dest in (host.config.advertised_migration, host.config.migration.listen):
            raise refused(Reason.SAME_HOST, "destination is the source host", "pick another --dest")
        policies = Policies.model_validate(body.get("policies") or {})
        job = (OfflineMigration if flags.offline else SourceMigration)(host, vm, dest, flags, policies)
        jobs[name] = job
        job.start()
        await job.setup_done.wait()
        status = job.status.as_dict()
        if job.status.state == "FAILED":
            return web.json_response({"error": job.status.error, "fix": job.status.fix, "code": job.status.code,
                                      "status": status},
                                     status=409)
        return web.json_response(status, status=202)

    @routes.get("/api/v1/vms/{name}/migrate")
    async def status(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        job = jobs.get(name)
        wanted = request.query.get("session", "")
        if _is_session(wanted) and (job is None or job.session != wanted):  # apply following one move
            asked = journal.get(wanted)
            if asked is not None and asked.vm == name:
                return web.json_response(_journal_status(asked))
        if job is None:
            record = _latest(journal, name)
            if record is not None:  # a migration before this agent's restart, or an incoming one
                return web.json_response(_journal_status(record))
            raise no_migration(name)
        return web.json_response(job.status.as_dict())

    @routes.get("/api/v1/migrations/{session}")
    async def session_record(request: web.Request) -> web.Response:
        """A session's journal record (apply follows a move by it, also across agent restarts)."""
        record = journal.get(request.match_info["session"]) if _is_session(request.match_info["session"]) else None
        if record is None:
            raise QVError("no such migration session on this host", "see `quantavirt vm migrate-status NAME`",
                          code=Reason.NO_MIGRATION)
        return web.json_response(record.as_dict())

    @routes.post("/api/v1/vms/{name}/migrate/settle")
    async def settle(request: web.Request) -> web.Response:
        """The operator's word on a migration in doubt: resume the guest here, or let it go."""
        name = request.match_info["name"]
        body = await request.json()
        choice = str(body.get("decision", ""))
        if choice not in ("resume-here", "discard-here"):
            raise UsageError("decision must be resume-here or discard-here",
                             f"quantavirt vm migrate-settle {name} --resume-here|--discard-here")
        job = jobs.get(name)
        if job is None or job.status.done or not job.status.doubt:
            record = journal.latest_for(name, "destination")
            if record is not None and record.state in ("lost", "rebooted"):  # this host is its destination: lost.py
                return web.json_response(await lost.settle_lost(host, journal, record, choice))
            raise refused_settle(name)
        if not job.decision.done():
            job.decision.set_result(choice)
        if job.task:
            await job.task
        return web.json_response(job.status.as_dict())

    @routes.post("/api/v1/vms/{name}/migrate/cancel")
    async def cancel(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        job = jobs.get(name)
        if job is None or job.status.done:
            raise VMError(f"VM {name!r} is not migrating", f"see `quantavirt vm migrate-status {name}`",
                          code=Reason.VM_STATE)
        job.cancel()
        if job.task:
            await job.task
        return web.json_response(job.status.as_dict())

    @routes.get("/api/v1/vms/{name}/migrate/events")
    async def events(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        job = jobs.get(name)
        if job is None:
            raise no_migration(name)
        topic = f"{name}/migrate"
        # Subscribe before reading the status, so an outcome in between is not lost.
        with host.events.subscribe(topic) as queue:
            first = {"event": "status", "topic": topic, **job.status.as_dict()}
            if job.status.done:
                return await sse(request, _nothing(), first)
            return await sse(request, drain(queue, until=OUTCOMES), first)

    app.add_routes(routes)


async def _nothing():
    return
    yield
