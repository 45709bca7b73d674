"""The agent's local HTTP API (aiohttp, JSON under /api/v1/). Binds to loopback by default:
remote control comes through SSH, never through an open port."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from ..errors import QVError
from ..host.context import Host
from ..host.facts import host_facts, storage_check
from ..host.http import errors_as_json, sse
from ..vmm import VMSpec

RouteAdder = Callable[[web.Application], None]


def build_app(host: Host, extensions: Iterable[RouteAdder] = ()) -> web.Application:
    """The API: the host's own routes, then each extension's (the migration service's)."""
    app = web.Application(middlewares=[errors_as_json])
    reg = host.registry
    routes = web.RouteTableDef()

    @routes.get("/api/v1/host")
    async def facts(_: web.Request) -> web.Response:
        return web.json_response(host_facts(host))

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
        return await sse(request, host.events.stream(request.match_info["name"]))

    @routes.get("/api/v1/storage-check")
    async def storage(request: web.Request) -> web.Response:
        return web.json_response(storage_check(request.query.get("path", ""), host.registry.roots))

    @routes.get("/api/v1/pqc/identity")
    async def identity(_: web.Request) -> web.Response:
        return web.json_response(host.identity_document())

    @routes.post("/api/v1/pqc/trust")
    async def trust(request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        fingerprint = host.import_trust(body["name"], body["public_key"], force=bool(body.get("force")))
        return web.json_response({"name": body["name"], "fingerprint": fingerprint})

    app.add_routes(routes)
    for add_routes in extensions:
        add_routes(app)
    return app
