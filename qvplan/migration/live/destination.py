"""The destination side: check, start QEMU -incoming, carry the streams in, commit or roll back.

The control messages are contract/wire.py's. Every session is journaled (journal.py) in the
destination's states, each written before it takes effect:
  loading    the request passed phase 1; QEMU -incoming is being fed       (guest never ran here)
  loaded     QEMU loaded everything, waits paused; "received" sent          (guest never ran here)
  committing QEMU loaded everything and the source's commit is here (it may come ahead, while
             QEMU still loads: then no "received"): `cont` is under way     (guest may run here)
  running    the guest resumed here; "running" sent                         (ended: ours)
  discarded  abort, EOF or a fence before commit: QEMU and files removed    (ended: never ran)
  lost       QEMU died after commit                                         (ended: operator settles)
  rebooted   at start: loading/loaded found after a host crash, which may have lost a
             `committing` line (flushed behind cont); the source's word decides (reboot.py)
The destination never resumes the guest without the commit, never accepts a commit once it
answered "discarded" to a fence, and never discards a guest after "committing". The state table
and the recovery rule are in docs/exactly-once.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu.qmp import StateError

from ... import gcpause
from ...contract import rules, wire
from ...contract.errors import MigrationError, failure, refusal_error, refused
from ...contract.events import Inbound
from ...contract.flags import MigrateFlags
from ...contract.machine import unsupported_machine
from ...contract.network import missing_network
from ...contract.reasons import Reason
from ...host import pools
from ...pqc import SecureChannel
from ...vmm import VMSpec
from ..faults import pause_at
from ..incoming import INCOMING_FILES, INCOMING_MARK, record_incoming_files
from ..journal import Journal
from ..qmp import configure, event_time
from ..storage import exports
from ..streams.carrier import MIGRATE_DATA, STORAGE_DATA, accept_stream
from . import ramcheck
from .lost import mark_lost

if TYPE_CHECKING:
    from ...host.context import Host
    from ...host.registry import VM

log = logging.getLogger(__name__)


CONT_TIMEOUT = 10.0  # seconds `cont` may take before the resume is followed in the background
_resuming: set[asyncio.Task[None]] = set()  # strong references to background resume followers


@dataclass
class Incoming:
    session: str
    vm: VM
    sockets: dict[str, str] = field(default_factory=dict)  # data operation → local QEMU socket
    images: list[Path] = field(default_factory=list)  # created here by a storage migration
    identities: dict[Path, tuple[int, int]] = field(default_factory=dict)  # image → (st_dev, st_ino) at creation
    storage: bool = False
    peer_fingerprint: str | None = None  # its control channel's: every data channel must present it
    ram_key: bytes | None = None  # the source asked for a digest of the loaded RAM under this key (ramcheck.py)
    gc_held: bool = False  # the garbage collector paused from "loaded" until the guest runs (gcpause.py)
    aborted: asyncio.Event = field(default_factory=asyncio.Event)  # a fence or the agent stopping

    def state(self, journal: Journal) -> str:
        record = journal.get(self.session)
        return record.state if record else "unknown"


def verdict(spec: VMSpec, flags: MigrateFlags, request: dict[str, Any], facts: dict[str, Any],
            reachable: Callable[[str], bool], boot_files: list[str] | None = None) -> rules.Refusal | None:
    """The rule book's verdict on an incoming VM: the source's version and CPU (as the request
    carries them) against this host's facts, under the plan's policies; its shared disks, the
    bridges its NICs join, the files of its kernel boot."""
    policies = rules.Policies.model_validate(request.get("policies") or {})
    source = {"version": request.get("version"), "cpu": request.get("cpu")}
    shared = [] if flags.storage_migrate else [str(d.get("path")) for d in request.get("disks", [])]
    return (rules.judge(spec.cpu.model_dump(), spec.memory_bytes, source, facts, policies)
            or rules.check_shared_disks(shared, reachable)
            or missing_network(spec.model_dump(mode="json"), facts.get("bridges"))
            or unsupported_machine(spec.model_dump(mode="json"), facts.get("qemu_machines"))
            or rules.check_boot_files(boot_files or [], reachable))


@contextlib.contextmanager
def confined() -> Iterator[None]:
    """A path of a peer's spec outside this host's pools and shared roots (host/pools.py), or in
    no pool of it: a phase-1 refusal with that code."""
    try:
        yield
    except pools.PathError as err:
        raise refused(Reason(err.code), err.cause, err.fix) from None


def reachable(host: Host, path: str) -> bool:
    """Does a path a peer named exist here? Only looked up inside the pools and shared roots."""
    try:
        return os.path.exists(pools.confine(path, host.registry.roots.all()))
    except pools.PathError:
        return False


def boot_files(host: Host, spec: VMSpec) -> list[str]:
    """The kernel boot's files as this host resolves them ([] without a kernel boot)."""
    if spec.guest.boot is None:
        return []
    with confined():
        return [str(p) for p in pools.boot_paths(spec.guest.boot, host.registry.roots)]


def preflight(host: Host, channel: SecureChannel,
              request: wire.MigrateRequest) -> tuple[VMSpec, MigrateFlags, exports.Placement | None]:
    """Every check of phase 1, before any VM state moves. Raises the spec's refusal.

    With --storage-migrate the pool replaces the shared-storage check, and the placement's
    definition points at the new images."""
    from ...host.facts import host_facts

    spec = VMSpec.model_validate(request.vm)
    flags = MigrateFlags.model_validate(request.flags)
    if channel.peer_fingerprint == host.identity.fingerprint:
        raise refused(Reason.SAME_HOST, "destination is the source host", "pick another --dest")
    if flags.insecure and host.config.migration.pqc_required:
        raise refused(Reason.PQC_REQUIRED, "plaintext migration refused (pqc_required = true on the destination)",
                      "drop --insecure, or set pqc_required = false on the destination")
    if spec.name in host.registry.vms:
        raise refused(Reason.NAME_CLASH, f"a VM named {spec.name!r} already exists on the destination",
                      "undefine it there or rename the VM")
    if not flags.storage_migrate:
        with confined():  # its disks stay where they are: they must be this host's to reach
            pools.check_spec(spec, host.registry.roots)
    problem = verdict(spec, flags, request.model_dump(), host_facts(host), partial(reachable, host),
                      boot_files(host, spec))
    if problem:
        raise refusal_error(problem)
    if flags.storage_migrate:
        placement = exports.place(spec, request.storage or [], host.pools, flags.dest_pool)
        return placement.spec, flags, placement
    return spec, flags, None


async def handle_migrate(host: Host, journal: Journal, sessions: dict[str, Incoming], channel: SecureChannel,
                         raw: dict[str, Any]) -> None:
    try:
        request = wire.parse(raw, wire.MigrateRequest)
        assert isinstance(request, wire.MigrateRequest)
    except wire.WireError as err:
        await channel.send_json(wire.SetupReply(ok=False, **failure(Reason.PROTOCOL_ERROR, str(err)).as_dict()).dump())
        return
    log.info("incoming migration of %s from %s", request.vm.get("name"), channel.peer_name)
    try:
        spec, flags, placement = preflight(host, channel, request)
        # the source's address and key: a restart after a host crash asks it about the session (reboot.py)
        journal.open_session(request.session, "destination", spec.name, channel.peer_name, "loading",
                             storage=placement is not None, source=request.source,
                             peer_key=channel.peer_fingerprint, kem=flags.pqc_kem)
    except (MigrationError, ValueError) as err:
        why = err if isinstance(err, MigrationError) else failure(Reason.PROTOCOL_ERROR, str(err))
        host.events.publish(str(request.vm.get("name")), Inbound.REFUSED, mode="live", code=why.code)
        await channel.send_json(wire.SetupReply(ok=False, **why.as_dict()).dump())
        return
    host.events.publish(spec.name, Inbound.STARTED, mode="live", source=channel.peer_name)
    vm = host.registry.define(spec)
    vm.busy = "incoming"
    (vm.dir / INCOMING_MARK).write_text(request.session)
    incoming = Incoming(request.session, vm, {MIGRATE_DATA: str(vm.run_dir / "incoming.sock")},
                        storage=placement is not None, peer_fingerprint=channel.peer_fingerprint,
                        ram_key=bytes.fromhex(request.ram_key) if request.ram_key else None)
    sessions[incoming.session] = incoming
    replied = False
    try:
        export_names: list[str] | None = None
        if placement is not None:
            exports.create_images(placement, lambda path: _record_image(incoming, path))
        await host.registry.start(spec.name, incoming="defer", paused=True)
        assert vm.proc is not None
        if placement is not None:
            nbd = vm.run_dir / "nbd.sock"
            await exports.export(vm.proc.qmp, exports.unix_address(nbd, vm.proc.qemu_path(nbd)), placement.exports)
            incoming.sockets[STORAGE_DATA] = str(nbd)
            export_names = placement.exports
        await configure(vm.proc.qmp, flags)
        uri = f"unix:{vm.proc.qemu_path(incoming.sockets[MIGRATE_DATA])}"  # by name in QEMU's run dir
        await vm.proc.qmp.execute("migrate-incoming", {"uri": uri})
        await channel.send_json(wire.SetupReply(ok=True, exports=export_names, commit_ahead=True).dump())
        replied = True
        await _follow(host, journal, channel, incoming)
    except Exception as err:
        log.warning("incoming migration of %s failed: %s", spec.name, err)
        why = err if isinstance(err, MigrationError) else failure(
            Reason.DESTINATION_FAILED, f"destination failed: {err}", "see the destination agent's log")
        host.events.publish(spec.name, Inbound.REFUSED, mode="live", code=why.code)
        with contextlib.suppress(Exception):
            answer = wire.Failed(**why.as_dict()) if replied else wire.SetupReply(ok=False, **why.as_dict())
            await channel.send_json(answer.dump())
    finally:
        if incoming.gc_held:
            gcpause.release()
            incoming.gc_held = False
        sessions.pop(incoming.session, None)
        if incoming.state(journal) in ("loading", "loaded", "discarded"):
            await discard_session(host, journal, incoming.session, vm, incoming.images)
            with contextlib.suppress(Exception):  # the source reports its outcome once this is done
                await channel.send_json(wire.Discarded().dump())


def _record_image(incoming: Incoming, path: Path) -> None:
    """Note an image we created, for discard() and for a restarted agent (registry.load), and
    which file it is (device and inode), to notice it removed or replaced before the commit."""
    incoming.images.append(path)
    record_incoming_files(incoming.vm.dir, path)
    info = os.stat(path)
    incoming.identities[path] = (info.st_dev, info.st_ino)


def check_images(incoming: Incoming) -> None:
    """Refuse to go on when an image we created is no longer the file at its path: QEMU would
    write the guest's disk into an unlinked (or someone else's) file."""
    for path, identity in incoming.identities.items():
        try:
            info = os.stat(path)
            now: tuple[int, int] | None = (info.st_dev, info.st_ino)
        except OSError:
            now = None
        if now != identity:
            how = "removed" if now is None else "replaced"
            raise failure(Reason.STORAGE_FAILED, f"destination image {path} was {how} during the copy",
                          "check the destination pool (mounted, not cleaned up by hand) and retry")


async def _follow(host: Host, journal: Journal, channel: SecureChannel, incoming: Incoming) -> None:
    """Wait for QEMU to load everything and for the source's verdict; resume on commit.

    The commit may come before QEMU has loaded it all: a source sends it as soon as its own QEMU
    sent everything (SetupReply.commit_ahead), so it travels beside the data's tail and is here
    when the load completes; "received" is then not sent, and the guest's pause holds no round
    trip to the source. A commit is acted on only once QEMU loaded everything."""
    vm = incoming.vm
    assert vm.proc is not None
    qmp = vm.proc.qmp
    loaded = asyncio.ensure_future(_wait_loaded(qmp))
    # where QEMU keeps the RAM is looked up while it loads: the digest is then all the pause pays
    ram = await ramcheck.locate(vm.proc, vm.spec.memory_bytes) if incoming.ram_key else None
    verdict = asyncio.ensure_future(channel.recv_json())
    aborted = asyncio.ensure_future(incoming.aborted.wait())
    try:
        done, _ = await asyncio.wait({loaded, verdict, aborted}, return_when=asyncio.FIRST_COMPLETED)
        if aborted in done or (verdict in done and not _is_commit(verdict)):  # abort, EOF or a fence
            raise failure(Reason.CANCELLED, f"source ended the migration: {_said(verdict)}")
        if loaded not in done:  # the commit came ahead: it waits for the load
            done, _ = await asyncio.wait({loaded, aborted}, return_when=asyncio.FIRST_COMPLETED)
            if loaded not in done:
                raise failure(Reason.CANCELLED, "migration fenced or the agent is stopping")
        loaded.result()
        marks = [("loaded", time.monotonic())]  # the switchover's steps, logged once the guest runs
        await pause_at(host.state_dir, "dest-loaded")
        if aborted.done():
            raise failure(Reason.CANCELLED, "migration fenced or the agent is stopping")
        gcpause.hold()  # the guest's pause is on: no full collection until it runs (released by handle_migrate)
        incoming.gc_held = True
        check_images(incoming)
        if verdict.done():
            done = {verdict}
        else:
            digest = await ramcheck.digest(ram, incoming.ram_key) if ram and incoming.ram_key else None
            await channel.send_json(wire.Received(ram_digest=digest).dump())
            marks.append(("received sent", time.monotonic()))
            journal.set(incoming.session, "loaded", sync=False)  # not needed durable: loading/loaded alike never ran
            await pause_at(host.state_dir, "dest-after-received")
            done, _ = await asyncio.wait({verdict, aborted}, return_when=asyncio.FIRST_COMPLETED)
            marks.append(("commit read", time.monotonic()))
    finally:
        loaded.cancel()
        aborted.cancel()
    if verdict not in done:
        verdict.cancel()
        raise failure(Reason.CANCELLED, "migration fenced or the agent is stopping")
    try:
        message = wire.parse(verdict.result())
    except (wire.WireError, Exception) as err:
        raise failure(Reason.CONNECTION_RESET, f"source did not commit: {err}") from None
    if not isinstance(message, wire.Commit) or incoming.state(journal) not in ("loading", "loaded"):
        raise failure(Reason.CONNECTION_RESET, f"source did not commit: {message}")
    check_images(incoming)  # the last moment it can still be refused (the source will be told "discarded")
    if not vm.running:
        raise failure(Reason.QEMU_FAILED, "destination QEMU exited before the commit",
                      "see the VM's qemu.log on the destination")
    # Written before cont (a killed agent finds it), flushed behind it: the device flush is off the
    # guest's pause. A host crash that loses the line is caught at start by the boot id (reboot.py).
    journal.set(incoming.session, "committing", sync="behind")
    marks.append(("journaled", time.monotonic()))
    await pause_at(host.state_dir, "dest-before-cont")
    resumed_at = await resume(host, journal, incoming.session, vm, unexport=incoming.storage, paused=True)
    if resumed_at is None:
        return  # `cont` is slow (QEMU frozen?): followed in the background, the session stays committing
    marks.append(("resumed", time.monotonic()))
    log.debug("%s: switchover here: %s", vm.name, ", ".join(
        f"{name} +{(at - marks[0][1]) * 1000:.1f} ms" for name, at in marks[1:]))
    host.events.publish(vm.name, Inbound.LANDED, source=channel.peer_name)
    await channel.send_json(wire.Running(resumed_at=resumed_at, host=host.config.host.name).dump())


def _is_commit(verdict: asyncio.Future[Any]) -> bool:
    with contextlib.suppress(Exception):
        return isinstance(wire.parse(verdict.result()), wire.Commit)
    return False


def _said(verdict: asyncio.Future[Any]) -> Any:
    if verdict.done() and not verdict.cancelled() and verdict.exception() is None:
        return verdict.result()
    return "no message"


async def resume(host: Host, journal: Journal, session: str, vm: VM, unexport: bool = False,
                 paused: bool = False) -> float | None:
    """The journal says committing: resume the guest here (also after a restart). Returns QEMU's
    resume time, or None when `cont` takes longer than CONT_TIMEOUT (then a background task
    keeps at it and journals `running` once QEMU runs)."""
    assert vm.proc is not None
    qmp = vm.proc.qmp
    try:
        with qmp.listener(("RESUME",)) as listener:
            async with asyncio.timeout(CONT_TIMEOUT):
                if unexport:
                    await exports.unexport(qmp)
                if paused or (await qmp.execute("query-status"))["status"] != "running":
                    await qmp.execute("cont")
                    resume_event = await listener.get()
                    resumed_at: float = event_time(resume_event)
                else:
                    resumed_at = time.time()
    except StateError as err:
        if paused:
            # QMP had closed (QEMU died, e.g. killed just before the commit): qemu.qmp refuses a
            # command before sending it, so `cont` never left and the guest, started paused and
            # resumed by no one before this first `cont`, never ran here.
            journal.set(session, "discarded", error="QEMU died before cont")
            raise failure(Reason.QEMU_FAILED, "destination QEMU exited before it resumed the guest",
                          "see the VM's qemu.log on the destination") from None
        return await _lost_or_raise(journal, session, vm, err)  # after a restart: an earlier `cont` may have left
    except TimeoutError:
        log.warning("%s: cont took over %.0fs; following the resume in the background", vm.name, CONT_TIMEOUT)
        task = asyncio.ensure_future(_resume_later(host, journal, session, vm))
        _resuming.add(task)
        task.add_done_callback(_resuming.discard)
        return None
    except Exception as err:
        return await _lost_or_raise(journal, session, vm, err)
    await vm.proc.announce()  # first: the network finds the guest sooner, the journal can wait
    await pause_at(host.state_dir, "dest-after-cont")
    _mark_running(journal, session, vm)
    return resumed_at


async def _lost_or_raise(journal: Journal, session: str, vm: VM, err: Exception, within: float = 2.0) -> None:
    """`cont` may have left and failed: a QEMU that is gone (a killed one takes a moment) lost the
    session; a live one raises `err`."""
    deadline = time.monotonic() + within
    while vm.running:
        if time.monotonic() > deadline:
            raise err
        await asyncio.sleep(0.05)
    log.error("%s: QEMU died after commit (%s): the session is lost", vm.name, err)
    mark_lost(journal, session, vm)


async def _resume_later(host: Host, journal: Journal, session: str, vm: VM) -> None:
    delay = 0.5
    while True:
        if not vm.running:
            mark_lost(journal, session, vm)
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                if (await vm.proc.qmp.execute("query-status"))["status"] == "running":  # type: ignore[union-attr]
                    _mark_running(journal, session, vm)
                    await vm.proc.announce()  # type: ignore[union-attr]
                    return
                await vm.proc.qmp.execute("cont")  # type: ignore[union-attr]
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def _mark_running(journal: Journal, session: str, vm: VM) -> None:
    journal.set(session, "running")
    vm.busy = None
    (vm.dir / INCOMING_MARK).unlink(missing_ok=True)  # the undo list goes: the VM is ours
    (vm.dir / INCOMING_FILES).unlink(missing_ok=True)


async def _wait_loaded(qmp: Any) -> None:
    """Until QEMU reports the incoming migration completed: MIGRATION events, no polling."""
    with qmp.listener(("MIGRATION",)) as listener:
        status = (await qmp.execute("query-migrate")).get("status")
        while status != "completed":
            if status in ("failed", "cancelled"):
                raise failure(Reason.QEMU_FAILED, f"destination QEMU could not load the VM state ({status})",
                              "see the VM's qemu.log on the destination")
            event = await listener.get()
            status = event.get("data", {}).get("status")


async def discard_session(host: Host, journal: Journal, session: str, vm: VM,
                          images: list[Path] | None = None) -> None:
    """Never resumed here: journal `discarded` first (a commit arriving later is refused), then remove."""
    record = journal.get(session)
    if record is not None and record.state in ("loading", "loaded"):
        journal.set(session, "discarded")
    await discard(host, vm, images)


async def discard(host: Host, vm: VM, images: list[Path] | None = None) -> None:
    """Remove an incoming VM that did not become ours: its QEMU, the images it created, its directory."""
    if vm.proc is not None:
        with contextlib.suppress(Exception):
            await vm.proc.stop(graceful=False)
    exports.remove_images(images or [])
    vm.busy = None
    if vm.name in host.registry.vms and host.registry.vms[vm.name] is vm:
        host.registry.forget(vm.name)


async def handle_data(journal: Journal, sessions: dict[str, Incoming], channel: SecureChannel,
                      request: dict[str, Any]) -> None:
    """A data stream of a session (`migrate-data` or `storage-data`), relayed into QEMU."""
    incoming = sessions.get(str(request.get("session", "")))
    if incoming is not None and channel.peer_fingerprint != incoming.peer_fingerprint:
        await accept_stream({}, channel, request["op"], pin=incoming.peer_fingerprint)  # refuses it: pinned
        return
    if incoming is None or incoming.state(journal) != "loading":
        await channel.send_json({"ok": False, "error": "no such migration session"})
        return
    started = time.monotonic()
    await accept_stream(incoming.sockets, channel, request["op"], pin=incoming.peer_fingerprint)
    log.debug("%s stream for %s done after %.1fs", request["op"], incoming.vm.name, time.monotonic() - started)
