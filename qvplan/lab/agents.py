"""The `quantavirt agent` of each lab host: its config, state dir, process, and the QEMUs it ran."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

from .model import LabError, LabHost
from .procs import alive, cmdline, detach, read_pid


def quantavirt_bin() -> str:
    """The `quantavirt` of the environment this qvplan runs in (the lab uses this very code)."""
    local = Path(sys.executable).parent / "quantavirt"
    if local.exists():
        return str(local)
    found = shutil.which("quantavirt")
    if not found:
        raise LabError("no `quantavirt` executable next to this Python", "install qvplan (make setup)")
    return found


def config_text(host: LabHost) -> str:
    from ..host.config import AgentConfig

    state = host.file("state")
    return AgentConfig.model_validate({
        "host": {"name": host.name, "state_dir": str(state)},
        "api": {"listen": host.api, "socket": host.control},
        "migration": {"listen": host.migration_listen, "advertise": host.migration, "pqc_required": True},
        "storage": {"pools": {"default": str(state / "images"), "images": str(host.path.parent / "images")}},
    }).to_toml()


def pid(host: LabHost) -> int | None:
    p = read_pid(host.file("agent.pid"))
    return p if alive(p) and "quantavirt" in cmdline(p or 0) else None


def start(host: LabHost, env: dict[str, str] | None = None) -> int:
    """Start the agent detached (inside the host's namespace) unless it runs; returns its pid.
    `env`: extra variables for it (tests: the fault hook QUANTAVIRT_TEST_PAUSE_AT); the caller's
    QUANTAVIRT_* never leak in."""
    if (running := pid(host)) is not None:
        return running
    host.file("state").mkdir(parents=True, exist_ok=True)
    cfg = host.file("agent.toml")
    if not cfg.exists() or cfg.read_text() != config_text(host):
        cfg.write_text(config_text(host))
    argv = [quantavirt_bin(), "--config", str(cfg), "agent"]
    if host.netns:
        argv = ["ip", "netns", "exec", host.netns, *argv]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QUANTAVIRT_")}
    return detach(argv, host.file("agent.log"), host.file("agent.pid"), env={**clean, **(env or {})})


def kill(host: LabHost, sig: int = signal.SIGKILL) -> bool:
    """Send `sig` to the host's agent; False when none runs."""
    p = pid(host)
    if p is None:
        return False
    os.kill(p, sig)
    return True


def log_tail(host: LabHost, lines: int = 1) -> str:
    try:
        text = host.file("agent.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:]) or "empty log"


def owned_pids(host: LabHost) -> set[int]:
    """Processes the host's files point at: agents (also provisioned ones), QEMUs, sshd."""
    pids: set[int] = set()
    if not host.path.exists():
        return pids
    for pidfile in host.path.rglob("*.pid"):
        p = read_pid(pidfile)
        if alive(p) and any(word in cmdline(p or 0) for word in ("qemu", "quantavirt", "sshd", str(host.path))):
            pids.add(p or 0)
    return pids
