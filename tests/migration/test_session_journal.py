"""The session journal's file format (pure: no agents): lines written in place over a block of
zeros, a torn line after a crash neither read nor glued to the next one."""

from __future__ import annotations

from qvplan.migration.journal import BLOCK, Journal

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
    assert record is not None and (record.state, record.extra) == ("committing", {"storage": True})


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
