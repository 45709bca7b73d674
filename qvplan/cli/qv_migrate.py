"""`quantavirt vm migrate`, `vm migrate-status`, `vm migrate-cancel`."""

from __future__ import annotations

import json
import sys

import click
from pydantic import ValidationError

from ..errors import UsageError
from ..migration.flags import MigrateFlags
from ..migration.status import MigrationStatus
from . import local
from .common import run_async
from .progress import follow
from .qv_vm import vm


def _flags(**raw: object) -> MigrateFlags:
    try:
        return MigrateFlags.model_validate({k: v for k, v in raw.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"]:  # a rule across flags names them itself
            raise UsageError(message, "see `quantavirt vm migrate --help`") from None
        raise UsageError(f"--{str(first['loc'][0]).replace('_', '-')}: {message}") from None


@vm.command()
@click.argument("name")
@click.option("--dest", required=True, help="Destination HOST:PORT (migration port, 9410 by default).")
@click.option("--pqc", is_flag=True, help="Encrypt with PQC (the default; kept for the spec's examples).")
@click.option("--pqc-kem", type=click.Choice(["ML-KEM-768", "ML-KEM-1024"]), help="KEM (default ML-KEM-768).")
@click.option("--insecure", is_flag=True, help="Send guest memory in plaintext (labs only).")
@click.option("--bandwidth", help="Cap, e.g. 10G (bytes/s; default unlimited).")
@click.option("--timeout", help="Give up and roll back after this long (default 600s).")
@click.option("--max-iterations", type=int, help="Dirty copy rounds before forced stop-and-copy (default 30).")
@click.option("--max-downtime", help="Longest acceptable pause, e.g. 300ms (default).")
@click.option("--auto-converge/--no-auto-converge", default=None, help="Throttle vCPUs to converge (default on).")
@click.option("--compress", is_flag=True, default=None, help="zstd-compress pages in transit.")
@click.option("--threads", type=int, help="Parallel transfer channels (default 4).")
@click.option("--storage-migrate", is_flag=True, default=None, help="Copy local disks too.")
@click.option("--dest-pool", help="Destination pool name or existing directory for --storage-migrate "
                                 "(default: its pool named default).")
@click.option("--delete-source-disks", is_flag=True, default=None,
              help="With --storage-migrate: remove the source disks once the destination runs the VM.")
@click.option("--offline", is_flag=True, default=None, help="Move a stopped VM.")
@click.option("--detach", is_flag=True, help="Return once phase 1 (setup) has passed.")
@click.pass_context
@run_async
async def migrate(ctx: click.Context, name: str, dest: str, pqc: bool, detach: bool, pqc_kem: str | None,
                  **raw: object) -> None:
    """Live-migrate a running VM to another host."""
    if pqc and raw.get("insecure"):
        raise UsageError("--pqc and --insecure contradict each other", "drop one of them")
    flags = _flags(pqc_kem=pqc_kem, **raw)
    async with local.agent_client(ctx, timeout=120) as api:
        await api.post(f"vms/{name}/migrate", {"dest": dest, "flags": flags.model_dump(mode="json")})
        if detach:
            click.echo(f"Migration of {name} to {dest} started (phase 1 passed). "
                       f"Follow it with `quantavirt vm migrate-status {name}`.")
            return
        last = await follow(api.events(f"vms/{name}/migrate/events"))
        status = await api.get(f"vms/{name}/migrate")
    click.echo(_render(status))
    if last.get("event") != "completed" and status.get("state") != "COMPLETED":
        sys.exit(1)


def _render(status: dict) -> str:
    fields = {k: v for k, v in status.items() if k in MigrationStatus.__dataclass_fields__}
    return MigrationStatus(**fields).render()


@vm.command("migrate-status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@run_async
async def migrate_status(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show a migration's live figures, or its outcome."""
    async with local.agent_client(ctx) as api:
        status = await api.get(f"vms/{name}/migrate")
    click.echo(json.dumps(status, indent=2) if as_json else _render(status))


@vm.command("migrate-cancel")
@click.argument("name")
@click.pass_context
@run_async
async def migrate_cancel(ctx: click.Context, name: str) -> None:
    """Cancel a migration; the VM keeps running on this host."""
    async with local.agent_client(ctx, timeout=120) as api:
        status = await api.post(f"vms/{name}/migrate/cancel")
    click.echo(f"Migration of {name} {status['state'].lower()}; {name} keeps running here.")
