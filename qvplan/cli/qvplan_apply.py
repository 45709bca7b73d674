"""`qvplan apply PLAN|SAVED_PLAN` and `qvplan apply --resume JOURNAL`: parse, run the session, render."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from ..apply.executor import ApplyResult
from ..apply.progress import Board
from ..apply.session import ApplyRequest, Outcome, run_apply
from ..plan import PlanError
from ..plan.model import Plan
from ..plan.render import render_plan
from .progress import LiveView, PlainView
from .qvplan_plan import _variables


def write_junit(path: str, result: ApplyResult) -> None:
    from xml.sax.saxutils import quoteattr  # only for --junit

    cases = []
    for m in result.moves:
        name = quoteattr(f"{m.vm} {m.source} -> {m.dest}")
        took = max(0.0, m.finished - m.started)
        if m.ok:
            note = ""
            if m.rolled_back:
                note = "<system-out>moved back by on_failure: rollback-all</system-out>"
            elif m.followed:
                note = "<system-out>started by an interrupted apply; followed to its end</system-out>"
            cases.append(f'  <testcase classname="qvplan.apply" name={name} time="{took:.3f}">{note}</testcase>')
        elif m.skipped:
            reason = quoteattr(m.error or "")
            cases.append(f'  <testcase classname="qvplan.apply" name={name}><skipped message={reason}/></testcase>')
        else:  # the reason code goes in `type`, as JUnit's failure type
            cases.append(f'  <testcase classname="qvplan.apply" name={name} time="{took:.3f}">'
                         f'<failure type={quoteattr(m.code or "error")} message={quoteattr(m.error or "failed")}/>'
                         '</testcase>')
    failures = sum(1 for m in result.moves if not m.ok and not m.skipped)
    skipped = sum(1 for m in result.moves if m.skipped)
    Path(path).write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name="qvplan apply" '
                          f'tests="{len(result.moves)}" failures="{failures}" skipped="{skipped}">\n'
                          + "\n".join(cases) + "\n</testsuite>\n")


class Frontend:
    """The session's frontend on a terminal, in CI, or for --json (silent until the report)."""

    def __init__(self, as_json: bool, auto_approve: bool) -> None:
        self.as_json = as_json
        self.auto_approve = auto_approve
        self.tty = sys.stdout.isatty() and not as_json
        self.board = Board()
        self.journal: Path | None = None
        self.live: LiveView | None = None
        if not as_json and not self.tty:
            self.board.view = PlainView(lambda text: click.echo(text))

    def show(self, plan: Plan) -> None:
        if not self.as_json:
            click.echo(render_plan(plan))

    async def confirm(self, plan: Plan) -> bool:
        ask = not self.auto_approve and sys.stdin.isatty() and not self.as_json
        if ask and not await asyncio.to_thread(click.confirm, "Apply these moves?"):
            return False
        if self.tty:  # the live view takes over the terminal from here
            self.live = LiveView()
            self.live.__enter__()
            self.board.view = self.live
        return True

    def close(self) -> None:
        if self.live is not None:
            self.live.__exit__()
            self.live = None
            self.board.view = PlainView(lambda text: click.echo(text))


async def _run(req: ApplyRequest, ui: Frontend) -> Outcome:
    try:
        return await run_apply(req, ui)
    finally:
        ui.close()


def _report(outcome: Outcome, as_json: bool) -> None:
    result = outcome.result
    if as_json:
        doc: dict[str, Any] = {"ok": outcome.ok, "status": outcome.status,
                               "journal": str(outcome.journal) if outcome.journal else None}
        if result is not None:
            doc.update(placement=result.placement, moves=[m.__dict__ for m in result.moves])
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    if outcome.status == "errored":
        click.echo("Error: the plan has failed checks; nothing was moved — fix them and plan again", err=True)
    elif outcome.status == "cancelled":
        click.echo("Apply cancelled; nothing was moved.")
    if result is None:
        return
    click.echo("\nWhere every VM runs now:")
    for vm, host in sorted(result.placement.items()):
        click.echo(f"  {vm:<16} {host}")
    ok = sum(m.ok for m in result.moves)
    for m in result.moves:
        if m.skipped:
            click.echo(f"  {m.vm}: {m.error}")
        elif not m.ok:
            click.echo(f"  {m.vm}: failed [{m.code}]: {m.error}")
    click.echo(f"\nApply {'complete' if result.ok else 'FAILED'}: {ok}/{len(result.moves)} moves succeeded. "
               f"Journal: {outcome.journal}")
    if not result.ok and outcome.journal:
        click.echo(f"To continue it later: qvplan apply --resume {outcome.journal}")


@click.command()
@click.argument("plan_file", metavar="[PLAN]", required=False)
@click.option("--var", "var", multiple=True, metavar="NAME=VALUE", help="Set a template variable.")
@click.option("--vars", "var_files", multiple=True, type=click.Path(dir_okay=False), help="Variables file.")
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation (CI).")
@click.option("--resume", "resume", type=click.Path(dir_okay=False), metavar="JOURNAL",
              help="Continue an interrupted apply from its journal (.qvplan/apply-*.jsonl).")
@click.option("--break-lock", is_flag=True,
              help="Take the hosts' locks even from an apply this machine cannot check (only if it is gone).")
@click.option("--junit", "junit_file", type=click.Path(dir_okay=False), help="Write one JUnit test case per move.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
@click.option("--target", "targets", multiple=True, metavar="VM",
              help="Apply only this VM's move and the moves it comes after: (repeatable).")
@click.option("--limit", "limit", multiple=True, metavar="HOST",
              help="Apply only the moves from or to this host (repeatable).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Write DIR/report.html: plan, checks, timeline, charts, outcomes, journal (self-contained).")
def apply(plan_file: str | None, var: tuple[str, ...], var_files: tuple[str, ...], auto_approve: bool,
          resume: str | None, break_lock: bool, junit_file: str | None, as_json: bool,
          targets: tuple[str, ...], limit: tuple[str, ...], report_dir: str | None) -> None:
    """Carry out a plan: every move through the source host's agent, with automatic rollback.

    One apply at a time per host: each host is locked for the whole apply (a killed apply's
    lock clears itself). `--resume JOURNAL` continues an interrupted apply: moves it left
    running are followed to their end, the plan is made again from the facts as they are now,
    and no VM is moved twice. `--target VM` / `--limit HOST` apply part of the plan; the moves
    left out are listed, not moved.
    """
    if not plan_file and not resume:
        raise click.UsageError("give a PLAN, or --resume JOURNAL")
    from ..plan.targets import Selection

    req = ApplyRequest(plan_file, _variables(var), list(var_files), resume, break_lock,
                       Selection(list(targets), list(limit)))
    ui = Frontend(as_json, auto_approve)
    try:
        outcome = asyncio.run(_run(req, ui))
    except PlanError as err:
        for line in str(err).splitlines():
            click.echo(f"Error: {line}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        if ui.journal is None:
            click.echo("Interrupted; nothing was moved.", err=True)
        else:
            click.echo("Interrupted — migrations already started carry on in the agents; continue with "
                       f"`qvplan apply --resume {ui.journal}`", err=True)
        sys.exit(130)
    if junit_file and outcome.result is not None:
        write_junit(junit_file, outcome.result)
    if report_dir and outcome.journal:
        from ..apply.report import write_report

        page = write_report(outcome.journal, report_dir)
        click.echo(f"Report: {page}", err=as_json)
    with contextlib.suppress(BrokenPipeError):
        _report(outcome, as_json)
    sys.exit(0 if outcome.ok else 1)

