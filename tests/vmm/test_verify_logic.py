"""The RAM invariant on hand-made dumps: pure, no QEMU."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qvplan.vmm.verify import FILL, PAGE, best_split, check_ram

START = 0x100_0000


def dump(counters: list[int]) -> bytearray:
    data = bytearray(FILL * len(counters))
    for i, c in enumerate(counters):
        data[i * PAGE] = c % 256
    return data


def bad_indices(data: bytes) -> list[int]:
    return sorted({p.index for p in check_ram(bytes(data), START).bad_pages})


def test_all_equal_is_ok() -> None:
    report = check_ram(bytes(dump([7] * 32)), START)
    assert report.ok and report.edge is None and report.value == 7
    assert str(report).startswith("RAM ok: 32 pages at 0x1000000")


def test_one_edge_is_ok() -> None:
    report = check_ram(bytes(dump([8] * 10 + [7] * 22)), START)
    assert report.ok, str(report)
    assert (report.edge, report.value) == (10, 7)


def test_wraparound_edge_is_ok() -> None:
    report = check_ram(bytes(dump([0] * 5 + [255] * 27)), START)
    assert report.ok, str(report)
    assert (report.edge, report.value) == (5, 255)


def test_edge_where_most_pages_are_ahead_is_ok() -> None:
    assert check_ram(bytes(dump([3] * 30 + [2] * 2)), START).ok


def test_two_edges_are_bad() -> None:
    report = check_ram(bytes(dump([8] * 10 + [7] * 10 + [8] * 2 + [7] * 10)), START)
    assert not report.ok
    assert {p.index for p in report.bad_pages} == {20, 21}
    assert "RAM corrupt" in str(report)


def test_edge_with_difference_two_is_bad() -> None:
    report = check_ram(bytes(dump([9] * 10 + [7] * 22)), START)
    assert not report.ok
    assert report.bad_count == 10


def test_single_flipped_counter_is_named() -> None:
    data = dump([4] * 64)
    data[40 * PAGE] ^= 0x80
    report = check_ram(bytes(data), START)
    assert not report.ok and report.bad_count == 1
    bad = report.bad_pages[0]
    assert (bad.index, bad.address, bad.what, bad.expected, bad.found) == (40, START + 40 * PAGE, "counter", 4, 0x84)
    assert "page 40 (0x1028000) counter expected 0x04 found 0x84" in str(report)


@pytest.mark.parametrize("offset", [1, 15, 16, 2049, PAGE - 1])
def test_damaged_marker_fill_is_bad(offset: int) -> None:
    data = dump([1] * 8 + [0] * 8)
    data[3 * PAGE + offset] ^= 0xFF
    report = check_ram(bytes(data), START)
    assert not report.ok and report.bad_count == 1
    assert report.bad_pages[0].index == 3
    assert report.bad_pages[0].what == f"fill at +0x{offset:03x}"
    assert report.bad_pages[0].expected == FILL[offset]


def test_report_shows_the_first_few_and_counts_the_rest() -> None:
    data = dump([2] * 100)
    for i in range(10, 30):
        data[i * PAGE + 100] = 0
    report = check_ram(bytes(data), START)
    assert report.bad_count == 20 and len(report.bad_pages) == 8
    assert str(report).endswith("+12 more")


def test_empty_dump_is_not_ok() -> None:
    assert not check_ram(b"", START).ok


@given(pages=st.integers(1, 300), edge=st.integers(0, 300), value=st.integers(0, 255))
def test_any_interrupted_sweep_is_ok(pages: int, edge: int, value: int) -> None:
    edge = min(edge, pages)
    counters = bytes([(value + 1) % 256] * edge + [value] * (pages - edge))
    _, _, misses = best_split(counters)
    assert misses == 0
    report = check_ram(bytes(dump(list(counters))), START)
    assert report.ok
    if 0 < edge < pages:
        assert (report.edge, report.value) == (edge, value)


@given(pages=st.integers(3, 200), edge=st.integers(0, 200), value=st.integers(0, 255),
       victim=st.integers(0, 199), delta=st.integers(2, 254))
def test_any_single_counter_corruption_is_named(pages: int, edge: int, value: int, victim: int, delta: int) -> None:
    edge, victim = min(edge, pages), victim % pages
    counters = [(value + 1) % 256] * edge + [value] * (pages - edge)
    counters[victim] = (counters[victim] + delta) % 256
    assert bad_indices(dump(counters)) == [victim]
