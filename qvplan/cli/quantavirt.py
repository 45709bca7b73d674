"""`quantavirt`: the host-side CLI and daemon of the spec."""

from __future__ import annotations

import click

from .common import entry_point

COMMANDS = {
    "agent": "qvplan.cli.qv_agent:agent",
    "pqc": "qvplan.cli.qv_pqc:pqc",
    "vm": "qvplan.cli.qv_vm:vm",
    "system": "qvplan.cli.qv_system:system",
}


@entry_point(COMMANDS)
@click.option("--config", "config", envvar="QUANTAVIRT_CONFIG", type=click.Path(dir_okay=False),
              help="Agent config file (default /etc/quantavirt/quantavirt.conf).")
@click.option("--state-dir", envvar="QUANTAVIRT_STATE_DIR", type=click.Path(file_okay=False),
              help="Host state directory (default /var/lib/quantavirt as root).")
@click.pass_context
def main(ctx: click.Context, config: str | None, state_dir: str | None) -> None:
    """QuantaVirt host agent and CLI."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["state_dir"] = state_dir


if __name__ == "__main__":
    main()
