"""--target and --limit (plan/targets.py) on planned plans: pure, from generated facts."""

from __future__ import annotations

import pytest

from qvplan.plan import load_plan_text, make_plan
from qvplan.plan.diagnostics import PlanError
from qvplan.plan.model import Plan
from qvplan.plan.targets import Selection, left_out_lines, select

from .factsgen import expand

HOSTS = "hosts: {hv-a: {address: a}, hv-b: {address: b}, hv-c: {address: c}}\n"
# db moves a → b; web comes after db; cache moves c → b; batch stays on a
VMS = "vms: {db: hv-b, web: {host: hv-b, after: [db]}, cache: hv-b, batch: hv-a}"
FACTS = {"hv-a": {"vms": {"db": {}, "web": {}, "batch": {}}}, "hv-b": {}, "hv-c": {"vms": {"cache": {}}}}


def planned() -> Plan:
    facts = expand(FACTS)
    return make_plan(load_plan_text(HOSTS + VMS, "p.yaml", {}, facts), facts)


def moved(plan: Plan) -> list[str]:
    return [vm for w in plan.waves for vm in w.moves]


def left(plan: Plan) -> dict[str, str]:
    return {m["vm"]: m["reason"] for m in plan.settings["selection"]["left_out"]}


def test_nothing_selected_is_the_same_plan():
    plan = planned()
    assert select(plan, Selection()) is plan
    assert sorted(moved(plan)) == ["cache", "db", "web"]


def test_a_target_brings_what_it_comes_after_and_leaves_the_rest_listed():
    plan = select(planned(), Selection(targets=["web"]))
    assert sorted(moved(plan)) == ["db", "web"] and not plan.errored
    assert left(plan) == {"cache": "not a --target"}
    assert {c.move for c in plan.checks} <= {"db", "web"}
    assert [m.vm for m in plan.moves if m.action.name == "NOOP"] == ["batch"]  # unchanged VMs stay listed
    assert not plan.complete


def test_a_dependant_of_a_target_is_left_out_and_says_why():
    plan = select(planned(), Selection(targets=["db"]))
    assert moved(plan) == ["db"]
    assert left(plan)["web"] == "comes after db: a dependant, not a --target"
    assert "left out: web (hv-a → hv-b): comes after db: a dependant, not a --target" in left_out_lines(plan)


def test_limit_keeps_moves_touching_the_hosts_and_their_order():
    plan = select(planned(), Selection(limit=["hv-c"]))
    assert moved(plan) == ["cache"]
    assert set(left(plan)) == {"db", "web"}
    both = select(planned(), Selection(targets=["web"], limit=["hv-a"]))
    assert sorted(moved(both)) == ["db", "web"]


def test_limit_leaves_out_a_move_whose_dependency_it_leaves_out():
    facts = expand({"hv-a": {"vms": {"db": {}}}, "hv-b": {}, "hv-c": {"vms": {"web": {}}}})
    text = HOSTS + "vms: {db: hv-b, web: {host: hv-b, after: [db]}}"
    plan = select(make_plan(load_plan_text(text, "p.yaml", {}, facts), facts), Selection(limit=["hv-c"]))
    assert moved(plan) == [] and left(plan)["web"] == "after db, which is left out"


def test_unknown_targets_and_hosts_are_one_error_each_with_a_code():
    with pytest.raises(PlanError) as err:
        select(planned(), Selection(targets=["nope"], limit=["hv-z"]))
    assert err.value.code == "bad-request"
    assert [d.message for d in err.value.diagnostics] == ["--target nope is not a VM of this plan",
                                                          "--limit hv-z is not a host of this plan"]


def test_the_selection_survives_a_save():
    plan = select(planned(), Selection(targets=["web"]))
    again = Plan.from_dict(plan.to_dict())
    assert again.settings["selection"]["targets"] == ["web"] and moved(again) == moved(plan)
