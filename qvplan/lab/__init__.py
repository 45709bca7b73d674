"""The local multi-host lab: network namespaces (root) or loopback addresses, each host with a
real sshd and a `quantavirt agent`. Faults are real too: links down, netem, killed agents.

The module-level fault functions act on the lab in `lab_dir` (default: the default lab dir).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .lab import HostStatus, Lab
from .model import LabError, LabHost, LabSpec, default_lab_dir

__all__ = [
    "HostStatus", "Lab", "LabError", "LabHost", "LabSpec", "default_lab_dir", "exec_in", "kill_agent",
    "link_down", "link_up", "netem",
]


def link_down(host: str, lab_dir: str | Path | None = None) -> None:
    """Cut the host's network link (its veth goes down): SSH and migrations to it time out."""
    Lab.load(lab_dir).link_down(host)


def link_up(host: str, lab_dir: str | Path | None = None) -> None:
    Lab.load(lab_dir).link_up(host)


def netem(host: str, spec: str | None, lab_dir: str | Path | None = None) -> None:
    """`tc netem` on the host's link in both directions, e.g. "delay 50ms loss 1%"; None clears."""
    Lab.load(lab_dir).netem(host, spec)


def kill_agent(host: str, sig: int = signal.SIGKILL, lab_dir: str | Path | None = None) -> bool:
    """Kill the host's agent (SIGKILL by default); its QEMUs keep running. False if none ran."""
    return Lab.load(lab_dir).kill_agent(host, sig)


def exec_in(host: str, argv: Sequence[str], lab_dir: str | Path | None = None,
            **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run argv on the host (`ip netns exec` in netns mode, plainly in loopback mode)."""
    return Lab.load(lab_dir).exec_in(host, argv, **kwargs)  # type: ignore[arg-type]
