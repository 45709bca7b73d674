"""Plan = facts + a loaded plan file, through the graph transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..gcpause import gc_paused
from . import checks as C
from .build import Build
from .facts import Facts, facts_hash
from .graph import transformers
from .loader import LoadedPlan, load_plan
from .model import Plan


def make_plan(loaded: LoadedPlan, facts: Facts | None) -> Plan:
    """Run every transformer over a fresh Build and freeze the result into a `Plan`."""
    b = Build(loaded, facts)
    with gc_paused():
        for step in transformers():
            step(b)
    spec = loaded.spec
    by_kind_then_order = sorted(b.checks.values(), key=lambda c: b.moves[c.move].index)
    return Plan(
        file=loaded.file,
        moves=list(b.moves.values()),
        checks=by_kind_then_order,
        waves=b.waves,
        facts_hash=facts_hash(facts) if facts is not None else None,
        settings={"on_failure": spec.on_failure, "limits": spec.limits.model_dump(),
                  "prerequisites": spec.prerequisites.model_dump(),
                  "hosts": {name: h.model_dump() for name, h in loaded.hosts.items()},
                  # the keys apply's trust exchange may import: the ones this plan shows, nothing else
                  "trust_keys": {holder: spec.trust.pinned.get(holder) or C.fingerprint((facts or {}).get(holder) or {})
                                 for _, holder in sorted(b.trust_exchange)}},
        trust_exchange=sorted(b.trust_exchange),
        capacity=b.capacity(),
    )


def plan_file(path: str | Path, facts: Facts | None, variables: dict[str, Any] | None = None,
              var_files: list[str] | None = None) -> Plan:
    return make_plan(load_plan(path, variables, var_files, facts), facts)
