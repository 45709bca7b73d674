"""`quantavirt vm migrate`, `vm migrate-status`, `vm migrate-cancel`, `vm migrate-settle`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from ..contract.events import OUTCOMES
from ..errors import UsageError
from . import local

if TYPE_CHECKING:
    from ..contract.flags import MigrateFlags


def _flags(**raw: object) -> MigrateFlags:
    from pydantic import ValidationError

    from ..contract.flags import MigrateFlags

    try:
        return MigrateFlags.model_validate({k: v for k, v in raw.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"]:  # a rule across flags names them itself
            raise UsageError(message, "see `quantavirt vm migrate --help`") from None
        raise UsageError(f"--{str(first['loc'][0]).replace('_', '-')}: {message}") from None


@click.command()
@click.argument("name")
@click.option("--dest", required=True, help="Destination HOST:PORT (migration port, 9410 by default).")
@click.option("--dest-host", help="The destination's name in this host's trust store: refuse any other key "
                                 "(default: the entry named like --dest's host, if any).")
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
@click.option("--xbzrle-cache", help="Send re-dirtied pages as deltas against a cache of this size, e.g. 512M "
                                     "(one channel; default off).")
@click.option("--storage-migrate", is_flag=True, default=None, help="Copy local disks too.")
@click.option("--dest-pool", help="Destination pool name or existing directory for --storage-migrate or "
                                 "--offline (default: its pool named default).")
@click.option("--delete-source-disks", is_flag=True, default=None,
              help="With --storage-migrate: remove the source disks once the destination runs the VM.")
@click.option("--offline", is_flag=True, default=None,
              help="Move a stopped VM: definition and disks (zstd with --compress), then undefine it here.")
@click.option("--detach", is_flag=True, help="Return once phase 1 (setup) has passed.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON (an error as {error, fix, code}).")
@click.pass_context
def migrate(ctx: click.Context, name: str, dest: str, pqc: bool, detach: bool, pqc_kem: str | None,
            as_json: bool, **raw: object) -> None:
    """Live-migrate a running VM to another host (or move a stopped one with --offline)."""
    ctx.meta["as_json"] = as_json
    if pqc and raw.get("insecure"):
        raise UsageError("--pqc and --insecure contradict each other", "drop one of them")
    flags = _flags(pqc_kem=pqc_kem, **raw)
    api = local.agent_client(ctx, timeout=120)
    api.post(f"vms/{name}/migrate", {"dest": dest, "flags": flags.model_dump(mode="json")})
    if detach:
        click.echo(json.dumps({"state": "STARTED", "vm": name, "destination": dest}) if as_json else
                   f"Migration of {name} to {dest} started (phase 1 passed). "
                   f"Follow it with `quantavirt vm migrate-status {name}`.")
        return
    events = api.events(f"vms/{name}/migrate/events")
    if as_json:
        last = _outcome(events)
    elif flags.offline:
        last = follow_offline(events)
    else:
        from .progress import follow

        last = follow(events)
    status = api.get(f"vms/{name}/migrate")
    click.echo(json.dumps(status, indent=2) if as_json else _render(status))
    if last.get("event") != "completed" and status.get("state") != "COMPLETED":
        sys.exit(1)


def _outcome(events: Iterator[dict[str, Any]]) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for ev in events:
        last = ev
        if ev["event"] in OUTCOMES:
            break
    return last


def _render(status: dict) -> str:
    if "journal" in status:  # a migration from before the agent's restart: its journal record
        record = status["journal"]
        doubt = f"\nIn Doubt:        {status['doubt']}" if status.get("doubt") else ""
        return (f"VM:              {status['vm']}\nState:           {status['state']} (journal: {record['role']} "
                f"{record['state']})\nPeer:            {record['peer']}\nSession:         {record['session']}{doubt}")
    from ..migration.offline.status import OfflineStatus
    from ..migration.status import MigrationStatus

    if status.get("mode") == "offline":
        return OfflineStatus.from_dict(status).render()
    fields = {k: v for k, v in status.items() if k in MigrationStatus.__dataclass_fields__}
    return MigrationStatus(**fields).render()


def follow_offline(events: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """An offline copy's progress until its outcome: a bar on a terminal, a line per second otherwise."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from ..migration.offline.status import describe as describe_offline

    last: dict[str, Any] = {}
    if not sys.stdout.isatty():
        printed = 0.0
        for ev in events:
            last = ev
            if ev["event"] != "progress" or ev.get("time", 0) - printed >= 1:
                printed = ev.get("time", 0)
                print(describe_offline(ev), flush=True)
            if ev["event"] in OUTCOMES:
                break
        return last
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task("offline", total=None)
        for ev in events:
            last = ev
            bar.update(task, completed=ev.get("transferred", 0), total=ev.get("total") or None,
                       description=f"{ev.get('vm')} ({ev.get('phase_name', '')})")
            if ev["event"] in OUTCOMES:
                break
    return last


@click.command("migrate-status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Draw the passes (bytes, dirty vs transfer rate, remaining, throttle) to FILE.png or FILE.svg, "
                   "with the data beside it as FILE.svg.json.")
@click.pass_context
def migrate_status(ctx: click.Context, name: str, as_json: bool, plot: str | None) -> None:
    """Show a migration's live figures, or its outcome (--plot: its passes as a chart)."""
    if plot:
        from pathlib import Path

        from ..charts import chart_format

        chart_format(Path(plot))  # a bad suffix is refused before anything is asked
    client = local.agent_client(ctx)
    status = client.get(f"vms/{name}/migrate")
    passes = client.get(f"vms/{name}/migrate/passes") if plot else None
    click.echo(json.dumps(status, indent=2) if as_json else _render(status))
    if plot and passes is not None:
        from ..charts import write_chart

        data = write_chart(passes, Path(plot))
        if not as_json:
            click.echo(f"Chart:           {plot} (data: {data})")


@click.command("migrate-cancel")
@click.argument("name")
@click.pass_context
def migrate_cancel(ctx: click.Context, name: str) -> None:
    """Cancel a migration; the VM keeps running (or, offline, stays defined) on this host."""
    status = local.agent_client(ctx, timeout=120).post(f"vms/{name}/migrate/cancel")
    if status["state"] == "COMPLETED":  # an offline copy past its commit point finishes
        click.echo(f"Migration of {name} had already committed; {name} is now on {status['destination']}.")
        return
    stays = "stays defined" if status.get("mode") == "offline" else "keeps running"
    click.echo(f"Migration of {name} {status['state'].lower()}; {name} {stays} here.")


@click.command("migrate-settle")
@click.argument("name")
@click.option("--resume-here", "decision", flag_value="resume-here",
              help="Resume the paused guest on this host (only if it does not run on the destination).")
@click.option("--discard-here", "decision", flag_value="discard-here",
              help="Let it go: the guest runs on the destination; stop and forget it here.")
@click.pass_context
def migrate_settle(ctx: click.Context, name: str, decision: str | None) -> None:
    """Settle a migration left in doubt: on the source, the VM paused here after commit and the destination
    silent; on the destination, a session whose QEMU died after commit, or that a host restart left
    waiting for the source's word (--discard-here only)."""
    if decision is None:
        raise UsageError("say where the guest lives: --resume-here or --discard-here",
                         f"check the destination first: `quantavirt vm migrate-status {name}` there")
    status = local.agent_client(ctx, timeout=120).post(f"vms/{name}/migrate/settle", {"decision": decision})
    if status.get("role") == "destination":  # a lost incoming session (migration/live/lost.py)
        click.echo(f"Migration of {name} settled: the lost copy here is discarded ({len(status.get('removed', []))} "
                   f"image(s) removed); the source {status['peer']} resumes its paused copy.")
        return
    where = "resumed here" if decision == "resume-here" else f"released here; it runs on {status['destination']}"
    click.echo(f"Migration of {name} settled: {name} {where}.")
