"""`quantavirt vm …`: define, start, stop, show, list, undefine (the migrate commands: qv_migrate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..units import format_size
from . import local
from .common import LazyGroup


@click.group(cls=LazyGroup, lazy={
    "migrate": "qvplan.cli.qv_migrate:migrate",
    "migrate-status": "qvplan.cli.qv_migrate:migrate_status",
    "migrate-cancel": "qvplan.cli.qv_migrate:migrate_cancel",
})
def vm() -> None:
    """Manage the VMs of this host."""


def load_vm_file(path: Path) -> dict[str, Any]:
    import yaml
    from pydantic import ValidationError

    from ..vmm import VMSpec
    from ..vmm.spec import describe_error

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not valid YAML: {err}".splitlines()[0], "fix the syntax") from None
    try:
        return VMSpec.model_validate(data).model_dump(mode="json")
    except ValidationError as err:
        cause, fix = describe_error(err)
        raise UsageError(f"{path}: {cause}", fix) from None


@vm.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def define(ctx: click.Context, file: Path) -> None:
    """Define a VM from a YAML file."""
    body = load_vm_file(file)
    out = local.agent_client(ctx).post("vms", body)
    click.echo(f"Defined {out['name']}")


def _lifecycle(verb: str, method: str, path: str):
    @click.argument("name")
    @click.pass_context
    def command(ctx: click.Context, name: str) -> None:
        local.agent_client(ctx, timeout=120).request(method, path.format(name=name),
                                                     {} if method == "POST" else None)
        click.echo(f"{verb} {name}")

    return command


vm.command("start", help="Start a defined VM.")(_lifecycle("Started", "POST", "vms/{name}/start"))
vm.command("stop", help="Stop a running VM.")(_lifecycle("Stopped", "POST", "vms/{name}/stop"))
vm.command("undefine", help="Remove a stopped VM's definition (disks stay).")(
    _lifecycle("Undefined", "DELETE", "vms/{name}"))


@vm.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """List this host's VMs."""
    vms = local.agent_client(ctx).get("vms")
    click.echo(f"{'NAME':<20} {'STATE':<11} {'MEMORY':>10} {'VCPUS':>5}  CPU")
    for v in vms:
        click.echo(f"{v['name']:<20} {v['state']:<11} {format_size(v['memory']):>10} {v['vcpus']:>5}  "
                   f"{v['cpu']['model']}")


@vm.command()
@click.argument("name")
@click.pass_context
def show(ctx: click.Context, name: str) -> None:
    """Show one VM."""
    v = local.agent_client(ctx).get(f"vms/{name}")
    click.echo(f"VM:       {v['name']}\nState:    {v['state']}\nMemory:   {format_size(v['memory'])}\n"
               f"vCPUs:    {v['vcpus']}\nCPU:      {v['cpu']['model']} {' '.join(v['cpu'].get('features', []))}")
    if v.get("pid"):
        click.echo(f"PID:      {v['pid']}")
    for d in v["disks"]:
        click.echo(f"Disk:     {d['path']} ({d['format']})")
