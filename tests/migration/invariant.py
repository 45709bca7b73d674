"""The exactly-once invariant, checked by something other than the agents' word: QEMU processes
(by /proc), the serial log on disk, the files left in each state directory, and guest RAM."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from qvplan.vmm.guest import SWEEP_LINE

POINT_WAIT = 60.0


def qemu_pids(agent, name: str) -> list[int]:
    """Live QEMU processes of `name` under `agent`'s state directory (from /proc, not the agent)."""
    wanted = str(agent.state / "vms" / name).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"qemu-system" in cmdline and wanted in cmdline and state not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def sweeps(agent, name: str) -> int:
    try:
        return (agent.state / "vms" / name / "run" / "serial.log").read_bytes().count(SWEEP_LINE)
    except FileNotFoundError:
        return 0


def journal(agent, session: str | None = None) -> list[dict]:
    """The agent's journal records, read from its files (the last complete line of each)."""
    out = []
    for path in sorted((agent.state / "migrations").glob("*.jsonl")):
        record: dict = {}
        for line in path.read_text().splitlines():
            try:
                record.update(json.loads(line))
            except ValueError:
                pass
        if session is None or record.get("session") == session:
            out.append(record)
    return out


def lost_session(agent, name: str) -> bool:
    """Does `agent`'s journal (its files) hold a destination session of `name` lost after commit?"""
    return any(r.get("vm") == name and r.get("role") == "destination" and r.get("state") == "lost"
               for r in journal(agent))


def exactly_one(here, there, name: str = "vm-1", timeout: float = 60) -> None:
    """`name` runs on `here` only: one live QEMU there whose serial markers advance, RAM verified;
    on `there` no QEMU, no VM folder, no VM, no image of it; and no open session in either journal."""
    pids = qemu_pids(here, name)
    assert len(pids) == 1, f"QEMUs of {name} on {here.name}: {pids}"
    os.kill(pids[0], 0)
    assert here.vm(name)["pid"] == pids[0]
    before = sweeps(here, name)
    deadline = time.monotonic() + timeout
    while sweeps(here, name) <= before:
        assert time.monotonic() < deadline, f"{name} on {here.name}: serial markers stuck at {before}"
        time.sleep(0.1)
    report = here.api("POST", f"vms/{name}/verify-ram")
    assert report["ok"], report
    assert qemu_pids(there, name) == [], f"a QEMU of {name} is left on {there.name}"
    if there.proc and there.proc.poll() is None:
        assert name not in there.vm_names()
    assert not (there.state / "vms" / name).exists(), f"{name}'s folder is left on {there.name}"
    images = there.root / "images"
    deadline = time.monotonic() + 5  # a moved VM's disk files are deleted just after COMPLETED
    while (left := images.exists() and [p for p in images.iterdir() if name in p.name]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"{name}'s files are left on {there.name}: {left}"
    for agent in (here, there):
        open_ = [r for r in journal(agent) if r.get("state") in
                 ("loading", "loaded", "committing", "transferring", "awaiting-commit", "committed")]
        assert not open_, f"open sessions on {agent.name}: {open_}"
    after = sweeps(there, name)
    time.sleep(0.3)
    assert sweeps(there, name) == after  # nothing advances on the other host


def wait_point(agent, point: str, timeout: float = POINT_WAIT) -> None:
    """Until `agent` stopped at the test fault hook `point` (QUANTAVIRT_TEST_PAUSE_AT)."""
    reached = agent.state / "faults" / f"{point}.reached"
    deadline = time.monotonic() + timeout
    while not reached.exists():
        assert time.monotonic() < deadline, f"{agent.name} never reached {point}: {agent.log_tail()}"
        assert agent.proc.poll() is None, f"{agent.name} exited: {agent.log_tail()}"
        time.sleep(0.02)


def release_point(agent, point: str) -> None:
    (agent.state / "faults" / f"{point}.go").touch()
