"""Start time of the CLIs against a bare `python -c pass` measured in the same run. Goal: ≤ 3×.

Each command runs `--runs` times; the table shows the median CPU (user + system, from the
children's rusage) and wall time, and both as a ratio to the anchor. With `--config FILE` (a
running agent's config) it also times `quantavirt vm list` and `vm migrate-status` against that
agent, whose goal is ≤ 0.15 s of CPU. Exits 1 when a goal is missed.
Run: .venv/bin/python bench/cli_start.py [--runs 7] [--config quantavirt.conf]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RATIO_GOAL = 3.0
CPU_GOAL = 0.15  # seconds, for the commands that ask the agent


def script(name: str) -> list[str]:
    """The installed entry point next to this Python, else `python -m`."""
    exe = Path(sys.executable).parent / name
    module = {"quantavirt": "qvplan.cli.quantavirt", "qvplan": "qvplan.cli.qvplan"}[name]
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


@dataclass
class Timing:
    label: str
    cpu: float
    wall: float


def measure(label: str, argv: list[str], runs: int, env: dict[str, str] | None = None) -> Timing:
    """Median CPU and wall time of `argv` over `runs` runs (output discarded; must exit 0)."""
    cpus, walls = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=60)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{label}: exited {done.returncode}: {done.stderr.decode(errors='replace').strip()}")
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return Timing(label, statistics.median(cpus), statistics.median(walls))


def run(runs: int, config: str | None = None, vm: str | None = None) -> tuple[Timing, list[Timing]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTAVIRT_")}
    anchor = measure("python -c pass", [sys.executable, "-c", "pass"], runs, env)
    cases = [("quantavirt --version", [*script("quantavirt"), "--version"]),
             ("quantavirt vm list --help", [*script("quantavirt"), "vm", "list", "--help"]),
             ("qvplan --version", [*script("qvplan"), "--version"])]
    if config:
        cases.append(("quantavirt vm list", [*script("quantavirt"), "--config", config, "vm", "list"]))
        if vm:
            cases.append(("quantavirt vm migrate-status", [*script("quantavirt"), "--config", config,
                                                           "vm", "migrate-status", vm]))
    return anchor, [measure(label, argv, runs, env) for label, argv in cases]


def table(anchor: Timing, timings: list[Timing]) -> str:
    lines = [f"{'command':<30} {'CPU s':>7} {'× pass':>7} {'wall s':>7} {'× pass':>7}",
             f"{anchor.label:<30} {anchor.cpu:7.3f} {1:7.2f} {anchor.wall:7.3f} {1:7.2f}"]
    for t in timings:
        lines.append(f"{t.label:<30} {t.cpu:7.3f} {t.cpu / anchor.cpu:7.2f} {t.wall:7.3f} "
                     f"{t.wall / anchor.wall:7.2f}")
    return "\n".join(lines)


def misses(anchor: Timing, timings: list[Timing]) -> list[str]:
    """The goals not met: ≤ 3× the anchor's CPU without an agent, ≤ 0.15 s CPU with one."""
    out = []
    for t in timings:
        if "--" in t.label and t.cpu > RATIO_GOAL * anchor.cpu:
            out.append(f"{t.label}: {t.cpu / anchor.cpu:.2f}× python's start (goal ≤ {RATIO_GOAL:g}×)")
        elif "--" not in t.label and t.cpu > CPU_GOAL:
            out.append(f"{t.label}: {t.cpu:.3f} s CPU (goal ≤ {CPU_GOAL:g} s)")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--config", help="a running agent's config: also time `vm list` against it")
    parser.add_argument("--vm", help="with --config: also time `vm migrate-status VM`")
    args = parser.parse_args()
    anchor, timings = run(args.runs, args.config, args.vm)
    print(table(anchor, timings))
    missed = misses(anchor, timings)
    for line in missed:
        print("MISSED:", line)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
