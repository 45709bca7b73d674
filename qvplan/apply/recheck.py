"""Right before a move starts: does it still hold against fresh facts of its two hosts?

The same rules the plan judged the move by (the rule book, through plan/checks), over the facts
the two agents report now. A move whose facts changed is refused as `stale`, saying what changed;
apply then treats it as a failed move (`on_failure` applies) and nothing of it has started.
"""

from __future__ import annotations

from typing import Any

from ..contract import rules
from ..contract.reasons import Reason
from ..errors import QVError
from ..plan import checks as C
from ..plan.graph import locate
from ..plan.model import Move, Plan
from ..units import format_size

STALE_FIX = "plan again (`qvplan plan`) and apply the new plan"


class StaleMove(QVError):
    """The plan's view of a move no longer matches the hosts."""

    code = Reason.STALE.value


def recheck(plan: Plan, move: Move, facts: dict[str, dict[str, Any]]) -> StaleMove | None:
    """None if `move` still holds on `facts` (the fresh facts of its source and destination)."""
    src, dst = move.source or "?", move.dest
    found = [(h, v) for h, v in locate(facts, move.vm) if h == src]
    if not found:
        return _stale(move, f"{move.vm} is no longer on {src}")
    vm = found[0][1]
    policies = rules.Policies.model_validate(
        {k: v for k, v in (plan.settings.get("prerequisites") or {}).items() if k in rules.Policies.model_fields})
    results = [
        C.check_state(vm, move.mode),
        C.check_trust(src, dst, facts, exchange=False, pinned={}, insecure=bool(move.flags.get("insecure")))[0],
        C.check_version(src, dst, facts, policies.version),
        C.check_cpu(vm, src, dst, facts, policies.cpu),
    ]
    for result in results:
        if not result.ok:
            return _stale(move, result.message)
    free = ((facts[dst].get("memory") or {}).get("free"))
    if isinstance(free, int) and rules.check_memory(move.memory, free):
        return _stale(move, f"{dst} has {format_size(max(free, 0))} free now, the move needs "
                            f"{format_size(move.memory)}")
    return None


def _stale(move: Move, what: str) -> StaleMove:
    return StaleMove(f"stale: {move.vm} ({move.source} → {move.dest}) no longer holds: {what}", STALE_FIX)
