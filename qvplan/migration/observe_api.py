"""What operators watch, as routes of the agent API: `GET /metrics` (Prometheus) and
`GET /api/v1/vms/NAME/migrate/passes` (a recent migration's passes, for charts and reports).
Both are GETs, so the read-only TCP listener serves them too (agent/readonly.py).

prometheus_client is imported here, when the agent adds the routes, never by the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from ..contract.reasons import Reason
from ..errors import QVError
from .recent import RecentMigrations

if TYPE_CHECKING:
    from ..host import Host
    from .job import MigrationJob


def add_routes(app: web.Application, host: Host, jobs: Mapping[str, MigrationJob],
               recent: RecentMigrations) -> None:
    from .metrics import CONTENT_TYPE, AgentMetrics

    metrics = AgentMetrics(host, jobs)
    host.events.observe(metrics.on_event)
    routes = web.RouteTableDef()

    @routes.get("/metrics")
    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    @routes.get("/api/v1/vms/{name}/migrate/passes")
    async def passes(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        document = recent.document(name)
        if document is None:
            raise QVError(f"no recent migration of {name!r} from this host",
                          f"start one with `quantavirt vm migrate {name} --dest HOST:9410`", code=Reason.NO_MIGRATION)
        return web.json_response(document)

    app.add_routes(routes)
