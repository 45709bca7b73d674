"""Apply keeps following a move: its SSH connection dropped mid-move, and its source agent
restarted while the apply was gone (`--resume` learns the outcome from the agent's journal)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from qvplan.apply.journal import read_journal
from qvplan.lab import agents, sshd
from qvplan.lab.testing import lab_session

ROOT = Path(__file__).resolve().parents[2]
QVPLAN = [sys.executable, "-m", "qvplan.cli.qvplan"]
SLOW = """
inventory: {inventory}
trust: {{exchange: true}}
vms:
  vm-1: {{host: {dest}, bandwidth: 4M, max_iterations: 5}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_session(tmp_path_factory.mktemp("lab"), hosts=2) as lab:
        assert not lab.agent_errors, lab.agent_errors
        asyncio.run(lab.create_vms(1))  # vm-1 on hv-a
        yield lab


def journal_of(folder: Path) -> Path:
    return next((folder / ".qvplan").glob("apply-*.jsonl"))


def wait_for(check, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if found := check():
                return found
        except (StopIteration, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"never saw {what}")


async def api(lab, host: str, method: str, path: str, body=None):
    async with lab.connect(host) as conn:
        return await conn.api(method, path, body, timeout=120)


def runs_only_on(lab, host: str, other: str) -> None:
    assert asyncio.run(api(lab, host, "GET", "vms/vm-1"))["state"] == "running"
    assert "vm-1" not in [v["name"] for v in asyncio.run(api(lab, other, "GET", "vms"))]
    assert asyncio.run(api(lab, host, "POST", "vms/vm-1/verify-ram"))["ok"]


def ssh_sessions(lab, host: str) -> list[int]:
    """The per-connection sshd processes of `host` (children of its listening sshd), from /proc."""
    parent = sshd.pid(lab.host(host))
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[1]) == parent and cmd.startswith(b"sshd"):
                out.append(int(entry.name))
    return out


def ssh_logins(lab) -> Counter:
    """SSH connections each host's sshd accepted so far, from its own log (not qvplan's word)."""
    return Counter({h: lab.host(h).file("sshd.log").read_text().count("Accepted publickey")
                    for h in lab.spec.host_names()})


def test_ssh_connection_dropped_mid_move_is_reconnected_and_followed(lab, tmp_path):
    """One SSH connection per host for the whole apply (lock, facts, trust, the move); the source's
    is killed mid-move and replaced by exactly one new one."""
    plan = tmp_path / "slow.yaml"
    plan.write_text(SLOW.format(inventory=lab.inventory_path, dest="hv-b"))
    before = ssh_logins(lab)
    apply = subprocess.Popen([*QVPLAN, "apply", str(plan), "--auto-approve", "--json"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(e["kind"] == "phase" for e in read_journal(journal_of(tmp_path))), "the move running")
        sessions = ssh_sessions(lab, "hv-a")
        assert sessions, "no SSH session to hv-a"
        for pid in sessions:  # the apply's connections to the source (API and lock) drop
            os.kill(pid, signal.SIGKILL)
        out, err = apply.communicate(timeout=300)
    finally:
        apply.kill()
    assert apply.returncode == 0, out + err
    assert ssh_logins(lab) - before == {"hv-a": 2, "hv-b": 1}
    report = json.loads(out)
    assert report["ok"] and report["placement"]["vm-1"] == "hv-b"
    entries = read_journal(journal_of(tmp_path))
    assert any(e["kind"] == "reconnect" and e["vm"] == "vm-1" for e in entries)
    ends = [e for e in entries if e["kind"] == "end"]
    assert len(ends) == 1 and ends[0]["ok"], ends
    runs_only_on(lab, "hv-b", "hv-a")


def apply_killed_once_its_move_started(plan: Path, folder: Path) -> None:
    """`qvplan apply PLAN`, killed (SIGKILL) as soon as its journal shows the move's session."""
    apply = subprocess.Popen([*QVPLAN, "apply", str(plan), "--auto-approve"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(e["kind"] == "session" for e in read_journal(journal_of(folder))), "the session")
        os.kill(apply.pid, signal.SIGKILL)
        apply.wait(10)
    finally:
        apply.kill()


def test_source_agent_restarted_while_the_apply_was_gone_then_resume(lab, tmp_path):
    plan = tmp_path / "back.yaml"
    plan.write_text(SLOW.format(inventory=lab.inventory_path, dest="hv-a"))
    apply_killed_once_its_move_started(plan, tmp_path)
    wait_for(lambda: asyncio.run(api(lab, "hv-b", "GET", "vms/vm-1/migrate"))["state"] == "COMPLETED",
             "the move completing without the apply", timeout=240)
    lab.kill_agent("hv-b")  # the agent forgets its in-memory migrations; its journal stays
    wait_for(lambda: agents.pid(lab.host("hv-b")) is None, "the killed agent gone", timeout=20)
    lab.start_agent("hv-b")
    errors = asyncio.run(lab.wait_agents())
    assert not errors, (errors, agents.log_tail(lab.host("hv-b"), 40))
    journal = journal_of(tmp_path)
    resumed = subprocess.run([*QVPLAN, "apply", "--resume", str(journal), "--auto-approve", "--json"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["ok"] and {m["vm"]: (m["followed"], m["ok"]) for m in report["moves"]} == {"vm-1": (True, True)}
    entries = read_journal(journal)
    assert Counter(e["vm"] for e in entries if e["kind"] == "start") == {"vm-1": 1}  # never started twice
    assert not any(e.get("not_started") for e in entries)
    runs_only_on(lab, "hv-a", "hv-b")


def test_one_ssh_connection_per_host_for_a_whole_apply(lab, tmp_path):
    """Start: vm-1 on hv-a (the resume test's end). Lock, facts, reachability and storage probes,
    trust, the move and the final placement all go over one connection per host."""
    plan = tmp_path / "quick.yaml"
    plan.write_text(f"inventory: {lab.inventory_path}\ntrust: {{exchange: true}}\n"
                    f"prerequisites: {{shared_storage: [{lab.dir}]}}\nvms:\n  vm-1: hv-b\n")
    before = ssh_logins(lab)
    done = subprocess.run([*QVPLAN, "apply", str(plan), "--auto-approve", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ssh_logins(lab) - before == {"hv-a": 1, "hv-b": 1}
    assert json.loads(done.stdout)["placement"]["vm-1"] == "hv-b"


OFFLINE = """
inventory: {inventory}
trust: {{exchange: true}}
vms:
  vm-9: {{host: hv-b, mode: offline, bandwidth: 1M}}
"""


def test_offline_move_completed_then_source_agent_restarted_then_resume(lab, tmp_path):
    """An offline move ends while its apply is gone; the source agent restarts (forgetting its
    in-memory moves); `--resume` learns from that agent's migration journal that it completed."""
    pool = lab.host("hv-a").file("state") / "images"
    pool.mkdir(parents=True, exist_ok=True)
    disk = pool / "vm-9.raw"
    with open(disk, "wb") as f:  # 6 MiB of noise: 6 s at 1 MiB/s, time to lose the apply mid-move
        f.write(os.urandom(6 << 20))
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()
    asyncio.run(api(lab, "hv-a", "POST", "vms", {"name": "vm-9", "memory": "64M", "vcpus": 1,
                                                  "guest": {"test": {"working_set": "1M"}},
                                                  "disks": [{"pool": "default", "file": "vm-9.raw", "format": "raw"}]}))
    plan = tmp_path / "offline.yaml"
    plan.write_text(OFFLINE.format(inventory=lab.inventory_path))
    apply_killed_once_its_move_started(plan, tmp_path)
    assert not any(e["kind"] == "end" for e in read_journal(journal_of(tmp_path))), "the move ended too early"
    wait_for(lambda: asyncio.run(api(lab, "hv-a", "GET", "vms/vm-9/migrate"))["state"] == "COMPLETED",
             "the offline move completing without the apply", timeout=120)
    lab.kill_agent("hv-a")
    wait_for(lambda: agents.pid(lab.host("hv-a")) is None, "the killed agent gone", timeout=20)
    lab.start_agent("hv-a")
    errors = asyncio.run(lab.wait_agents())
    assert not errors, (errors, agents.log_tail(lab.host("hv-a"), 40))
    resumed = subprocess.run([*QVPLAN, "apply", "--resume", str(journal_of(tmp_path)), "--auto-approve", "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["ok"] and {m["vm"]: (m["followed"], m["ok"]) for m in report["moves"]} == {"vm-9": (True, True)}
    assert not any(e.get("not_started") for e in read_journal(journal_of(tmp_path)))
    # The outcome from outside the agents: their journal files, folders and pools.
    source = [r for r in migration_records(lab, "hv-a") if r["vm"] == "vm-9"]
    dest = [r for r in migration_records(lab, "hv-b") if r["vm"] == "vm-9"]
    assert [(r["kind"], r["role"], r["state"]) for r in source] == [("offline", "source", "released")]
    assert [(r["kind"], r["role"], r["state"]) for r in dest] == [("offline", "destination", "landed")]
    assert not (lab.host("hv-a").file("state") / "vms" / "vm-9").exists() and not disk.exists()
    landed = lab.host("hv-b").file("state") / "images" / "vm-9.raw"
    assert hashlib.sha256(landed.read_bytes()).hexdigest() == digest
    assert asyncio.run(api(lab, "hv-a", "GET", "vms/vm-9/migrate"))["state"] == "COMPLETED"  # the journal's word
    asyncio.run(api(lab, "hv-b", "DELETE", "vms/vm-9"))


def migration_records(lab, host: str) -> list[dict]:
    """A lab host's migration journal, read from its files (the last complete line of each)."""
    out = []
    for path in sorted((lab.host(host).file("state") / "migrations").glob("*.jsonl")):
        record: dict = {}
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record.update(json.loads(line))
        out.append(record)
    return out
