"""`qvplan apply PLAN|SAVED_PLAN`: plan (or load a saved plan), confirm, run, report."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from xml.sax.saxutils import quoteattr

import click

from ..apply import ApplyResult, apply_plan
from ..apply.journal import Journal
from ..plan import PlanError, live_facts, load_plan, make_plan
from ..plan.model import Plan
from ..plan.render import render_plan
from ..plan.saved import check_fresh, load_saved
from .qvplan_plan import _variables


def _plan(plan_file: str, var: tuple[str, ...], var_files: tuple[str, ...]) -> tuple[Plan, bool]:
    """Plan now from live facts, or load a saved plan and check it still holds. → (plan, saved?)"""
    if plan_file.endswith(".json"):
        saved = load_saved(plan_file)
        hosts = saved.plan.settings.get("hosts", {})
        doc = live_facts(hosts, saved.plan.settings.get("prerequisites", {}).get("shared_storage"))
        check_fresh(saved, doc.hosts)
        return saved.plan, True
    variables = _variables(var)
    first = load_plan(plan_file, variables, list(var_files), None)
    doc = live_facts({n: h.model_dump() for n, h in first.hosts.items()}, first.spec.prerequisites.shared_storage)
    return make_plan(load_plan(plan_file, variables, list(var_files), doc.hosts), doc.hosts), False


def write_junit(path: str, result: ApplyResult) -> None:
    cases = []
    for m in result.moves:
        name = quoteattr(f"{m.vm} {m.source} -> {m.dest}")
        took = max(0.0, m.finished - m.started)
        if m.ok:
            cases.append(f'  <testcase classname="qvplan.apply" name={name} time="{took:.3f}"/>')
        elif m.skipped:
            reason = quoteattr(m.error or "")
            cases.append(f'  <testcase classname="qvplan.apply" name={name}><skipped message={reason}/></testcase>')
        else:
            cases.append(f'  <testcase classname="qvplan.apply" name={name} time="{took:.3f}">'
                         f'<failure message={quoteattr(m.error or "failed")}/></testcase>')
    failures = sum(1 for m in result.moves if not m.ok and not m.skipped)
    skipped = sum(1 for m in result.moves if m.skipped)
    Path(path).write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name="qvplan apply" '
                          f'tests="{len(result.moves)}" failures="{failures}" skipped="{skipped}">\n'
                          + "\n".join(cases) + "\n</testsuite>\n")


@click.command()
@click.argument("plan_file", metavar="PLAN")
@click.option("--var", "var", multiple=True, metavar="NAME=VALUE", help="Set a template variable.")
@click.option("--vars", "var_files", multiple=True, type=click.Path(dir_okay=False), help="Variables file.")
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation (CI).")
@click.option("--junit", "junit_file", type=click.Path(dir_okay=False), help="Write one JUnit test case per move.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
def apply(plan_file: str, var: tuple[str, ...], var_files: tuple[str, ...], auto_approve: bool,
          junit_file: str | None, as_json: bool) -> None:
    """Carry out a plan: every move through the source host's agent, with automatic rollback."""
    try:
        plan, saved = _plan(plan_file, var, var_files)
    except PlanError as err:
        for line in str(err).splitlines():
            click.echo(f"Error: {line}", err=True)
        sys.exit(1)
    say = (lambda _: None) if as_json else (lambda line: click.echo(line))
    if not as_json:
        click.echo(render_plan(plan))
    if plan.errored:
        click.echo("Error: the plan has failed checks; nothing was moved — fix them and plan again", err=True)
        sys.exit(1)
    if not plan.changes:
        click.echo("No changes: every VM is where the plan wants it.")
        sys.exit(0)
    if not saved and not auto_approve and sys.stdin.isatty() and not click.confirm("Apply these moves?"):
        click.echo("Apply cancelled; nothing was moved.")
        sys.exit(1)
    journal = Journal(plan_file, plan.facts_hash)
    result = asyncio.run(apply_plan(plan, journal, say))
    if junit_file:
        write_junit(junit_file, result)
    if as_json:
        click.echo(json.dumps({"ok": result.ok, "journal": str(journal.path), "placement": result.placement,
                               "moves": [m.__dict__ for m in result.moves]}, indent=2))
    else:
        click.echo("\nWhere every VM runs now:")
        for vm, host in sorted(result.placement.items()):
            click.echo(f"  {vm:<16} {host}")
        ok = sum(m.ok for m in result.moves)
        click.echo(f"\nApply {'complete' if result.ok else 'FAILED'}: {ok}/{len(result.moves)} moves succeeded. "
                   f"Journal: {journal.path}")
    sys.exit(0 if result.ok else 1)


def register(group: click.Group) -> None:
    group.add_command(apply)
