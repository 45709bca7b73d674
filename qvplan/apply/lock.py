"""One apply at a time per host: a lock held on each host itself, for as long as the apply lives.

How: over the apply's SSH connection to the host (the one its facts and moves use too), a small
Python program on the host (lock_remote.py) opens the lock file safely, takes `flock` on it,
writes who holds it, and holds the lock until its stdin ends — that is, until our SSH channel (or
the whole connection) closes. So the kernel ties the lock to the apply: when the
apply ends or is killed (even with SIGKILL), its TCP connection closes, sshd ends the session,
`cat` exits and the lock is free. Nothing is left to clean up in the normal case.

The one way a lock outlives its apply is a half-open connection (the controller vanished without
closing TCP). The lock file names the holder: controller host + boot id, pid and its start time,
the plan and journal. A lock whose holder ran on this very controller and is gone is stale: we end
the host-side holder (after checking, through /proc, that it is the process holding this file)
and take the lock. A holder on another controller cannot be checked from here: the error says
who holds it, and `--break-lock` ends it.

The lock file is /run/quantavirt/locks/qvplan-apply-<key>.lock (root-only directory, mode 0700;
/tmp/qvplan-locks-<uid> for a non-root SSH user), keyed by the host's SSH host key, so lab hosts
sharing one filesystem get one lock each. Never the world-writable /run/lock or /tmp themselves:
see lock_remote.py for how a planted symlink or a foreign directory is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from ..boot import boot_id
from ..errors import QVError
from ..remote import HostConnection, HostTarget, RemoteError
from ..remote.pool import Connections
from . import lock_remote


class LockError(QVError):
    """A host is locked by another apply, or its lock cannot be taken."""

    reason_code = code = "host-locked"


class LockFailed(LockError):
    """The lock could not be taken at all: an unsafe lock directory or file, no python3, no answer."""

    reason_code = code = "lock-failed"


def process_start(pid: int) -> str | None:
    """The start time of `pid` (clock ticks since boot), or None when it does not run."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner(plan: str, journal: str | None) -> dict[str, Any]:
    """Who we are, as written into each host's lock file."""
    pid = os.getpid()
    return {"controller": socket.gethostname(), "boot_id": boot_id(), "pid": pid,
            "pid_start": process_start(pid), "plan": plan, "journal": journal,
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def holder_alive(info: dict[str, Any]) -> bool | None:
    """Whether the apply that wrote `info` still runs: None when it ran on another machine."""
    if info.get("controller") != socket.gethostname() or info.get("boot_id") != boot_id():
        return None
    pid = info.get("pid")
    return isinstance(pid, int) and process_start(pid) is not None and process_start(pid) == info.get("pid_start")


@dataclass
class Held:
    host: str
    process: asyncssh.SSHClientProcess[Any]
    file: str


LOCK_DIR = "auto"  # lock_remote.py: /run/quantavirt/locks as root


def lock_path(conn: HostConnection) -> str:
    """The lock's file name inside the host's lock directory."""
    key = conn.ssh.get_server_host_key()
    ident = key.export_public_key() if key is not None else f"{conn.target.ssh_address}".encode()
    return f"qvplan-apply-{hashlib.sha256(ident).hexdigest()[:16]}.lock"


class HostLocks:
    """`async with HostLocks(targets, who):` — every host locked for the block, or LockError."""

    def __init__(self, targets: dict[str, HostTarget], who: dict[str, Any], *, break_lock: bool = False,
                 say: Any = None, pool: Connections | None = None) -> None:
        self.targets = targets
        self.who = who
        self.break_lock = break_lock
        self.say = say or (lambda _text: None)
        # The apply's own connections (facts, trust, moves use them too), or ours alone.
        self.pool = pool if pool is not None else Connections(targets)
        self._own_pool = pool is None
        self.held: dict[str, Held] = {}
        self._on: dict[str, HostConnection] = {}  # the connection each lock was taken over

    async def __aenter__(self) -> HostLocks:
        try:
            results = await asyncio.gather(*(self._take(name) for name in sorted(self.targets)),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                lock_errors = [e for e in errors if isinstance(e, QVError)]
                raise (lock_errors[0] if lock_errors else errors[0])
        except BaseException:
            await self.release()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()

    async def _take(self, name: str) -> None:
        try:
            conn = await self.pool.get(name)
        except RemoteError as err:
            raise LockError(f"cannot lock {name}: {err.cause}", err.fix) from None
        self._on[name] = conn
        path = lock_path(conn)
        for attempt in range(4):
            status, rest, process = await self._try(conn, path, wait="5" if attempt else "0")
            if status == "LOCKED":
                self.held[name] = Held(name, process, rest.split(" ", 1)[-1])
                return
            if status != "BUSY":
                raise LockFailed(f"cannot lock {name}: {rest or 'the lock command failed'}",
                                "fix the lock directory as the message says (root-owned, mode 0700), "
                                "and check the host has python3")
            file, _, text = rest.partition(" ")
            info = _parse_holder(text)
            if not info and attempt < 3:  # its holder has not written its name yet
                await asyncio.sleep(0.5)
                continue
            alive = holder_alive(info)
            if attempt < 3 and (alive is False or (alive is None and self.break_lock)):
                why = "a dead apply" if alive is False else "an apply on another machine (--break-lock)"
                self.say(f"{name}: clearing the lock of {why}: pid {info.get('pid')} on "
                         f"{info.get('controller')}, since {info.get('since')}")
                await self._break(conn, path)
                continue
            raise LockError(self._busy_cause(name, info, alive), self._busy_fix(file, info, alive))

    async def _try(self, conn: HostConnection, path: str, wait: str) \
            -> tuple[str, str, asyncssh.SSHClientProcess[Any]]:
        process = await conn.ssh.create_process(
            lock_remote.command("take", LOCK_DIR, path, wait, json.dumps(self.who, separators=(",", ":"))))
        try:
            first = await asyncio.wait_for(process.stdout.readline(), 30)
        except (TimeoutError, asyncssh.Error, OSError) as err:
            process.close()
            raise LockError(f"cannot lock {conn.name}: no answer from the lock command ({err})",
                            "check the host over SSH") from None
        status, _, rest = str(first).strip().partition(" ")
        if not status:
            status, rest = "ERROR", "the lock command printed nothing (is python3 installed on the host?)"
        if status != "LOCKED":
            process.close()
        return status, rest, process

    async def _break(self, conn: HostConnection, path: str) -> None:
        with contextlib.suppress(RemoteError):
            await conn.run(lock_remote.command("break", LOCK_DIR, path), timeout=15)

    @staticmethod
    def _busy_cause(name: str, info: dict[str, Any], alive: bool | None) -> str:
        who = f"pid {info.get('pid')} on {info.get('controller')}" if info else "an unknown holder"
        what = f", plan {info.get('plan')}" if info.get("plan") else ""
        since = f" since {info.get('since')}" if info.get("since") else ""
        if alive:
            return f"{name} is locked by another apply ({who}{what}{since})"
        return f"{name} is locked by an apply this machine cannot check ({who}{what}{since})"

    @staticmethod
    def _busy_fix(file: str, info: dict[str, Any], alive: bool | None) -> str:
        journal = f"; its journal is {info['journal']}" if info.get("journal") else ""
        if alive:
            return f"wait for it to finish, or stop it (a killed apply's lock clears itself){journal}"
        return (f"if that apply is gone, run again with --break-lock (ends the holder of {file} on the host)"
                f"{journal}")

    async def ensure(self, name: str) -> bool:
        """Still ours? A lock whose connection died (the host freed it) is taken again; False if
        that fails (another apply may hold it now)."""
        held = self.held.get(name)
        conn = self._on.get(name)
        if held is not None and conn is not None and conn.alive and held.process.exit_status is None \
                and not held.process.stdout.at_eof():
            return True
        self.held.pop(name, None)
        if conn is not None and not conn.alive:
            await self.pool.drop(name, conn)
        elif held is not None:  # the lock's process ended on a live connection: end its channel
            with contextlib.suppress(Exception):
                held.process.close()
        try:
            await self._take(name)
        except (QVError, OSError, asyncssh.Error):
            return False
        self.say(f"{name}: lock taken again after its connection was lost")
        return True

    async def release(self) -> None:
        async def end(held: Held) -> None:
            with contextlib.suppress(Exception):
                held.process.stdin.write_eof()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(held.process.wait_closed(), 5)

        await asyncio.gather(*(end(h) for h in self.held.values()))
        self.held.clear()
        self._on.clear()
        if self._own_pool:
            await self.pool.close()


def _parse_holder(text: str) -> dict[str, Any]:
    """`<host pid> <owner json>` as written by lock_remote.py."""
    _, _, blob = text.strip().partition(" ")
    try:
        info = json.loads(blob)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}
