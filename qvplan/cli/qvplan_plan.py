"""`qvplan validate | plan | show | schema`: parse, call qvplan.plan, render."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..errors import UsageError
from ..plan import PlanError, live_facts, load_facts, load_plan, make_plan
from ..plan.loader import parse_var
from ..plan.model import Plan
from ..plan.render import render_plan
from ..plan.saved import is_saved_plan, load_saved, save_plan, saved_summary
from ..plan.schema import json_schema

_var = click.option("--var", "var", multiple=True, metavar="NAME=VALUE", help="Set a template variable.")
_vars = click.option("--vars", "var_files", multiple=True, type=click.Path(dir_okay=False),
                     help="YAML file of template variables (repeatable).")


def _variables(pairs: tuple[str, ...]) -> dict[str, Any]:
    return dict(parse_var(p) for p in pairs)


def _plan_file(path: str) -> str:
    """A plan file, not a saved plan (those are known by their content, whatever their name)."""
    if is_saved_plan(path):
        raise UsageError(f"{path} is a saved plan, not a plan file",
                         f"apply it with `qvplan apply {path}` or print it with `qvplan show {path}`")
    return path


def _fail(err: PlanError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"errored": True, "diagnostics": [d.to_dict() for d in err.diagnostics]}, indent=2))
    for line in err.lines():
        click.echo(f"Error: {line}", err=True)
    sys.exit(1)


def _emit(plan: Plan, as_json: bool) -> None:
    click.echo(json.dumps(plan.to_dict(), indent=2, default=str) if as_json else render_plan(plan))


@click.command()
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@_var
@_vars
@click.option("--facts", "facts_file", type=click.Path(dir_okay=False),
              help="Also run the fact checks against recorded facts.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def validate(plan_file: str, var: tuple[str, ...], var_files: tuple[str, ...], facts_file: str | None,
             as_json: bool) -> None:
    """Check a plan offline: schema, modules, hosts and after: graph (no hosts contacted)."""
    _plan_file(plan_file)
    try:
        facts = load_facts(facts_file).hosts if facts_file else None
        loaded = load_plan(plan_file, _variables(var), list(var_files), facts)
        plan = make_plan(loaded, facts)
    except PlanError as err:
        _fail(err, as_json)
        return
    if as_json:
        _emit(plan, True)
    else:
        for c in plan.failed_checks:
            click.echo(f"Error: {c.where or plan.file}: {c.message}" + (f" — {c.fix}" if c.fix else ""), err=True)
        if not plan.errored:
            mods = len(loaded.spec.use)
            click.echo(f"{plan_file}: valid ({len(plan.moves)} VM placements, {len(loaded.hosts)} hosts"
                       + (f", {mods} module use{'s' if mods != 1 else ''}" if mods else "") + ").")
    sys.exit(1 if plan.errored else 0)


@click.command("plan")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--facts", "facts_file", type=click.Path(dir_okay=False),
              help="Recorded facts (JSON/YAML) instead of gathering them live over SSH.")
@_var
@_vars
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("-out", "--out", "out_file", type=click.Path(dir_okay=False),
              help="Save the plan and its facts for apply.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0: no changes, 1: error, 2: changes.")
@click.option("--target", "targets", multiple=True, metavar="VM",
              help="Only this VM's move and the moves it comes after: (repeatable).")
@click.option("--limit", "limit", multiple=True, metavar="HOST",
              help="Only the moves from or to this host (repeatable).")
def plan_cmd(plan_file: str, facts_file: str | None, var: tuple[str, ...], var_files: tuple[str, ...],
             as_json: bool, out_file: str | None, detailed_exitcode: bool, targets: tuple[str, ...],
             limit: tuple[str, ...]) -> None:
    """Show what applying PLAN would move, every check, and the schedule (a dry run)."""
    from ..plan.targets import Selection, select

    _plan_file(plan_file)
    variables = _variables(var)
    try:
        if facts_file:
            doc = load_facts(facts_file)
        else:  # gathering needs the plan's hosts first
            first = load_plan(plan_file, variables, list(var_files), None)
            doc = live_facts({n: h.model_dump() for n, h in first.hosts.items()},
                             first.spec.prerequisites.shared_storage)
        plan = make_plan(load_plan(plan_file, variables, list(var_files), doc.hosts), doc.hosts)
        plan = select(plan, Selection(list(targets), list(limit)))
    except PlanError as err:
        _fail(err, as_json)
        return
    _emit(plan, as_json)
    if out_file and not plan.errored:
        save_plan(out_file, plan, doc)
        if not as_json:
            click.echo(f"\nSaved the plan to {out_file}; apply it with `qvplan apply {out_file}`.")
    elif out_file:
        click.echo("Error: plan has errors; not saved — fix the failures above and plan again", err=True)
    if plan.errored:
        sys.exit(1)
    sys.exit(2 if detailed_exitcode and plan.changes else 0)


@click.command()
@click.argument("saved_file", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the saved plan as JSON.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="FILE is an apply journal (.jsonl): write DIR/report.html from it.")
def show(saved_file: str, as_json: bool, report_dir: str | None) -> None:
    """Print a plan saved with `qvplan plan -out FILE`, or render an apply's journal as a report."""
    if report_dir:
        from ..apply.report import write_report

        click.echo(f"Report: {write_report(saved_file, report_dir)}")
        return
    saved = load_saved(saved_file)
    if as_json:
        click.echo(json.dumps({**saved_summary(saved), "plan": saved.plan.to_dict()}, indent=2, default=str))
        return
    click.echo(f"Saved plan {saved_file}: made {saved.created_at} from facts gathered "
               f"{saved.gathered_at or '(unknown)'} on {', '.join(sorted(saved.facts))}")
    click.echo(render_plan(saved.plan))


@click.command()
def schema() -> None:
    """Print the plan file's JSON Schema (for editor completion)."""
    click.echo(json.dumps(json_schema(), indent=2))

