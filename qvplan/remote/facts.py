"""Gather host facts from many hosts at once over SSH, with a bounded fan-out.

facts[name] is the agent's GET /api/v1/host document (see CONTRACTS.md) plus:
  "storage_checks": {path: bool}   can this host reach the path (shared storage)
  "reachable":      {dest: bool}   can this host open a TCP connection to dest's migration port
  "ssh":            {"address": "10.77.0.11:22", "user": "root"}
An unreachable host lands in errors[name] as one line (host, address, reason); it never hides the
other hosts' facts. `reachable` is a plain TCP probe of the inventory's migration address
(`migration:`, default ADDRESS:9410), so it holds even for a host whose SSH failed.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from ..addresses import split_hostport
from ..agent.client import AgentError
from ..inventory import HostTarget
from .connection import HostConnection
from .errors import RemoteError
from .provision import ProvisionOptions, ensure_agent

REACH_TIMEOUT = 3

Facts = dict[str, dict[str, Any]]
Errors = dict[str, str]


async def fan_out(targets: Iterable[HostTarget], job: Callable[[HostConnection], Awaitable[Any]],
                  *, concurrency: int = 10) -> tuple[dict[str, Any], Errors]:
    """Connect to each target (at most `concurrency` at once), run `job`, close. Errors per host."""
    sem = asyncio.Semaphore(concurrency)
    results: dict[str, Any] = {}
    errors: Errors = {}

    async def one(target: HostTarget) -> None:
        async with sem:
            try:
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
    out: dict[str, bool] = {}
    for path in paths:
        try:
            reply = await conn.api("GET", f"storage-check?path={_quote_query(path)}", timeout=15)
            out[path] = bool(reply.get("accessible", reply.get("ok"))) if isinstance(reply, dict) else bool(reply)
        except (RemoteError, AgentError):
            out[path] = (await conn.run(["test", "-e", path], timeout=15)).ok
    return out


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
    if not dests:
        return {}
    res = await conn.run(["bash", "-c", reach_script(dests)], timeout=REACH_TIMEOUT + 10)
    seen = dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line)
    return {name: seen.get(name) == "ok" for name in dests}


async def gather_facts(hosts: Iterable[HostTarget] | Mapping[str, HostTarget], *,
                       storage_paths: Iterable[str] | Mapping[str, Iterable[str]] = (),
                       check_reachability: bool = True, provision: ProvisionOptions | None = None,
                       concurrency: int = 10) -> tuple[Facts, Errors]:
    """Facts of every host, and one error line per host that could not be asked.

    `storage_paths`: paths every host must reach, or {host: paths}. `provision`: when given,
    make sure each host runs our agent first (see `ensure_agent`).
    """
    targets = list(hosts.values()) if isinstance(hosts, Mapping) else list(hosts)

    def paths_for(name: str) -> list[str]:
        if isinstance(storage_paths, Mapping):
            return list(storage_paths.get(name, ()))
        return list(storage_paths)

    async def collect(conn: HostConnection) -> dict[str, Any]:
        if provision is not None:
            await ensure_agent(conn, provision)
        facts = dict(await conn.api("GET", "host", timeout=30))
        facts["storage_checks"] = await storage_checks(conn, paths_for(conn.name))
        facts["ssh"] = {"address": conn.target.ssh_address, "user": conn.target.ssh.user}
        if check_reachability:
            dests = {t.name: t.migration_address for t in targets if t.name != conn.name}
            facts["reachable"] = await reachability(conn, dests)
        return facts

    return await fan_out(targets, collect, concurrency=concurrency)
