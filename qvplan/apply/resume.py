"""Continuing an interrupted apply from its journal.

1. Moves the dead apply left unfinished: the source agents carried on without it, so each one has
   either ended (completed, or rolled back: the guest runs on its source) or is still running.
   A running one is followed to its end, never started again. One the agent never received (the
   apply died between journalling it and asking) is closed in the journal as not started.
2. The plan is made again from the facts as they are now (the caller does that), so VMs already on
   their destination are no-ops.
3. A VM this apply already moved is never moved again: if the new plan still wants to move it
   (someone moved it since, or rollback-all moved it back), it is skipped with the reason.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..contract.reasons import Reason
from ..plan.model import Move
from ..remote import AgentError
from .executor import Executor, MoveResult
from .journal import JournalState

CLOCK_SLACK = 30.0  # seconds: controller and host clocks may differ a little


async def _ours(ex: Executor, vm: str, line: dict[str, Any]) -> bool:
    """Does the source agent's latest migration of `vm` belong to the unfinished journal line?"""
    try:
        status = await (await ex.conn(line["source"])).api("GET", f"vms/{vm}/migrate")
    except AgentError as err:
        if err.code in (Reason.NO_MIGRATION, Reason.UNKNOWN_VM):
            return False
        raise
    return float(status.get("started") or 0) >= float(line.get("time") or 0) - CLOCK_SLACK \
        and status.get("destination") == ex.address(line["dest"])


async def follow_unfinished(ex: Executor, state: JournalState) -> list[MoveResult]:
    """Step 1: follow every move the journal left without an end; journal each outcome."""
    async def one(vm: str, line: dict[str, Any]) -> MoveResult | None:
        if line.get("source") not in ex.targets or line.get("dest") not in ex.targets:
            return None
        if not await _ours(ex, vm, line):
            ex.journal.write("end", vm=vm, source=line["source"], dest=line["dest"], ok=False,
                             error="not started: the interrupted apply died before the agent took it",
                             not_started=True)
            return None
        return await ex.follow(vm, line["source"], line["dest"])

    found = await asyncio.gather(*(one(vm, line) for vm, line in state.unfinished.items()))
    return [r for r in found if r is not None]


def moved_already(state: JournalState, followed: list[MoveResult]) -> dict[str, tuple[str, str]]:
    """VM → (source, dest) of the last move this apply completed for it."""
    done = {vm: hops[-1] for vm, hops in state.completed.items() if hops}
    done.update({r.vm: (r.source, r.dest) for r in followed if r.ok})
    return done


def not_twice(moves: list[Move], done: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Step 3: the moves to skip, with why (the VM was moved once by this apply already)."""
    skip = {}
    for m in moves:
        if m.vm in done:
            src, dst = done[m.vm]
            skip[m.vm] = (f"skipped: already moved once by this apply ({src} → {dst}), now on {m.source} — "
                          "not moving it twice; plan again to move it")
    return skip
