"""The session journal's file format (pure: no agents): lines written in place over a block of
zeros, a torn line after a crash neither read nor glued to the next one, the boot a record was
opened in (and what a restart in another boot makes of a switchover cut short)."""

from __future__ import annotations

import json

import pytest

from qvplan.boot import boot_id
from qvplan.migration.faults import BOOT_ENV
from qvplan.migration.journal import BLOCK, Journal
from qvplan.migration.live import reboot

SESSION = "ab" * 8


def test_lines_overwrite_the_zeros_in_place(tmp_path):
    journal = Journal(tmp_path)
    journal.open_session(SESSION, "destination", "vm-1", "hv-a", "loading", storage=True)
    path = journal.path(SESSION)
    assert path.stat().st_size == BLOCK  # allocated when the session opened, before the pause
    journal.set(SESSION, "loaded", sync=False)
    journal.set(SESSION, "committing")
    assert path.stat().st_size == BLOCK
    assert path.read_bytes().rstrip(b"\0").count(b"\n") == 3
    record = Journal(tmp_path).get(SESSION)  # a restarted agent
    assert record is not None and (record.state, record.extra) == ("committing", {"storage": True, "boot": boot_id()})


def test_a_torn_line_counts_as_not_written_and_the_next_line_stays_whole(tmp_path):
    journal = Journal(tmp_path)
    journal.open_session(SESSION, "destination", "vm-1", "hv-a", "loading")
    journal.set(SESSION, "committing")
    path = journal.path(SESSION)
    content = path.read_bytes()
    end = len(content.rstrip(b"\0"))
    with open(path, "r+b") as f:  # the agent killed in the middle of writing "running"
        f.seek(end)
        f.write(b'{"state": "runn')
    restarted = Journal(tmp_path)
    assert restarted.get(SESSION).state == "committing"
    restarted.set(SESSION, "lost", images=[])
    assert Journal(tmp_path).get(SESSION).state == "lost"


def test_lines_beyond_the_block_are_appended(tmp_path):
    journal = Journal(tmp_path)
    journal.open_session(SESSION, "source", "vm-1", "10.0.0.2:9410", "committed")
    for n in range(100):  # a source asking its destination for a long time notes each doubt
        journal.set(SESSION, "committed", sync=False, doubt=f"unreachable ({n})")
    assert journal.path(SESSION).stat().st_size > BLOCK
    assert Journal(tmp_path).get(SESSION).extra["doubt"] == "unreachable (99)"


def test_a_record_knows_whether_its_unflushed_lines_survived(tmp_path, monkeypatch):
    journal = Journal(tmp_path)
    journal.open_session(SESSION, "destination", "vm-1", "hv-a", "loading")
    first = json.loads(journal.path(SESSION).read_bytes().split(b"\n")[0])
    assert first["boot"] == boot_id() != ""  # in the durable first line
    assert not Journal(tmp_path).get(SESSION).unsynced_may_be_lost  # same boot: the page cache kept them
    monkeypatch.setenv(BOOT_ENV, "another-boot")
    assert Journal(tmp_path).get(SESSION).unsynced_may_be_lost  # after a host crash: maybe not

    older = "cd" * 8  # a record of an agent before the boot field: its `committing` was flushed before cont
    journal.path(older).write_text(json.dumps({"session": older, "role": "destination", "vm": "vm-2",
                                               "peer": "hv-a", "state": "loaded"}) + "\n")
    assert not Journal(tmp_path).get(older).unsynced_may_be_lost


@pytest.mark.parametrize(("role", "kind", "state", "cut_short"), [
    ("destination", "live", "loading", True),
    ("destination", "live", "loaded", True),
    ("destination", "live", "committing", False),  # its own rule: resume, or lost without QEMU
    ("destination", "offline", "loading", False),  # offline: the incoming mark is the commit point
    ("source", "live", "transferring", False),
])
def test_which_sessions_a_restart_in_another_boot_asks_the_source_about(tmp_path, monkeypatch, role, kind,
                                                                          state, cut_short):
    Journal(tmp_path).open_session(SESSION, role, "vm-1", "hv-a", state, kind=kind)
    monkeypatch.setenv(BOOT_ENV, "another-boot")
    assert reboot.crashed_before_commit_flushed(Journal(tmp_path).get(SESSION)) is cut_short


@pytest.mark.parametrize(("source_state", "outcome"), [
    ("transferring", "discarded"), ("awaiting-commit", "discarded"), ("rolled-back", "discarded"),
    ("committed", "lost"), ("released", "lost"), ("unknown", "lost"), ("lost", "lost"),
])
def test_the_source_s_word_ends_a_rebooted_session(source_state, outcome):
    assert reboot.outcome(source_state) == outcome
