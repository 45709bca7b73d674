"""`qvplan apply` end to end: a real lab (network namespaces, sshd, agents, QEMU guests).

The tests share one lab and run in file order; each one starts from the placement the one before
left (written at its top).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from qvplan.apply.journal import read_journal
from qvplan.apply.lock import HostLocks, LockError, owner
from qvplan.apply.report import most_at_once
from qvplan.boot import boot_id
from qvplan.lab.testing import lab_session
from qvplan.remote import load_inventory

ROOT = Path(__file__).resolve().parents[2]
QVPLAN = [sys.executable, "-m", "qvplan.cli.qvplan"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_session(tmp_path_factory.mktemp("lab")) as lab:
        assert not lab.agent_errors, lab.agent_errors
        asyncio.run(lab.create_vms(4))
        yield lab


def qvplan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QVPLAN, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def journal_of(folder: Path) -> Path:
    return next((folder / ".qvplan").glob("apply-*.jsonl"))


def wait_journal(path_of, until, timeout: float = 60) -> list[dict]:
    """Poll a journal (once it exists) until `until(entries)` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            entries = read_journal(path_of())
            if until(entries):
                return entries
        except (StopIteration, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError("the journal never showed the awaited entries")


async def where_vms(lab) -> dict[str, list[tuple[str, str]]]:
    """VM → [(host, state)] from every agent's VM list."""
    out: dict[str, list[tuple[str, str]]] = {}
    for host in lab.spec.host_names():
        async with lab.connect(host) as conn:
            for vm in await conn.api("GET", "vms"):
                out.setdefault(vm["name"], []).append((host, vm["state"]))
    return out


async def verify_all(lab) -> dict[str, bool]:
    ok = {}
    for host in lab.spec.host_names():
        async with lab.connect(host) as conn:
            for vm in await conn.api("GET", "vms"):
                if vm["state"] == "running":
                    ok[vm["name"]] = (await conn.api("POST", f"vms/{vm['name']}/verify-ram", timeout=120))["ok"]
    return ok


def test_apply_honours_limits_then_is_a_noop(lab, tmp_path):
    """Start: vm-1, vm-2 on hv-a; vm-3 on hv-b; vm-4 on hv-c."""
    plan = tmp_path / "plan.yaml"
    plan.write_text((ROOT / "plans" / "demo.yaml").read_text())
    var = f"inventory={lab.inventory_path}"
    junit = tmp_path / "report.xml"
    out = qvplan("apply", str(plan), "--var", var, "--auto-approve", "--junit", str(junit))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Apply complete: 4/4" in out.stdout
    # Not a TTY: plain lines, one per event of note.
    assert "vm-1: hv-a → hv-b started" in out.stdout and "vm-1: moved to hv-b" in out.stdout
    # (which events a move shows depends on how fast it goes: QEMU 10 may finish pre-copy before
    # apply's event stream sees a pass)
    assert re.search(r"^vm-1 hv-a → hv-b: \[(phase|pass|progress)\] phase [2-5] \(", out.stdout, re.M), out.stdout
    cases = ET.parse(junit).getroot().findall("testcase")
    assert len(cases) == 4 and not any(c.find("failure") is not None for c in cases)

    journal = read_journal(journal_of(tmp_path))
    starts = {e["vm"]: e for e in journal if e["kind"] == "start"}
    ends = {e["vm"]: e for e in journal if e["kind"] == "end"}
    assert set(ends) == {"vm-1", "vm-2", "vm-3", "vm-4"} and all(e["ok"] for e in ends.values())
    spans = {vm: (starts[vm]["time"], ends[vm]["time"]) for vm in ends}
    assert most_at_once(list(spans.values())) <= 2  # limits.parallel
    for host in ("hv-a", "hv-b", "hv-c"):  # per_host_outbound / per_host_inbound: 1
        assert most_at_once([spans[v] for v in ends if ends[v]["source"] == host]) <= 1
        assert most_at_once([spans[v] for v in ends if ends[v]["dest"] == host]) <= 1
    assert spans["vm-3"][0] >= spans["vm-2"][1]  # after: [vm-2]

    again = qvplan("apply", str(plan), "--var", var, "--auto-approve")
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout + again.stderr
    replan = qvplan("plan", str(plan), "--var", var, "--detailed-exitcode")
    assert replan.returncode == 0, replan.stdout
    # a saved plan under any name: the apply command `plan -out` prints is accepted as it is
    saved = tmp_path / "evac.plan"
    planned = qvplan("plan", str(plan), "--var", var, "-out", str(saved))
    command = re.search(r"apply it with `qvplan (apply [^`]+)`", planned.stdout)
    assert planned.returncode == 0 and command, planned.stdout + planned.stderr
    applied = qvplan(*command.group(1).split(), "--auto-approve")
    assert applied.returncode == 0 and "No changes" in applied.stdout, applied.stdout + applied.stderr


LINK_CUT = """
inventory: {inventory}
trust: {{exchange: true}}
limits: {{parallel: 1}}
on_failure: rollback-all
vms:
  vm-4: hv-b
  # never converges (1 ms downtime, no auto-converge) and crawls at 4 MiB/s: still moving when the link goes down
  vm-1: {{host: hv-c, bandwidth: 4M, max_downtime: 1ms, auto_converge: false, max_iterations: 1000,
          after: [vm-4]}}
"""


def test_link_cut_fails_one_move_and_rollback_all_returns_the_rest(lab, tmp_path):
    """Start: vm-1 on hv-b, vm-2 and vm-3 on hv-c, vm-4 on hv-a. hv-c's link goes down while vm-1
    moves there: vm-1 stays on hv-b, and rollback-all brings vm-4 (moved first) back to hv-a."""
    plan = tmp_path / "cut.yaml"
    plan.write_text(LINK_CUT.format(inventory=lab.inventory_path))
    junit = tmp_path / "report.xml"
    apply = subprocess.Popen([*QVPLAN, "apply", str(plan), "--auto-approve", "--junit", str(junit), "--json"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_journal(lambda: journal_of(tmp_path),
                     lambda es: any(e["kind"] == "phase" and e["vm"] == "vm-1" and e["phase"] >= 2 for e in es))
        lab.link_down("hv-c")
        try:
            wait_journal(lambda: journal_of(tmp_path),
                         lambda es: any(e["kind"] == "end" and e["vm"] == "vm-1" for e in es), timeout=90)
        finally:
            lab.link_up("hv-c")
        stdout, stderr = apply.communicate(timeout=120)
    finally:
        apply.kill()
    assert apply.returncode == 1, stdout + stderr
    report = json.loads(stdout)
    assert report["placement"]["vm-1"] == "hv-b"  # the failed move: still on its source
    assert report["placement"]["vm-4"] == "hv-a"  # the finished move: migrated back
    assert report["placement"]["vm-2"] == report["placement"]["vm-3"] == "hv-c"
    cases = ET.parse(junit).getroot().findall("testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    assert len(cases) == 2 and len(failures) == 1 and "vm-1" in failures[0].get("name")
    assert "Connection reset" in failures[0].find("failure").get("message")
    assert "moved back" in next(c for c in cases if "vm-4" in c.get("name")).find("system-out").text

    assert asyncio.run(verify_all(lab)) == {"vm-1": True, "vm-2": True, "vm-3": True, "vm-4": True}
    where = asyncio.run(where_vms(lab))
    assert where["vm-1"][0] == ("hv-b", "running") and "hv-c" not in [h for h, s in where["vm-1"] if s == "running"]


RESUMABLE = """
inventory: {inventory}
trust: {{exchange: true}}
limits: {{parallel: 2, per_host_outbound: 1, per_host_inbound: 1}}
vms:
  # never converges (1 ms downtime, no auto-converge): 8 passes of up to its 16 MiB at 4 MiB/s, ~30 s,
  # then a forced stop-and-copy; still moving when the apply is killed (vm-4's move ends first even on
  # a loaded machine, where vm-4 is slower and vm-2's guest dirties less, so its passes are shorter)
  vm-2: {{host: hv-b, bandwidth: 4M, max_downtime: 1ms, auto_converge: false, max_iterations: 8}}
  vm-4: hv-c
  vm-3: {{host: hv-a, after: [vm-2]}}
"""
PLANNED = {"vm-1": "hv-b", "vm-2": "hv-b", "vm-3": "hv-a", "vm-4": "hv-c"}


def test_lock_then_kill_mid_apply_and_resume(lab, tmp_path):
    """Start: vm-1 on hv-b, vm-2 and vm-3 on hv-c, vm-4 on hv-a. The apply is killed while vm-2 (slow)
    moves and after vm-4 moved; a second apply meanwhile is refused by the lock. The resume follows
    vm-2 to its end without starting it again, and moves vm-3."""
    plan = tmp_path / "resumable.yaml"
    plan.write_text(RESUMABLE.format(inventory=lab.inventory_path))
    log = (tmp_path / "apply.log").open("w")
    first = subprocess.Popen([*QVPLAN, "apply", str(plan), "--auto-approve"], cwd=ROOT, stdout=log,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wait_journal(lambda: journal_of(tmp_path), lambda es: any(
            e["kind"] == "phase" and e["vm"] == "vm-2" for e in es))
        second = qvplan("apply", str(plan), "--auto-approve")  # while vm-4 moves beside vm-2
        assert second.returncode == 1
        assert f"is locked by another apply (pid {first.pid} on " in second.stderr, second.stderr
        assert "wait for it to finish" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        wait_journal(lambda: journal_of(tmp_path), lambda es: any(
            e["kind"] == "end" and e["vm"] == "vm-4" for e in es))
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
        log.close()
    assert "vm-4: moved to hv-c" in (tmp_path / "apply.log").read_text()

    async def vm2_status():
        async with lab.connect("hv-c") as conn:
            return await conn.api("GET", "vms/vm-2/migrate")
    assert asyncio.run(vm2_status())["state"] == "MIGRATING"  # killed mid-move indeed

    journal = journal_of(tmp_path)
    resumed = qvplan("apply", "--resume", str(journal), "--auto-approve", "--json")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["ok"] and report["journal"] == str(journal)
    assert {m["vm"]: m["followed"] for m in report["moves"]} == {"vm-2": True, "vm-3": False}
    assert report["placement"] == PLANNED

    entries = read_journal(journal)
    assert [e["kind"] for e in entries].count("resume") == 1
    started = Counter(e["vm"] for e in entries if e["kind"] == "start")
    completed = Counter(e["vm"] for e in entries if e["kind"] == "end" and e["ok"])
    assert started == {"vm-2": 1, "vm-4": 1, "vm-3": 1}  # vm-2 was followed, not started again
    assert completed == {"vm-2": 1, "vm-4": 1, "vm-3": 1}  # nothing moved twice
    where = asyncio.run(where_vms(lab))
    assert {vm: places for vm, places in where.items()} == {vm: [(h, "running")] for vm, h in PLANNED.items()}


CONTINUE = """
inventory: {inventory}
limits: {{parallel: 1}}
on_failure: continue
vms:
  # cannot finish in time (some 34 MB to send at 4 MiB/s, 3 s timeout): rolled back
  vm-1: {{host: hv-a, bandwidth: 4M, timeout: 3s}}
  vm-2: {{host: hv-c, after: [vm-1]}}   # depends on the failed move: skipped
  vm-3: hv-c                            # independent: still moves, after the failure
  vm-4: hv-c
"""


def test_continue_runs_independent_moves_and_skips_dependants(lab, tmp_path):
    """Start: the placement the resume test planned. vm-1's move fails; under `continue` vm-3 still
    moves (after the failure: one move at a time) and vm-2, which comes after vm-1, is skipped."""
    plan = tmp_path / "continue.yaml"
    plan.write_text(CONTINUE.format(inventory=lab.inventory_path))
    junit = tmp_path / "report.xml"
    apply = qvplan("apply", str(plan), "--auto-approve", "--junit", str(junit), "--json")
    assert apply.returncode == 1, apply.stdout + apply.stderr
    report = json.loads(apply.stdout)
    assert report["placement"] == {"vm-1": "hv-b", "vm-2": "hv-b", "vm-3": "hv-c", "vm-4": "hv-c"}
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().findall("testcase")}
    outcome = {name.split()[0]: ("failure" if c.find("failure") is not None else
                                 "skipped" if c.find("skipped") is not None else "ok") for name, c in cases.items()}
    assert outcome == {"vm-1": "failure", "vm-2": "skipped", "vm-3": "ok"}, outcome
    failed = next(c for n, c in cases.items() if n.startswith("vm-1"))
    assert "Timeout exceeded" in failed.find("failure").get("message")
    entries = read_journal(journal_of(tmp_path))
    failed_at = next(e["time"] for e in entries if e["kind"] == "end" and e["vm"] == "vm-1")
    assert next(e["time"] for e in entries if e["kind"] == "start" and e["vm"] == "vm-3") >= failed_at
    assert not any(e["kind"] == "start" and e["vm"] == "vm-2" for e in entries)
    assert asyncio.run(verify_all(lab)) == {"vm-1": True, "vm-2": True, "vm-3": True, "vm-4": True}


ROLLBACK = """
inventory: {inventory}
limits: {{parallel: 2}}
vms:
  # on_failure is the default, rollback. vm-1 times out after 3 s (34 MB to send at 4 MiB/s); vm-3
  # is still crawling at 2 MiB/s then and is cancelled; vm-4 waits for a slot and never starts.
  vm-1: {{host: hv-a, bandwidth: 4M, timeout: 3s}}
  vm-3: {{host: hv-a, bandwidth: 2M}}
  vm-4: hv-b
  vm-2: hv-b
"""


def test_rollback_cancels_running_moves_and_starts_no_new_ones(lab, tmp_path):
    """Start: vm-1 and vm-2 on hv-b, vm-3 and vm-4 on hv-c (the continue test's end). Every VM ends
    where it started, running once, RAM intact."""
    plan = tmp_path / "rollback.yaml"
    plan.write_text(ROLLBACK.format(inventory=lab.inventory_path))
    junit = tmp_path / "report.xml"
    apply = qvplan("apply", str(plan), "--auto-approve", "--junit", str(junit), "--json")
    assert apply.returncode == 1, apply.stdout + apply.stderr
    start = {"vm-1": "hv-b", "vm-2": "hv-b", "vm-3": "hv-c", "vm-4": "hv-c"}
    assert json.loads(apply.stdout)["placement"] == start
    cases = {c.get("name").split()[0]: c for c in ET.parse(junit).getroot().findall("testcase")}
    assert "Timeout exceeded" in cases["vm-1"].find("failure").get("message")
    assert "cancel" in cases["vm-3"].find("failure").get("message").lower()
    assert cases["vm-4"].find("skipped") is not None
    entries = read_journal(journal_of(tmp_path))
    assert {e["vm"] for e in entries if e["kind"] == "start"} == {"vm-1", "vm-3"}
    where = asyncio.run(where_vms(lab))
    assert {vm: places for vm, places in where.items()} == {vm: [(h, "running")] for vm, h in start.items()}
    assert asyncio.run(verify_all(lab)) == {"vm-1": True, "vm-2": True, "vm-3": True, "vm-4": True}


def test_stale_locks(lab):
    """Locks whose host side outlives the apply that took them (a half-open connection): one of a
    dead apply of this machine is cleared; one of another machine is refused until --break-lock."""
    targets = {"hv-a": load_inventory(lab.inventory_path)["hv-a"]}
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = {"controller": socket.gethostname(), "boot_id": boot_id(), "pid": dead.pid, "pid_start": "1",
            "since": "earlier"}
    elsewhere = {"controller": "ci-runner-7", "pid": 4242, "since": "earlier", "plan": "/x.yaml"}

    async def scenario() -> None:
        said: list[str] = []
        async with HostLocks(targets, gone), HostLocks(targets, owner("p.yaml", None), say=said.append):
            assert said == [f"hv-a: clearing the lock of a dead apply: pid {dead.pid} on {socket.gethostname()}, "
                            "since earlier"]
        async with HostLocks(targets, elsewhere):
            with pytest.raises(LockError) as refused:
                async with HostLocks(targets, owner("p.yaml", None)):
                    pass
            assert "hv-a is locked by an apply this machine cannot check (pid 4242 on ci-runner-7, plan /x.yaml" \
                in str(refused.value) and "run again with --break-lock" in str(refused.value)
            async with HostLocks(targets, owner("p.yaml", None), break_lock=True, say=said.append) as mine:
                assert list(mine.held) == ["hv-a"] and "(--break-lock)" in said[-1]

    asyncio.run(scenario())


STALE = """
inventory: {inventory}
limits: {{parallel: 1}}
on_failure: continue
vms:
  # vm-3 crawls at 16 MiB/s (8 s for its 128 MiB); while it moves the test stops vm-4, which comes after it
  vm-3: {{host: hv-b, bandwidth: 16M}}
  vm-4: {{host: hv-a, after: [vm-3]}}
"""


def test_a_move_made_stale_during_apply_is_refused_before_it_starts(lab, tmp_path):
    """Start: vm-1, vm-2 on hv-b, vm-3, vm-4 on hv-c (the rollback test's end). Planned with vm-4
    running; stopped while vm-3 moves: apply re-checks vm-4 against fresh facts and refuses it as
    stale, before anything of it starts."""
    plan = tmp_path / "stale.yaml"
    plan.write_text(STALE.format(inventory=lab.inventory_path))
    junit = tmp_path / "report.xml"
    proc = subprocess.Popen([*QVPLAN, "apply", str(plan), "--auto-approve", "--junit", str(junit), "--json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_journal(lambda: journal_of(tmp_path), lambda es: any(e["kind"] == "start" and e["vm"] == "vm-3" for e in es))

    async def stop_vm4() -> None:
        async with lab.connect("hv-c") as conn:
            await conn.api("POST", "vms/vm-4/stop", {}, timeout=60)

    asyncio.run(stop_vm4())
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, out + err
    report = json.loads(out)
    stale = next(m for m in report["moves"] if m["vm"] == "vm-4")
    assert stale["code"] == "stale" and "vm-4 is defined" in stale["error"], stale
    cases = {c.get("name").split()[0]: c for c in ET.parse(junit).getroot().findall("testcase")}
    assert cases["vm-4"].find("failure").get("type") == "stale"
    assert cases["vm-3"].find("failure") is None
    entries = read_journal(journal_of(tmp_path))
    end = next(e for e in entries if e["kind"] == "end" and e["vm"] == "vm-4")
    assert end["code"] == "stale" and not end["ok"]
    # Nothing of vm-4 started anywhere: it is still defined (stopped) on hv-c only.
    where = asyncio.run(where_vms(lab))
    assert where["vm-4"] == [("hv-c", "defined")] and where["vm-3"] == [("hv-b", "running")], where
