"""Reading a journal back for --resume, and the resume rules that need no hosts."""

from __future__ import annotations

import json

import pytest

from qvplan.apply.journal import Journal, JournalError, JournalState
from qvplan.apply.resume import moved_already, not_twice
from qvplan.apply.source import resume_saved
from qvplan.plan.model import Action, Move, Plan, Status, Wave


def test_journal_state_after_a_kill(tmp_path):
    j = Journal.create(tmp_path / "p.yaml", plan_hash="sha256:x")
    j.write("start", vm="vm-1", source="a", dest="b")
    j.write("start", vm="vm-2", source="a", dest="c")
    j.write("end", vm="vm-1", source="a", dest="b", ok=True)
    j.write("start", vm="vm-3", source="c", dest="b")
    j.write("end", vm="vm-3", source="c", dest="b", ok=False, error="Timeout exceeded")
    with j.path.open("a") as f:
        f.write('{"time": 1, "kind": "pha')  # SIGKILL mid-write
    state = JournalState.read(j.path)
    assert state.header["plan_hash"] == "sha256:x" and state.header["pid"] > 0
    assert dict(state.completed) == {"vm-1": [("a", "b")]}
    assert list(state.unfinished) == ["vm-2"] and not state.finished
    assert moved_already(state, []) == {"vm-1": ("a", "b")}

    again, state2 = Journal.reopen(j.path)
    assert list(state2.unfinished) == ["vm-2"]
    assert again.path == j.path and json.loads(j.path.read_text().splitlines()[-1])["kind"] == "resume"


def test_not_a_journal(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"kind": "start"}\n')
    with pytest.raises(JournalError, match="not an apply journal"):
        JournalState.read(tmp_path / "x.jsonl")
    with pytest.raises(JournalError, match="cannot read journal"):
        JournalState.read(tmp_path / "missing.jsonl")


def test_never_twice():
    moves = [Move(vm="vm-1", source="c", dest="b"), Move(vm="vm-2", source="a", dest="c")]
    skip = not_twice(moves, {"vm-1": ("a", "b")})
    assert list(skip) == ["vm-1"] and "already moved once by this apply (a → b), now on c" in skip["vm-1"]


def facts(**where: str) -> dict:
    hosts: dict = {h: {"vms": []} for h in ("a", "b", "c")}
    for vm, host in where.items():
        hosts[host]["vms"].append({"name": vm.replace("_", "-"), "state": "running"})
    return hosts


def test_resume_of_a_saved_plan():
    plan = Plan(file="p.yaml", moves=[Move(vm="vm-1", source="a", dest="b", wave=1),
                                      Move(vm="vm-2", source="a", dest="c", wave=1, index=1),
                                      Move(vm="vm-3", source="b", dest="c", wave=2, index=2)],
                waves=[Wave(1, ["vm-1", "vm-2"]), Wave(2, ["vm-3"])])
    new = resume_saved(plan, facts(vm_1="b", vm_2="a", vm_3="a"))
    assert new.move("vm-1").action is Action.NOOP  # done by the interrupted apply
    assert new.move("vm-2").status is Status.READY  # still to do
    assert new.move("vm-3").status is Status.BLOCKED and new.errored  # someone moved it elsewhere
    assert [w.moves for w in new.waves] == [["vm-2"]]
    assert plan.move("vm-1").action is Action.MOVE  # the saved plan itself is untouched
