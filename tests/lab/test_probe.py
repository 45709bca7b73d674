"""The lab client's bookkeeping (pure): the longest gap between answers."""

from __future__ import annotations

from qvplan.lab.probe import Seen


def test_longest_gap_is_between_consecutive_answers() -> None:
    seen = Seen(sent=5)
    for t in (10.000, 10.001, 10.002, 10.150, 10.151):
        seen.answer(t)
    report = seen.report()
    assert report["answered"] == 5 and report["longest_gap_ms"] == 148.0
    assert report["gap_from"] is not None and report["gap_to"] >= report["gap_from"]
    assert "_last" not in report and "_last_wall" not in report
