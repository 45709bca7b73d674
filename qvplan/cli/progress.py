"""Showing migrations' progress: a rich live view on a terminal, plain lines otherwise (CI).

Both views draw a `qvplan.apply.progress.Board`: `qvplan apply` feeds it every running move,
`quantavirt vm migrate` (through `follow`) one migration. The live view has one bar per running
migration (phase, percent, transfer and dirty rates, iteration, ETA) and, for an apply, an overall
bar; finished moves scroll above it as lines. Without a TTY: one line per phase change, per dirty
pass and per outcome, and a `progress` line at most every 10 points or 10 seconds per migration.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..apply.progress import Bar, Board
from ..contract.events import OUTCOMES
from ..units import format_duration, format_rate, format_size

if TYPE_CHECKING:  # rich is imported by the live view only: without a TTY it is not needed
    from rich.console import Console, RenderableType

PLAIN_EVERY_PERCENT = 10.0
PLAIN_EVERY_SECONDS = 10.0


def eta_text(bar: Bar) -> str:
    eta = bar.eta
    if eta is None:
        return "ETA —"
    return f"ETA {format_duration(eta)}"


def route(bar: Bar, arrow: str = " → ") -> str:
    return f"{bar.source}{arrow}{bar.dest}" if bar.source else f"{arrow.strip()} {bar.dest}"


def figures(bar: Bar, sep: str = " ") -> str:
    """What is moving now: the disks while they copy alone (--storage-migrate), else memory."""
    if bar.storage:
        return f"disks {bar.storage}"
    return sep.join((f"iter {bar.iteration}/{bar.max_iterations}", f"xfer {format_rate(bar.transfer_rate)}",
                     f"dirty {format_rate(bar.dirty_rate)}", eta_text(bar)))


def bar_line(bar: Bar, kind: str) -> str:
    """One plain line for a bar after an event of `kind`."""
    return (f"{bar.vm} {route(bar)}: [{kind}] phase {bar.phase} ({bar.phase_name}) "
            f"{bar.percent:.0f}% {format_size(bar.transferred)}/{format_size(bar.total)} {figures(bar)}")


def outcome_line(bar: Bar) -> str:
    took = format_duration(max(0.0, time.time() - bar.started))
    what = {"rollback": "moved back to", "followed": "moved to"}.get(bar.label, "moved to")
    if bar.state == "completed":
        return f"{bar.vm}: {what} {bar.dest} ({bar.source} → {bar.dest}, {took}, {format_size(bar.transferred)})"
    return f"{bar.vm}: FAILED: {bar.error or bar.state} (still on {bar.source})"


def render_board(board: Board, overall: bool = True) -> RenderableType:
    """The live view's picture of the board: one row per running migration, then the overall bar."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    labels = {b.key: f"{b.vm} {route(b, '→')}" + (f" ({b.label})" if b.label else "") for b in board.running}
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, min_width=max(map(len, labels.values()), default=0))
    grid.add_column(no_wrap=True, min_width=24)
    grid.add_column(no_wrap=True, min_width=4)
    grid.add_column(no_wrap=True, min_width=23)
    grid.add_column(no_wrap=True, overflow="ellipsis")
    for bar in board.running:
        grid.add_row(Text(labels[bar.key], style="bold"),
                     ProgressBar(total=100, completed=bar.percent, width=24),
                     Text(f"{bar.percent:3.0f}%"),
                     Text(f"{bar.phase}: {bar.phase_name}", style="cyan"),
                     Text(figures(bar, "  ")))
    if not overall:
        return grid
    total = Table.grid(padding=(0, 1))
    for _ in range(3):
        total.add_column(no_wrap=True)
    total.add_row(Text("overall", style="bold"), ProgressBar(total=100, completed=board.overall, width=40),
                  Text(f"{board.overall:3.0f}%  {board.finished}/{max(board.planned, board.finished)} moves, "
                       f"{len(board.running)} running"))
    return Group(grid, total)


class PlainView:
    """Plain lines, for CI logs and pipes."""

    def __init__(self, echo: Callable[[str], None] = print) -> None:
        self.echo = echo
        self._shown: dict[int, tuple[float, float]] = {}  # bar key → (percent, time) last printed

    def line(self, text: str) -> None:
        self.echo(text)

    def changed(self, board: Board, bar: Bar | None, event: dict[str, Any] | None) -> None:
        if bar is None:
            return
        if event is None:
            if bar.done:
                self.echo(outcome_line(bar))
            elif bar.key not in self._shown:
                self._shown[bar.key] = (0.0, time.monotonic())
                what = {"followed": "left running by the interrupted apply; following it",
                        "rollback": "started (rollback)"}.get(bar.label, "started")
                self.echo(f"{bar.vm}: {bar.source} → {bar.dest} {what}")
            return
        kind = event.get("event", "")
        if kind in OUTCOMES or kind == "status":
            return  # the outcome line follows; a status event repeats what we know
        percent, at = self._shown.get(bar.key, (0.0, 0.0))
        if kind == "progress" and bar.percent - percent < PLAIN_EVERY_PERCENT \
                and time.monotonic() - at < PLAIN_EVERY_SECONDS:
            return
        self._shown[bar.key] = (bar.percent, time.monotonic())
        self.echo(bar_line(bar, kind))


class LiveView:
    """A rich live view; finished moves and notes are printed above it."""

    def __init__(self, console: Console | None = None, overall: bool = True) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = console or Console()
        self.overall = overall
        self.live = Live(console=self.console, auto_refresh=False, transient=True)
        self._drawn = 0.0

    def __enter__(self) -> LiveView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def line(self, text: str) -> None:
        self.live.console.print(text, markup=False, highlight=False)

    def changed(self, board: Board, bar: Bar | None, event: dict[str, Any] | None) -> None:
        if bar is not None and event is None and bar.done:
            self.line(outcome_line(bar))
        now = time.monotonic()
        if event is None or now - self._drawn > 0.2:  # events come every 250 ms per migration
            self._drawn = now
            self.live.update(render_board(board, self.overall), refresh=True)


def follow(events: Iterable[dict[str, Any]], *, tty: bool | None = None) -> dict[str, Any]:
    """Show one migration's events until its outcome; return the last event."""
    tty = sys.stdout.isatty() if tty is None else tty
    last: dict[str, Any] = {}
    board = Board(planned=1)
    bar: Bar | None = None
    live = LiveView(overall=False) if tty else None
    board.view = live if live is not None else PlainView(lambda text: print(text, flush=True))
    if live is not None:
        live.__enter__()
    try:
        for ev in events:
            last = ev
            if bar is None:
                bar = Bar(0, str(ev.get("vm")), "", str(ev.get("destination", "?")))
                board.bars[0] = bar
            board.event(bar, ev)
            if ev.get("event") in OUTCOMES:
                break
    finally:
        if live is not None:
            live.__exit__()
    return last
