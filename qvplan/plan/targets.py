"""Targeted plans: `--target VM` (Terraform's -target) and `--limit HOST` (Ansible's --limit).

`select(plan, Selection(...))` keeps only the chosen moves of a planned `Plan`:

- `--target VM` (repeatable) keeps VM's move and, transitively, the moves it comes `after:`
  (they must happen first, as Terraform includes a target's dependencies);
- `--limit HOST` (repeatable) keeps only moves whose source or destination is one of the hosts;
- with both, a move must be targeted *and* touch a limited host;
- a kept move that comes after a move left out (and not already done) cannot run before it: it
  is left out too.

Everything else that would move is *left out*: not moved, not checked, listed with its reason
in `plan.settings["selection"]` (the plan output, `--json`, saved plans and the apply report show
it). Waves keep their order with the left-out moves taken away; apply's re-check before each move
judges memory again, so a kept move that counted on memory a left-out move would have freed is
refused then, never started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..contract.reasons import Reason
from .diagnostics import Diagnostic, PlanError
from .model import Action, Plan, Wave


@dataclass
class Selection:
    targets: list[str] = field(default_factory=list)
    limit: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.targets or self.limit)

    def to_dict(self) -> dict[str, Any]:
        return {"targets": list(self.targets), "limit": list(self.limit)}


def select(plan: Plan, selection: Selection) -> Plan:
    """The plan with only the selected moves (the same plan when nothing is selected)."""
    if not selection:
        return plan
    by_vm = {m.vm: m for m in plan.moves}
    hosts = set(plan.settings.get("hosts") or {})
    problems = [Diagnostic(f"--target {vm} is not a VM of this plan", "name a VM placed under vms:", plan.file)
                for vm in selection.targets if vm not in by_vm]
    problems += [Diagnostic(f"--limit {h} is not a host of this plan", "name a host under hosts:", plan.file)
                 for h in selection.limit if hosts and h not in hosts]
    if problems:
        err = PlanError(problems)
        err.code = Reason.BAD_REQUEST
        raise err
    changing = {m.vm for m in plan.moves if m.action is not Action.NOOP}
    reasons: dict[str, str] = {}
    kept = set(changing)
    if selection.targets:
        wanted = set()
        stack = list(selection.targets)
        while stack:
            vm = stack.pop()
            if vm in wanted:
                continue
            wanted.add(vm)
            stack += [a for a in by_vm[vm].after if a in by_vm]
        for vm in kept - wanted:
            reasons[vm] = "not a --target"
        kept &= wanted
    if selection.limit:
        limit = set(selection.limit)
        for vm in sorted(kept):
            move = by_vm[vm]
            if not ({move.source, move.dest} & limit):
                reasons[vm] = f"touches neither of --limit {', '.join(selection.limit)}"
                kept.discard(vm)
    changed = True
    while changed:  # a kept move after a left-out one cannot go first
        changed = False
        for vm in sorted(kept):
            out = [a for a in by_vm[vm].after if a in changing and a not in kept]
            if out:
                reasons[vm] = f"after {out[0]}, which is left out"
                kept.discard(vm)
                changed = True
    for vm in changing - kept:  # say which kept moves a left-out one was waiting for
        before = [a for a in by_vm[vm].after if a in kept]
        if before and reasons.get(vm) == "not a --target":
            reasons[vm] = f"comes after {before[0]}: a dependant, not a --target"
    left_out = [{"vm": m.vm, "source": m.source, "dest": m.dest, "reason": reasons[m.vm]}
                for m in plan.moves if m.vm in changing - kept]
    new = Plan.from_dict(plan.to_dict())
    new.moves = [m for m in new.moves if m.vm in kept or m.vm not in changing]
    new.checks = [c for c in new.checks if c.move in kept or c.move not in changing]
    waves = [Wave(0, [vm for vm in w.moves if vm in kept]) for w in new.waves]
    new.waves = [Wave(i + 1, w.moves) for i, w in enumerate(w for w in waves if w.moves)]
    for m in new.moves:
        if m.wave is not None:
            m.wave = next((w.index for w in new.waves if m.vm in w.moves), None)
    new.settings = {**new.settings, "selection": {**selection.to_dict(), "left_out": left_out}}
    return new


def left_out_lines(plan: Plan) -> list[str]:
    """`left out: db-02 (hv-a → hv-b): comes after db-01: a dependant, not a --target`."""
    selection = plan.settings.get("selection") or {}
    return [f"left out: {m['vm']} ({m['source'] or '?'} → {m['dest']}): {m['reason']}"
            for m in selection.get("left_out", [])]
