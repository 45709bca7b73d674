"""A Plan as text, like Terraform's plan output: the diff, the checks, the schedule."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..units import format_size
from .model import Action, Move, Plan, Status

OK, FAIL = "✅", "❌"


def short_size(n: int) -> str:
    for unit, mult in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return format_size(n)


def short_time(s: float) -> str:
    return f"{s * 1000:g}ms" if s < 1 else f"{s:g}s"


def flag_summary(move: Move) -> str:
    f: dict[str, Any] = move.flags
    parts = [move.mode, "plaintext" if f.get("insecure") else str(f.get("pqc_kem"))]
    bw = f.get("bandwidth") or 0
    parts.append(short_size(bw) if bw else "unlimited")
    if move.mode == "live":
        parts.append(f"≤{short_time(float(f.get('max_downtime', 0.3)))}")
    if f.get("storage_migrate"):
        parts.append("+storage" + (f"→{f['dest_pool']}" if f.get("dest_pool") else ""))
    return ", ".join(parts)


def diff_lines(plan: Plan) -> list[str]:
    """One line per VM that changes (or cannot be found); unchanged VMs counted."""
    lines = []
    for m in plan.moves:
        if m.action is Action.MOVE:
            tag = "" if m.status is Status.READY else f"   [{m.status.value}]"
            lines.append(f"{m.action.value} {m.vm}  {m.source or '?'} → {m.dest}  ({flag_summary(m)}){tag}")
        elif m.action is Action.UNKNOWN:
            lines.append(f"{m.action.value} {m.vm}  (not found) → {m.dest}")
    return lines


def check_lines(plan: Plan) -> list[str]:
    """Passed checks counted per kind; every failure on its own with its fix and location."""
    passed: dict[str, int] = defaultdict(int)
    failed = []
    for c in plan.checks:
        if c.ok:
            passed[c.kind] += 1
        else:
            failed.append(c)
    lines = [f"{OK} {kind:<8} {n} move{'s' if n != 1 else ''}" for kind, n in passed.items()]
    for c in failed:
        lines.append(f"{FAIL} {c.kind:<8} {c.move}: {c.message}")
        if c.fix:
            lines.append(f"   {'':<8} fix: {c.fix}" + (f"  ({c.where})" if c.where else ""))
    return lines


def schedule_lines(plan: Plan) -> list[str]:
    lines = []
    for wave in plan.waves:
        shown = ", ".join(f"{vm} ({plan.move(vm).source} → {plan.move(vm).dest})" for vm in wave.moves)
        lines.append(f"wave {wave.index}: {shown}")
    for m in plan.changes:
        if m.status is Status.SKIPPED:
            lines.append(f"skipped: {m.vm} ({m.reason})")
    from .targets import left_out_lines

    return lines + left_out_lines(plan)


def summary(plan: Plan) -> str:
    moves = plan.changes
    if not moves and not plan.errored:
        return "No changes. Every VM is where the plan wants it."
    blocked = sum(m.status is Status.BLOCKED for m in moves)
    skipped = sum(m.status is Status.SKIPPED for m in moves)
    unknown = sum(m.action is Action.UNKNOWN for m in plan.moves)
    text = f"Plan: {len(moves)} to move, {len(plan.unchanged)} unchanged"
    left = len((plan.settings.get("selection") or {}).get("left_out") or [])  # --target/--limit
    for n, what in ((blocked, "blocked"), (skipped, "skipped"), (unknown, "not found"), (left, "left out")):
        if n:
            text += f", {n} {what}"
    failures = len(plan.failed_checks)
    return text + (f". {failures} check{'s' if failures != 1 else ''} failed." if failures else ".")


def render_plan(plan: Plan) -> str:
    out = [f"Plan {plan.file}" + (f"  (facts {plan.facts_hash[:19]}…)" if plan.facts_hash else ""), ""]
    diff = diff_lines(plan)
    out += [f"  {line}" for line in diff]
    if plan.unchanged:
        n = len(plan.unchanged)
        out.append(f"    {n} VM{'s' if n != 1 else ''} unchanged")
    if diff or plan.unchanged:
        out.append("")
    if plan.checks:
        out += ["Checks:"] + [f"  {line}" for line in check_lines(plan)] + [""]
    sched = schedule_lines(plan)
    if sched:
        lim = plan.settings.get("limits", {})
        out.append(f"Schedule (parallel {lim.get('parallel')}, per host {lim.get('per_host_outbound')} out / "
                   f"{lim.get('per_host_inbound')} in):")
        out += [f"  {line}" for line in sched] + [""]
    if plan.trust_exchange:
        keys = plan.settings.get("trust_keys") or {}
        out.append("Trust: apply imports keys: " + ", ".join(f"{a} ← {b} ({keys.get(b, 'key not planned')})"
                                                             for a, b in plan.trust_exchange))
        out.append("")
    out.append(summary(plan))
    return "\n".join(out)
