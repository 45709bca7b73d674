"""The apply report: one self-contained HTML page from an apply's journal.

`qvplan apply … --report DIR` writes it when the apply ends; `qvplan show JOURNAL --report DIR`
renders it afterwards from any journal. Everything is inline — CSS, the timeline (SVG drawn
here), each move's convergence chart (SVG from charts.py) — so it opens with no network and can
be attached to a change ticket. Sections: the plan and its checks, a timeline of the moves per
host (who moved when, for how long, how many at once), each move's chart, the outcomes with
their reason codes and fixes, the left-out moves of a --target/--limit apply, and the journal.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..contract.reasons import fix_for
from ..errors import QVError
from .journal import read_journal

TEMPLATES = Path(__file__).with_name("templates")
REPORT = "report.html"
ROW, LABEL_W, WIDTH = 22, 190, 900  # timeline geometry (px)


@dataclass
class MoveRow:
    vm: str
    source: str
    dest: str
    start: float
    end: float | None = None
    ok: bool | None = None
    code: str | None = None
    error: str | None = None
    fix: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    chart: str | None = None  # inline SVG markup
    passes: int = 0

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start

    @property
    def outcome(self) -> str:
        return "running" if self.ok is None else "moved" if self.ok else "failed"


def _moves(entries: list[dict[str, Any]]) -> list[MoveRow]:
    rows: dict[str, MoveRow] = {}
    order: list[MoveRow] = []
    for e in entries:
        kind, vm = e.get("kind"), e.get("vm")
        if kind in ("start", "follow"):
            row = MoveRow(vm, e.get("source", "?"), e.get("dest", "?"), e["time"])
            rows[vm] = row
            order.append(row)
        elif kind == "end" and vm in rows:
            row = rows[vm]
            row.end, row.ok, row.code, row.error = e["time"], bool(e.get("ok")), e.get("code"), e.get("error")
            row.fix = fix_for(row.code) if row.code else None
            row.figures = {k: e.get(k) for k in ("transferred", "iteration", "pause", "downtime", "elapsed")}
        elif kind == "passes" and vm in rows:
            rows[vm].passes = len(e.get("passes") or [])
            rows[vm].chart = _chart(e)
    return order


def _chart(document: dict[str, Any]) -> str | None:
    from ..charts import render

    try:
        svg = render(document, "svg").decode()
    except Exception:  # a chart is a nicety: the report still says everything in words
        return None
    return svg[svg.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def timeline_svg(moves: list[MoveRow], finished: float) -> str:
    """Lanes per host; each move a bar in its source's lane (out) and its destination's (in)."""
    if not moves:
        return ""
    t0 = min(m.start for m in moves)
    t1 = max([finished, *[(m.end or finished) for m in moves]])
    span = max(t1 - t0, 1e-3)
    hosts = sorted({h for m in moves for h in (m.source, m.dest)})
    lanes: list[tuple[str, str, list[MoveRow]]] = []
    for h in hosts:
        for way, pick in (("out", [m for m in moves if m.source == h]), ("in", [m for m in moves if m.dest == h])):
            if pick:
                lanes.append((h, way, pick))
    scale = (WIDTH - LABEL_W - 10) / span
    height = ROW * len(lanes) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{WIDTH}" height="{height}" '
           f'role="img" aria-label="timeline of the moves per host">']
    for i, (host, way, picked) in enumerate(lanes):
        y = i * ROW + 4
        out.append(f'<text x="4" y="{y + 14}" class="lane">{html.escape(host)} {way} '
                   f'(max {most_at_once([(m.start, m.end or finished) for m in picked])} at once)</text>')
        for m in picked:
            x = LABEL_W + (m.start - t0) * scale
            w = max(2.0, ((m.end or finished) - m.start) * scale)
            other = m.dest if way == "out" else m.source
            tip = f"{m.vm} {m.source} → {m.dest}, {m.outcome}, {m.duration or 0:.1f}s"
            out.append(f'<g class="move {m.outcome}" data-vm="{html.escape(m.vm)}"><title>{html.escape(tip)}</title>'
                       f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW - 6}" rx="3"/>'
                       f'<text x="{x + 3:.1f}" y="{y + 12}">{html.escape(m.vm)} {"→" if way == "out" else "←"} '
                       f'{html.escape(other)}</text></g>')
    axis_y = ROW * len(lanes) + 18
    for k in range(6):
        x = LABEL_W + k * (WIDTH - LABEL_W - 10) / 5
        out.append(f'<text x="{x:.0f}" y="{axis_y}" class="axis">+{span * k / 5:.1f}s</text>')
    out.append("</svg>")
    return "".join(out)


def build(journal: str | Path) -> str:
    """The report's HTML for a journal."""
    if not Path(journal).is_file():
        raise QVError(f"no apply journal at {journal}", "pass a .qvplan/apply-*.jsonl file an apply wrote",
                      code="bad-request")
    entries = read_journal(journal)
    header = entries[0] if entries and entries[0].get("kind") == "apply" else {}
    plans = [e["plan"] for e in entries if e.get("kind") == "plan"]
    plan = plans[-1] if plans else None
    moves = _moves(entries)
    done = next((e for e in reversed(entries) if e.get("kind") == "done"), None)
    finished = done["time"] if done else (entries[-1]["time"] if entries else time.time())
    spans = [(m.start, m.end or finished) for m in moves]
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    env.filters["clock"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "—"
    return env.get_template("report.html.j2").render(
        journal=str(journal), header=header, plan=plan, moves=moves, done=done,
        skips=[e for e in entries if e.get("kind") == "skip"],
        left_out=((plan or {}).get("settings", {}).get("selection") or {}).get("left_out", []),
        selection=(plan or {}).get("settings", {}).get("selection"),
        timeline=timeline_svg(moves, finished), at_once=most_at_once(spans) if spans else 0,
        started=moves[0].start if moves else header.get("time"), finished=finished,
        entries=[json.dumps(e, default=str) for e in entries if e.get("kind") not in ("plan", "passes")],
    )


def write_report(journal: str | Path, folder: str | Path) -> Path:
    """Write DIR/report.html for `journal`; returns its path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT
    path.write_text(build(journal), encoding="utf-8")
    return path
