"""A destination host that crashed in the switchover: did the commit reach it before?

The destination writes `committing` before `cont` but flushes it to the device behind the guest's
resume (journal sync="behind"), so the flush is not part of the guest's pause. A killed agent
loses nothing that way (the page cache keeps the line); a host crash can. So a live session found
`loading` or `loaded` in a record opened under another boot (journal.Record.unsynced_may_be_lost)
may have run here: only its source can tell, since it journals `committed` before the commit
leaves.

At start such a session becomes `rebooted` (flushed; its definition and landed images kept, like
`lost`'s), and a task asks the source (`session-state` on a fresh channel, to the address the
migrate request gave and pinned to the key the source presented), with backoff until it answers:
  transferring, awaiting-commit, rolled-back → no commit ever left: `discarded`, VM and files go
  committed, released, unknown, anything else → it may have run here: `lost` (lost.py: the
                                               operator settles, the source stays paused asking)
A source that asks about a `rebooted` session asks because it committed: the session is `lost` at
once (session_state.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..incoming import remove_incoming
from ..journal import Journal, Record
from .lost import landed_images, mark_lost
from .recovery import RETRY_CAP, RETRY_FIRST, ask_session_state, keep

if TYPE_CHECKING:
    from ...host.context import Host

log = logging.getLogger(__name__)
NEVER_COMMITTED = ("transferring", "awaiting-commit", "rolled-back")  # a source's states before any commit left


def crashed_before_commit_flushed(record: Record) -> bool:
    """A live destination session that a host crash may have cut off after its unflushed
    `committing` line (the restart finds it `loading`/`loaded`, in another boot)."""
    return (record.role == "destination" and record.kind == "live" and record.state in ("loading", "loaded")
            and record.unsynced_may_be_lost)


def outcome(source_state: str) -> str:
    """The destination's end for a source's answer: "discarded" (the guest never ran here) or "lost"."""
    return "discarded" if source_state in NEVER_COMMITTED else "lost"


def mark_rebooted(host: Host, journal: Journal, record: Record) -> None:
    """Journal `rebooted` (flushed) with the images the session landed: the VM is kept, not discarded."""
    vm = host.registry.vms.get(record.vm)
    images = landed_images(vm.dir) if vm is not None else []
    journal.set(record.session, "rebooted", images=images)
    log.warning("%s: session %s was %s before this host restarted; asking the source %s whether it committed",
                record.vm, record.session, record.state, record.peer)


def ask_source_later(host: Host, journal: Journal, record: Record) -> None:
    vm = host.registry.vms.get(record.vm)
    if vm is not None:
        vm.busy = "incoming"  # not started by hand while the source's word is awaited
    keep(asyncio.ensure_future(settle_rebooted(host, journal, record)))


async def settle_rebooted(host: Host, journal: Journal, record: Record) -> str:
    """Ask the source until it answers, then end the session; its final state."""
    address = record.extra.get("source")
    pin = record.extra.get("peer_key")
    kem = str(record.extra.get("kem", "ML-KEM-768"))
    delay = RETRY_FIRST
    while True:
        current = journal.get(record.session)
        if current is None or current.state != "rebooted":  # settled meanwhile: the source asked, or the operator
            return current.state if current else "unknown"
        if not isinstance(address, str) or not isinstance(pin, str):  # an older source: nobody to ask
            return await conclude(host, journal, current, "unknown")
        state, why = await ask_session_state(host, address, record.session, record.vm, kem, pin)
        if state is not None:
            return await conclude(host, journal, current, state)
        log.info("%s: source %s did not answer about session %s (%s); asking again in %.1fs", record.vm,
                 address, record.session, why, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_CAP)


async def conclude(host: Host, journal: Journal, record: Record, source_state: str) -> str:
    """End a `rebooted` session by the source's state (see the module's docstring)."""
    current = journal.get(record.session)
    if current is None or current.state != "rebooted":
        return current.state if current else "unknown"
    vm = host.registry.vms.get(record.vm)
    if outcome(source_state) == "discarded":
        journal.set(record.session, "discarded", settled_by="source", source_state=source_state)
        if vm is not None:
            await remove_incoming(host.registry, vm)
        log.info("%s: source says %s: session %s discarded here", record.vm, source_state, record.session)
        return "discarded"
    log.error("%s: source says %s: session %s may have run here before the restart; lost (settle with "
              "`quantavirt vm migrate-settle %s --discard-here`)", record.vm, source_state, record.session, record.vm)
    mark_lost(journal, record.session, vm, source_state=source_state)
    return "lost"
