"""Gather host facts from many hosts at once over SSH, with a bounded fan-out.

facts[name] is the agent's GET /api/v1/host document (see CONTRACTS.md) plus:
  "storage_checks": {path: bool}   can this host reach the path (shared storage)
  "reachable":      {dest: bool}   can this host open a TCP connection to dest's migration port
  "ssh":            {"address": "10.77.0.11:22", "user": "root"}
An unreachable host lands in errors[name] as one line (host, address, reason); it never hides the
other hosts' facts. `reachable` is a plain TCP probe of the inventory's migration address
(`migration:`, default ADDRESS:9410), so it holds even for a host whose SSH failed. The probe
is made by the host's sshd (a direct-tcpip channel of the connection we have anyway), not by a
command: each command runs the login shell and its rc files, which can take a second.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import asyncssh

from ..addresses import split_hostport
from ..agent.client import AgentError
from ..inventory import HostTarget
from .connection import HostConnection
from .errors import RemoteError
from .pool import Connections

if TYPE_CHECKING:
    from .provision import ProvisionOptions

REACH_TIMEOUT = 3

Facts = dict[str, dict[str, Any]]
Errors = dict[str, str]


async def fan_out(targets: Iterable[HostTarget], job: Callable[[HostConnection], Awaitable[Any]],
                  *, concurrency: int = 10, pool: Connections | None = None) -> tuple[dict[str, Any], Errors]:
    """Connect to each target (at most `concurrency` at once), run `job`, close. Errors per host.
    With `pool`, its connections are used and left open for the pool's other users."""
    sem = asyncio.Semaphore(concurrency)
    results: dict[str, Any] = {}
    errors: Errors = {}

    async def one(target: HostTarget) -> None:
        async with sem:
            try:
                if pool is not None:
                    results[target.name] = await job(await pool.get(target.name))
                    return
                async with HostConnection(target) as conn:
                    results[target.name] = await job(conn)
            except (RemoteError, AgentError) as err:
                errors[target.name] = str(err)
            except Exception as err:  # one broken host must not hide the others
                errors[target.name] = f"{target.name} ({target.ssh_address}): {type(err).__name__}: {err}"

    await asyncio.gather(*(one(t) for t in targets))
    return results, errors


async def storage_checks(conn: HostConnection, paths: Iterable[str]) -> dict[str, bool]:
    """{path: accessible} via the agent's storage-check, or `test -e` over SSH without an agent."""
    async def one(path: str) -> bool:
        try:
            reply = await conn.api("GET", f"storage-check?path={_quote_query(path)}", timeout=15)
            return bool(reply.get("accessible", reply.get("ok"))) if isinstance(reply, dict) else bool(reply)
        except (RemoteError, AgentError):
            return (await conn.run(["test", "-e", path], timeout=15)).ok

    paths = list(paths)
    return dict(zip(paths, await asyncio.gather(*(one(p) for p in paths)), strict=True))


def _quote_query(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="/")


def reach_script(dests: Mapping[str, str], timeout: int = REACH_TIMEOUT) -> str:
    """A bash script that tries every dest HOST:PORT in parallel and prints `name ok|fail`."""
    lines = []
    for name, addr in dests.items():
        host, port = split_hostport(addr)
        probe = f"exec 3<>/dev/tcp/{host}/{port}"
        lines.append(f"(timeout {timeout} bash -c {shlex.quote(probe)} 2>/dev/null "
                     f"&& echo {shlex.quote(name)} ok || echo {shlex.quote(name)} fail) &")
    lines.append("wait")
    return "\n".join(lines)


async def reachability(conn: HostConnection, dests: Mapping[str, str]) -> dict[str, bool]:
    """{dest: can this host open a TCP connection to it}: sshd on the host connects for us
    (a direct-tcpip channel, no command run); where sshd forbids that, a bash probe."""
    if not dests:
        return {}
    try:
        return dict(zip(dests, await asyncio.gather(*(_tcp_probe(conn, a) for a in dests.values())),
                        strict=True))
    except _ForwardingRefused:
        return await _reach_by_bash(conn, dests)


class _ForwardingRefused(Exception):
    """sshd does not allow TCP forwarding (AllowTcpForwarding no)."""


async def _tcp_probe(conn: HostConnection, address: str) -> bool:
    host, port = split_hostport(address)
    try:
        _, writer = await asyncio.wait_for(conn.ssh.open_connection(host, port), REACH_TIMEOUT)
    except asyncssh.ChannelOpenError as err:
        if err.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
            raise _ForwardingRefused() from None
        return False  # OPEN_CONNECT_FAILED: refused, no route, ...
    except (TimeoutError, OSError, asyncssh.Error):
        return False
    writer.close()
    return True


async def _reach_by_bash(conn: HostConnection, dests: Mapping[str, str]) -> dict[str, bool]:
    res = await conn.run(["bash", "-c", reach_script(dests)], timeout=REACH_TIMEOUT + 10)
    seen = dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line)
    return {name: seen.get(name) == "ok" for name in dests}


async def gather_facts(hosts: Iterable[HostTarget] | Mapping[str, HostTarget], *,
                       storage_paths: Iterable[str] | Mapping[str, Iterable[str]] = (),
                       check_reachability: bool = True, provision: ProvisionOptions | None = None,
                       concurrency: int = 10, pool: Connections | None = None) -> tuple[Facts, Errors]:
    """Facts of every host, and one error line per host that could not be asked.

    `storage_paths`: paths every host must reach, or {host: paths}. `provision`: when given,
    make sure each host runs our agent first (see `ensure_agent`). `pool`: use (and keep) its
    connections instead of one of our own per host.
    """
    targets = list(hosts.values()) if isinstance(hosts, Mapping) else list(hosts)

    def paths_for(name: str) -> list[str]:
        if isinstance(storage_paths, Mapping):
            return list(storage_paths.get(name, ()))
        return list(storage_paths)

    async def collect(conn: HostConnection) -> dict[str, Any]:
        if provision is not None:
            from .provision import ensure_agent  # only when asked: it imports the VM layer

            await ensure_agent(conn, provision)
        dests = {t.name: t.migration_address for t in targets if t.name != conn.name} if check_reachability else {}
        host, storage, reachable = await asyncio.gather(conn.api("GET", "host", timeout=30),
                                                        storage_checks(conn, paths_for(conn.name)),
                                                        reachability(conn, dests))
        facts = dict(host)
        facts["storage_checks"] = storage
        facts["ssh"] = {"address": conn.target.ssh_address, "user": conn.target.ssh.user}
        if check_reachability:
            facts["reachable"] = reachable
        return facts

    return await fan_out(targets, collect, concurrency=concurrency, pool=pool)
