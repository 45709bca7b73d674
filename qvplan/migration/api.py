"""Migration routes of the agent API: start, status, cancel, events (SSE)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import ValidationError

from ..contract.errors import refused
from ..contract.events import OUTCOMES
from ..contract.flags import MigrateFlags
from ..contract.ports import MIGRATION_PORT
from ..contract.reasons import Reason
from ..contract.rules import Policies
from ..errors import QVError
from ..host.events import drain
from ..host.http import sse
from ..host.registry import VMError
from .job import MigrationJob
from .live.source import SourceMigration
from .offline.source import OfflineMigration

if TYPE_CHECKING:
    from ..host.context import Host



def no_migration(name: str) -> QVError:
    return QVError(f"no migration of {name!r} on this host",
                   f"start one with `quantavirt vm migrate {name} --dest HOST:{MIGRATION_PORT}`",
                   code=Reason.NO_MIGRATION)


def add_routes(app: web.Application, host: Host, jobs: dict[str, MigrationJob]) -> None:
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
        if job is None:
            raise no_migration(name)
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
