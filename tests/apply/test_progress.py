"""The progress board and its two views (pure: events in, text out)."""

from __future__ import annotations

import io

from rich.console import Console

from qvplan.apply.progress import Bar, Board
from qvplan.cli.progress import PlainView, render_board


def ev(kind: str, **fields) -> dict:
    return {"event": kind, "vm": "vm-1", **fields}


def draw(board: Board) -> str:
    console = Console(file=io.StringIO(), width=160, force_terminal=False, color_system=None)
    console.print(render_board(board))
    return console.file.getvalue()


def test_bars_never_run_backwards():
    board = Board(planned=2)
    bar = board.start("vm-1", "hv-a", "hv-b")
    board.event(bar, ev("pass", phase=3, percent=97.0, transferred=30, total=40, iteration=2))
    board.event(bar, ev("progress", phase=3, percent=60.0, transferred=31, total=70, iteration=2))
    assert bar.percent == 97.0 and bar.iteration == 2
    before = board.overall
    board.plan_more(2)  # rollback-all adds moves: the overall bar must not drop
    assert board.overall == before == 48.5
    board.event(bar, ev("completed", phase=5, percent=99.0))
    assert bar.done and bar.percent == 100.0


def test_eta_uses_the_net_rate_and_admits_not_converging():
    bar = Bar(1, "vm-1", "a", "b", phase=3, total=300, transferred=100, transfer_rate=30.0, dirty_rate=10.0)
    assert bar.eta == 10.0  # 200 left at 30 - 10 per second
    bar.dirty_rate = 40.0
    assert bar.eta is None  # dirtying faster than sending: no honest ETA
    bar.phase = 4  # stop-and-copy: the guest is paused, nothing is dirtied
    assert bar.eta == 200 / 30


def test_live_view_picture():
    board = Board(planned=3)
    one = board.start("vm-1", "hv-a", "hv-b")
    board.event(one, ev("pass", phase=3, percent=42.0, transferred=42 << 20, total=100 << 20, iteration=3,
                        max_iterations=30, transfer_rate=5e6, dirty_rate=1e6))
    two = board.start("vm-2", "hv-b", "hv-c", label="followed")
    board.finish(two, True)
    text = draw(board)
    assert "vm-1 hv-a→hv-b" in text and "42%" in text and "3: iterative dirty copy" in text
    assert "iter 3/30" in text and "xfer 5.0 MB/s" in text and "dirty 1.0 MB/s" in text and "ETA" in text
    assert "vm-2" not in text  # finished moves leave the live area
    assert "overall" in text and "1/3 moves, 1 running" in text and "47%" in text  # (100 + 42) / 3


def test_plain_view_one_line_per_event_with_progress_thinned():
    lines: list[str] = []
    board = Board(planned=1, view=PlainView(lines.append))
    bar = board.start("vm-1", "hv-a", "hv-b")
    board.event(bar, ev("status", phase=1))
    board.event(bar, ev("phase", phase=2, percent=1.0))
    for p in (2.0, 3.0, 4.0):
        board.event(bar, ev("progress", phase=2, percent=p))
    board.event(bar, ev("progress", phase=2, percent=15.0))
    board.event(bar, ev("pass", phase=3, percent=16.0, iteration=2))
    board.event(bar, ev("completed", phase=5))
    board.finish(bar, True)
    assert lines[0] == "vm-1: hv-a → hv-b started"
    kinds = [line.split(": ", 1)[1].split()[0] for line in lines[1:-1]]
    assert kinds == ["[phase]", "[progress]", "[pass]"]  # the small progress steps are thinned out
    assert lines[-1].startswith("vm-1: moved to hv-b")


def test_storage_line_shows_during_the_block_phase_only():
    board = Board(planned=1)
    bar = board.start("vm-1", "hv-a", "hv-b")
    lines: list[str] = []
    view = PlainView(echo=lines.append)
    line = "40% (40.0 MiB / 100.0 MiB copied), 1.0 MiB dirty, 50.0 MB/s"
    board.event(bar, ev("phase", phase=2, storage_phase=True, storage=line))
    view.changed(board, bar, ev("phase", phase=2))
    assert line in lines[-1] and line in draw(board)
    board.event(bar, ev("phase", phase=3, storage_phase=False, storage=line))
    view.changed(board, bar, ev("phase", phase=3))
    assert "storage" not in lines[-1] and line not in draw(board)
