"""The per-pass arithmetic of passes.py, on figures shaped like QEMU's `query-migrate`."""

from __future__ import annotations

import pytest

from qvplan.migration.passes import PassHistory
from qvplan.migration.status import MigrationStatus

PAGE = 4096
MIB = 1 << 20


def info(sync: int, remaining_pages: int, sent_pages: int, zero_pages: int = 0, throttle: int = 0,
         dirty_pages_rate: int = 0) -> dict:
    return {"status": "active", "cpu-throttle-percentage": throttle,
            "ram": {"dirty-sync-count": sync, "remaining": remaining_pages * PAGE, "normal": sent_pages,
                    "duplicate": zero_pages, "transferred": sent_pages * (PAGE + 8) + zero_pages * 9,
                    "page-size": PAGE, "dirty-pages-rate": dirty_pages_rate, "mbps": 8.0}}


def test_the_jump_of_the_bitmap_at_a_sync_over_the_time_between_syncs_is_the_dirty_rate():
    h = PassHistory()
    h.synced(1, 100.0)
    # pass 1: 1000 pages to go, 300 of them zero; sampled twice while sending
    assert h.observe(info(1, 1000, 0), 100.1) is None
    assert h.observe(info(1, 400, 300, zero_pages=300), 100.3) is None
    h.synced(2, 100.5)
    # sync 2: 250 pages found re-dirtied; sampled late in pass 2 (100 more sent): same answer
    closed = h.observe(info(2, 150, 800, zero_pages=300), 100.7)
    assert closed is not None and closed.number == 1
    assert closed.duration == pytest.approx(0.5)
    assert closed.dirtied == 250 * PAGE
    assert closed.dirty_rate == pytest.approx(250 * PAGE / 0.5)
    assert closed.sent == 800 * (PAGE + 8) + 300 * 9
    assert h.dirty_rate() == pytest.approx(250 * PAGE / 0.5)
    assert h.expected_downtime() == pytest.approx(closed.dirtied / closed.transfer_rate)


def test_short_passes_that_qemu_reports_as_zero_still_show_their_rate():
    h = PassHistory()
    sent = 0
    for n in range(1, 6):  # 5 passes of 20 ms, 100 pages re-dirtied in each, QEMU's rate still 0
        h.synced(n, n * 0.02)
        h.observe(info(n, 100, sent, dirty_pages_rate=0), n * 0.02 + 0.001)
        sent += 100
    rates = [p.dirty_rate for p in h.passes if p.ended is not None]
    assert len(rates) == 4 and all(r == pytest.approx(100 * PAGE / 0.02) for r in rates)


def test_a_pass_without_an_event_takes_the_sample_time_and_is_corrected_by_a_late_event():
    h = PassHistory()
    h.observe(info(1, 100, 0), 10.0)
    h.observe(info(2, 100, 100), 11.2)  # polled before the MIGRATION_PASS event arrived
    h.synced(2, 11.0)
    assert h.passes[-1].started == 11.0


def test_paused_passes_are_marked_and_not_taken_as_the_dirty_rate():
    h = PassHistory()
    h.observe(info(1, 100, 0), 1.0)
    h.paused = True
    h.observe(info(2, 100, 100), 2.0)
    h.observe(info(3, 100, 200), 2.1)
    assert h.passes[-2].paused and h.dirty_rate() is None
    h.finish(2.5, transferred=300 * (PAGE + 8))
    assert h.passes[-1].ended == 2.5 and h.passes[-1].sent == 100 * (PAGE + 8)


def test_the_history_is_bounded():
    h = PassHistory(max_passes=10)
    for n in range(1, 50):
        h.observe(info(n, 10, n * 10), float(n))
    assert len(h.passes) == 10 and h.passes[0].number == 40


def test_status_shows_the_true_rate_and_estimate_instead_of_qemus_zero():
    s = MigrationStatus("vm", "b:9410", "ML-KEM-768", 30)
    s.history.synced(1, 1.0)
    s.update_from_qemu(info(1, 1000, 0))
    assert s.dirty_rate == 0.0  # nothing finished yet: QEMU's figure
    s.history.synced(2, 1.5)
    s.update_from_qemu(info(2, 500, 1000))
    assert s.dirty_rate == pytest.approx(500 * PAGE / 0.5)
    assert s.expected_downtime == pytest.approx(s.history.expected_downtime())
    assert s.as_dict()["last_pass"]["number"] == 1
    assert "Dirty Rate:      4.1 MB/s" in s.render()


def test_a_stop_inside_a_pass_ends_its_dirty_window_and_the_passes_after_it_are_paused():
    h = PassHistory()
    h.synced(1, 0.0)
    h.observe(info(1, 100, 0), 0.01)
    h.synced(2, 1.0)
    h.observe(info(2, 100, 100), 1.01)  # 100 pages re-dirtied in pass 1
    h.stopped(1.2)  # QEMU stops the guest for its stop-and-copy during pass 2
    h.synced(3, 1.5)
    h.observe(info(3, 50, 200), 1.51)  # 50 pages re-dirtied before the stop
    h.finish(1.7, transferred=300 * (PAGE + 8), completed=True)
    one, two, three = h.passes
    assert one.dirty_rate == pytest.approx(100 * PAGE / 1.0)
    assert two.stopped_at == 1.2 and two.dirty_rate == pytest.approx(50 * PAGE / 0.2)
    assert three.paused and three.dirty_rate == 0
    assert h.dirty_rate() is None  # the latest finished pass is paused: no live rate to show


def test_syncs_seen_together_make_one_record_and_the_late_event_fixes_its_end():
    h = PassHistory()
    h.synced(1, 0.0)
    h.observe(info(1, 100, 0), 0.01)
    h.synced(2, 0.5)
    h.observe(info(3, 100, 200), 1.2)  # passes 2 and 3 both between two samples
    assert [p.number for p in h.passes] == [1, 3] and h.passes[0].syncs == 2
    assert h.passes[0].ended == 1.2
    h.synced(3, 1.0)  # the event of sync 3 arrives after the poll
    assert h.passes[0].ended == 1.0 and h.passes[0].dirty_rate == pytest.approx(200 * PAGE / 1.0)


def test_what_the_guest_dirtied_since_the_last_sync_counts_on_top_of_remaining():
    """Late in a pass `remaining` reads near 0 while the guest has re-dirtied pages the next sync
    (and a stop's final one) will find: the forced stop's fit check adds them (live/source.py)."""
    h = PassHistory()
    assert h.dirtied_since_sync(100.0) == 0  # nothing measured
    h.synced(1, 100.0)
    h.observe(info(1, 1000, 0), 100.1)
    h.synced(2, 101.0)
    h.observe(info(2, 500, 1000), 101.1)  # 500 pages re-dirtied in a second of pass 1
    assert h.dirtied_since_sync(101.0) == 0  # right at the sync: all of it is in `remaining`
    assert h.dirtied_since_sync(101.5) == 250 * PAGE  # half a second on at 500 pages/s
    h.stopped(101.6)
    h.synced(3, 102.0)
    h.observe(info(3, 10, 1500), 102.0)
    assert h.dirtied_since_sync(102.5) == 0  # paused: the guest dirties nothing


def test_a_guest_that_re_dirties_what_each_pass_sends_outpaces_pre_copy():
    def history(remaining_at_each_sync: list[int]) -> PassHistory:
        h, sent = PassHistory(), 0
        for n, remaining in enumerate(remaining_at_each_sync, start=1):
            h.synced(n, float(n))
            h.observe(info(n, remaining, sent), n + 0.001)
            sent += remaining  # the pass sends what its sync found
        return h

    # the bulk pass shrinks the dirty set whatever the guest does: it never counts
    assert not history([1000, 100, 100]).outpaced()  # one pass after it closed: too soon to say
    assert history([1000, 100, 100, 100]).outpaced()  # passes 2 and 3 each found all of it dirty again
    assert history([1000, 100, 95, 92]).outpaced()  # 95 and 97 % re-dirtied: the set is barely shrinking
    assert not history([1000, 100, 50, 25]).outpaced()  # halving each pass: pre-copy gains on it
    assert not history([1000, 100, 100, 50]).outpaced()  # the latest pass gained
