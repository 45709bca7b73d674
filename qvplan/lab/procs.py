"""Small process helpers for the lab: run a command, start one detached, find and kill pids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .model import LabError

# Run by a short-lived python: the daemon it starts is re-parented to init, so the caller
# (a CLI or a test process) is left with no child to reap.
_LAUNCHER = (
    "import subprocess, sys\n"
    "log = open(sys.argv[1], 'ab')\n"
    "p = subprocess.Popen(sys.argv[3:], stdin=subprocess.DEVNULL, stdout=log, stderr=log,"
    " start_new_session=True, close_fds=True)\n"
    "open(sys.argv[2], 'w').write(str(p.pid))\n"
)


def sh(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} not found", "install iproute2 and openssh-server (make setup)") from None
    if check and proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["?"]
        raise LabError(f"`{' '.join(argv)}` failed: {msg[0]}")
    return proc


def detach(argv: Sequence[str], log: Path, pidfile: Path, env: dict[str, str] | None = None) -> int:
    """Start `argv` in its own session, output to `log`; returns and records its pid."""
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(log), str(pidfile), *argv], env=env,
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise LabError(f"cannot start {argv[0]}: {proc.stderr.strip().splitlines()[-1:]}")
    return int(pidfile.read_text())


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pids: Iterable[int]) -> set[int]:
    tree = children_map()
    out: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        for child in tree.get(pid, []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def kill_all(pids: Iterable[int], grace: float = 3.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL what is left."""
    pids = {p for p in pids if p and p != os.getpid() and alive(p)}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
