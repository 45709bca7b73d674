"""The host CLI starts fast: `bench/cli_start.py`'s commands, and `vm list` against a real agent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cli_start.py"


def _bench():
    spec = importlib.util.spec_from_file_location("cli_start", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_cli_commands_start_within_the_cpu_goal(make_agent):
    bench = _bench()
    agent = make_agent("hv-a")

    def measure():
        anchor, timings = bench.run(5, str(agent.config))
        print(bench.table(anchor, timings))
        return anchor, timings, [f"{t.label}: {t.cpu:.3f} s" for t in timings if t.cpu > bench.CPU_GOAL]

    anchor, timings, slow = measure()
    assert {t.label for t in timings} >= {"quantavirt --version", "quantavirt vm list --help", "qvplan --version",
                                          "quantavirt vm list"}
    # The absolute goal (≤ 0.15 s of CPU, medians of 5 runs) holds on a busy machine too; the ratio
    # to a bare `python -c pass` (≤ 3×) is what the bench itself reports. This machine's CPU speed
    # swings by a quarter from one minute to the next (`vm list` 0.136 s, then 0.169 s in a CI run
    # with the same code): a miss is measured once more, and the second measurement decides.
    if slow:
        print(f"missed ({', '.join(slow)}): measuring again")
        anchor, timings, slow = measure()
    assert not slow, bench.table(anchor, timings)
