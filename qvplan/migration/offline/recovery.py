"""The source's side of the commit point of an offline migration.

From the moment the source sends commit until it knows the answer, the VM is in doubt: the
destination may own it already. The source writes OUTGOING in the VM's folder (durably) before it
sends commit and removes it once the answer is known. An agent that starts with such a folder
(it was killed in between) keeps that VM busy and asks the destination, as long as it takes:
committed → the VM is released here (undefined, its disk files deleted); absent → the marker goes
and the VM is this host's again. So a VM is never left defined on both hosts by a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...contract import wire
from ..journal import journal_for
from ..peer import ask as ask_peer

if TYPE_CHECKING:
    from ...host.context import Host
    from ...host.registry import VM

log = logging.getLogger(__name__)
OUTGOING = "outgoing.json"
TRASH_PREFIX = ".qv-removed-"  # a moved VM's disk file, renamed until it is deleted
# Bytes freed per truncation when `remove` deletes a disk file: each step is one short filesystem
# transaction (see `remove`).
DELETE_STEP = 32 << 20
RETRY_CAP = 60.0
_settling: set[asyncio.Task[None]] = set()  # strong references to running _settle tasks


def under(path: Path, prefixes: list[str]) -> bool:
    return any(path == Path(p) or Path(p) in path.parents for p in prefixes)


def mark(vm: VM, dest: str, session: str, kem: str, peer_key: str | None = None) -> None:
    path = vm.dir / OUTGOING
    with open(path, "w") as f:
        json.dump({"dest": dest, "session": session, "kem": kem, "peer_key": peer_key}, f)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(vm.dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unmark(vm: VM) -> None:
    (vm.dir / OUTGOING).unlink(missing_ok=True)


async def ask(host: Host, dest: str, name: str, session: str, kem: str, pin: str | None = None) -> str | None:
    """The destination's word on the VM: committed, pending or absent; None when unreachable.
    `pin`: the key the session's destination presented; only that host is believed."""
    try:
        reply = await ask_peer(host, dest, wire.OfflineStateQuery(vm=name, session=session).dump(), kem, pin=pin)
        answer = wire.parse(reply, wire.OfflineStateAnswer)
    except Exception as err:
        log.info("asking %s about %s: %s", dest, name, err)
        return None
    assert isinstance(answer, wire.OfflineStateAnswer)
    return answer.state


def release(host: Host, vm: VM) -> list[Path]:
    """The VM lives on the destination now: forget it here and move its (non-shared) disk files
    out of the way. Their names are free at once (for the VM moving back); the files are returned
    for `remove`, off the event loop: freeing a large file's page cache takes tens of milliseconds
    (≈70 ms for 384 MiB here). Trash left by a crash in between goes at the next start (`sweep`)."""
    paths = [d.resolve(host.pools) for d in vm.spec.disks]
    vm.busy = None
    host.registry.forget(vm.name)
    trash = []
    for path in paths:
        if under(path, host.config.storage.shared) or not path.exists():
            continue
        try:
            moved = path.with_name(f"{TRASH_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}")
            os.rename(path, moved)
            trash.append(moved)
        except OSError as err:
            log.warning("could not remove %s after migrating %s: %s", path, vm.name, err)
    return trash


def remove(trash: list[Path]) -> None:
    """Delete the files, a large one by shrinking it DELETE_STEP at a time before the unlink.

    Freeing all of a large file's blocks at once holds one ext4 transaction open for as long as it
    takes (~70 ms for 384 MiB here), and every fsync on the host waits for it: the next
    migration's first journal line took 15–76 ms instead of 1–2 (bench/storage.py, back-to-back
    moves). In steps, each fsync waits for one step at most. Only a regular file with no other
    link is shrunk (a hard link planted under a trash name keeps its data); anything else,
    symlinks included, is just unlinked."""
    for path in trash:
        try:
            _shrink(path)
        except OSError as err:
            log.debug("%s not shrunk before removal: %s", path, err.strerror)
        try:
            path.unlink()
        except OSError as err:
            log.warning("could not remove %s: %s", path, err)


def _shrink(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return
        size = info.st_size
        while size > DELETE_STEP:
            size -= DELETE_STEP
            os.ftruncate(fd, size)
    finally:
        os.close(fd)


def sweep(host: Host) -> None:
    """At agent start: delete the disk files of VMs that moved away before a crash let `remove`
    finish (only names `release` gives; a symlink among them is removed, never followed)."""
    remove([p for pool in set(host.pools.values()) if pool.is_dir() for p in pool.glob(f"{TRASH_PREFIX}*")])


def resume(host: Host) -> None:
    """At agent start: settle every VM left in doubt by a crash (see the module's docstring)."""
    sweep(host)
    for vm in list(host.registry.vms.values()):
        if (vm.dir / OUTGOING).exists():
            log.warning("%s was committing an offline migration when the agent stopped", vm.name)
            settle_later(host, vm)


def settle_later(host: Host, vm: VM) -> None:
    """Keep `vm` busy and ask its destination until the answer is known."""
    try:
        doubt: dict[str, Any] = json.loads((vm.dir / OUTGOING).read_text())
    except (OSError, ValueError):
        return
    vm.busy = "migrating"
    task = asyncio.ensure_future(_settle(host, vm, doubt))
    _settling.add(task)
    task.add_done_callback(_settling.discard)


def _journal(host: Host, doubt: dict[str, Any], state: str) -> None:
    """The session's outcome in the migration journal (a session from before journaling has none)."""
    session = str(doubt.get("session"))
    journal = journal_for(host.state_dir)
    with contextlib.suppress(ValueError):
        record = journal.get(session)
        if record is not None and record.open:
            journal.set(session, state, settled_by="destination")


async def _settle(host: Host, vm: VM, doubt: dict[str, Any]) -> None:
    delay = 1.0
    while True:
        key = doubt.get("peer_key")
        state = await ask(host, str(doubt.get("dest")), vm.name, str(doubt.get("session")),
                          str(doubt.get("kem", "ML-KEM-768")), key if isinstance(key, str) else None)
        if state == "committed":
            log.info("%s was committed on %s: released here", vm.name, doubt.get("dest"))
            with contextlib.suppress(Exception):
                await asyncio.to_thread(remove, release(host, vm))
            _journal(host, doubt, "released")
            return
        if state == "absent":
            log.info("%s was not committed on %s: it stays here", vm.name, doubt.get("dest"))
            unmark(vm)
            vm.busy = None
            _journal(host, doubt, "rolled-back")
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_CAP)
