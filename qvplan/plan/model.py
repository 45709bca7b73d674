"""The result of planning, as data. `plan` builds a `Plan`; `apply` walks its waves and moves and
never reads the YAML again.

Walking a plan (apply):

    for wave in plan.waves:                  # in order; all moves of a wave may run at once
        for vm in wave.moves:
            move = plan.move(vm)             # source, dest, dest_address, mode, flags, storage
            MigrateFlags(**move.flags)       # flags use qvplan.contract.flags names and units

A move whose own checks failed is BLOCKED, one whose `after:` move cannot run is SKIPPED; neither
is in a wave. Unchanged VMs are NOOP moves, also outside the waves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from .diagnostics import Diagnostic


class Action(Enum):
    """What the plan does to a VM; the value is the glyph printed in front of it."""

    MOVE = "~"
    NOOP = " "
    UNKNOWN = "?"  # the VM was not found in the facts: nothing can be said about it


class Status(Enum):
    """Whether a move can run."""

    READY = "ready"  # every check passed; it has a wave
    BLOCKED = "blocked"  # one of its own checks failed
    SKIPPED = "skipped"  # a move it comes `after:` is blocked or skipped


@dataclass(slots=True)
class Move:
    """One VM's change. `flags` is the full set of migrate flags (spec defaults filled in):
    pqc_kem, bandwidth (bytes/s, 0 = unlimited), timeout (s), max_iterations, max_downtime (s),
    auto_converge, compress, threads, insecure, storage_migrate, dest_pool, offline."""

    vm: str
    source: str | None
    dest: str
    mode: str = "live"
    flags: dict[str, Any] = field(default_factory=dict)
    after: list[str] = field(default_factory=list)
    action: Action = Action.MOVE
    status: Status = Status.READY
    index: int = 0  # position in the plan (ties in the graph are broken by it)
    memory: int = 0  # bytes the VM needs on the destination
    dest_address: str | None = None  # host:port of the destination's migration listener
    wave: int | None = None  # 1-based
    reason: str | None = None  # why BLOCKED/SKIPPED
    where: str | None = None  # file:line of its placement

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["action"] = self.action.name.lower()
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Move:
        d = dict(d)
        d["action"] = Action[d["action"].upper()]
        d["status"] = Status(d["status"])
        return cls(**d)


@dataclass(slots=True)
class Check:
    """One precondition of one move. `id` is `<vm>:<kind>`; kinds are vm, host, state, after, trust,
    version, cpu, storage, network, memory. `message` uses the spec's wording on failure."""

    id: str
    move: str
    kind: str
    ok: bool
    message: str
    fix: str | None = None
    where: str | None = None
    code: str | None = None  # the reason code of a failed check (contract/reasons.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Check:
        return cls(**d)


@dataclass
class Wave:
    """Moves that may run at the same time; every wave starts after the previous one ends."""

    index: int
    moves: list[str]


@dataclass
class Plan:
    """A planned migration.

    - `errored`: planning found a problem (a failed check or an invalid plan); apply must refuse.
    - `applyable`: not errored and there is at least one move to run.
    - `complete`: applying the waves reaches the desired placement, so planning again afterwards
      shows no changes (no move is blocked or skipped, and every VM was found).
    """

    file: str
    moves: list[Move] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    waves: list[Wave] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    facts_hash: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # on_failure, limits, prerequisites
    trust_exchange: list[tuple[str, str]] = field(default_factory=list)  # (importer, host whose key)
    capacity: dict[str, int] = field(default_factory=dict)  # host → free memory the schedule started from

    @property
    def changes(self) -> list[Move]:
        return [m for m in self.moves if m.action is Action.MOVE]

    @property
    def unchanged(self) -> list[Move]:
        return [m for m in self.moves if m.action is Action.NOOP]

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def errored(self) -> bool:
        return bool(self.diagnostics or self.failed_checks
                    or any(m.action is Action.UNKNOWN for m in self.moves))

    @property
    def applyable(self) -> bool:
        return not self.errored and bool(self.changes)

    @property
    def complete(self) -> bool:
        return all(m.action is not Action.UNKNOWN and m.status is Status.READY for m in self.moves) and not (
            self.settings.get("selection") or {}).get("left_out")  # --target/--limit left moves for later

    def move(self, vm: str) -> Move:
        index = self.__dict__.get("_by_vm")
        if index is None or len(index) != len(self.moves):  # built once; moves are only appended
            index = self.__dict__["_by_vm"] = {m.vm: m for m in self.moves}
        return index[vm]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "facts_hash": self.facts_hash,
            "summary": {"move": len(self.changes), "unchanged": len(self.unchanged),
                        "blocked": sum(m.status is Status.BLOCKED for m in self.changes),
                        "skipped": sum(m.status is Status.SKIPPED for m in self.changes),
                        "errored": self.errored, "applyable": self.applyable, "complete": self.complete},
            "moves": [m.to_dict() for m in self.moves],
            "checks": [c.to_dict() for c in self.checks],
            "waves": [asdict(w) for w in self.waves],
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "settings": self.settings,
            "trust_exchange": [list(p) for p in self.trust_exchange],
            "capacity": self.capacity,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(
            file=d["file"],
            moves=[Move.from_dict(m) for m in d.get("moves", [])],
            checks=[Check.from_dict(c) for c in d.get("checks", [])],
            waves=[Wave(**w) for w in d.get("waves", [])],
            diagnostics=[Diagnostic(**x) for x in d.get("diagnostics", [])],
            facts_hash=d.get("facts_hash"),
            settings=d.get("settings", {}),
            trust_exchange=[(a, b) for a, b in d.get("trust_exchange", [])],
            capacity={str(h): int(v) for h, v in (d.get("capacity") or {}).items()},
        )
