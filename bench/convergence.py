#!/usr/bin/env python3
"""Benchmark of convergence for a write-heavy guest: what ends the copy sooner, with less throttling.

Run: .venv/bin/python bench/convergence.py [--rounds 1] [--memory 1G] [--working-set 512M]

The test guest (guest/testguest.S) with 1 GiB of RAM sweeps 512 MiB as fast as it can (pace 0):
it rewrites every page of its working set over and over, faster than our channel carries pages,
so the copy converges only by one of QEMU's means. Each row is one live migration between two real
`quantavirt agent` processes on 127.0.0.x (over the PQC channel), with the spec's flags except:

- auto-converge alone, 1 channel and 4 channels (the spec's default): throttling the vCPU;
- xbzrle (`--xbzrle-cache`, one channel): pages sent before go as XOR deltas against a cache of
  sent pages; with auto-converge still on, as it is by default;
- multifd zstd (`--compress`, 4 channels): every page zstd-compressed;
- and, for context, auto-converge off with xbzrle, to see whether xbzrle converges by itself.

Figures per row (from the source agent's status, the medians over --rounds): passes (QEMU's dirty
sync count), total s (request → guest resumed there), final throttle % (auto-converge's vCPU
throttle when the copy ended: the guest's loss of speed), pause ms (source STOP → destination
RESUME), GiB sent (RAM bytes QEMU put on the wire, after xbzrle/zstd). A row that does not
converge within the timeout says so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from migration import _kill_leftover_qemu  # bench/migration.py: QEMU processes left under a root

from qvplan.units import parse_size
from tests.agents import AgentProc, free_port, guest_vm, mutual_trust
from tests.migration.helpers import wait_outcome

WARMUP = 3.0  # seconds the guest sweeps before each migration (every page dirty, a steady rate)
TIMEOUT = 300.0

# (row name, migrate flags beyond the spec's defaults)
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("auto-converge, 1 channel", {"threads": 1}),
    ("auto-converge, 4 channels (default)", {}),
    ("xbzrle 512M + auto-converge, 1 channel", {"xbzrle_cache": "512M"}),
    ("xbzrle 512M, no auto-converge", {"xbzrle_cache": "512M", "auto_converge": False}),
    ("multifd zstd (--compress), 4 channels", {"compress": True}),
]


def one(src: AgentProc, dst: AgentProc, flags: dict[str, Any], memory: str, working_set: str) -> dict[str, Any]:
    src.api("POST", "vms", guest_vm("vm-1", memory=memory, working_set=working_set, pace=0, marker_every=0))
    src.api("POST", "vms/vm-1/start", {})
    time.sleep(WARMUP)
    src.api("POST", "vms/vm-1/migrate", {"dest": dst.migration, "flags": {"timeout": TIMEOUT, **flags}})
    status = wait_outcome(src, "vm-1", TIMEOUT + 60)
    for agent in (dst, src):
        with contextlib.suppress(Exception):
            agent.api("POST", "vms/vm-1/stop", {}, timeout=30)
        with contextlib.suppress(Exception):
            agent.api("DELETE", "vms/vm-1")
    return status


def rows(base: Path, rounds: int, memory: str, working_set: str) -> list[dict[str, Any]]:
    net = 200 + os.getpid() % 50
    agents = [AgentProc(name, f"127.0.{net}.{i + 12}", base / name, 0, 0, log_level="info")
              for i, name in enumerate(("hv-a", "hv-b"))]
    for agent in agents:
        agent.api_port, agent.mig_port = free_port(agent.address), free_port(agent.address)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in CONFIGS}
    try:
        for agent in agents:
            agent.start()
        a, b = agents
        mutual_trust(a, b)
        for _ in range(rounds):  # rounds interleave the rows, so a load spike hits all of them
            for name, flags in CONFIGS:
                results[name].append(one(a, b, flags, memory, working_set))
                a, b = b, a
    finally:
        for agent in agents:
            agent.stop()
        _kill_leftover_qemu(base)
    return [summarize(name, runs) for name, runs in results.items()]


def summarize(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in runs if r["state"] == "COMPLETED"]
    if not done:
        why = runs[-1].get("error") or runs[-1]["state"]
        return {"row": name, "note": f"did not converge ({why})"[:90]}

    def med(key: str, scale: float = 1.0) -> float:
        return statistics.median(float(r.get(key) or 0) * scale for r in done)

    totals = [float(r["elapsed"]) for r in done]
    return {"row": name, "passes": f"{med('iteration'):.0f}", "total s": f"{med('elapsed'):.1f}",
            "spread s": f"{min(totals):.1f}–{max(totals):.1f}", "throttle %": f"{med('cpu_throttle'):.0f}",
            "pause ms": f"{med('pause', 1000):.0f}", "GiB sent": f"{med('transferred', 1 / 2**30):.2f}",
            "note": f"{len(done)}/{len(runs)} converged" if len(done) < len(runs) else ""}


def render(table: list[dict[str, Any]]) -> str:
    columns = ["row", "passes", "total s", "spread s", "throttle %", "pause ms", "GiB sent", "note"]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in table)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in table]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="migrations per row; medians (default 1)")
    parser.add_argument("--memory", default="1G", help="guest RAM (default 1G)")
    parser.add_argument("--working-set", default="512M", help="what the guest rewrites (default 512M)")
    args = parser.parse_args()
    parse_size(args.memory, "memory")  # refuse a bad size before booting anything
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qv-bench-conv-") as tmp:
        table = rows(Path(tmp), args.rounds, args.memory, args.working_set)
    print(f"Convergence: guest {args.memory} RAM sweeping {args.working_set} (pace 0), ours over the PQC "
          f"channel, max-downtime 300 ms, {args.rounds} round(s), medians")
    print(render(table))
    print(f"benchmark wall time: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
