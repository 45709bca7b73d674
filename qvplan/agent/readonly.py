"""The spec's TCP API (`[api] listen`, 127.0.0.1:9400): read-only, and not for web pages.

It carries only the GET routes of the control API (facts, VMs, migrate status and events,
metrics). Anything else is refused with `read-only-api`, whose fix names the control socket.
Browsers are kept out twice: a request carrying an `Origin` header (every cross-origin fetch or
form POST has one) is refused, and so is one whose `Host` is not this listener's own address or
localhost (DNS rebinding: a page on evil.example whose name now points at 127.0.0.1).
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..addresses import split_hostport
from ..contract.reasons import FIXES, Reason
from ..errors import QVError
from ..host.http import Handler, Middleware, error_response
from ..pqc.gate import RateLimitedLog

READ_METHODS = ("GET", "HEAD")
log = logging.getLogger(__name__)
refusals = RateLimitedLog(log)  # a page or a local user may knock as often as it likes


def refuse(request: web.Request, err: QVError) -> web.Response:
    refusals.warning(f"{err.code}:{request.method}", "read-only api: refused %s %s (%s): %s", request.method,
                     request.path[:200], err.code, err.cause)
    return error_response(err)


def allowed_hosts(listen: str, names: tuple[str, ...] = ()) -> frozenset[str]:
    """The `Host` values the listener answers: its own HOST:PORT, localhost (with or without the
    port), and this host's own `names` with the port (`[host] name`, the hostname: what a
    Prometheus target names it by). A rebinding page's name is none of these."""
    host, port = split_hostport(listen)
    own = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    names = {own, "localhost", f"localhost:{port}", *(f"{n}:{port}" for n in names if n)}
    if host in ("0.0.0.0", "::"):
        names |= {f"127.0.0.1:{port}", f"[::1]:{port}"}
    return frozenset(n.lower() for n in names)


def guard(listen: str, names: tuple[str, ...] = ()) -> Middleware:
    hosts = allowed_hosts(listen, names)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if "Origin" in request.headers:
            return refuse(request, QVError("the agent API does not answer web pages (the request has an Origin)",
                                          "use curl or the quantavirt CLI, not a browser", code=Reason.FORBIDDEN))
        if request.headers.get("Host", "").lower() not in hosts:
            return refuse(request, QVError(f"Host {request.headers.get('Host', '(none)')[:100]!r} is not this agent's",
                                          f"address it as {listen} or localhost", code=Reason.FORBIDDEN))
        if request.method not in READ_METHODS:
            return refuse(request, QVError(f"{request.method} {request.path[:200]}: the TCP API is read-only",
                                          FIXES[Reason.READ_ONLY_API], code=Reason.READ_ONLY_API))
        return await handler(request)

    return check


def copy_read_routes(source: web.Application, target: web.Application) -> None:
    """Add to `target` the GET/HEAD routes of `source` (same paths, same handlers), nothing else."""
    for route in source.router.routes():
        if route.method in READ_METHODS:
            target.router.add_route(route.method, route.resource.canonical, route.handler)  # type: ignore[union-attr]
