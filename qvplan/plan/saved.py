"""Saved plans (`qvplan plan -out FILE`): the plan plus the facts it was made from.

Format (JSON): {"format": "qvplan-plan/1" (the marker `is_saved_plan` knows it by, whatever the
file is called), "created_at", "qvplan_version", "plan": Plan.to_dict(),
"facts": {"gathered_at", "hosts": {name: facts}}, "facts_sha256": "sha256:..."}.
Before applying, `check_fresh(saved, current_facts)` refuses a plan made for other hosts (names
or host keys differ) apart from one made from older facts of the same hosts (stale).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from .. import __version__
from ..contract.reasons import Reason
from ..errors import QVError
from .facts import Facts, FactsDoc, canonical, facts_hash, identity, now
from .model import Plan

FORMAT = "qvplan-plan/1"


class SavedPlanError(QVError):
    """A saved plan that cannot be read."""

    code = Reason.BAD_REQUEST.value


class PlanForOtherHosts(QVError):
    """The saved plan was made for different hosts (names or host keys)."""

    code = Reason.OTHER_HOSTS.value


class StalePlan(QVError):
    """The hosts changed since the plan was made."""

    code = Reason.STALE.value


class Freshness(Enum):
    FRESH = "fresh"
    OTHER_HOSTS = "other-hosts"
    STALE = "stale"


@dataclass
class SavedPlan:
    plan: Plan
    facts: Facts
    facts_sha256: str
    gathered_at: str | None
    created_at: str
    path: str


def is_saved_plan(path: str | Path) -> bool:
    """Is the file a saved plan? Known by its content (JSON with our format marker), not its name."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return False  # whoever reads it next says why it cannot be read
    if not text.lstrip().startswith("{"):
        return False
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def save_plan(path: str | Path, plan: Plan, facts: FactsDoc) -> Path:
    doc = {"format": FORMAT, "created_at": now(), "qvplan_version": __version__, "plan": plan.to_dict(),
           "facts": {"gathered_at": facts.gathered_at, "hosts": facts.hosts},
           "facts_sha256": facts_hash(facts.hosts)}
    p = Path(path)
    p.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    return p


def load_saved(path: str | Path) -> SavedPlan:
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as err:
        raise SavedPlanError(f"cannot read saved plan {p}: {err.strerror}", "check the path") from None
    except ValueError:
        raise SavedPlanError(f"{p} is not a saved plan (not JSON)", "save one with `qvplan plan -out FILE`") \
            from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SavedPlanError(f"{p} is not a saved plan of format {FORMAT}",
                             f"plan it with `qvplan plan {p}`, or save one with `qvplan plan PLAN -out FILE`")
    try:
        facts = doc["facts"]["hosts"]
        plan = Plan.from_dict(doc["plan"])
        digest = doc["facts_sha256"]
    except (KeyError, TypeError, ValueError) as err:
        raise SavedPlanError(f"saved plan {p} is damaged ({err})", "plan again with `qvplan plan -out`") from None
    if facts_hash(facts) != digest or plan.facts_hash != digest:
        raise SavedPlanError(f"saved plan {p} was edited: its facts do not match its hash",
                             "plan again with `qvplan plan -out`")
    return SavedPlan(plan, facts, digest, doc["facts"].get("gathered_at"), str(doc.get("created_at")), str(p))


def _changes(old: Facts, new: Facts) -> list[str]:
    """What differs, in words an operator can act on (first few)."""
    a, b = canonical(old), canonical(new)
    out = []
    where_a = {v["name"]: (h, v["state"]) for h, f in a.items() for v in f["vms"]}
    where_b = {v["name"]: (h, v["state"]) for h, f in b.items() for v in f["vms"]}
    for vm in sorted(set(where_a) | set(where_b)):
        was, now_ = where_a.get(vm), where_b.get(vm)
        if was != now_:
            out.append(f"{vm}: {'/'.join(was) if was else 'absent'} → {'/'.join(now_) if now_ else 'absent'}")
    for host in sorted(a):
        for key in ("version", "cpu", "pqc", "migration", "storage_checks", "reachable", "memory_total"):
            if a[host][key] != b[host][key]:
                out.append(f"{host}: {key} changed")
    return out[:5]


def freshness(saved: SavedPlan, current: Facts) -> tuple[Freshness, str]:
    if identity(saved.facts) != identity(current):
        was, now_ = identity(saved.facts), identity(current)
        diff = sorted(set(was) ^ set(now_)) or [h for h in was if was[h] != now_.get(h)]
        return Freshness.OTHER_HOSTS, "differs at " + ", ".join(diff[:5])
    if facts_hash(current) != saved.facts_sha256:
        return Freshness.STALE, "; ".join(_changes(saved.facts, current)) or "facts changed"
    return Freshness.FRESH, ""


def check_fresh(saved: SavedPlan, current: Facts) -> None:
    """Raise PlanForOtherHosts or StalePlan unless `current` facts are those the plan was made from."""
    state, detail = freshness(saved, current)
    if state is Freshness.OTHER_HOSTS:
        raise PlanForOtherHosts(f"plan is for other hosts ({detail})",
                                "apply it to the hosts it was made for, or plan again for these")
    if state is Freshness.STALE:
        raise StalePlan(f"plan is stale: the hosts changed since it was made ({detail})",
                        "run `qvplan plan` again and apply the new plan")


def saved_summary(saved: SavedPlan) -> dict[str, Any]:
    return {"created_at": saved.created_at, "gathered_at": saved.gathered_at, "facts_sha256": saved.facts_sha256,
            "hosts": sorted(saved.facts)}
