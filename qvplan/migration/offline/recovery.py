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


def release(host: Host, vm: VM) -> None:
    """The VM lives on the destination now: forget it here and delete its (non-shared) disk files."""
    paths = [d.resolve(host.pools) for d in vm.spec.disks]
    vm.busy = None
    host.registry.forget(vm.name)
    for path in paths:
        if under(path, host.config.storage.shared) or not path.exists():
            continue
        try:
            path.unlink()
        except OSError as err:
            log.warning("could not remove %s after migrating %s: %s", path, vm.name, err)


def resume(host: Host) -> None:
    """At agent start: settle every VM left in doubt by a crash (see the module's docstring)."""
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
                release(host, vm)
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
