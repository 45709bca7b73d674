"""The graph transformers and the memory simulation, each alone."""

from __future__ import annotations

from qvplan.plan import load_plan_text
from qvplan.plan.build import Build
from qvplan.plan.graph import _cycles, add_after_edges, add_checks, add_moves, order_nodes
from qvplan.plan.model import Action
from qvplan.plan.schedule import HostMemory
from qvplan.plan.source import parse_yaml

from .factsgen import expand

HOSTS = "hosts: {hv-a: {address: a}, hv-b: {address: b}}\n"


def build(vms: str, facts: dict | None = None) -> Build:
    f = expand(facts) if facts is not None else None
    return Build(load_plan_text(HOSTS + vms, "p.yaml", {}, f), f)


def test_add_moves_decides_action_from_facts() -> None:
    b = build("vms: {vm-1: hv-b, vm-2: hv-b, ghost: hv-a}",
              {"hv-a": {"vms": {"vm-1": {}}}, "hv-b": {"vms": {"vm-2": {}}}})
    add_moves(b)
    assert [(m.vm, m.source, m.action) for m in b.moves.values()] == [
        ("vm-1", "hv-a", Action.MOVE), ("vm-2", "hv-b", Action.NOOP), ("ghost", None, Action.UNKNOWN)]
    assert b.moves["vm-1"].flags["max_iterations"] == 30 and b.moves["vm-1"].dest_address == "hv-b.test:9410"


def test_add_checks_only_for_moves() -> None:
    b = build("vms: {vm-1: hv-b, vm-2: hv-b}", {"hv-a": {"vms": {"vm-1": {}}}, "hv-b": {"vms": {"vm-2": {}}}})
    add_moves(b)
    add_checks(b)
    assert sorted(c.kind for c in b.checks.values()) == sorted(
        ["host", "state", "trust", "version", "cpu", "storage", "network"])
    assert {c.move for c in b.checks.values()} == {"vm-1"} and b.after == {"vm-1": set(), "vm-2": set()}


def test_cycles_are_all_found_and_cut() -> None:
    edges = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    cycles = _cycles(edges)
    assert len(cycles) == 2 and {frozenset(c) for c in cycles} == {frozenset("ab"), frozenset("cde")}


def test_order_breaks_ties_by_plan_order() -> None:
    b = build("vms: {z: {host: hv-b, after: [y]}, x: hv-b, y: hv-b, w: hv-b}")
    add_moves(b)
    add_after_edges(b)
    order_nodes(b)
    assert b.order == ["x", "y", "z", "w"]


def test_memory_floor_counts_frees_from_the_next_wave() -> None:
    mem = HostMemory(free=1000)
    mem.take(0, 800)  # a move in wave 1 brings 800 here
    mem.release(0, 500)  # a move in wave 1 takes 500 away (gone from wave 2 on)
    assert [mem.floor(w) for w in range(3)] == [200, 700, 700]
    assert mem.earliest(0, 200) == 0 and mem.earliest(0, 201) == 1 and mem.earliest(0, 701) == 1
    mem.take(3, 600)  # a move in wave 4 brings 600: waves 1-3 may not spend what wave 4 needs
    assert [mem.floor(w) for w in range(5)] == [100, 100, 100, 100, 100] and mem.final() == 100
    mem.release(4, 400)
    assert [mem.floor(w) for w in range(7)] == [100, 100, 100, 100, 100, 500, 500]
    assert mem.earliest(2, 300) == 5 and mem.earliest(6, 500) == 6


def test_memory_floor_matches_the_wave_by_wave_definition() -> None:
    """The sparse floor equals min over later waves of free − taken so far + freed before."""
    import random

    rng = random.Random(7)
    for _ in range(300):
        free, mem, taken, freed = rng.randrange(0, 50), HostMemory(0), [0] * 12, [0] * 12
        mem.free = free
        for _ in range(rng.randrange(0, 6)):
            w, n = rng.randrange(0, 10), rng.randrange(1, 20)
            if rng.random() < 0.5:
                mem.take(w, n)
                taken[w] += n
            else:
                mem.release(w, n)
                freed[w] += n
        avail, running, before = [], free, 0
        for w in range(12):
            running -= taken[w]
            avail.append(running + before)
            before += freed[w]
        floor = [min(avail[w:]) for w in range(12)]
        assert [mem.floor(w) for w in range(12)] == floor
        for need in range(-5, 60, 7):
            for first in range(12):
                fits = [w for w in range(first, 12) if floor[w] >= need]
                if fits and mem.final() >= need:
                    assert mem.earliest(first, need) == fits[0]


def test_yaml_lines_per_key_path() -> None:
    loc = parse_yaml("a:\n  b: 1\n  c:\n    - x\n    - {d: 2}\n", "f.yaml")
    assert loc.lines[("a", "b")] == 2 and loc.lines[("a", "c", 1)] == 5 and loc.lines[("a", "c", 1, "d")] == 5
    assert loc.line_of(("a", "c", 0, "missing")) == 4


def test_move_flags_are_migrate_flags() -> None:
    """Apply hands `move.flags` to the migrate API: the names and units of qvplan.contract.flags."""
    import pytest

    flags_mod = pytest.importorskip("qvplan.contract.flags")
    b = build("defaults: {bandwidth: 10G}\nvms: {vm-1: {host: hv-b, max_downtime: 50, timeout: 10m}}",
              {"hv-a": {"vms": {"vm-1": {}}}, "hv-b": {}})
    add_moves(b)
    flags = flags_mod.MigrateFlags(**b.moves["vm-1"].flags)
    assert (flags.bandwidth, flags.max_downtime, flags.timeout) == (10 << 30, 0.05, 600.0)


def test_storage_check_of_the_deepest_checked_folder_holds() -> None:
    from qvplan.plan.checks import _checked
    checks = {"/mnt/nfs": True, "/mnt/nfs/cold/": False, "/": True}
    assert _checked(checks, "/mnt/nfs/cold/vm.qcow2") is False
    assert _checked(checks, "/mnt/nfs/vm.qcow2") is True
    assert _checked(checks, "/srv/vm.qcow2") is True
    assert _checked({"/mnt/nfs": True}, "/mnt/nfsx/vm.qcow2") is None


def test_planning_pauses_the_cyclic_gc_and_gives_it_back() -> None:
    import gc

    import pytest

    from qvplan.gcpause import gc_paused
    from qvplan.plan import make_plan
    from qvplan.plan.diagnostics import PlanError

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            pass
        assert not gc.isenabled()  # an inner pause does not switch it back on early
    assert gc.isenabled()
    make_plan(load_plan_text(HOSTS + "vms: {vm-1: hv-b}", "p.yaml", {}, None), None)
    with pytest.raises(PlanError):
        load_plan_text("vms: [", "p.yaml", {}, None)
    assert gc.isenabled()
