"""`quantavirt agent`: run the host daemon in the foreground."""

from __future__ import annotations

import asyncio
import logging
import os

import click

from . import local


@click.command()
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def agent(ctx: click.Context, log_level: str) -> None:
    """Run the QuantaVirt host agent (HTTP API and migration listener)."""
    from ..agent.daemon import Agent

    os.umask(0o077)  # everything the agent creates (state, logs, sockets, images) is private
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = local.config(ctx)
    # A config given explicitly must exist; the default one may be absent (defaults apply).
    asyncio.run(Agent(cfg, ctx.find_root().obj.get("state_dir")).run_forever())
