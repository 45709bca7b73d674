"""One `qvplan apply`, start to end: lock the hosts; when resuming, follow what the interrupted
apply left running; gather facts; plan; show and confirm; run; report.

The lock comes first, so the facts a plan is made from cannot change under it because of another
apply. Every host of the plan is locked (not only those a move touches): the set is known before
any fact is gathered, and two plans over the same hosts should not interleave anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..agent.client import warm_up
from ..errors import QVError
from ..plan.model import Plan
from ..plan.targets import Selection
from ..remote.pool import Connections
from .executor import ApplyResult, Executor, MoveResult, ready_moves
from .journal import Journal, JournalState
from .lock import HostLocks, owner
from .progress import Board
from .resume import follow_unfinished, moved_already, not_twice
from .source import PlanSource


class ResumeError(QVError):
    """The journal cannot be resumed with this plan."""


@dataclass
class ApplyRequest:
    plan_file: str | None
    variables: dict[str, Any] = field(default_factory=dict)
    var_files: list[str] = field(default_factory=list)
    resume: str | None = None      # a journal to continue
    break_lock: bool = False
    selection: Selection = field(default_factory=Selection)  # --target / --limit (plan/targets.py)


class Frontend(Protocol):
    """What the session needs from whoever drives it (the CLI)."""

    board: Board
    journal: Path | None  # set by the session as soon as the apply has one

    def show(self, plan: Plan) -> None: ...
    async def confirm(self, plan: Plan) -> bool: ...


@dataclass
class Outcome:
    status: str  # applied, no-changes, errored, cancelled
    plan: Plan | None
    result: ApplyResult | None = None
    journal: Path | None = None
    followed: list[MoveResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.status == "applied":
            return self.result is not None and self.result.ok
        return self.status == "no-changes"


def _resolve(req: ApplyRequest, state: JournalState | None) -> tuple[str, dict[str, Any], list[str]]:
    """The plan file, variables and variable files: from the request, or from the journal."""
    if state is None:
        if not req.plan_file:
            raise ResumeError("no plan given", "pass PLAN, or --resume JOURNAL")
        return req.plan_file, req.variables, [str(Path(f).resolve()) for f in req.var_files]
    planned = str(state.header.get("plan") or "")
    if req.plan_file and Path(req.plan_file).resolve() != Path(planned).resolve():
        raise ResumeError(f"journal {state.path.name} is of {planned}, not {req.plan_file}",
                          "resume with the plan the journal names (or leave PLAN out)")
    variables = {**(state.header.get("variables") or {}), **req.variables}
    var_files = [str(Path(f).resolve()) for f in req.var_files] or list(state.header.get("var_files") or [])
    return planned, variables, var_files


async def run_apply(req: ApplyRequest, ui: Frontend) -> Outcome:
    state = JournalState.read(req.resume) if req.resume else None
    plan_file, variables, var_files = _resolve(req, state)
    source = PlanSource.load(plan_file, variables, var_files)
    source.selection = req.selection or Selection(**((state.header.get("selection") if state else None) or {}))
    if state is not None and state.header.get("plan_hash") != source.plan_hash:
        raise ResumeError(f"{plan_file} is not the plan the interrupted apply ran (plan hash "
                          f"{str(state.header.get('plan_hash'))[:15]}… in the journal, {source.plan_hash[:15]}… now)",
                          "restore that plan (and its --var values) to resume, or apply the new plan without --resume")
    who = owner(str(Path(plan_file).resolve()), str(state.path) if state else None)
    marks = {"session": time.time()}  # when each step before the moves ended, for the journal header
    # One SSH connection per host for the whole apply: locks, facts, trust and moves share it.
    pool = Connections(source.targets)
    warming = asyncio.ensure_future(asyncio.to_thread(warm_up))  # while the locks wait on the hosts
    try:
        async with HostLocks(source.targets, who, break_lock=req.break_lock, say=ui.board.say, pool=pool) as locks:
            ex = Executor(source.targets, None, ui.board, pool)
            ex.locks = locks  # no new move on a host whose lock died with its connection
            marks["locked"] = time.time()
            with contextlib.suppress(Exception):  # an import error shows at the first request instead
                await warming
            return await _locked(ex, source, state, ui, plan_file, variables, var_files, marks)
    finally:
        warming.cancel()  # (a no-op once done) no "exception never retrieved" when the locks failed
        await pool.close()


async def _locked(ex: Executor, source: PlanSource, state: JournalState | None, ui: Frontend, plan_file: str,
                  variables: dict[str, Any], var_files: list[str], marks: dict[str, float]) -> Outcome:
    followed: list[MoveResult] = []
    if state is not None:
        ex.journal, state = Journal.reopen(state.path)
        ui.journal = state.path
        followed = await follow_unfinished(ex, state)
        ui.board.plan_more(len(followed))
    facts = await source.facts(ex.pool)
    marks["facts"] = time.time()
    plan = source.plan(facts, resuming=state is not None)
    marks["planned"] = time.time()
    moves = ready_moves(plan)
    skip = not_twice(moves, moved_already(state, followed)) if state is not None else {}
    ui.show(plan)
    journal = state.path if state is not None else None
    if plan.errored:
        return Outcome("errored", plan, journal=journal, followed=followed)
    if not moves and not followed:
        return Outcome("no-changes", plan, journal=journal)
    if moves and source.saved is None and not await ui.confirm(plan):
        return Outcome("cancelled", plan, journal=journal, followed=followed)
    if state is None:
        ex.journal = Journal.create(plan_file, plan_hash=source.plan_hash, facts_hash=plan.facts_hash,
                                    variables=variables, var_files=var_files, saved=source.saved is not None,
                                    hosts=sorted(source.targets), selection=source.selection.to_dict(),
                                    marks=marks)
        ui.journal = ex.journal.path
        ui.board.say(f"journal: {ex.journal.path}")
    ex.journal.write("plan", plan=plan.to_dict())  # what the apply report shows of the plan and its checks
    ui.board.plan_more(len(moves))
    result = await ex.apply(plan, moves, followed, skip)
    return Outcome("applied", plan, result, ex.journal.path, followed)
