"""`qvplan lab up|down|status` and `qvplan facts`: parse, call qvplan.lab / qvplan.remote, render."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from ..lab import Lab, LabError
from ..remote import gather_facts, load_inventory
from .common import run_async

DIR_OPTION = click.option("--dir", "lab_dir", envvar="QVPLAN_LAB_DIR", type=click.Path(file_okay=False),
                          help="Lab directory (default /run/qvplan-lab as root, else $XDG_RUNTIME_DIR/qvplan-lab).")


@click.group()
def lab() -> None:
    """A local multi-host lab: network namespaces (root) or loopback addresses, sshd and agents."""


@lab.command()
@click.option("--hosts", default=3, show_default=True, help="Number of hosts (hv-a, hv-b, ...).")
@DIR_OPTION
@click.option("--prefix", default="qvlab", show_default=True, help="Prefix of namespace/link names.")
@click.option("--subnet", default="", help="First three octets of the lab's addresses (default 10.77.0).")
@click.option("--vms", default=4, show_default=True, help="Test guests to define and start.")
@click.option("--no-vms", is_flag=True, help="Define no test guests.")
@click.option("--no-agents", is_flag=True, help="Only network and sshd (provision agents yourself).")
@click.option("--trust", is_flag=True, help="Make all agents trust each other's PQC identity.")
@run_async
async def up(hosts: int, lab_dir: str | None, prefix: str, subnet: str, vms: int, no_vms: bool,
             no_agents: bool, trust: bool) -> None:
    """Create the lab (idempotent) and print the inventory path."""
    the_lab = Lab(lab_dir, hosts=hosts, prefix=prefix, subnet=subnet, agents=not no_agents)
    inventory = the_lab.up()
    click.echo(f"Lab: {len(the_lab.hosts)} hosts ({the_lab.spec.mode}) in {the_lab.dir}", err=True)
    if not no_agents:
        failed = await the_lab.wait_agents()
        if failed:
            for line in failed.values():
                click.echo(f"  agent down: {line}", err=True)
            click.echo(inventory)
            raise LabError("the lab's network and sshd are up but agents are not",
                           "fix the agent (see its log), then rerun `qvplan lab up`; no VMs were made")
        if trust:
            await the_lab.exchange_trust()
        if vms and not no_vms:
            made = await the_lab.create_vms(vms)
            if made:
                click.echo(f"VMs started: {', '.join(made)}", err=True)
    click.echo(inventory)


@lab.command()
@DIR_OPTION
def down(lab_dir: str | None) -> None:
    """Remove the lab: processes (agents, QEMUs, sshd), namespaces, bridge, files."""
    the_lab = Lab.load(lab_dir) if _exists(lab_dir) else None
    if the_lab is None or not the_lab.down():
        click.echo("No lab running.")
        return
    click.echo(f"Lab in {the_lab.dir} removed.")


def _exists(lab_dir: str | None) -> bool:
    from ..lab import default_lab_dir

    return ((Path(lab_dir) if lab_dir else default_lab_dir()) / "lab.json").exists()


@lab.command()
@DIR_OPTION
@run_async
async def status(lab_dir: str | None) -> None:
    """Each host: address, sshd, agent, VMs."""
    the_lab = Lab.load(lab_dir)
    click.echo(f"Lab in {the_lab.dir} ({the_lab.spec.mode}); inventory {the_lab.inventory_path}")
    click.echo(f"{'HOST':<8} {'ADDRESS':<15} {'SSHD':<5} {'AGENT':<6} VMS")
    for st in await the_lab.status():
        agent = "up" if st.api else ("proc" if st.agent else "down")
        vms = ", ".join(f"{v['name']}({v.get('state', '?')})" for v in st.vms) or "-"
        click.echo(f"{st.name:<8} {st.address:<15} {'up' if st.sshd else 'down':<5} {agent:<6} {vms}")
    click.echo(vm_network_line(the_lab))
    click.echo(cpu_line(the_lab))


def vm_network_line(the_lab: Lab) -> str:
    from ..lab import vmnet

    return vmnet.describe(the_lab.spec)


def cpu_line(the_lab: Lab) -> str:
    from ..lab.usage import lab_cpu

    share = lab_cpu(the_lab, seconds=2.0)
    return f"CPU of the lab's processes: {share * 100:.1f}% of one core (measured over 2 s)"


@click.command()
@click.option("--inventory", "inventory", type=click.Path(dir_okay=False), default=None,
              help="Inventory file (default: the lab's).")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="Write facts here (JSON).")
@click.option("--storage-path", "paths", multiple=True, help="Check every host can reach this path.")
@click.option("--concurrency", default=10, show_default=True, help="Hosts asked at once.")
@run_async
async def facts(inventory: str | None, out: str, paths: tuple[str, ...], concurrency: int) -> None:
    """Gather host facts over SSH and record them: {"gathered_at": ..., "hosts": {name: facts}}."""
    inv = Path(inventory) if inventory else Lab.load().inventory_path
    targets = load_inventory(inv)
    found, errors = await gather_facts(targets, storage_paths=paths, concurrency=concurrency)
    doc = {"gathered_at": datetime.now(UTC).isoformat(timespec="seconds"), "hosts": found}
    if errors:
        doc["errors"] = errors
    Path(out).write_text(json.dumps(doc, indent=2) + "\n")
    for line in errors.values():
        click.echo(f"unreachable: {line}", err=True)
    click.echo(f"Facts of {len(found)}/{len(targets)} hosts written to {out}")
    if errors:
        sys.exit(1)
