"""Soak: back-and-forth live migrations of one test guest between two agents on loopback.

Run: .venv/bin/python bench/soak.py [--count 100] [--warmup N]

Each migration is followed by verify-ram on the host it landed on. Prints the failures (goal 0),
each agent's RSS and open fds at the start and the end (goal: within 5 %), the start taken after
a warm-up (`--warmup` round trips, by default enough to fill each agent's bounded history of
recent migrations, migration/recent.py: what grows until then is that history and the
allocator's first use of each code path, not a leak), and p50/p95/max of the guest pause
(source STOP → destination RESUME, QEMU's own timestamps) and of pause minus QEMU's downtime,
the commit's own cost (goal p95 ≤ 5 ms). The anchor, measured first in the same run
(`--anchor` moves): the same guest moved QEMU → QEMU over loopback TCP with no agent in the path,
`cont` sent the moment the destination's MIGRATION event says it loaded everything. Its pause −
downtime is what QEMU's switchover costs by itself beyond its own downtime figure (the tail it
still loads after the source counts the downtime as over, and one QMP round trip); the rows
"ours ÷ anchor" compare the two. Where QEMU loses guest writes (TCG before 9.0) the
pause also holds the RAM comparison before the commit (migration/live/ramcheck.py): its time is
printed, and the commit's cost without it.

`--disk-writer` adds a busy neighbour on the agents' disk for the measured moves: a thread that
writes and flushes 8 MiB at a time in a loop (what a journal flush on the guest's pause would wait
behind).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.migration import resume_when_loaded, source_completed
from qvplan.contract.flags import MigrateFlags
from qvplan.migration.qmp import configure, event_time
from qvplan.migration.recent import LIMIT
from qvplan.vmm import QemuProcess, VMSpec, detect_accel
from tests.agents import AgentProc, free_port, guest_vm, mutual_trust
from tests.migration.helpers import wait_outcome

FLAGS = {"threads": 1}


def agent(root: Path, name: str, address: str) -> AgentProc:
    return AgentProc(name, address, root / name, free_port(address), free_port(address), log_level="info").start()


def usage(a: AgentProc) -> tuple[int, int]:
    """(RSS in KiB, open fds) of the agent process, from /proc."""
    pid = a.proc.pid
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir()))


class DiskWriter:
    """A busy neighbour on the disk of `path`: 8 MiB written and flushed at a time, over a 256 MiB
    file, until the block ends."""

    CHUNK = 8 << 20
    SPAN = 256 << 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self.flushes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-writer", daemon=True)

    def __enter__(self) -> DiskWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        data = os.urandom(self.CHUNK)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            at = 0
            while not self._stop.is_set():
                os.pwrite(fd, data, at)
                os.fdatasync(fd)
                self.flushes += 1
                at = (at + self.CHUNK) % self.SPAN
        finally:
            os.close(fd)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


async def direct_move(src: QemuProcess, dst: QemuProcess) -> tuple[float, float]:
    """One anchor move (see the docstring): (pause, QEMU's downtime) in seconds."""
    flags = MigrateFlags(**FLAGS)
    with src.listener("STOP") as stops:
        await dst.start(incoming="defer", paused=True)
        await configure(src.qmp, flags)
        await configure(dst.qmp, flags)
        uri = f"tcp:127.0.0.1:{free_port('127.0.0.1')}"
        with dst.listener("MIGRATION") as loads:
            await dst.execute("migrate-incoming", {"uri": uri})
            await src.execute("migrate", {"uri": uri})
            resume = await resume_when_loaded(dst, loads, "anchor")
        info = await source_completed(src, "anchor")
        stop = await asyncio.wait_for(stops.get(), 10)
    await src.stop()
    return event_time(resume) - event_time(stop), info.get("downtime", 0) / 1000


async def anchor(root: Path, count: int, working_set: str) -> tuple[list[float], list[float]]:
    """`count` anchor moves back and forth: (pauses, pauses − downtime) in ms."""
    spec = VMSpec.load(guest_vm("soak-anchor", memory="64M", working_set=working_set))
    accel = detect_accel()
    procs = [QemuProcess(spec, root / "anchor-0", accel)]
    pauses, costs = [], []
    try:
        await procs[0].start()
        await procs[0].wait_markers(0, timeout=60)
        for i in range(count):
            procs.append(QemuProcess(spec, root / f"anchor-{i + 1}", accel))
            pause, downtime = await direct_move(procs[-2], procs[-1])
            pauses.append(pause * 1000)
            costs.append((pause - downtime) * 1000)
        await procs[-1].wait_markers(procs[-1].serial_markers(), timeout=30)  # the guest runs at the end
    finally:
        for proc in procs:
            with contextlib.suppress(Exception):
                await proc.stop(graceful=False)
    return pauses, costs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--working-set", default="8M")
    parser.add_argument("--warmup", type=int, default=LIMIT + 1,
                        help="round trips before the start figures (default: fills the recent-migrations history)")
    parser.add_argument("--anchor", type=int, default=20, help="direct QEMU → QEMU moves for the anchor rows")
    parser.add_argument("--disk-writer", action="store_true",
                        help="a busy neighbour writing and flushing on the agents' disk during the measured moves")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qv-soak-") as tmp:
        root = Path(tmp)
        anchor_pauses, anchor_costs = ([], []) if not args.anchor else asyncio.run(
            anchor(root, args.anchor, args.working_set))
        a, b = agent(root, "hv-a", "127.0.77.2"), agent(root, "hv-b", "127.0.77.3")
        try:
            mutual_trust(a, b)
            a.api("POST", "vms", guest_vm("soak-1", memory="64M", working_set=args.working_set))
            a.api("POST", "vms/soak-1/start", {})
            a.wait_markers("soak-1", 0)
            for here, there in ((a, b), (b, a)) * args.warmup:  # warm-up: see the docstring
                here.api("POST", "vms/soak-1/migrate", {"dest": there.migration, "flags": FLAGS})
                wait_outcome(here, "soak-1", poll=0.05)
            start_use = {x.name: usage(x) for x in (a, b)}
            failures: list[str] = []
            pauses: list[float] = []
            costs: list[float] = []
            checks: list[float] = []  # the RAM comparison's share of the pause, where it ran
            net: list[float] = []  # pause − downtime − RAM comparison
            here, there = a, b
            writer = DiskWriter(root / "neighbour.bin") if args.disk_writer else contextlib.nullcontext()
            with writer:
                for i in range(args.count):
                    here.api("POST", "vms/soak-1/migrate", {"dest": there.migration, "flags": FLAGS})
                    status = wait_outcome(here, "soak-1", poll=0.05)
                    if status["state"] != "COMPLETED":
                        failures.append(f"#{i + 1} {here.name}→{there.name}: {status['state']} {status.get('error')}")
                        continue
                    report = there.api("POST", "vms/soak-1/verify-ram")
                    if not report.get("ok"):
                        failures.append(f"#{i + 1}: RAM not verified on {there.name}: {report}")
                    if status.get("pause") is not None and status.get("downtime") is not None:
                        pauses.append(status["pause"] * 1000)
                        costs.append((status["pause"] - status["downtime"]) * 1000)
                        if status.get("ram_check") is not None:
                            checks.append(status["ram_check"] * 1000)
                            net.append((status["pause"] - status["downtime"] - status["ram_check"]) * 1000)
                    here, there = there, here
            end_use = {x.name: usage(x) for x in (a, b)}
        finally:
            for x in (a, b):
                for vm in x.api("GET", "vms", timeout=10) if x.proc and x.proc.poll() is None else []:
                    if vm["state"] == "running":
                        x.api("POST", f"vms/{vm['name']}/stop", {}, timeout=20)
                x.stop()
    print(f"migrations: {args.count} (after {2 * args.warmup} of warm-up), failures: {len(failures)}"
          + (f"; disk writer: {writer.flushes} flushes of 8 MiB meanwhile" if isinstance(writer, DiskWriter) else ""))
    for line in failures:
        print(f"  {line}")
    print(f"{'agent':<8}{'RSS start':>12}{'RSS end':>12}{'Δ':>8}{'fds start':>11}{'fds end':>9}")
    for name in start_use:
        (r0, f0), (r1, f1) = start_use[name], end_use[name]
        print(f"{name:<8}{r0:>9} KiB{r1:>9} KiB{100 * (r1 - r0) / r0:>7.1f}%{f0:>11}{f1:>9}")
    if pauses:
        print(f"{'ms':<24}{'p50':>8}{'p95':>8}{'max':>8}")
        rows = [("guest pause", pauses), ("pause − QEMU downtime", costs)]
        if checks:
            rows += [("RAM comparison", checks), ("  the rest (commit)", net)]
        if anchor_pauses:
            rows += [(f"anchor: pause ({len(anchor_pauses)})", anchor_pauses),
                     ("anchor: pause − downtime", anchor_costs)]
        for label, values in rows:
            print(f"{label:<24}{statistics.median(values):>8.2f}{pct(values, 95):>8.2f}{max(values):>8.2f}")
        for label, ours, floor in (("ours ÷ anchor: pause", pauses, anchor_pauses),
                                   ("  pause − downtime", costs, anchor_costs)):
            if floor:
                print(f"{label:<24}{statistics.median(ours) / statistics.median(floor):>8.2f}"
                      f"{pct(ours, 95) / pct(floor, 95):>8.2f}")
        print(f"goal: p95 of pause − downtime ≤ 5 ms: {'met' if pct(costs, 95) <= 5 else 'NOT met'}"
              + (f" (without the RAM comparison: {'met' if pct(net, 95) <= 5 else 'NOT met'})" if net else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
