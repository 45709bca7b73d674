"""`quantavirt agent`: run the host daemon in the foreground."""

from __future__ import annotations

import asyncio
import logging
import os

import click

from ..errors import UsageError
from . import local


@click.command()
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="Agent config file; the same as `quantavirt --config FILE agent` (a systemd unit's form).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def agent(ctx: click.Context, config: str | None, log_level: str) -> None:
    """Run the QuantaVirt host agent (HTTP API and migration listener)."""
    from ..agent.daemon import Agent
    from ..agent.memory import return_big_blocks

    os.umask(0o077)  # everything the agent creates (state, logs, sockets, images) is private
    root = ctx.find_root()
    if config is not None:  # more specific than QUANTAVIRT_CONFIG; two on the command line must agree
        given = root.get_parameter_source("config") is click.core.ParameterSource.COMMANDLINE
        if given and root.obj["config"] != config:
            raise UsageError(f"two config files: --config {root.obj['config']} and agent --config {config}",
                             "give one of them")
        root.obj["config"] = config
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return_big_blocks()
    cfg = local.config(ctx)
    # A config given explicitly must exist; the default one may be absent (defaults apply).
    asyncio.run(Agent(cfg, root.obj.get("state_dir")).run_forever())
