"""The source side of an offline migration: a stopped VM's definition and disks, over one PQC channel.

Protocol on the channel (op "offline-receive" on :9410; destination side in destination.py):
  → {"op": "offline-receive", session, version, vm, flags, cpu, disks: [...]}
  ← {"ok": true} after the destination's checks, or {"ok": false, "error", "fix"}
  → per disk to copy: {"disk": i, "key"}, its chunk records (disks.py), {"disk_end": i, "digest", "data"}
  ← {"event": "received"}  every disk checked and in place, the VM defined there but not committed
  → {"cmd": "commit"}      ← {"event": "committed"}
  → {"cmd": "abort"} (or any break before commit): the destination removes everything it wrote.
  ← {"event": "failed", "error", "fix"} may come at any time before "committed".

Only "committed" makes the destination own the VM; only then does the source undefine it and
delete its disk files (the VM moved: its disks are not kept). Shared disks (under [storage]
shared) are neither copied nor deleted, and disks never created (a VM never started) are skipped.
If the answer to commit is lost, the source asks the destination ("offline-state") before deciding;
a crash in between is settled at the next start (recovery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...contract.errors import MigrationError, failure
from ...contract.flags import MigrateFlags
from ...contract.reasons import Reason
from ...contract.rules import Policies
from ...pqc import PQCError, SecureChannel
from ...pqc.bulk import send_run
from ...units import format_duration
from ..job import MigrationJob
from ..peer import channel_failure, open_peer
from . import recovery
from .disks import CHUNK, DiskSource, allocated
from .status import OfflineStatus

if TYPE_CHECKING:
    from ...host.context import Host
    from ...host.registry import VM

log = logging.getLogger(__name__)
STALL_LIMIT = 30.0  # seconds one record may take to leave = the network is gone
PUBLISH_EVERY = 0.25
SETUP_TIMEOUT = 60.0
COMMIT_TIMEOUT = 60.0
STATE_RETRIES = 6


@dataclass
class SourceDisk:
    index: int
    path: Path
    shared: bool
    source: DiskSource | None = None  # open while the image is to be copied

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "path": str(self.path), "shared": self.shared,
                               "present": self.source is not None or self.path.exists()}
        if self.source is not None:
            out.update(size=self.source.size, data=self.source.data_bytes, mode=self.source.mode,
                       allocated=allocated(self.source.extents))
        return out


class OfflineMigration(MigrationJob):
    """An offline migration: a stopped VM's definition and disks; it stays here unless it completes."""

    def __init__(self, host: Host, vm: VM, dest: str, flags: MigrateFlags,
                 policies: Policies | None = None) -> None:
        super().__init__(host, vm, dest, flags, policies,
                         OfflineStatus(vm.name, dest, f"{flags.pqc_kem} / AES-256-GCM ({host.provider_name})",
                                       flags.max_iterations, compress=flags.compress))
        self.channel: SecureChannel | None = None
        self.disks: list[SourceDisk] = []
        self._from_dest: asyncio.Future[Any] | None = None
        self._pump: asyncio.Future[None] | None = None  # the thread sending a disk's records
        self._stop = threading.Event()
        self._trash: list[Path] = []  # disk files of the VM that moved, to delete after COMPLETED
        self._committing = False
        self._in_doubt = False

    def cancel(self, reason: str = "cancelled by operator") -> None:
        if not self._committing:  # after commit the VM belongs to the destination
            super().cancel(reason)

    # -- phases --------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            self._publish("phase", phase=1)
            await self._setup()
            self.setup_done.set()
            await self._copy()
            await self._commit()
        except MigrationError as err:
            await self._fail(err)
        except (PQCError, OSError, asyncio.IncompleteReadError, ConnectionError) as err:
            reason = await self._dest_reason()  # a destination that gave up says why before it hangs up
            await self._fail(reason or channel_failure(err, self.dest))
        except Exception as err:
            log.exception("offline migration of %s failed", self.vm.name)
            await self._fail(failure(Reason.ERROR, f"offline migration failed: {err}", "see the source agent's log"))
        finally:
            self.setup_done.set()
            await self._teardown()

    async def _setup(self) -> None:
        """Phase 1: read the disks' extents, handshake, the destination's checks."""
        if self.vm.running:
            raise failure(Reason.VM_STATE, f"VM {self.vm.name!r} is running",
                                 "stop it first, or drop --offline for a live migration")
        shared = self.host.config.storage.shared
        for i, disk in enumerate(self.vm.spec.disks):
            path = disk.resolve(self.host.pools)
            entry = SourceDisk(i, path, recovery.under(path, shared))
            if not entry.shared and path.exists():
                entry.source = await asyncio.to_thread(DiskSource, path, compress=self.flags.compress,
                                                       chunk=self._chunk_size())
            self.disks.append(entry)
        to_copy = [d for d in self.disks if d.source]
        self.status.disks = len(to_copy)
        self.status.total = self.status.storage_total = sum(d.source.data_bytes for d in to_copy if d.source)
        from ...vmm import cpu_facts

        cpu = await asyncio.to_thread(cpu_facts, self.host.accel)  # may ask QEMU the first time
        self.channel = await open_peer(self.host, self.dest, "offline-migrate", self.flags.pqc_kem,
                                       dest_host=self.flags.dest_host,
                                       pin=self.flags.dest_fingerprint)
        # Journaled before the request leaves, like a live session (journal.py): apply --resume
        # and a restarted agent learn the move's outcome from it.
        self.journal.open_session(self.session, "source", self.vm.name, self.dest, "transferring", kind="offline",
                                  kem=self.flags.pqc_kem, peer_key=self.channel.peer_fingerprint)
        await self.channel.send_json({
            "op": "offline-receive", "session": self.session, "version": self.host.version,
            "vm": self.vm.spec.model_dump(mode="json"), "flags": self.flags.model_dump(mode="json"),
            "policies": self.policies.model_dump(),
            "cpu": cpu, "disks": [d.describe() for d in self.disks],
        })
        reply = await asyncio.wait_for(self.channel.recv_json(), SETUP_TIMEOUT)
        if not reply or not reply.get("ok"):
            raise MigrationError.from_dict(reply or {"error": "destination closed the connection during setup"},
                                           Reason.CONNECTION_RESET)
        log.info("offline migration of %s to %s: copying %d disk(s), %d bytes of data", self.vm.name,
                 self.dest, len(to_copy), self.status.total)

    def _chunk_size(self) -> int:
        # Under a tight --bandwidth, smaller records keep the link (and the progress) moving.
        return CHUNK if not self.flags.bandwidth else max(64 << 10, min(CHUNK, self.flags.bandwidth // 4))


    async def _copy(self) -> None:
        """Phase 2: every local disk, chunk by chunk. A worker thread reads, seals and sends each
        disk's records (pqc/bulk.py); this loop publishes progress, and stops the thread between
        two records on cancel, timeout or a word from the destination."""
        assert self.channel is not None
        self.status.phase = 2
        self._publish("phase", phase=2)
        self._from_dest = asyncio.ensure_future(self.channel.recv_json())
        started = time.monotonic()
        for n, disk in enumerate((d for d in self.disks if d.source), start=1):
            source = disk.source
            assert source is not None
            self.status.disk = n
            await self.channel.send_json({"disk": disk.index, "key": source.key.hex()})
            records = source.records(functools.partial(self._sent, started))
            self._pump = asyncio.ensure_future(send_run(self.channel, records, stall=STALL_LIMIT, stop=self._stop))
            while not self._pump.done():
                await asyncio.wait({self._pump}, timeout=PUBLISH_EVERY)
                self._progress(started)
                try:
                    self._check()
                except MigrationError:
                    await self._stop_pump()
                    raise
            await self._pump
            await self.channel.send_json({"disk_end": disk.index, "digest": source.digest(), "data": source.data_bytes})
        self._publish("progress")
        await self._await_dest("received")

    def _sent(self, started: float, data: int, wire: int) -> None:
        """One record has gone (in the sending thread): count it; hold to --bandwidth (on the wire)."""
        self.status.add_copied(data, wire)
        if self.flags.bandwidth:
            ahead = self.status.wire_bytes / self.flags.bandwidth - (time.monotonic() - started)
            if ahead > 0:
                self._stop.wait(ahead)

    def _progress(self, started: float) -> None:
        self.status.transfer_rate = self.status.transferred / max(time.monotonic() - started, 1e-6)
        self._publish("progress")

    async def _stop_pump(self) -> None:
        """Stop the sending thread between two records and wait for it (it uses the disk's buffer
        and the channel); what it raised is the caller's to report, or moot."""
        self._stop.set()
        if self._pump is not None:
            await asyncio.wait({self._pump})
            if not self._pump.cancelled():
                self._pump.exception()  # retrieved: the failure being handled is the one reported

    def _check(self) -> None:
        """Stop the copy on cancel, timeout or a word from the destination."""
        if self._cancel_reason:
            raise failure(Reason.CANCELLED, f"Migration {self._cancel_reason}")
        if self.status.elapsed > self.flags.timeout:
            raise failure(Reason.TIMEOUT, f"Timeout exceeded ({format_duration(self.flags.timeout)})",
                                 "raise --timeout for large disks, or check the network path")
        if self._from_dest is not None and self._from_dest.done():
            self._dest_said(self._from_dest.result(), "received")

    def _dest_said(self, message: Any, expected: str) -> None:
        if message and message.get("event") == expected:
            return
        if not message or not message.get("error"):
            raise channel_failure(ConnectionResetError(f"destination closed the connection before {expected!r}"),
                                  self.dest)
        raise MigrationError.from_dict(message, Reason.DESTINATION_FAILED)

    async def _dest_reason(self) -> MigrationError | None:
        if self._from_dest is None:
            return None
        with contextlib.suppress(Exception):
            await asyncio.wait({self._from_dest}, timeout=1)
            message = self._from_dest.result() if self._from_dest.done() else None
            if message and message.get("error"):
                return MigrationError.from_dict(message, Reason.DESTINATION_FAILED)
        return None

    async def _await_dest(self, expected: str) -> None:
        """Wait for the destination's next word, still honouring cancel and timeout."""
        assert self._from_dest is not None
        while not self._from_dest.done():
            self._check()
            await asyncio.wait({self._from_dest}, timeout=PUBLISH_EVERY)
        self._dest_said(self._from_dest.result(), expected)

    async def _commit(self) -> None:
        """Phase 5: the destination commits; only then is the VM (and its disk files) removed here."""
        assert self.channel is not None
        self._check()
        self._committing = True
        self.status.phase = 5
        self._publish("phase", phase=5)
        # `committed` first, then the OUTGOING mark: committed without the mark means the commit never left
        self.journal.set(self.session, "committed")
        await asyncio.to_thread(recovery.mark, self.vm, self.dest, self.session, self.flags.pqc_kem,
                                self.channel.peer_fingerprint)
        await self.channel.send_json({"cmd": "commit"})
        try:
            reply = await asyncio.wait_for(self.channel.recv_json(), COMMIT_TIMEOUT)
        except (TimeoutError, PQCError, OSError, asyncio.IncompleteReadError) as err:
            log.warning("no answer to commit of %s from %s: %s", self.vm.name, self.dest, err)
            reply = None
        if not reply or reply.get("event") != "committed":
            if reply and reply.get("event") == "failed":  # it did not commit, and removed its copy
                recovery.unmark(self.vm)
                self._dest_said(reply, "committed")
            if not await self._destination_owns_vm():
                recovery.unmark(self.vm)
                raise channel_failure(ConnectionResetError("destination did not commit the VM"), self.dest)
        self._close_disks()
        self._trash = recovery.release(self.host, self.vm)
        self.journal.set(self.session, "released")
        self.host.events.publish(self.vm.name, "migrated-out", destination=self.dest)
        self.status.state = "COMPLETED"
        self.status.percent = 100.0
        self.status.finished = time.time()
        log.info("offline migration of %s to %s completed in %s", self.vm.name, self.dest,
                 format_duration(self.status.elapsed))
        self._publish("completed")

    async def _destination_owns_vm(self) -> bool:
        """The answer to commit was lost: ask the destination whether it committed."""
        pin = self.channel.peer_fingerprint if self.channel is not None else None
        for _ in range(STATE_RETRIES):
            state = await recovery.ask(self.host, self.dest, self.vm.name, self.session, self.flags.pqc_kem, pin)
            if state in ("committed", "absent"):
                return state == "committed"
            await asyncio.sleep(2)
        # Still in doubt: the VM stays busy here and the marker stays, as after a crash.
        self._in_doubt = True
        recovery.settle_later(self.host, self.vm)
        raise failure(
            Reason.IN_DOUBT, f"VM in doubt after commit: destination {self.dest} did not answer",
            f"the agent keeps asking {self.dest} and releases or keeps {self.vm.name} accordingly; "
            "check the network path")

    async def _fail(self, err: MigrationError) -> None:
        """Any failure before the destination commits: the VM stays here, defined and untouched."""
        if self.channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.channel.send_json({"cmd": "abort"}), 5)
        if not self._in_doubt:
            self.vm.busy = None
            record = self.journal.get(self.session)
            if record is not None and record.open:
                self.journal.set(self.session, "rolled-back", error=err.cause, code=err.code)
        cancelled = bool(self._cancel_reason) and not self._committing
        self.status.state = "CANCELLED" if cancelled else "FAILED"
        self.status.error = err.cause
        self.status.fix = err.fix
        self.status.code = err.code
        self.status.finished = time.time()
        log.warning("offline migration of %s to %s: %s", self.vm.name, self.dest, err)
        self._publish("cancelled" if cancelled else "failed", error=err.cause, fix=err.fix)

    async def _teardown(self) -> None:
        if self._from_dest is not None:
            self._from_dest.cancel()
        await self._stop_pump()  # the worker thread is done with the disk before it closes
        self._close_disks()
        if self.channel is not None:
            with contextlib.suppress(Exception):
                await self.channel.close()
        self.vm.last_migration = self.status.as_dict()
        await asyncio.to_thread(recovery.remove, self._trash)

    def _close_disks(self) -> None:
        for disk in self.disks:
            if disk.source is not None:
                disk.source.close()

