"""Convergence charts of a live migration, pass by pass (matplotlib, Agg backend, imported lazily).

Input: the pass document an agent serves (`GET /api/v1/vms/NAME/migrate/passes`, see
migration/recent.py): the migration's figures and its passes (migration/passes.py). Four panels
share the pass number: bytes sent per pass; dirty rate against transfer rate (where they meet is
where the migration converges, or does not); bytes left to send when the pass began; auto-converge's
vCPU throttle. The switchover (the first pass with the guest paused) is a vertical line, the paused
passes are shaded. `write_chart` also writes the data beside the picture (FILE.json), so what the
picture shows can be checked and reused. The apply report (apply/report.py) draws the same.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from .errors import UsageError

FORMATS = {".png": "png", ".svg": "svg"}
MIB = 1 << 20


def chart_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot draw a chart as {path.name!r}: unknown suffix",
                         "name the file .png or .svg, e.g. --plot web-01.svg")
    return fmt


def render(document: dict[str, Any], fmt: str = "svg") -> bytes:
    """The chart of one migration's passes as PNG or SVG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    passes = [p for p in document.get("passes", []) if p.get("ended") is not None]
    numbers = [p["number"] for p in passes]
    fig = Figure(figsize=(9, 8.5), layout="constrained")
    axes = fig.subplots(4, 1, sharex=True)
    title = f"{document.get('vm')} → {document.get('destination')}: {document.get('state')}"
    if document.get("code"):
        title += f" ({document['code']})"
    if document.get("pause") is not None:
        title += f", guest pause {document['pause'] * 1000:.0f} ms"
    if document.get("forced_stop_and_copy"):
        title += ", forced stop-and-copy"
    fig.suptitle(title, fontsize=11)
    sent, rates, left, throttle = axes
    colors = ["#9aa5b1" if p.get("paused") else "#3b7dd8" for p in passes]
    sent.bar(numbers, [p["sent"] / MIB for p in passes], color=colors)
    sent.set_ylabel("sent (MiB)")
    rates.plot(numbers, [p["dirty_rate"] / MIB if not p.get("paused") else None for p in passes],
               marker="o", color="#d8563b", label="dirty rate")
    rates.plot(numbers, [p["transfer_rate"] / MIB for p in passes], marker="s", color="#3b7dd8",
               label="transfer rate")
    rates.set_ylabel("MiB/s")
    rates.legend(loc="upper right", fontsize=8)
    left.plot(numbers, [p["remaining"] / MIB for p in passes], marker="o", color="#6a3bd8")
    left.set_ylabel("left to send (MiB)")
    throttle.step(numbers, [p.get("cpu_throttle", 0) for p in passes], where="mid", color="#2e9e5b")
    throttle.set_ylabel("vCPU throttle (%)")
    throttle.set_ylim(0, 100)
    throttle.set_xlabel("pass")
    paused = [p["number"] for p in passes if p.get("paused")]
    if paused:
        for ax in axes:
            ax.axvspan(paused[0] - 0.5, paused[-1] + 0.5, color="#f2c14e", alpha=0.3, lw=0)
            ax.axvline(paused[0] - 0.5, color="#b07d00", ls="--", lw=1)
        sent.annotate("switchover: guest paused", (paused[0] - 0.5, 1), xycoords=("data", "axes fraction"),
                      xytext=(-4, -12), textcoords="offset points", ha="right", fontsize=8, color="#b07d00")
    for ax in axes:
        ax.grid(alpha=0.3)
    out = io.BytesIO()
    fig.savefig(out, format=fmt)
    return out.getvalue()


def write_chart(document: dict[str, Any], path: Path) -> Path:
    """Write the chart to `path` (PNG or SVG by its suffix) and its data to `path`.json."""
    fmt = chart_format(path)
    path.write_bytes(render(document, fmt))
    data = path.with_name(path.name + ".json")
    data.write_text(json.dumps(document, indent=2))
    return data
