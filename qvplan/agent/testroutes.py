"""Test-only routes, off unless the agent starts with QUANTAVIRT_TEST_ROUTES=1 (the test fixture
sets it; documented in the README as test and lab use only).

Tests of storage migration write a VM's disk through its running QEMU (so a mirror sees the
writes) and look at its block nodes. They get exactly that here, on the control socket, root
only, with every value checked and the HMP line built by the agent: a narrow route, not a shell
into QEMU (the general `…/monitor` passthrough stays off).
"""

from __future__ import annotations

import os
import re

from aiohttp import web

from ..contract.reasons import Reason
from ..errors import QVError
from ..host.context import Host
from ..host.registry import VM
from ..units import parse_size
from .control import require_root

ENABLE = "QUANTAVIRT_TEST_ROUTES"
_NODE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


def enabled() -> bool:
    return os.environ.get(ENABLE) == "1"


def _bad(what: str) -> QVError:
    return QVError(f"test disk write: bad {what}", "send {node, pattern (0-255), offset, length}",
                   code=Reason.BAD_REQUEST)


def add_routes(app: web.Application, host: Host) -> None:
    routes = web.RouteTableDef()

    def running(request: web.Request) -> VM:
        require_root(request, "test routes", "run the test as root")
        vm = host.registry.get(request.match_info["name"])
        if not vm.running or vm.proc is None:
            raise QVError(f"VM {vm.name!r} is not running", f"start it: quantavirt vm start {vm.name}",
                          code=Reason.VM_STATE)
        return vm

    @routes.post("/api/v1/vms/{name}/test/disk-write")
    async def disk_write(request: web.Request) -> web.Response:
        """`qemu-io -d NODE "write -P PATTERN OFFSET LENGTH"` in the VM's QEMU, nothing else."""
        vm = running(request)
        body = await request.json()
        if not isinstance(body, dict):
            raise _bad("body")
        node, pattern = body.get("node", "vd0"), body.get("pattern")
        if not isinstance(node, str) or not _NODE.match(node):
            raise _bad("node")
        if not isinstance(pattern, int) or isinstance(pattern, bool) or not 0 <= pattern <= 255:
            raise _bad("pattern")
        try:
            offset, length = parse_size(str(body.get("offset", 0))), parse_size(str(body.get("length")))
        except (ValueError, QVError):
            raise _bad("offset or length") from None
        line = f'qemu-io -d {node}/virtio-backend "write -P {pattern:#x} {offset} {length}"'
        output = await vm.proc.execute("human-monitor-command", {"command-line": line})
        if "rror" in str(output):
            raise QVError(f"qemu-io: {str(output).strip()[:200]}", "check the node and range",
                          code=Reason.QEMU_FAILED)
        return web.json_response({"output": output})

    @routes.post("/api/v1/vms/{name}/test/block")
    async def block(request: web.Request) -> web.Response:
        """What QEMU says of the VM's block devices and nodes (query-block, query-named-block-nodes)."""
        vm = running(request)
        devices = await vm.proc.execute("query-block")
        nodes = await vm.proc.execute("query-named-block-nodes")
        return web.json_response({"devices": devices, "nodes": [n.get("node-name") for n in nodes]})

    app.add_routes(routes)
