"""Showing a migration's progress: a live bar on a terminal, plain lines otherwise (CI)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..migration.status import PHASES
from ..units import format_rate, format_size

OUTCOMES = {"completed", "failed", "cancelled"}


def describe(ev: dict[str, Any]) -> str:
    """One plain line for an event."""
    phase = PHASES.get(ev.get("phase", 1), "")
    return (f"{ev.get('vm')}: {ev['event']} phase {ev.get('phase')} ({phase}) {ev.get('percent', 0):.0f}% "
            f"{format_size(ev.get('transferred', 0))}/{format_size(ev.get('total', 0))} "
            f"iter {ev.get('iteration', 0)}/{ev.get('max_iterations', 0)} "
            f"xfer {format_rate(ev.get('transfer_rate', 0))} dirty {format_rate(ev.get('dirty_rate', 0))}")


async def follow(events: AsyncIterator[dict[str, Any]], *, tty: bool | None = None) -> dict[str, Any]:
    """Render events until the outcome; return the last event."""
    tty = sys.stdout.isatty() if tty is None else tty
    last: dict[str, Any] = {}
    if not tty:
        async for ev in events:
            last = ev
            if ev["event"] != "progress" or ev.get("iteration") != last.get("_printed_iter"):
                print(describe(ev), flush=True)
            if ev["event"] in OUTCOMES:
                break
        return last
    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("migrating", total=100, detail="")
        async for ev in events:
            last = ev
            phase = PHASES.get(ev.get("phase", 1), "")
            bar.update(task, completed=ev.get("percent", 0), description=f"{ev.get('vm')} [{phase}]",
                       detail=f"iter {ev.get('iteration', 0)}/{ev.get('max_iterations', 0)} "
                              f"{format_rate(ev.get('transfer_rate', 0))} "
                              f"dirty {format_rate(ev.get('dirty_rate', 0))}")
            if ev["event"] in OUTCOMES:
                break
    return last
