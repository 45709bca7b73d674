"""The plan's graph while it is built: moves, checks, edges, order and waves (graph.py's steps fill it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import checks as C
from .facts import Facts
from .loader import LoadedPlan
from .model import Check, Move, Wave


@dataclass
class Build:
    plan: LoadedPlan
    facts: Facts | None  # None: offline validation, only the checks that need no facts
    moves: dict[str, Move] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)
    # A move waits for its own checks (in `checks`) and for the moves it comes `after:` (here, by VM name).
    after: dict[str, set[str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # move VMs in graph order
    waves: list[Wave] = field(default_factory=list)
    trust_exchange: set[tuple[str, str]] = field(default_factory=set)
    vm_facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, list[Check]] = field(default_factory=dict)
    _trusted: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)

    def add_check(self, vm: str, kind: str, result: C.Result, where: str | None = None) -> Check:
        check = Check(f"{vm}:{kind}", vm, kind, result.ok, result.message, result.fix,
                      where or self.plan.where.get(vm), result.code)
        self.checks[check.id] = check
        if not check.ok:
            self.failures.setdefault(vm, []).append(check)
        return check

    def trusted(self, host: str) -> frozenset[str]:
        """The fingerprints `host` trusts, worked out once per host."""
        if host not in self._trusted:
            self._trusted[host] = C.trusted_fingerprints((self.facts or {}).get(host) or {})
        return self._trusted[host]

    def free(self, host: str) -> int:
        """The host's free memory in the facts (0 when they do not say)."""
        free = ((self.facts or {}).get(host, {}).get("memory") or {}).get("free")
        return free if isinstance(free, int) else 0

    def capacity(self) -> dict[str, int]:
        """Free memory of every host with facts: what the schedule's simulation starts from."""
        return {host: self.free(host) for host in (self.facts or {})}

    def failed(self, vm: str) -> list[Check]:
        return self.failures.get(vm, [])
