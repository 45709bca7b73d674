"""bench/migration.py's own arithmetic: the CPU reading, the size list, the table (pure parts)."""

from __future__ import annotations

import os
import time

import pytest

from bench.migration import MAX_DOWNTIME, Row, combine, cpu_seconds, floor_checks, parse_sizes, render
from qvplan.errors import UsageError


def test_cpu_seconds_reads_proc_like_the_kernel_reports_it() -> None:
    end = time.process_time() + 0.3
    while time.process_time() < end:  # burn some CPU so there is something to read
        pass
    t = os.times()
    assert cpu_seconds(os.getpid()) == pytest.approx(t.user + t.system, abs=0.05)


def test_sizes_are_ram_and_working_set_pairs() -> None:
    assert parse_sizes("256M:96M,1G:512M, 2G:1G") == [("256M", "96M"), ("1G", "512M"), ("2G", "1G")]
    with pytest.raises(UsageError):
        parse_sizes("1G:lots")


def test_table_shows_cpu_per_gib_against_the_floor_and_pause_against_the_promise() -> None:
    anchor = Row("plaintext direct, multifd 4", transferred=2**30, total=2.0, downtime=0.1, pause=0.12)
    ours = Row("ours (PQC), 4 channels", transferred=2 * 2**30, total=3.0, downtime=0.2, pause=0.27, cpu=1.0)
    table = render([anchor, ours], anchor, floor=0.25)
    line = next(x for x in table.splitlines() if x.startswith("ours"))
    assert f"{0.27 / MAX_DOWNTIME:.2f}" in line  # pause ÷ max-downtime
    assert line.split()[-2:] == ["0.50", "2.0"]  # 1 CPU s over 2 GiB, ÷ floor 0.25


def test_a_forced_stop_and_copy_is_named_beside_its_pause() -> None:
    anchor = Row("plaintext direct, multifd 4", transferred=2**30, total=2.0, downtime=0.1, pause=0.12)
    rounds = [[Row("ours (PQC), 1 channel", transferred=2**30, total=3.0, pause=0.5, forced=1)],
              [Row("ours (PQC), 1 channel", transferred=2**30, total=3.0, pause=0.2)]]
    (ours,) = combine(rounds)
    assert ours.forced == 1
    line = next(x for x in render([anchor, ours], anchor, floor=0.25).splitlines() if x.startswith("ours"))
    assert line.endswith("(forced stop-and-copy in 1 round)")
    assert "forced stop-and-copy in 1 round" in next(c for c in floor_checks([anchor, ours]) if "max-downtime" in c)
