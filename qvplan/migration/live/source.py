"""The source side of one live migration: the five phases, convergence control and rollback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from ... import gcpause
from ...contract import wire
from ...contract.errors import MigrationError, failure
from ...contract.flags import MigrateFlags
from ...contract.reasons import Reason
from ...contract.rules import Policies
from ...pqc import PQCError, SecureChannel
from ..digest import digest_key
from ..faults import pause_at
from ..flush import DiskFlusher
from ..job import MigrationJob
from ..peer import channel_failure, open_peer
from ..qmp import configure, ensure_running, event_time, run_state
from ..status import MigrationStatus
from ..storage.mirror import DiskMirrors, StorageProgress, describe_disks
from ..streams.carrier import MIGRATE_DATA, STORAGE_DATA, StreamCarrier
from . import ramcheck, recovery
from .downtime import CEILING, DowntimeBudget, FitWait

if TYPE_CHECKING:
    from ...host.context import Host
    from ...host.registry import VM

log = logging.getLogger(__name__)
POLL = 0.25
STALL_LIMIT = 15.0  # seconds without a byte moving = the network is gone
COMMIT_WAIT = 10.0  # seconds for "running" after commit, before asking the destination on a fresh channel
DISCARD_WAIT = 3.0  # seconds a rollback waits for the destination to confirm it removed its side
ENDINGS = {"completed", "failed", "cancelled"}


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f}"


def _ignore(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class SourceMigration(MigrationJob):
    """A live migration: the VM keeps running here unless it completes."""

    def __init__(self, host: Host, vm: VM, dest: str, flags: MigrateFlags,
                 policies: Policies | None = None) -> None:
        encryption = "plaintext (--insecure)" if flags.insecure else f"{flags.pqc_kem} / AES-256-GCM"
        status = MigrationStatus(vm.name, dest, f"{encryption} ({host.provider_name})", flags.max_iterations)
        super().__init__(host, vm, dest, flags, policies, status)
        self.control: SecureChannel | None = None
        self.carrier = StreamCarrier(self._open_data, self.session, vm.name)
        # the guest's unwritten disk data, written back before and during pre-copy (flush.py)
        self.flusher = DiskFlusher((disk.resolve(host.pools) for disk in vm.spec.disks), drop=True)
        self.budget = DowntimeBudget(flags.max_downtime, flags.max_iterations, self.carrier.in_flight,
                                     self.carrier.carried, flush=self.flusher.expected,
                                     forced_stop_fits=flags.auto_converge)  # see _stop_fits
        self.mirrors: DiskMirrors | None = None  # with --storage-migrate, once phase 1 passed
        self._switched = False  # pre-switchover handled (mirrors completed, migration continued)
        self._watch_stop: asyncio.Future[None] | None = None
        self._watch_passes: asyncio.Future[None] | None = None
        self._passes_published = 0
        self._fit_wait: FitWait | None = None  # past --max-iterations, once a stop did not fit
        self._at_ceiling = False  # QEMU's next throttle raise was sent to the ceiling (_throttle_to_ceiling)
        self._from_dest: asyncio.Future[Any] | None = None
        self._stop_at: float | None = None
        self._gc_held = False  # the garbage collector paused since the guest stopped (gcpause.py)
        self._ended = False  # _run is over: a late STOP event holds nothing
        self._ram_key: bytes | None = None  # our QEMU may lose guest writes: compare RAM before the commit
        self._ram_digest: asyncio.Future[str] | None = None  # ours, taken once our QEMU completed
        self._qemu_done: asyncio.Future[None] | None = None  # our QEMU's MIGRATION event "completed"
        self._qemu_completed = 0.0  # monotonic time our QEMU reported the migration completed
        self._commit_ahead = False  # commit once our QEMU completed, not once "received" (_commit_due)

    # -- phases --------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            self._publish("phase", phase=1)
            await self._setup()
            self.setup_done.set()
            if self.mirrors is not None:
                await self._copy_disks()
            await self._start_memory()
            info = await self._transfer()
            await self._activate(info)
        except MigrationError as err:
            await self._rollback(err)
        except (PQCError, OSError, asyncio.IncompleteReadError, ConnectionError) as err:
            await self._rollback(channel_failure(err, self.dest))
        except Exception as err:
            log.exception("migration of %s failed", self.vm.name)
            await self._rollback(failure(Reason.ERROR, f"migration failed: {err}", "see the source agent's log"))
        finally:
            self.setup_done.set()
            try:
                await self._teardown()  # stops the STOP watcher: nothing holds the collector after this
            finally:
                self._ended = True
                if self._gc_held:
                    gcpause.release()
                    self._gc_held = False

    async def _setup(self) -> None:
        """Phase 1: handshake, the destination's checks, QEMU listening there, our sockets here."""
        log.info("migrating %s to %s: phase 1 (setup)", self.vm.name, self.dest)
        self.control = await open_peer(self.host, self.dest, "migrate", self.flags.pqc_kem,
                                       dest_host=self.flags.dest_host,
                                       pin=self.flags.dest_fingerprint)
        self.carrier.pin = self.control.peer_fingerprint  # every data channel must be this host too
        log.debug("control channel to %s up (%s)", self.dest, self.control.kem)
        if self.control.peer_fingerprint == self.host.identity.fingerprint:
            raise failure(Reason.SAME_HOST, "Migration rejected: destination is the source host", "pick another --dest")
        from ...host.facts import host_facts

        qmp = self.vm.proc.qmp
        facts = host_facts(self.host)
        storage = await describe_disks(qmp, self.vm.spec, self.host.pools) if self.flags.storage_migrate else None
        if await ramcheck.affected(qmp):
            self._ram_key = digest_key()
            self.budget.ram_checked = self.vm.spec.memory_bytes  # the pause will compare it all
        request = wire.MigrateRequest(
            session=self.session, version=self.host.version, vm=self.vm.spec.model_dump(mode="json"),
            flags=self.flags.model_dump(mode="json"), policies=self.policies.model_dump(),
            cpu=facts["cpu"], disks=self.host.registry.disk_facts(self.vm.spec), storage=storage,
            ram_key=self._ram_key.hex() if self._ram_key else None, source=self.host.config.advertised_migration,
        )
        self.journal.open_session(self.session, "source", self.vm.name, self.dest, "transferring",
                                  kem=self.flags.pqc_kem, peer_key=self.control.peer_fingerprint,
                                  delete_source_disks=self.flags.delete_source_disks
                                  and self.flags.storage_migrate)
        await self.control.send_json(request.dump())
        raw = await asyncio.wait_for(self.control.recv_json(), 60)
        log.debug("destination answered setup: %s", raw)
        if not raw:
            raise failure(Reason.CONNECTION_RESET, "destination closed the connection during setup")
        reply = wire.parse(raw, wire.SetupReply, wire.Failed)
        if isinstance(reply, wire.Failed):
            raise MigrationError.from_dict(reply.dump(), Reason.DESTINATION_FAILED)
        assert isinstance(reply, wire.SetupReply)
        if not reply.ok:
            raise MigrationError.from_dict(reply.dump(), Reason.DESTINATION_FAILED)
        self._from_dest = asyncio.ensure_future(self.control.recv_json())
        self._commit_ahead = reply.commit_ahead and not self._ram_key  # the digest needs "received"
        await self.carrier.serve(self.vm.run_dir / "migrate.sock", MIGRATE_DATA)
        self.vm.proc.share(self.vm.run_dir / "migrate.sock")  # QEMU (its own user) connects to it
        await configure(qmp, self.flags)
        self._watch_stop = asyncio.ensure_future(self._record_stop())
        self._watch_passes = asyncio.ensure_future(self._follow_passes())
        self._qemu_done = asyncio.ensure_future(self._until_qemu_completed())
        if self._ram_key:
            ram = await ramcheck.locate(self.vm.proc, self.vm.spec.memory_bytes)
            self._ram_digest = asyncio.ensure_future(self._digest_once_completed(ram, self._ram_key))
        if storage:
            self.mirrors = DiskMirrors(qmp, [d["index"] for d in storage], reply.exports or [], self._nbd_address)

    async def _nbd_address(self, index: int) -> dict[str, Any]:
        """The NBD client of disk `index` gets its own carried socket, passed to QEMU by fd (a
        socket pair rather than a listening socket: see StreamCarrier.pair)."""
        qmp = self.vm.proc.qmp
        name = f"nbd-disk{index}"
        end = await self.carrier.pair(STORAGE_DATA)
        try:
            qmp.send_fd_scm(end.fileno())
            await qmp.execute("getfd", {"fdname": name})
        finally:
            end.close()  # QEMU holds its own copy now
        return {"type": "fd", "str": name}

    async def _open_data(self, purpose: str) -> SecureChannel:
        return await open_peer(self.host, self.dest, purpose, self.flags.pqc_kem)

    async def _copy_disks(self) -> None:
        """The block phase (--storage-migrate): mirror every disk until all are in sync.

        Memory waits: the bulk copy gets all of --bandwidth, and starting pre-copy only once the
        disks are in sync keeps the memory rounds short."""
        assert self.mirrors is not None
        self.status.phase = 2
        self.status.storage_phase = True
        self._publish("phase", phase=2)
        log.info("migrating %s: copying %d disk(s)", self.vm.name, len(self.mirrors.indices))
        await self.mirrors.start(self._mirror_speed(alone=True))
        last_copied, last_move_time = -1, time.monotonic()
        while True:
            progress = await self._storage_progress()
            self._publish("progress")
            if progress.ready:
                break
            self._check_destination()
            self._check_limits()
            if progress.copied > last_copied:
                last_copied, last_move_time = progress.copied, time.monotonic()
            elif time.monotonic() - last_move_time > STALL_LIMIT:
                raise self._reset(f"no storage progress for {STALL_LIMIT:.0f}s")
            assert self._from_dest is not None
            await asyncio.wait({self._from_dest}, timeout=POLL)
        self.status.storage_phase = False
        await self.mirrors.set_speed(self._mirror_speed(alone=False))
        log.info("migrating %s: disks in sync (%.0f MB/s), memory next", self.vm.name,
                 self.status.storage_rate / 1e6)

    def _mirror_speed(self, alone: bool) -> int:
        """Per-job mirror speed: all of --bandwidth when the disks move alone, their share when
        memory moves too (0 = unlimited)."""
        assert self.mirrors is not None
        total = self.flags.bandwidth if alone else self.flags.storage_bandwidth
        return max(1, total // len(self.mirrors.indices)) if total else 0

    async def _storage_progress(self) -> StorageProgress:
        assert self.mirrors is not None
        progress = await self.mirrors.progress()
        self.status.storage_copied = progress.copied
        self.status.storage_total = progress.total
        self.status.storage_dirty = progress.dirty
        if self.status.storage_phase:
            self.status.storage_rate = self.mirrors.rate(progress.copied)
        return progress

    async def _start_memory(self) -> None:
        """Phase 2 begins: QEMU's pre-copy into the carrier's migration socket, once a channel
        waits there for each stream QEMU opens (the main one, and one per multifd channel)."""
        self.carrier.prepare(MIGRATE_DATA, 1 + (self.flags.threads if self.flags.multifd else 0))
        if self.flusher.has_images:
            took = await asyncio.to_thread(self.flusher.first)  # the guest's unwritten disk data: not in the pause
            (log.info if took >= 1.0 else log.debug)("%s: disks written back ahead of pre-copy in %.0f ms",
                                                      self.vm.name, took * 1000)
            self.flusher.start()
        await self.carrier.ready(MIGRATE_DATA)
        await self.budget.start(self.vm.proc.qmp)
        await pause_at(self.host.state_dir, "source-before-migrate")
        uri = f"unix:{self.vm.proc.qemu_path(self.vm.run_dir / 'migrate.sock')}"  # by name in its run dir
        await self.vm.proc.qmp.execute("migrate", {"uri": uri})
        self._publish("phase", phase=2)

    async def _switchover(self) -> None:
        """`pre-switchover` (pause-before-switchover, guest paused): complete the mirrors into
        consistent copies, then let QEMU send the final state."""
        self._switched = True
        qmp = self.vm.proc.qmp
        if self.mirrors is not None:
            await self.mirrors.set_speed(self._mirror_speed(alone=True))  # memory waits meanwhile
            await self.mirrors.complete(timeout=max(30.0, self.flags.timeout - self.status.elapsed))
            self.status.storage_copied = self.status.storage_total
            self.status.storage_dirty = 0
        await qmp.execute("migrate-continue", {"state": "pre-switchover"})

    async def _record_stop(self) -> None:
        qmp = self.vm.proc.qmp
        with qmp.listener(("STOP",)) as listener:
            async for event in listener:
                self._stop_at = event_time(event)
                self.status.waiting_to_fit = False  # stopped, by us or by QEMU: nothing waits any more
                self.flusher.stop()  # QEMU flushes what is left itself, as the guest stops
                self.status.history.stopped(self._stop_at)  # passes from here dirty nothing (passes.py)
                if not self._gc_held and not self._ended:  # the guest paused: no full collection until the end
                    gcpause.hold()
                    self._gc_held = True

    async def _follow_passes(self) -> None:
        """A `pass` event per QEMU dirty-sync pass, with fresh figures (short passes fall between polls)."""
        qmp = self.vm.proc.qmp
        with qmp.listener(("MIGRATION_PASS",)) as listener:
            async for event in listener:
                number = int(event.get("data", {}).get("pass", 0))
                self.status.history.synced(number, event_time(event))  # the pass's true start (passes.py)
                with contextlib.suppress(Exception):
                    info = await qmp.execute("query-migrate")
                    self._figures(info)
                    await self.budget.update(qmp, info)  # the ramp's next step from this pass on
                if self.status.forced_stop_and_copy:
                    continue  # the guest is paused: what QEMU still counts is stop-and-copy
                self.status.iteration = max(self.status.iteration, number)
                self._publish_passes(number)

    def _figures(self, info: dict[str, Any]) -> None:
        """QEMU's figures into the status, and a `pass` event for every pass they count that had
        none yet: a status read at any moment (an events stream's first snapshot) never counts a
        pass whose event is still to come."""
        self.status.update_from_qemu(info)
        self._publish_passes(self.status.iteration)

    def _publish_passes(self, upto: int) -> None:
        """Exactly one `pass` event per pass up to `upto`, in order, whoever sees it first."""
        for number in range(self._passes_published + 1, upto + 1):
            self._publish("pass", iteration=number)
        self._passes_published = max(self._passes_published, upto)

    async def _transfer(self) -> dict[str, Any]:
        """Phases 2–4: follow QEMU's pre-copy; enforce iterations, timeout, stalls and cancel.

        Ends once the commit may leave (_commit_due): our QEMU sent everything, or the
        destination reports it loaded everything, whichever we learn first.
        """
        assert self.control is not None and self._from_dest is not None and self._qemu_done is not None
        qmp = self.vm.proc.qmp
        last_moved, last_move_time = 0, time.monotonic()
        info: dict[str, Any] = {}
        wakers = {self._from_dest, self._qemu_done}
        while True:
            if self._commit_due():
                return info  # commit at once, figures after
            query = asyncio.ensure_future(qmp.execute("query-migrate"))
            await asyncio.wait({query, *wakers}, return_when=asyncio.FIRST_COMPLETED)
            if self._commit_due():
                query.add_done_callback(_ignore)  # its answer no longer matters: commit comes first
                return info
            info = await query
            self._figures(info)
            await self.budget.update(qmp, info)  # QEMU's downtime-limit from what we measure (downtime.py)
            self.status.disk_writeback = self.flusher.expected()
            state = info.get("status")
            if state in ENDINGS and state != "completed":
                qemu_says = f"QEMU reports migration {state}: {info.get('error-desc', 'stream broken')}"
                self.carrier.check()
                if self.carrier.broken:  # QEMU failed because our relay lost the destination
                    raise self._reset(f"{self.carrier.broken}; {qemu_says}")
                raise failure(Reason.QEMU_FAILED, qemu_says, "see the VM's qemu.log on both hosts")
            if self.mirrors is not None and not self._switched:
                await self._storage_progress()  # raises if a mirror broke meanwhile
            if state == "pre-switchover" and not self._switched:
                await self._switchover()
                last_move_time = time.monotonic()  # the mirrors' drain is not a stall
                continue
            self._publish("progress")
            self._check_limits()
            if (self.flags.auto_converge and state == "active" and not self._at_ceiling
                    and (self.status.iteration >= max(1, self.flags.max_iterations // 3)
                         or self.status.history.outpaced())):
                await self._throttle_to_ceiling(qmp)
            if (self.status.iteration >= self.flags.max_iterations and not self.status.forced_stop_and_copy
                    and state == "active" and await self._stop_fits(qmp, info) and await run_state(qmp) == "running"):
                # Force stop-and-copy: pause the guest so nothing more is dirtied; QEMU then sends
                # what is left and the destination resumes it. Not once QEMU has stopped the guest
                # itself (finish-migrate): its stop-and-copy passes count too, but it converged.
                self.status.forced_stop_and_copy = True
                self.status.phase = 4
                await qmp.execute("stop")
                self._publish("phase", phase=4, forced=True)
            if self.status.transferred > last_moved or state == "completed":
                last_moved, last_move_time = self.status.transferred, time.monotonic()
            elif time.monotonic() - last_move_time > STALL_LIMIT:
                raise self._reset(f"no progress for {STALL_LIMIT:.0f}s")
            await asyncio.wait(wakers, timeout=POLL, return_when=asyncio.FIRST_COMPLETED)

    async def _stop_fits(self, qmp: Any, info: dict[str, Any]) -> bool:
        """Past --max-iterations: stop now? With auto-converge, only once the pause would stay
        within --max-downtime (downtime.py) or the wait for that is over (FitWait); meanwhile the
        throttle goes to its ceiling and the status says why the passes go on. Without it, at
        once (the spec's forced stop-and-copy)."""
        if not self.flags.auto_converge:
            return True
        # what a stop now sends: the bitmap's remainder and what the guest dirtied since its sync
        remaining = int((info.get("ram") or {}).get("remaining", 0))
        remaining += self.status.history.dirtied_since_sync(time.time())
        if self.budget.fits(remaining):
            return True
        if self._fit_wait is None:
            self._fit_wait = FitWait(time.monotonic())
            self.status.waiting_to_fit = True
            if not self._at_ceiling:
                await self._throttle_to_ceiling(qmp)
            log.info("%s: past --max-iterations with %d bytes dirty (a stop now would pause ~%s ms): raising "
                     "the throttle to its ceiling until the pause fits --max-downtime", self.vm.spec.name,
                     remaining, _ms(self.budget.expected_pause(remaining)))
            self._publish("progress")
        throttle = int(info.get("cpu-throttle-percentage", 0))
        if not self._fit_wait.over(self.status.iteration, throttle, time.monotonic()):
            return False
        log.warning("%s: %d passes and a stop would still pause ~%s ms: forcing stop-and-copy over "
                    "--max-downtime", self.vm.spec.name, self.status.iteration,
                    _ms(self.budget.expected_pause(remaining)))
        return True

    async def _throttle_to_ceiling(self, qmp: Any) -> None:
        """Send auto-converge's next raise straight to its ceiling (once). flags.py sizes the steps
        to reach it by pass max_iterations / 3, but QEMU raises at most every ~2 s whatever the
        passes last: with passes of 100 ms a write-heavy 256 MiB guest was at 47 % by pass 30
        (4 s) and at the ceiling only at pass 42. So from pass max_iterations / 3 on the next
        raise goes to the ceiling — sooner once the guest outpaces pre-copy (passes.py: its dirty
        set stopped shrinking, so QEMU's gentler steps would only make the migration, and the
        throttling, last longer; a 1 GiB guest's steps took 12 s), or once a stop waits to fit."""
        self._at_ceiling = True
        try:
            await qmp.execute("migrate-set-parameters", CEILING)
        except Exception as err:  # a throttle not raised is no reason to fail: the wait is bounded anyway
            log.debug("%s: throttle not sent to its ceiling: %s", self.vm.spec.name, err)

    def _commit_due(self) -> bool:
        """May the commit leave now? Once the destination loaded everything ("received"); with a
        destination that takes it ahead (SetupReply.commit_ahead), already once our QEMU sent
        everything: the commit then travels beside the data's tail, and the destination resumes
        the guest as soon as it has loaded it, with no round trip to us in the guest's pause
        (live/destination.py). Raises when the destination gave up meanwhile."""
        assert self._from_dest is not None and self._qemu_done is not None
        if self._from_dest.done():
            if self._received():
                return True
            self._check_destination()
        return self._commit_ahead and self._qemu_done.done() and not self._qemu_done.cancelled()

    def _received(self) -> bool:
        assert self._from_dest is not None
        if self._from_dest.cancelled() or self._from_dest.exception() is not None:
            return False
        with contextlib.suppress(wire.WireError):
            return isinstance(wire.parse(self._from_dest.result()), wire.Received)
        return False

    def _check_destination(self) -> None:
        """Before "received", any message (or EOF) from the destination means it gave up."""
        if self._from_dest is not None and self._from_dest.done():
            message = None if self._from_dest.exception() else self._from_dest.result()
            if not message:
                raise self._reset("control channel to the destination closed")
            try:
                said = wire.parse(message, wire.Failed, wire.Discarded)
            except wire.WireError as err:
                raise failure(Reason.PROTOCOL_ERROR, f"destination sent {err}") from None
            if isinstance(said, wire.Failed):
                raise MigrationError.from_dict(said.dump(), Reason.DESTINATION_FAILED)
            raise failure(Reason.DESTINATION_FAILED, "destination discarded the migration",
                          "see the destination agent's log")

    def _reset(self, detail: str) -> MigrationError:
        return channel_failure(ConnectionResetError(detail), self.dest)

    def _check_limits(self) -> None:
        self.carrier.check()  # a data channel answered by another host than the control channel's
        if self._cancel_reason:
            raise failure(Reason.CANCELLED, f"Migration {self._cancel_reason}")
        if self.status.elapsed > self.flags.timeout:
            raise failure(Reason.TIMEOUT, f"Timeout exceeded ({self.flags.timeout:.0f}s)",
                          "enable auto-converge, increase bandwidth, or reduce VM write load")

    async def _activate(self, info: dict[str, Any]) -> None:
        """Phase 5: journal `committed`, send commit; the source VM is released only once the
        destination confirms it runs the guest (or says it discarded it: then the guest resumes here)."""
        assert self.control is not None
        marks = [("commit due", time.time())]  # the switchover's steps after STOP, logged at the end
        if self._ram_key:
            await self._compare_ram()
        self.journal.set(self.session, "awaiting-commit", sync=False)  # like transferring for recovery
        await pause_at(self.host.state_dir, "source-before-commit")
        self.status.phase = 5
        # The decision, written before the commit leaves. Flushed to the device meanwhile, off the
        # guest's pause: only a host crash loses a written line, and it kills this QEMU too.
        self.journal.set(self.session, "committed", sync="behind")
        running: wire.Message | None = None
        try:
            await self.control.send_json(wire.Commit().dump())
            marks.append(("commit sent", time.time()))
            await pause_at(self.host.state_dir, "source-after-commit")
            self._publish("phase", phase=5)
            running = await self._confirmation()
        except (TimeoutError, PQCError, OSError, asyncio.IncompleteReadError, wire.WireError) as err:
            log.warning("%s: no confirmation after commit (%s): asking %s", self.vm.name, err or "timeout", self.dest)
        if not isinstance(running, wire.Running):
            outcome = await recovery.settle_source(self.host, self.journal, self.vm, self.session, self.dest,
                                                   self.flags.pqc_kem, self.status, self.decision)
            if outcome == "rolled-back" and isinstance(running, wire.Failed):  # refused the commit
                raise MigrationError.from_dict(running.dump(), Reason.DESTINATION_FAILED)
            if outcome == "rolled-back":
                raise self._reset("destination discarded the VM after commit was lost; it resumed here")
            self._completed()
            return
        assert isinstance(running, wire.Running)
        if running.resumed_at and self._stop_at:
            self.status.pause = max(0.0, running.resumed_at - self._stop_at)
            self.status.stopped_at, self.status.resumed_at = self._stop_at, running.resumed_at
            marks += [("guest resumed there", running.resumed_at), ("running read", time.time())]
            log.debug("%s: switchover from STOP: %s", self.vm.name, ", ".join(
                f"{name} +{(at - self._stop_at) * 1000:.1f} ms" for name, at in marks))
        with contextlib.suppress(Exception):
            final = await self.vm.proc.qmp.execute("query-migrate")
            log.debug("%s: QEMU's figures at the end: %s", self.vm.name, final)
            self._figures(final if final.get("status") == "completed" else info)
        self._publish_passes(self.status.iteration)
        # Release the source VM before the outcome is visible: whoever sees COMPLETED must find
        # the VM on the destination only.
        await recovery.stop_source_qemu(self.vm)  # first: it holds the disks and lives in the run dir
        recovery.release_source(self.host, self.journal, self.vm, self.session,
                                self.flags.storage_migrate and self.flags.delete_source_disks)
        self.journal.set(self.session, "released")
        self._completed()

    async def _confirmation(self) -> wire.Message:
        """The destination's answer to the commit: Running (or Failed). A "received" it sent
        before our commit (ahead) reached it is passed over."""
        assert self._from_dest is not None and self.control is not None
        async with asyncio.timeout(COMMIT_WAIT):
            message = wire.parse(await self._from_dest)
            while isinstance(message, wire.Received):
                message = wire.parse(await self.control.recv_json())
        return message

    async def _until_qemu_completed(self) -> None:
        """Until our QEMU's MIGRATION event says completed: it sent everything, the guest is
        paused for good. Started before `migrate`: only this migration's event counts
        (query-migrate may still say "completed" of a rolled-back one)."""
        assert self.vm.proc is not None
        with self.vm.proc.qmp.listener(("MIGRATION",)) as listener:
            while (await listener.get()).get("data", {}).get("status") != "completed":
                pass
        self._qemu_completed = time.monotonic()

    async def _digest_once_completed(self, ram: ramcheck.GuestRam, key: bytes) -> str:
        """Our RAM's digest, taken as soon as QEMU completed, while the destination takes its own."""
        assert self._qemu_done is not None
        await asyncio.shield(self._qemu_done)
        return await ramcheck.digest(ram, key)

    async def _compare_ram(self) -> None:
        """Both copies paused: commit only a copy whose RAM is the source's (live/ramcheck.py)."""
        assert self._from_dest is not None and self._ram_digest is not None
        said = wire.parse(self._from_dest.result(), wire.Received)
        assert isinstance(said, wire.Received)
        # our digest is under way since our QEMU completed; allow for reading the RAM at a slow 32 MiB/s
        mine = await asyncio.wait_for(self._ram_digest, COMMIT_WAIT + self.vm.spec.memory_bytes / (32 << 20))
        self.status.ram_check = time.monotonic() - self._qemu_completed
        if said.ram_digest != mine:
            log.error("%s: RAM loaded on %s differs from the source's: rolling back", self.vm.name, self.dest)
            raise failure(Reason.RAM_MISMATCH,
                          f"{self.vm.name}'s RAM on the destination differs from the source's (QEMU under TCG "
                          "before 9.0 loses guest writes during pre-copy); not committed, it runs here",
                          "retry the migration; use KVM or QEMU 9.0 or later")

    def _completed(self) -> None:
        # The RAM comparison (TCG before QEMU 9.0 only) is learned on its own, per byte of RAM:
        # it grows with the guest, the commit's cost does not.
        pause = self.status.pause
        if pause is not None and self.status.ram_check:
            pause = max(pause - self.status.ram_check, 0.0)
        self.budget.learn(pause, self.status.downtime, self.status.forced_stop_and_copy, self.status.ram_check)
        self.status.state = "COMPLETED"
        self.status.percent = 100.0
        self.status.finished = time.time()
        self._publish("completed")

    def _delete_source_disks(self) -> None:
        """--delete-source-disks: the destination confirmed it runs the guest from its copies."""
        for disk in self.vm.spec.disks:
            path = disk.resolve(self.host.pools)
            try:
                path.unlink(missing_ok=True)
                log.info("deleted source disk %s of %s", path, self.vm.name)
            except OSError as err:
                log.warning("could not delete source disk %s: %s", path, err)

    async def _rollback(self, err: MigrationError) -> None:
        """Any failure before the commit: the guest keeps running here, nothing stays there.

        After `committed` the guest may run there: never resumed here without the destination's word."""
        record = self.journal.get(self.session)
        if record is not None and record.state == "committed":
            log.warning("%s: %s after commit: settling with %s", self.vm.name, err.cause, self.dest)
            outcome = await recovery.settle_source(self.host, self.journal, self.vm, self.session, self.dest,
                                                   self.flags.pqc_kem, self.status, self.decision)
            if outcome == "released":
                self._completed()
                return
        qmp = self.vm.proc.qmp if self.vm.proc else None
        if qmp is not None:
            with contextlib.suppress(Exception):
                await qmp.execute("migrate_cancel")
            if err.code != Reason.IN_DOUBT:
                if not await _ended(qmp, 5.0):
                    # A QEMU thread still blocked on one of our streams keeps the migration
                    # "cancelling", and the next migrate of this VM would be refused: shut the
                    # streams under it (the teardown would, later) and wait once more.
                    log.warning("%s: QEMU's migration has not ended after cancel: closing its streams", self.vm.name)
                    self.carrier.close()
                    if not await _ended(qmp, 15.0):
                        log.error("%s: QEMU's migration still has not ended after cancel", self.vm.name)
                if self.mirrors is not None:
                    # The guest's own disk stays authoritative; the mirrors' targets are dropped.
                    await self.mirrors.abort()
                await ensure_running(qmp)
        if self.control is not None:
            with contextlib.suppress(Exception):
                await self.control.send_json(wire.Abort().dump())
            await self._await_discarded()
        record = self.journal.get(self.session)
        if record is not None and record.open:
            self.journal.set(self.session, "rolled-back", error=err.cause, code=err.code)
        self.vm.busy = None
        self.status.state = "CANCELLED" if self._cancel_reason else "FAILED"
        self.status.error = err.cause
        self.status.fix = err.fix
        self.status.code = err.code
        self.status.finished = time.time()
        self._publish("cancelled" if self._cancel_reason else "failed", error=err.cause, fix=err.fix)

    async def _await_discarded(self) -> None:
        """Give the destination a moment to remove its side, so that whoever sees the outcome
        finds nothing left there. A destination that is gone or silent is not waited for."""
        assert self.control is not None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(DISCARD_WAIT):
                if self._from_dest is not None and not self._from_dest.done():
                    message = await self._from_dest
                    if not message or message.get("event") == wire.Discarded().event:
                        return
                while (message := await self.control.recv_json()) is not None:
                    if message.get("event") == wire.Discarded().event:
                        return

    async def _teardown(self) -> None:
        if self._from_dest is not None:
            self._from_dest.cancel()
        for watcher in (self._watch_stop, self._watch_passes, self._ram_digest, self._qemu_done):
            if watcher is not None:
                watcher.cancel()
        if self.mirrors is not None:
            self.mirrors.close()
        self.flusher.close()
        self.carrier.close()
        if self.control is not None:
            with contextlib.suppress(Exception):
                await self.control.close()
        self.vm.last_migration = self.status.as_dict()


async def _ended(qmp: Any, within: float) -> bool:
    """Whether QEMU's outgoing migration reached an end state (or none) within `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            if (await qmp.execute("query-migrate")).get("status") in (*ENDINGS, None):
                return True
        except Exception:  # QEMU gone or not answering: nothing left to wait for
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
