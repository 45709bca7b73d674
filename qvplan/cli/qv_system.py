"""`quantavirt system ping|storage-check`: ask another host, over the PQC channel on :9410."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..addresses import split_hostport
from ..contract.ports import MIGRATION_PORT
from ..errors import UsageError
from ..pqc import PQCError, open_channel
from . import local
from .common import run_async


@click.group()
def system() -> None:
    """Check connectivity and storage between hosts."""


async def ask(ctx: click.Context, target: str, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the agent at `target` over a PQC channel."""
    try:
        host, port = split_hostport(target, MIGRATION_PORT)
    except ValueError as err:
        raise UsageError(f"bad --host {target!r}: {err}", "use HOST or HOST:PORT") from None
    identity, trust = local.identity_and_trust(ctx)
    channel = await open_channel(host, port, identity=identity, trust=trust,
                                 hello_extra={"purpose": request["op"], **_self_hello(ctx)})
    try:
        await channel.send_json(request)
        reply = await channel.recv_json()
    finally:
        await channel.close()
    return reply or {}


def _self_hello(ctx: click.Context) -> dict[str, str]:
    from .. import __version__

    return {"host": local.config(ctx).host.name, "version": __version__}


@system.command()
@click.option("--host", "target", required=True, help="HOST[:PORT] of the peer's migration listener.")
@click.pass_context
@run_async
async def ping(ctx: click.Context, target: str) -> None:
    """Check that a peer is reachable, its version, PQC provider and mutual trust."""
    click.echo(f"Host: {target}")
    try:
        reply = await ask(ctx, target, {"op": "ping"})
    except PQCError as err:
        if getattr(err, "peer_version", None):
            click.echo(f"Version: {err.peer_version}")
        click.echo(f"Trust: ❌ {err}")
        sys.exit(1)
    click.echo(f"Version: {reply.get('version')}")
    click.echo(f"PQC: {reply.get('provider')}")
    click.echo(f"Trust: ✅ (key: {reply.get('trusted_as')})")


@system.command("storage-check")
@click.option("--host", "target", required=True, help="HOST[:PORT] of the peer.")
@click.option("--path", required=True, help="Path the peer must reach (shared storage).")
@click.pass_context
@run_async
async def storage_check(ctx: click.Context, target: str, path: str) -> None:
    """Check that a peer can reach a path (e.g. a VM disk on shared storage)."""
    reply = await ask(ctx, target, {"op": "storage-check", "path": path})
    if reply.get("accessible"):
        click.echo("Accessible: ✅")
    else:
        click.echo(f"Accessible: ❌ {reply.get('reason')}")
        sys.exit(1)
