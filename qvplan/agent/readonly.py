"""The spec's TCP API (`[api] listen`, 127.0.0.1:9400): read-only, and not for web pages.

It carries only the GET routes of the control API (facts, VMs, migrate status and events,
metrics). Anything else is refused with `read-only-api`, whose fix names the control socket.
Browsers are kept out twice: a request carrying an `Origin` header (every cross-origin fetch or
form POST has one) is refused, and so is one whose `Host` is not this listener's own address or
localhost (DNS rebinding: a page on evil.example whose name now points at 127.0.0.1).
"""

from __future__ import annotations

from aiohttp import web

from ..addresses import split_hostport
from ..contract.reasons import FIXES, Reason
from ..errors import QVError
from ..host.http import Handler, Middleware, error_response

READ_METHODS = ("GET", "HEAD")


def allowed_hosts(listen: str) -> frozenset[str]:
    """The `Host` values the listener answers: its own HOST:PORT and localhost (with or without it)."""
    host, port = split_hostport(listen)
    own = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    names = {own, "localhost", f"localhost:{port}"}
    if host in ("0.0.0.0", "::"):
        names |= {f"127.0.0.1:{port}", f"[::1]:{port}"}
    return frozenset(n.lower() for n in names)


def guard(listen: str) -> Middleware:
    hosts = allowed_hosts(listen)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if "Origin" in request.headers:
            return error_response(QVError("the agent API does not answer web pages (the request has an Origin)",
                                          "use curl or the quantavirt CLI, not a browser", code=Reason.FORBIDDEN))
        if request.headers.get("Host", "").lower() not in hosts:
            return error_response(QVError(f"Host {request.headers.get('Host', '(none)')!r} is not this agent's",
                                          f"address it as {sorted(hosts)[0]} or localhost", code=Reason.FORBIDDEN))
        if request.method not in READ_METHODS:
            return error_response(QVError(f"{request.method} {request.path}: the TCP API is read-only",
                                          FIXES[Reason.READ_ONLY_API], code=Reason.READ_ONLY_API))
        return await handler(request)

    return check


def copy_read_routes(source: web.Application, target: web.Application) -> None:
    """Add to `target` the GET/HEAD routes of `source` (same paths, same handlers), nothing else."""
    for route in source.router.routes():
        if route.method in READ_METHODS:
            target.router.add_route(route.method, route.resource.canonical, route.handler)  # type: ignore[union-attr]
