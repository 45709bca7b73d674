"""`quantavirt`: the host-side CLI and daemon of the spec."""

from __future__ import annotations

import click

from .. import __version__
from .common import OneLineErrors
from .examples import attach


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", message="%(version)s")
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


def _register() -> None:
    from . import qv_agent, qv_migrate, qv_pqc, qv_system, qv_vm

    del qv_migrate  # its commands join the `vm` group on import

    main.add_command(qv_agent.agent)
    main.add_command(qv_pqc.pqc)
    main.add_command(qv_vm.vm)
    main.add_command(qv_system.system)


_register()
attach(main, "quantavirt")  # every --help ends with an example (examples.py)


if __name__ == "__main__":
    main()
