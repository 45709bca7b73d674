"""Attacks as `nobody` (curl under runuser), and what a host looks like from the outside: its VMs
as root reads them, its QEMU processes, its trusted keys, files an attack would have written."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..agents import AgentProc

ATTACKER = "nobody"


@dataclass
class Answer:
    """What curl got: its exit status (7: could not connect), the HTTP status and the body."""

    exit: int
    status: int
    body: str

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def code(self) -> str | None:
        data = self.json
        return data.get("code") if isinstance(data, dict) else None


def as_user(argv: list[str], group: str | None = None, timeout: float = 30,
            user: str = ATTACKER) -> subprocess.CompletedProcess[str]:
    """Run `argv` as `user` (nobody; with `group` as its group when given): a real unprivileged process."""
    prefix = ["runuser", "-u", user, *(["-g", group] if group else []), "--"]
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout)


def curl(url: str, method: str = "GET", body: Any = None, *, unix: Path | None = None,
         headers: dict[str, str] | None = None, content_type: str = "application/json",
         group: str | None = None, user: str = ATTACKER) -> Answer:
    argv = ["curl", "-sS", "--max-time", "20", "-X", method, "-o", "-", "-w", "\n%{http_code}"]
    if unix is not None:
        argv += ["--unix-socket", str(unix)]
    if body is not None:
        argv += ["-H", f"Content-Type: {content_type}", "--data-binary",
                 body if isinstance(body, str) else json.dumps(body)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    done = as_user([*argv, url], group=group, user=user)
    text, _, status = done.stdout.rpartition("\n")
    return Answer(done.returncode, int(status) if status.isdigit() else 0, text)


def qemu_pids(agent: AgentProc) -> set[int]:
    """QEMU processes of this agent's VMs, from the process table (not from the agent)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and b"qemu-system" in cmdline[0] and any(str(agent.state).encode() in a for a in cmdline):
            pids.add(int(proc.name))
    return pids


def snapshot(agent: AgentProc) -> dict[str, Any]:
    """The host as an operator sees it: VMs and states (read as root), QEMU pids, VM dirs, trusted keys."""
    trusted = agent.state / "pqc" / "trusted"
    return {
        "vms": sorted((v["name"], v["state"]) for v in agent.api("GET", "vms")),
        "qemu": qemu_pids(agent),
        "vm_dirs": sorted(p.name for p in (agent.state / "vms").iterdir()) if (agent.state / "vms").exists() else [],
        "trusted": sorted((p.name, p.read_bytes()) for p in trusted.glob("*")) if trusted.exists() else [],
    }


@contextlib.contextmanager
def member_of(group: str) -> Iterator[str]:
    """A system user the test creates, with `group` as a supplementary group (as an operator
    added with `usermod -aG`); removed afterwards."""
    name = f"qvt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", group, name],
                   check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)
