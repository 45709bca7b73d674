"""Where apply's plan comes from: a plan file planned now from live facts, or a saved plan.

`plan_hash` says what a plan asks for — the rendered plan (placements, flags, limits, policy) and
its hosts, or the bytes of a saved plan — and not the facts, which a partial apply changes. A
resume re-plans only when the plan hash is still the one in the journal.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..plan import load_plan, load_saved, make_plan
from ..plan.checks import check_state
from ..plan.facts import Facts, FactsError, facts_hash
from ..plan.graph import locate
from ..plan.loader import LoadedPlan
from ..plan.model import Action, Check, Plan, Status, Wave
from ..plan.saved import SavedPlan, check_fresh, is_saved_plan
from ..plan.targets import Selection, select
from ..remote import HostTarget, gather_facts
from ..remote.pool import Connections
from .executor import targets_of


@dataclass
class PlanSource:
    file: str
    variables: dict[str, Any]
    var_files: list[str]
    loaded: LoadedPlan | None = None  # a plan file, loaded without facts
    saved: SavedPlan | None = None
    selection: Selection = field(default_factory=Selection)  # --target / --limit, applied to every plan made

    @classmethod
    def load(cls, file: str, variables: dict[str, Any], var_files: list[str]) -> PlanSource:
        if is_saved_plan(file):
            return cls(file, variables, var_files, saved=load_saved(file))
        return cls(file, variables, var_files, loaded=load_plan(file, variables, var_files, None))

    @property
    def hosts(self) -> dict[str, dict[str, Any]]:
        if self.saved is not None:
            return dict(self.saved.plan.settings.get("hosts", {}))
        assert self.loaded is not None
        return {name: h.model_dump() for name, h in self.loaded.hosts.items()}

    @property
    def targets(self) -> dict[str, HostTarget]:
        return targets_of(self.hosts)

    @property
    def storage_paths(self) -> list[str]:
        if self.saved is not None:
            return list((self.saved.plan.settings.get("prerequisites") or {}).get("shared_storage") or [])
        assert self.loaded is not None
        return list(self.loaded.spec.prerequisites.shared_storage or [])

    @property
    def plan_hash(self) -> str:
        if self.saved is not None:
            return "sha256:" + hashlib.sha256(Path(self.file).read_bytes()).hexdigest()
        assert self.loaded is not None
        blob = json.dumps({"spec": self.loaded.spec.model_dump(mode="json"), "hosts": self.hosts},
                          sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()

    async def facts(self, pool: Connections | None = None) -> Facts:
        """Every host's facts, at once; over `pool`'s connections when given."""
        found, errors = await gather_facts(self.targets, storage_paths=self.storage_paths, pool=pool)
        if errors:
            cause, _, fix = next(iter(errors.values())).partition(" — ")
            raise FactsError(f"cannot gather facts of {len(errors)} host(s): {cause}",
                             fix or "check the hosts are up (`qvplan lab status`)")
        return dict(found)

    def plan(self, facts: Facts, resuming: bool = False) -> Plan:
        """The plan against `facts`, with only the --target/--limit moves."""
        return select(self._plan(facts, resuming), self.selection)

    def _plan(self, facts: Facts, resuming: bool = False) -> Plan:
        """The plan against `facts`. A saved plan must still be fresh — unless resuming, when its
        moves are checked against where each VM is now instead."""
        if self.saved is None:
            return make_plan(load_plan(self.file, self.variables, self.var_files, facts), facts)
        if resuming:
            return resume_saved(self.saved.plan, facts)
        check_fresh(self.saved, facts)
        return self.saved.plan


def resume_saved(plan: Plan, facts: Facts) -> Plan:
    """A saved plan, partly applied: moves whose VM is on its destination are done (no-ops); moves
    whose VM still runs on its source go on; any other VM is blocked (the hosts changed)."""
    new = Plan.from_dict(plan.to_dict())
    new.facts_hash = facts_hash(facts)
    for move in new.changes:
        found = locate(facts, move.vm)
        hosts = [h for h, _ in found]
        if hosts == [move.dest]:
            move.action = Action.NOOP
            continue
        if hosts == [move.source]:
            state = check_state(found[0][1], move.mode)
            if state.ok:
                continue
            problem, fix = state.message, state.fix
        else:
            problem = f"{move.vm} is on {' and '.join(hosts) or 'no host'}, not on {move.source} as planned"
            fix = "plan again (`qvplan plan -out FILE`) and apply the new plan"
        move.status, move.reason = Status.BLOCKED, problem
        new.checks.append(Check(f"{move.vm}:state", move.vm, "state", False, problem, fix))
    ready = {m.vm for m in new.changes if m.status is Status.READY}
    new.waves = [Wave(w.index, [vm for vm in w.moves if vm in ready]) for w in new.waves]
    new.waves = [w for w in new.waves if w.moves]
    return new
