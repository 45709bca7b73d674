"""The agent's HTTP API (aiohttp, JSON under /api/v1/), behind two doors.

`build_app` is the control API, served on the control socket (control.py: root and the
`quantavirt` group, peer credentials checked): every route. `read_only_app` is the spec's TCP
API on loopback (readonly.py): the same GET routes, nothing that changes state. Remote control
comes through SSH to the control socket, never through an open port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from ..contract.reasons import Reason
from ..errors import QVError
from ..host.context import Host
from ..host.facts import host_facts, storage_check
from ..host.http import errors_as_json, sse
from ..vmm import VMSpec
from .control import Admission, admission_middleware, require_root
from .readonly import copy_read_routes, guard

RouteAdder = Callable[[web.Application], None]


def read_only_app(control: web.Application, listen: str, names: tuple[str, ...] = ()) -> web.Application:
    """The TCP API: the control API's GET routes, guarded against browsers and changes; `names`
    are this host's own names, which a `Host` header may carry besides its address."""
    app = web.Application(middlewares=[guard(listen, names), errors_as_json])
    copy_read_routes(control, app)
    return app


def build_app(host: Host, extensions: Iterable[RouteAdder] = ()) -> web.Application:
    """The control API: the host's own routes, then each extension's (the migration service's)."""
    app = web.Application(middlewares=[admission_middleware(Admission(host.config.api.group)), errors_as_json])
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
        return web.json_response(reg.describe(reg.define_here(spec)), status=201)

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
        """An HMP command to the VM's QEMU (as `virsh qemu-monitor-command --hmp`), for an
        operator's diagnostics: root's only, and off unless `[api] allow_monitor = true` (an HMP
        line reaches all of QEMU: its files, its migration URIs)."""
        if not host.config.api.allow_monitor:
            raise QVError("the HMP monitor passthrough is off on this host",
                          "set [api] allow_monitor = true in the agent config (root only)",
                          code=Reason.MONITOR_DISABLED)
        require_root(request, "the HMP monitor", "run it as root on the host")
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
        require_root(request, "importing a trusted key", "run it as root (quantavirt pqc key-import)")
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) \
                or not isinstance(body.get("public_key"), str):
            raise QVError("a trust import needs name and public_key (strings)",
                          "send the key as /api/v1/pqc/identity gives it", code=Reason.BAD_REQUEST)
        name, key, expect = body["name"], body["public_key"], body.get("fingerprint")
        if body.get("force"):
            raise QVError("force is not accepted over the API: a trusted key is never replaced remotely",
                          f"on the host, as root: quantavirt pqc key-import --name {name} --force",
                          code=Reason.FORBIDDEN)
        got = key_fingerprint(key)
        if expect is not None and expect != got:
            raise QVError(f"the key sent as {name!r} is {got}, not the expected {expect}",
                          "verify the host, then plan again", code=Reason.KEY_CHANGED)
        trusted = dict(host.trust.entries())
        if name in trusted and trusted[name] != got:
            raise QVError(f"a different key is already trusted as {name!r} ({trusted[name]}); offered {got}",
                          f"verify the host; if it was reinstalled, as root on this host: "
                          f"quantavirt pqc key-import --name {name} --force", code=Reason.KEY_CHANGED)
        fingerprint = host.import_trust(name, key)
        return web.json_response({"name": name, "fingerprint": fingerprint})

    app.add_routes(routes)
    for add_routes in extensions:
        add_routes(app)
    from . import testroutes

    if testroutes.enabled():
        testroutes.add_routes(app, host)
    return app


def key_fingerprint(public_key_b64: str) -> str:
    import base64

    from ..pqc import fingerprint

    try:
        return fingerprint(base64.b64decode(public_key_b64, validate=True))
    except ValueError:
        raise QVError("public_key is not base64", "send the key as /api/v1/pqc/identity gives it",
                      code=Reason.BAD_REQUEST) from None
