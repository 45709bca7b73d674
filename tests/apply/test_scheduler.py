"""The scheduler's rules, one at a time (pure: no hosts)."""

from __future__ import annotations

from qvplan.apply.scheduler import Limits, Scheduler
from qvplan.plan.model import Move


def mv(vm: str, src: str, dst: str, wave: int = 1, after: tuple[str, ...] = (), index: int = 0) -> Move:
    return Move(vm=vm, source=src, dest=dst, wave=wave, after=list(after), index=index)


def names(moves: list[Move]) -> list[str]:
    return [m.vm for m in moves]


def test_limits_total_and_per_host():
    moves = [mv("a", "h1", "h2", index=0), mv("b", "h1", "h3", index=1), mv("c", "h2", "h3", index=2),
             mv("d", "h3", "h1", index=3)]
    s = Scheduler(moves, Limits(parallel=2, per_host_outbound=1, per_host_inbound=1))
    assert names(s.ready()) == ["a", "c"]  # b waits: h1 already sends
    assert s.ready() == []  # full
    s.finished("a", True)
    assert names(s.ready()) == ["d"]  # b waits for h3's inbound (c); d may go
    s.finished("c", True)
    assert names(s.ready()) == ["b"]


def test_next_wave_starts_before_the_previous_ends():
    """No barrier between waves: a wave-2 move starts as soon as it is allowed."""
    moves = [mv("a", "h1", "h2", 1, index=0), mv("b", "h3", "h4", 1, index=1), mv("c", "h5", "h6", 2, index=2)]
    s = Scheduler(moves, Limits(parallel=2, per_host_outbound=1, per_host_inbound=1))
    assert names(s.ready()) == ["a", "b"]
    s.finished("b", True)
    assert names(s.ready()) == ["c"]  # a still runs


def test_after_and_memory_order():
    moves = [mv("a", "h1", "h2", 1, index=0), mv("b", "h2", "h3", 2, after=("a",), index=1),
             mv("c", "h4", "h1", 2, index=2)]  # c needs the memory a frees on h1
    s = Scheduler(moves, Limits(parallel=5, per_host_outbound=5, per_host_inbound=5))
    assert names(s.ready()) == ["a"]
    s.finished("a", True)
    assert names(s.ready()) == ["b", "c"]


def test_failure_skips_dependants_transitively():
    moves = [mv("a", "h1", "h2", 1, index=0), mv("b", "h3", "h4", 2, after=("a",), index=1),
             mv("c", "h5", "h6", 3, after=("b",), index=2), mv("d", "h7", "h8", 1, index=3)]
    s = Scheduler(moves, Limits(parallel=1))
    assert names(s.ready()) == ["a"]
    s.finished("a", False)
    assert names(s.ready()) == ["d"]
    assert set(s.skipped) == {"b", "c"} and "after a, which failed" in s.skipped["b"]
    assert "which was skipped" in s.skipped["c"]


def test_skip_and_halt():
    moves = [mv("a", "h1", "h2", 1, index=0), mv("b", "h3", "h4", 2, after=("a",), index=1),
             mv("c", "h5", "h6", 1, index=2)]
    s = Scheduler(moves, Limits(parallel=1))
    s.skip("a", "moved already")
    assert names(s.ready()) == ["c"] and set(s.skipped) == {"a", "b"}
    assert s.halt("stop") == [] and not s.done
    s.finished("c", True)
    assert s.done


def test_memory_room_decides_when_the_facts_say():
    g = 1 << 30
    moves = [Move(vm="a", source="h1", dest="h2", wave=1, memory=2 * g),
             Move(vm="b", source="h2", dest="h1", wave=1, index=1, memory=2 * g),
             Move(vm="c", source="h3", dest="h2", wave=2, index=2, memory=2 * g)]
    s = Scheduler(moves, Limits(parallel=3, per_host_outbound=3, per_host_inbound=3), {"h1": 0, "h2": 3 * g})
    assert names(s.ready()) == ["a"]  # b: h1 has no room yet; c: h2 has room for one of a and c
    s.finished("a", True)  # h1 gets a's 2G back
    assert names(s.ready()) == ["b"]
    s.finished("b", True)  # h2 gets b's 2G back: now c fits
    assert names(s.ready()) == ["c"]


def test_stuck_moves_are_named_with_the_reason():
    moves = [Move(vm="a", source="h1", dest="h2", wave=1, memory=4),
             Move(vm="b", source="h3", dest="h4", wave=2, index=1, after=["a"])]
    s = Scheduler(moves, Limits(parallel=2), {"h2": 1})
    assert s.ready() == [] and names(s.stuck()) == ["a"]
    assert "h2 has no room for it (1 bytes free, needs 4)" in s.why_waiting(moves[0])
    s.skip("a", s.why_waiting(moves[0]))
    assert s.ready() == [] and "after a, which was skipped" in s.skipped["b"] and s.done
