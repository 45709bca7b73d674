"""The agent's local HTTP API (aiohttp, JSON under /api/v1/). Binds to loopback by default:
remote control comes through SSH, never through an open port."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from ..errors import QVError
from ..vmm import VMSpec
from ..vmm.spec import describe_error
from .events import Event
from .facts import host_facts, storage_check

if TYPE_CHECKING:
    from .daemon import Agent

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, cause: str, fix: str | None = None) -> web.Response:
    return web.json_response({"error": cause, "fix": fix}, status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except QVError as err:
        status = 404 if str(err.cause).startswith("unknown VM") else 409
        return error_response(status, err.cause, err.fix)
    except ValidationError as err:
        cause, fix = describe_error(err)
        return error_response(400, cause, fix)
    except json.JSONDecodeError:
        return error_response(400, "request body is not JSON")


async def sse(request: web.Request, events: AsyncIterator[Event], first: Event | None = None) -> web.StreamResponse:
    """Stream events as server-sent events (works with `curl -N`)."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    if first is not None:
        await resp.write(f"event: {first['event']}\ndata: {json.dumps(first)}\n\n".encode())
    async for event in events:
        await resp.write(f"event: {event['event']}\ndata: {json.dumps(event)}\n\n".encode())
    await resp.write_eof()
    return resp


def build_app(agent: Agent) -> web.Application:
    app = web.Application(middlewares=[errors_as_json])
    reg = agent.registry
    routes = web.RouteTableDef()

    @routes.get("/api/v1/host")
    async def host(_: web.Request) -> web.Response:
        return web.json_response(host_facts(agent))

    @routes.get("/api/v1/vms")
    async def list_vms(_: web.Request) -> web.Response:
        return web.json_response([reg.describe(vm) for vm in reg.vms.values()])

    @routes.post("/api/v1/vms")
    async def define(request: web.Request) -> web.Response:
        spec = VMSpec.model_validate(await request.json())
        return web.json_response(reg.describe(reg.define(spec)), status=201)

    @routes.get("/api/v1/vms/{name}")
    async def show(request: web.Request) -> web.Response:
        return web.json_response(reg.describe(reg.get(request.match_info["name"])))

    @routes.post("/api/v1/vms/{name}/start")
    async def start(request: web.Request) -> web.Response:
        return web.json_response(reg.describe(await reg.start(request.match_info["name"])))

    @routes.post("/api/v1/vms/{name}/stop")
    async def stop(request: web.Request) -> web.Response:
        return web.json_response(reg.describe(await reg.stop(request.match_info["name"])))

    @routes.delete("/api/v1/vms/{name}")
    async def undefine(request: web.Request) -> web.Response:
        reg.undefine(request.match_info["name"])
        return web.json_response({"ok": True})

    @routes.post("/api/v1/vms/{name}/verify-ram")
    async def verify(request: web.Request) -> web.Response:
        from ..vmm import verify_ram

        vm = reg.get(request.match_info["name"])
        if not vm.running or vm.proc is None or vm.spec.guest.test is None:
            raise QVError(f"VM {vm.name!r} is not a running test guest", "start a VM with guest.test")
        report = await verify_ram(vm.proc, vm.spec)
        return web.json_response({"ok": report.ok, "report": str(report), "edge": report.edge})

    @routes.post("/api/v1/vms/{name}/monitor")
    async def monitor(request: web.Request) -> web.Response:
        """An HMP command to the VM's QEMU (as `virsh qemu-monitor-command --hmp`): for
        operators' diagnostics and tests that act on a running VM (e.g. `qemu-io` writes)."""
        vm = reg.get(request.match_info["name"])
        if not vm.running or vm.proc is None:
            raise QVError(f"VM {vm.name!r} is not running", f"start it: quantavirt vm start {vm.name}")
        body: dict[str, Any] = await request.json()
        output = await vm.proc.execute("human-monitor-command", {"command-line": str(body.get("command", ""))})
        return web.json_response({"output": output})

    @routes.get("/api/v1/vms/{name}/events")
    async def vm_events(request: web.Request) -> web.StreamResponse:
        return await sse(request, agent.events.stream(request.match_info["name"]))

    @routes.get("/api/v1/storage-check")
    async def storage(request: web.Request) -> web.Response:
        return web.json_response(storage_check(request.query.get("path", "")))

    @routes.get("/api/v1/pqc/identity")
    async def identity(_: web.Request) -> web.Response:
        return web.json_response(agent.identity_document())

    @routes.post("/api/v1/pqc/trust")
    async def trust(request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        fingerprint = agent.import_trust(body["name"], body["public_key"], force=bool(body.get("force")))
        return web.json_response({"name": body["name"], "fingerprint": fingerprint})

    app.add_routes(routes)
    for extend in agent.api_extensions:
        extend(app, agent)
    return app
