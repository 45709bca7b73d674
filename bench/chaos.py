#!/usr/bin/env python3
"""Chaos: N migrations between two real agents on loopback, each with one fault, the invariant after each.

Run: .venv/bin/python bench/chaos.py [-n 50] [--seed 1]

Each run draws a mode (live, live + storage, offline) and a fault kind × phase from the matrix
below, migrates that mode's VM to the other agent, applies the fault at that point (exact points
through the test-only hook QUANTAVIRT_TEST_PAUSE_AT, docs/exactly-once.md), restarts what was
killed or stopped, waits for the outcome and checks the invariant from outside the agents
(tests/migration/invariant.py: one live QEMU whose serial markers advance, RAM verified, nothing of
the VM on the other host, no open journal session; offline: defined on one host, its disk whole
there and nowhere else). Prints faults × outcomes and the number of violations.

Outcomes: moved, stayed (rolled back), refused (QEMU lost guest writes: the source compared RAM,
refused the stale copy and kept the VM, migration/live/ramcheck.py), settled (the VM was paused
in doubt because the destination QEMU was killed around the commit, its session `lost`; the bench,
as the operator, ran `migrate-settle --discard-here` on the destination and the source resumed
its copy by itself), crashed (the destination QEMU was killed
after the guest resumed there: the guest moved, then died — a VM crash, not a double copy),
VIOLATION.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qvplan.remote.hashes import sha256_file
from tests.agents import AgentProc, ApiError, free_port, guest_vm, mutual_trust
from tests.migration.invariant import exactly_one, journal, lost_session, qemu_pids, release_point
from tests.migration.proxy import TapProxy

POINT = "QUANTAVIRT_TEST_PAUSE_AT"
# phase → the fault points (by role) that hold a migration there. "dest-after-received", loaded there
# with no commit read: the source holds its commit (which it sends ahead, as soon as its QEMU sent
# everything) until the destination sent "received", or the destination might take it still loading.
HOOKS = {"source-before-commit": {"source": "source-before-commit"},
         "source-after-commit": {"source": "source-after-commit"},
         "dest-after-received": {"dest": "dest-after-received", "source": "source-before-commit"},
         "dest-before-cont": {"dest": "dest-before-cont"}, "dest-after-cont": {"dest": "dest-after-cont"}}
LIVE_KINDS = ("kill-source", "kill-dest", "sigterm-source", "sigterm-dest", "cut-link", "freeze-dest-qemu",
              "kill-dest-qemu")
OFFLINE_KINDS = ("kill-source", "kill-dest", "sigterm-source", "sigterm-dest", "cut-link")
MATRIX = {
    "live": [(k, p) for k in LIVE_KINDS for p in ("transfer", *HOOKS)],
    "storage": [(k, p) for k in LIVE_KINDS for p in ("transfer", *HOOKS)],
    "offline": [(k, "copy") for k in OFFLINE_KINDS],
}
VMS = {"live": "live-1", "storage": "stor-1", "offline": "off-1"}
OUTCOME_WAIT = 150.0


class Pair:
    def __init__(self, root: Path) -> None:
        self.a = AgentProc("hv-a", "127.0.88.2", root / "hv-a", free_port("127.0.88.2"), free_port("127.0.88.2"),
                           log_level="info")
        self.b = AgentProc("hv-b", "127.0.88.3", root / "hv-b", free_port("127.0.88.3"), free_port("127.0.88.3"),
                           log_level="info")
        self.a.start(), self.b.start()
        mutual_trust(self.a, self.b)

    def where(self, mode: str) -> tuple[AgentProc, AgentProc]:
        name = VMS[mode]
        if mode == "offline":
            here = self.a if (self.a.state / "vms" / name).exists() else self.b
        else:
            here = self.a if qemu_pids(self.a, name) else self.b
        return (here, self.b if here is self.a else self.a)

    def restart_with(self, env: dict[str, str]) -> None:
        """`env`: agent name → the fault point it stops at (none for the others)."""
        for agent in (self.a, self.b):
            want = env.get(agent.name, "")
            if agent.env.get(POINT, "") != want or agent.proc is None or agent.proc.poll() is not None:
                agent.stop()
                agent.env = {POINT: want} if want else {}
                agent.start()


def setup(pair: Pair, tmp: Path) -> None:
    a = pair.a
    a.api("POST", "vms", guest_vm("live-1", memory="64M", working_set="8M"))
    a.api("POST", "vms/live-1/start", {})
    a.api("POST", "vms", guest_vm("stor-1", memory="64M", working_set="4M",
                                  disks=[{"pool": "default", "file": "stor-1.qcow2", "size": "64M",
                                          "format": "qcow2"}]))
    a.api("POST", "vms/stor-1/start", {})
    disk = a.root / "images" / "off-1.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -q -P 0x3c 0 24M", str(disk)], check=True)
    a.api("POST", "vms", guest_vm("off-1", memory="64M",
                                  disks=[{"pool": "default", "file": "off-1.qcow2", "format": "qcow2"}]))
    for name in ("live-1", "stor-1"):
        a.wait_markers(name, 0)


def wait_reached(agent: AgentProc, point: str, timeout: float = 90) -> bool:
    reached = agent.state / "faults" / f"{point}.reached"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reached.exists():
            return True
        time.sleep(0.02)
    return False


def flags_for(mode: str, phase: str) -> dict:
    slow = phase in ("transfer", "copy")
    if mode == "offline":
        return {"offline": True, "bandwidth": "4M"}
    flags = {"threads": 1, **({"bandwidth": "8M", "auto_converge": False} if slow else {})}
    if mode == "storage":
        flags |= {"storage_migrate": True, "delete_source_disks": True}
    return flags


def outcome_of(src: AgentProc, dst: AgentProc, mode: str, name: str, before: str | None) -> str:
    """Wait for the end, then check the invariant; → moved | stayed | settled | crashed | VIOLATION: …"""
    deadline = time.monotonic() + OUTCOME_WAIT
    status: dict = {}
    settled = False
    while time.monotonic() < deadline:
        try:
            status = src.api("GET", f"vms/{name}/migrate", timeout=10)
        except ApiError as err:
            if err.status == 404:  # a restarted source with no record of it (offline keeps none): ended
                status = {"state": "UNKNOWN"}
                break
            time.sleep(0.2)
            continue
        except Exception:
            time.sleep(0.2)
            continue
        if status.get("state") != "MIGRATING":
            break
        if status.get("doubt") and lost_session(dst, name) and not settled:
            # the operator discards the lost copy on the destination; the source, asking, resumes its own
            try:
                dst.api("POST", f"vms/{name}/migrate/settle", {"decision": "discard-here"})
                settled = True
            except Exception as err:  # its agent restarting: again on the next round
                print(f"  settle on {dst.name}: {err}", file=sys.stderr)
        time.sleep(0.2)
    else:
        return f"VIOLATION: no outcome in {OUTCOME_WAIT:.0f}s ({status.get('doubt') or status.get('state')})"
    time.sleep(0.5)  # a destination's Discarded may still be on its way
    if mode == "offline":
        here = src if (src.state / "vms" / name).exists() else dst
    else:
        on_src, on_dst = qemu_pids(src, name), qemu_pids(dst, name)
        if not on_src and not on_dst and status.get("state") == "COMPLETED":
            return "crashed"
        here = src if on_src else dst
    if settled:
        return check(src, dst, mode, name, before, "settled")
    return check(here, dst if here is src else src, mode, name, before,
                 "stayed" if here is src else "moved")


def check(here: AgentProc, there: AgentProc, mode: str, name: str, before: str | None, label: str) -> str:
    try:
        if mode == "offline":
            assert here.vm(name)["state"] == "defined"
            assert name not in there.vm_names()
            disk = here.root / "images" / f"{name}.qcow2"
            assert sha256_file(disk) == before, "disk changed"
            assert not (there.root / "images" / f"{name}.qcow2").exists()
            assert not list((there.root / "images").glob(".qv-incoming-*"))
        else:
            deadline = time.monotonic() + 10
            while True:  # a rolled-back destination removes its side right after the outcome
                try:
                    exactly_one(here, there, name)
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        return label
    except AssertionError as err:
        where = traceback.extract_tb(err.__traceback__)[-1]
        text = (str(err).splitlines() or [""])[0][:100]
        return f"VIOLATION: {Path(where.filename).name}:{where.lineno} {where.line} {text}"


def one_run(pair: Pair, mode: str, kind: str, phase: str) -> str:
    name = VMS[mode]
    src, dst = pair.where(mode)
    holds = {(src if role == "source" else dst): point for role, point in HOOKS.get(phase, {}).items()}
    pair.restart_with({agent.name: point for agent, point in holds.items()})
    for agent in (src, dst):  # a point an agent was killed at stays marked: never mistake it for this run's
        for stale in (agent.state / "faults").glob("*") if (agent.state / "faults").exists() else []:
            stale.unlink(missing_ok=True)
    host, port = dst.migration.split(":")
    tap = TapProxy(src.address, (host, int(port)))
    before = sha256_file(src.root / "images" / f"{name}.qcow2") if mode == "offline" else None
    src.api("POST", f"vms/{name}/migrate", {"dest": tap.address, "flags": flags_for(mode, phase)})
    for agent, point in holds.items():
        if not wait_reached(agent, point):
            if src.api("GET", f"vms/{name}/migrate").get("code") == "ram-mismatch":
                # QEMU lost guest writes and the source refused the stale copy before any later point
                return check(src, dst, mode, name, before, "refused")
            return f"VIOLATION: never reached {point}"
    if not holds:
        deadline = time.monotonic() + 30
        while not (journal(src) and journal(src)[-1].get("state") == "transferring") and mode != "offline":
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(1.0)
    dest_pid = next(iter(qemu_pids(dst, name)), None)

    def release(but: AgentProc | None = None) -> None:
        for agent, point in holds.items():
            if agent is not but:
                release_point(agent, point)

    if kind == "kill-source":
        src.kill()
        release(but=src)
        src.env = {}
        src.start()
    elif kind == "kill-dest":
        dst.kill()
        release(but=dst)
        time.sleep(1)
        dst.env = {}
        dst.start()
    elif kind in ("sigterm-source", "sigterm-dest"):
        agent = src if kind == "sigterm-source" else dst
        agent.proc.send_signal(signal.SIGTERM)
        release()
        agent.proc.wait(60)
        agent.env = {}
        agent.start()
    elif kind == "cut-link":
        tap.cut()
        release()
    elif kind == "freeze-dest-qemu":
        if dest_pid:
            os.kill(dest_pid, signal.SIGSTOP)
        tap.cut()
        release()
        time.sleep(3)
        if dest_pid:
            with contextlib.suppress(ProcessLookupError):  # the destination discarded it meanwhile (SIGKILL)
                os.kill(dest_pid, signal.SIGCONT)
    elif kind == "kill-dest-qemu":
        if dest_pid:
            os.kill(dest_pid, signal.SIGKILL)
        release()
    result = outcome_of(src, dst, mode, name, before)
    if result == "crashed":  # bring the VM back for the next runs (it is defined on the destination)
        dst.api("POST", f"vms/{name}/start", {})
        dst.wait_markers(name, 0)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep the agents' logs and state there "
                        "(DIR/pair-N: a fresh pair of agents follows each violation)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    table: dict[str, Counter] = defaultdict(Counter)
    violations: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qv-chaos-") as scratch:
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        pair, generation = Pair(Path(tmp) / "pair-0"), 0
        try:
            setup(pair, Path(tmp))
            for i in range(args.n):
                mode = rng.choice(list(MATRIX))
                kind, phase = rng.choice(MATRIX[mode])
                label = f"{mode:<8} {kind}@{phase}"
                try:
                    result = one_run(pair, mode, kind, phase)
                except Exception as err:
                    traceback.print_exc()
                    result = f"VIOLATION: bench error {type(err).__name__}: {err}"[:140]
                print(f"#{i + 1:<3} {label:<44} → {result}", flush=True)
                for agent in (pair.a, pair.b):
                    with open(agent.root / "agent.log", "a") as log:  # where each run starts, for reading
                        log.write(f"==== chaos run #{i + 1} {label} → {result[:60]}\n")
                table[label][result if not result.startswith("VIOLATION") else "VIOLATION"] += 1
                if result.startswith("VIOLATION"):
                    violations.append(f"#{i + 1} {label}: {result}")
                    # A violation leaves the pair in a state no later run should inherit (a VM in
                    # doubt fails every run after it): go on with a fresh pair; this one's state
                    # and logs stay in its folder.
                    for agent in (pair.a, pair.b):
                        agent.stop_with_vms()
                        for pid in (pid for vm in VMS.values() for pid in qemu_pids(agent, vm)):
                            with contextlib.suppress(ProcessLookupError):  # a paused VM in doubt
                                os.kill(pid, signal.SIGKILL)
                    generation += 1
                    pair = Pair(Path(tmp) / f"pair-{generation}")
                    setup(pair, Path(tmp))
        finally:
            for agent in (pair.a, pair.b):
                agent.stop_with_vms()
    columns = ["moved", "stayed", "refused", "settled", "crashed", "VIOLATION"]
    print(f"\n{args.n} migrations, seed {args.seed}, {time.monotonic() - started:.0f}s")
    print(f"{'fault':<46}" + "".join(f"{c:>10}" for c in columns))
    for label in sorted(table):
        print(f"{label:<46}" + "".join(f"{table[label][c]:>10}" for c in columns))
    totals = Counter()
    for row in table.values():
        totals.update(row)
    print(f"{'total':<46}" + "".join(f"{totals[c]:>10}" for c in columns))
    print(f"violations: {len(violations)}")
    for line in violations:
        print(f"  {line}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
