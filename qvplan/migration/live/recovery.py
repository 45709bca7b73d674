"""The one recovery rule of live migration, for a running agent and for a restarted one.

Source: before `committed` the destination can never resume the guest (it resumes only on a commit,
which leaves only after `committed` is journaled), so the guest resumes here. From `committed` on,
only the destination's word decides: asked on a fresh channel (a fence: an uncommitted session is
discarded there before the answer), again and again with backoff, the VM paused here meanwhile:
  running            → release here (QEMU stopped, VM forgotten)       → released
  discarded          → resume here                                     → rolled-back
  committing         → the destination is resuming it: keep asking
  lost, unknown, unreachable → keep asking; `migrate-status` says the VM is paused here and may run
                       there, and `quantavirt vm migrate-settle NAME --resume-here|--discard-here`
                       settles it by the operator's word.
Destination: loading/loaded → discarded (the guest never ran here); committing → resume (it may
have run: never discarded); QEMU gone after commit → lost (definition and images kept);
loading/loaded found after a host crash → rebooted, and the source's word decides (reboot.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from ...contract import wire
from ..incoming import INCOMING_MARK
from ..journal import MAY_HAVE_RUN, Journal, Record
from ..peer import ask
from ..qmp import ensure_running
from ..storage.mirror import remove_leftovers

if TYPE_CHECKING:
    from ...host import Host
    from ...host.registry import VM
    from ..status import MigrationStatus

log = logging.getLogger(__name__)
RETRY_FIRST = 0.25
RETRY_CAP = 5.0
ASK_TIMEOUT = 5.0
SETTLE_FIX = "quantavirt vm migrate-settle {name} --resume-here|--discard-here"
_background: set[asyncio.Task[Any]] = set()


async def ask_session_state(host: Host, peer: str, session: str, vm: str, kem: str,
                            pin: str | None = None) -> tuple[str | None, str]:
    """(the peer's state of the session or None, why not). `pin`: the key the session's peer
    presented (journaled as `peer_key`): only that host is believed."""
    try:
        raw = await ask(host, peer, wire.SessionQuery(session=session, vm=vm).dump(), kem, timeout=ASK_TIMEOUT,
                        pin=pin)
        answer = wire.parse(raw, wire.SessionAnswer)
        assert isinstance(answer, wire.SessionAnswer)
        return answer.state, ""
    except Exception as err:
        return None, str(getattr(err, "cause", err)) or type(err).__name__


async def settle_source(host: Host, journal: Journal, vm: VM, session: str, dest: str, kem: str,
                        status: MigrationStatus | None, decision: asyncio.Future[str] | None) -> str:
    """Journal says committed: drive the session to one outcome; "released" or "rolled-back"."""
    vm.busy = "migrating"
    delay = RETRY_FIRST
    record = journal.get(session) or Record(session, "", "", "", "")
    delete_disks = bool(record.extra.get("delete_source_disks"))
    pin = record.extra.get("peer_key") if isinstance(record.extra.get("peer_key"), str) else None
    while True:
        if decision is not None and decision.done():
            choice = decision.result()
            log.warning("%s: settled by the operator: %s", vm.name, choice)
            if choice == "resume-here":
                return await _resume_here(journal, vm, session, status, by="operator")
            return await _release_here(host, journal, vm, session, status, delete_disks, by="operator")
        state, why = await ask_session_state(host, dest, session, vm.name, kem, pin)
        if state == "running":
            return await _release_here(host, journal, vm, session, status, delete_disks)
        if state == "discarded":
            return await _resume_here(journal, vm, session, status)
        doubt = {
            None: f"VM paused on this host: destination {dest} unreachable after commit ({why}); "
                  "the guest may run there",
            "committing": f"VM paused on this host: destination {dest} is resuming it",
            "lost": f"VM paused on this host: destination {dest} lost its QEMU after commit",
            "unknown": f"VM paused on this host: destination {dest} has no record of the session",
        }.get(state, f"VM paused on this host: destination {dest} reports {state}")
        if status is not None:
            status.doubt = f"{doubt}; settle with `{SETTLE_FIX.format(name=vm.name)}` if it stays so"
        journal.set(session, "committed", sync=False, doubt=doubt)
        log.info("%s: %s; asking again in %.1fs", vm.name, doubt, delay)
        waiters = {decision} if decision is not None else set()
        if waiters:
            await asyncio.wait(waiters, timeout=delay)
        else:
            await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_CAP)


async def _resume_here(journal: Journal, vm: VM, session: str, status: MigrationStatus | None,
                       by: str = "destination") -> str:
    if vm.proc is not None:
        await ensure_running(vm.proc.qmp)
    vm.busy = None
    journal.set(session, "rolled-back", settled_by=by)
    if status is not None:
        status.doubt = None
    log.info("%s resumed here (%s)", vm.name, by)
    return "rolled-back"


async def _release_here(host: Host, journal: Journal, vm: VM, session: str, status: MigrationStatus | None,
                        delete_disks: bool, by: str = "destination") -> str:
    # QEMU first: it holds the disks, and a re-attached QEMU is recognised by its run directory,
    # which forgetting the VM removes.
    await stop_source_qemu(vm)
    release_source(host, journal, vm, session, delete_disks)
    journal.set(session, "released", settled_by=by)
    if status is not None:
        status.doubt = None
    log.info("%s released here: it runs on the destination (%s)", vm.name, by)
    return "released"


def release_source(host: Host, journal: Journal, vm: VM, session: str, delete_disks: bool) -> None:
    """The destination runs the guest: forget the VM here (and its disks with --delete-source-disks)."""
    if delete_disks:
        for disk in vm.spec.disks:
            path = disk.resolve(host.pools)
            try:
                path.unlink(missing_ok=True)
                log.info("deleted source disk %s of %s", path, vm.name)
            except OSError as err:
                log.warning("could not delete source disk %s: %s", path, err)
    vm.busy = None
    if host.registry.vms.get(vm.name) is vm:
        host.registry.forget(vm.name)


async def stop_source_qemu(vm: VM) -> None:
    if vm.proc is not None:
        with contextlib.suppress(Exception):
            await vm.proc.stop(graceful=False)


async def roll_back_source(journal: Journal, vm: VM | None, record: Record) -> None:
    """A restarted source in transferring/awaiting-commit: no commit left, the guest resumes here."""
    if vm is not None and vm.proc is not None and vm.running:
        qmp = vm.proc.qmp
        with contextlib.suppress(Exception):
            await qmp.execute("migrate_cancel")
        await remove_leftovers(qmp)  # the killed agent's mirrors and NBD clients
        await ensure_running(qmp)
        vm.busy = None
    journal.set(record.session, "rolled-back", error="the source agent stopped before commit", settled_by="restart")
    log.info("%s: migration %s rolled back after restart", record.vm, record.session)


async def recover_destination(host: Host, journal: Journal, record: Record) -> None:
    """A restarted destination: committing → resume; loading/loaded are discarded by the caller."""
    from .destination import resume
    from .lost import mark_lost

    vm = host.registry.vms.get(record.vm)
    if record.state != "committing":
        return
    if vm is None or not vm.running:
        log.error("%s: QEMU gone after commit (session %s): lost", record.vm, record.session)
        mark_lost(journal, record.session, vm)
        return
    vm.busy = "incoming"
    log.info("%s: resuming after restart (session %s committing)", vm.name, record.session)
    await resume(host, journal, record.session, vm, unexport=bool(record.extra.get("storage")))


def may_have_run(journal: Journal, vm: VM) -> bool:
    """Is `vm` an incoming VM whose session passed commit? (then it is never discarded)"""
    try:
        session = (vm.dir / INCOMING_MARK).read_text().strip()
    except OSError:
        return False
    record = journal.get(session) if session else None
    return record is not None and record.state in MAY_HAVE_RUN


def keep(task: asyncio.Task[Any]) -> None:
    _background.add(task)
    task.add_done_callback(_background.discard)
