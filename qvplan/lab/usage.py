"""How much CPU a lab costs: the processes of its hosts (agents, sshd, QEMUs), sampled twice."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import agents, net

if TYPE_CHECKING:
    from .lab import Lab


def lab_pids(lab: Lab) -> set[int]:
    pids: set[int] = set()
    present = net.netns_list()
    for host in lab.hosts:
        pids |= agents.owned_pids(host)
        if host.netns and host.netns in present:
            pids |= net.netns_pids(host.netns)
    return pids


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def lab_cpu(lab: Lab, seconds: float = 2.0) -> float:
    """CPU time the lab's processes used per second of wall time (1.0 = one core busy)."""
    pids = lab_pids(lab)
    before = {p: _cpu_ticks(p) for p in pids}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    used = sum(max(0, _cpu_ticks(p) - t0) for p, t0 in before.items())
    return used / os.sysconf("SC_CLK_TCK") / elapsed
