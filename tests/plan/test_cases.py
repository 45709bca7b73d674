"""Planner cases as data: tests/plan/cases/<case>.yaml — facts in, plan in, diff/errors out.

Case keys:
  facts:  compact host facts (see factsgen.py); omit for offline validation
  vars:   template variables
  plan:   the plan text (file name `plan.yaml`)
  expect:
    diff:      exact diff lines (render.diff_lines), in order
    unchanged: number of unchanged VMs
    failures:  "<vm>:<kind>: <substring of the message>" — exactly these checks fail
    errors:    substrings of the PlanError lines, one per diagnostic, in order
    waves:     [[vm, ...], ...]
    skipped:   [vm, ...]
    trust_exchange: [[importer, key-of], ...]
    errored / applyable / complete: booleans
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qvplan.plan import PlanError, load_plan_text, make_plan
from qvplan.plan.model import Status
from qvplan.plan.render import diff_lines

from .factsgen import expand

CASES = sorted((Path(__file__).parent / "cases").glob("*.yaml"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    expect = case["expect"]
    facts = expand(case["facts"]) if "facts" in case else None
    try:
        plan = make_plan(load_plan_text(case["plan"], "plan.yaml", case.get("vars") or {}, facts,
                                        path.parent), facts)
    except PlanError as err:
        assert "errors" in expect, f"unexpected PlanError: {err.lines()}"
        lines = err.lines()
        assert len(lines) == len(expect["errors"]), lines
        for got, want in zip(lines, expect["errors"], strict=True):
            assert want in got, f"{want!r} not in {got!r}"
        return
    assert "errors" not in expect, "expected a PlanError"
    if "diff" in expect:
        assert diff_lines(plan) == expect["diff"]
    if "unchanged" in expect:
        assert len(plan.unchanged) == expect["unchanged"]
    failed = [f"{c.id}: {c.message}" for c in plan.failed_checks]
    want_failed = expect.get("failures", [])
    assert len(failed) == len(want_failed), failed
    for want in want_failed:
        cid, _, text = want.partition(": ")
        assert any(f.startswith(cid + ":") and text in f for f in failed), f"{want!r} not in {failed}"
    if want_failed:
        assert all(c.fix for c in plan.failed_checks), "every failure carries a fix"
    if "waves" in expect:
        assert [w.moves for w in plan.waves] == expect["waves"]
    if "skipped" in expect:
        assert [m.vm for m in plan.moves if m.status is Status.SKIPPED] == expect["skipped"]
    if "trust_exchange" in expect:
        assert [list(p) for p in plan.trust_exchange] == expect["trust_exchange"]
    for flag in ("errored", "applyable", "complete"):
        if flag in expect:
            assert getattr(plan, flag) is expect[flag], flag
    if not want_failed and "errored" not in expect:
        assert not plan.errored
