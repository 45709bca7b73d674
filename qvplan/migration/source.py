"""The source side of one live migration: the five phases, convergence control and rollback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..addresses import split_hostport
from ..pqc import PQCError, SecureChannel, open_channel
from .errors import CONVERGE_FIX, NETWORK_FIX, MigrationError
from .flags import MigrateFlags
from .qmp import configure, ensure_running, event_time, run_state
from .status import MigrationStatus
from .tunnel import STREAM_BUFFER, relay

if TYPE_CHECKING:
    from ..agent.daemon import Agent
    from ..agent.registry import VM

log = logging.getLogger(__name__)
MIGRATION_PORT = 9410
POLL = 0.25
STALL_LIMIT = 15.0  # seconds without a byte moving = the network is gone
ENDINGS = {"completed", "failed", "cancelled"}


class SourceMigration:
    """Owns a VM from `start()` until the outcome; the VM keeps running here unless it completes."""

    def __init__(self, agent: Agent, vm: VM, dest: str, flags: MigrateFlags) -> None:
        self.agent = agent
        self.vm = vm
        self.dest = dest
        self.flags = flags
        self.session = uuid.uuid4().hex
        encryption = "plaintext (--insecure)" if flags.insecure else f"{flags.pqc_kem} / AES-256-GCM"
        self.status = MigrationStatus(vm.name, dest, f"{encryption} ({agent.provider_name})",
                                      flags.max_iterations)
        self.topic = f"{vm.name}/migrate"
        self.setup_done = asyncio.Event()
        self.control: SecureChannel | None = None
        self._server: asyncio.AbstractServer | None = None
        self._relays: set[asyncio.Task[None]] = set()
        self._from_dest: asyncio.Future[Any] | None = None
        self._cancel_reason: str | None = None
        self._stop_at: float | None = None
        self._passes_published = 0
        self.task: asyncio.Task[None] | None = None

    # -- public --------------------------------------------------------------------------

    def start(self) -> None:
        self.vm.busy = "migrating"
        self.vm.last_migration = None
        self.task = asyncio.ensure_future(self._run())

    def cancel(self, reason: str = "cancelled by operator") -> None:
        self._cancel_reason = reason

    # -- phases --------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            self._publish("phase", phase=1)
            await self._setup()
            self.setup_done.set()
            info = await self._transfer()
            await self._activate(info)
        except MigrationError as err:
            await self._rollback(err)
        except (PQCError, OSError, asyncio.IncompleteReadError, ConnectionError) as err:
            await self._rollback(MigrationError(f"Connection reset during transfer: {err}", NETWORK_FIX))
        except Exception as err:
            log.exception("migration of %s failed", self.vm.name)
            await self._rollback(MigrationError(f"migration failed: {err}"))
        finally:
            self.setup_done.set()
            await self._teardown()

    async def _setup(self) -> None:
        """Phase 1: handshake, the destination's checks, QEMU listening there, our socket here."""
        host, port = split_hostport(self.dest, MIGRATION_PORT)
        log.info("migrating %s to %s: phase 1 (setup)", self.vm.name, self.dest)
        self.control = await self._open(host, port, "migrate")
        log.debug("control channel to %s up (%s)", self.dest, self.control.kem)
        if self.control.peer_fingerprint == self.agent.identity.fingerprint:
            raise MigrationError("destination is the source host", "pick another --dest")
        from ..agent.facts import host_facts

        facts = host_facts(self.agent)
        await self.control.send_json({
            "op": "migrate", "session": self.session, "version": __version__,
            "vm": self.vm.spec.model_dump(mode="json"), "flags": self.flags.model_dump(mode="json"),
            "cpu": facts["cpu"], "disks": self.agent.registry.disk_facts(self.vm.spec),
        })
        reply = await asyncio.wait_for(self.control.recv_json(), 60)
        log.debug("destination answered setup: %s", reply)
        if not reply or not reply.get("ok"):
            raise MigrationError((reply or {}).get("error", "destination closed the connection"),
                                 (reply or {}).get("fix"))
        sock = self.vm.run_dir / "migrate.sock"
        sock.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._carry, str(sock), limit=STREAM_BUFFER)
        qmp = self.vm.proc.qmp
        await configure(qmp, self.flags)
        self._watch_stop = asyncio.ensure_future(self._record_stop())
        self._watch_passes = asyncio.ensure_future(self._follow_passes())
        await qmp.execute("migrate", {"uri": f"unix:{sock}"})
        self._publish("phase", phase=2)

    async def _open(self, host: str, port: int, purpose: str) -> SecureChannel:
        return await open_channel(host, port, identity=self.agent.identity, trust=self.agent.trust,
                                  kem=self.flags.pqc_kem, hello_extra={**self.agent.hello_extra(),
                                                                      "purpose": purpose})

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One QEMU stream (main or a multifd channel) → its own PQC channel."""
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        try:
            host, port = split_hostport(self.dest, MIGRATION_PORT)
            channel = await self._open(host, port, "migrate-data")
            await channel.send_json({"op": "migrate-data", "session": self.session})
            reply = await channel.recv_json()
            if not reply or not reply.get("ok"):
                raise MigrationError(f"destination refused a stream: {reply}")
            await relay(channel, reader, writer)
        except Exception as err:
            log.warning("stream of %s broke: %s", self.vm.name, err)
            writer.close()
        finally:
            self._relays.discard(task)

    async def _record_stop(self) -> None:
        qmp = self.vm.proc.qmp
        with qmp.listener(("STOP",)) as listener:
            async for event in listener:
                self._stop_at = event_time(event)

    async def _follow_passes(self) -> None:
        """A `pass` event per QEMU dirty-sync pass, with fresh figures (short passes fall between polls)."""
        qmp = self.vm.proc.qmp
        with qmp.listener(("MIGRATION_PASS",)) as listener:
            async for event in listener:
                number = int(event.get("data", {}).get("pass", 0))
                with contextlib.suppress(Exception):
                    self.status.update_from_qemu(await qmp.execute("query-migrate"))
                if self.status.forced_stop_and_copy:
                    continue  # the guest is paused: what QEMU still counts is stop-and-copy
                self.status.iteration = max(self.status.iteration, number)
                self._publish_passes(number)

    def _publish_passes(self, upto: int) -> None:
        """Exactly one `pass` event per pass up to `upto`, in order, whoever sees it first."""
        for number in range(self._passes_published + 1, upto + 1):
            self._publish("pass", iteration=number)
        self._passes_published = max(self._passes_published, upto)

    async def _transfer(self) -> dict[str, Any]:
        """Phases 2–4: follow QEMU's pre-copy; enforce iterations, timeout, stalls and cancel.

        Ends as soon as the destination reports it has loaded everything (the fastest signal
        that stop-and-copy is over), or when QEMU reports an end here.
        """
        assert self.control is not None
        qmp = self.vm.proc.qmp
        last_moved, last_move_time = 0, time.monotonic()
        self._from_dest = asyncio.ensure_future(self.control.recv_json())
        while True:
            info = await qmp.execute("query-migrate")
            self.status.update_from_qemu(info)
            state = info.get("status")
            if self._from_dest.done():
                message = self._from_dest.result()
                if message and message.get("event") == "received":
                    return info
                raise MigrationError(f"destination failed: {(message or {}).get('error', 'connection closed')}",
                                     NETWORK_FIX)
            if state in ENDINGS and state != "completed":
                raise MigrationError(f"QEMU reports migration {state}: {info.get('error-desc', 'stream broken')}",
                                     NETWORK_FIX)
            self._publish("progress")
            if self._cancel_reason:
                raise MigrationError(f"Migration {self._cancel_reason}")
            if self.status.elapsed > self.flags.timeout:
                raise MigrationError(f"Timeout exceeded ({self.flags.timeout:.0f}s)", CONVERGE_FIX)
            if (self.status.iteration >= self.flags.max_iterations and not self.status.forced_stop_and_copy
                    and state == "active" and await run_state(qmp) == "running"):
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
                raise MigrationError(f"Connection reset during transfer (no progress for {STALL_LIMIT:.0f}s)",
                                     NETWORK_FIX)
            await asyncio.wait({self._from_dest}, timeout=POLL)

    async def _activate(self, info: dict[str, Any]) -> None:
        """Phase 5: the destination resumes the guest; only then is the source VM released."""
        assert self.control is not None
        # QEMU's own stop-and-copy passes may still be on their way as events: publish them now.
        self._publish_passes(self.status.iteration)
        self.status.phase = 5
        await self.control.send_json({"cmd": "commit"})
        self._publish("phase", phase=5)
        try:
            message = await asyncio.wait_for(self.control.recv_json(), 30)
        except (TimeoutError, PQCError, OSError, asyncio.IncompleteReadError):
            message = None
        if not message or message.get("event") != "running":
            if not await self._destination_runs_vm():
                raise MigrationError("destination did not resume the VM after commit", NETWORK_FIX)
            message = {"resumed_at": None}
        if message.get("resumed_at") and self._stop_at:
            self.status.pause = max(0.0, message["resumed_at"] - self._stop_at)
        final = await self.vm.proc.qmp.execute("query-migrate")
        self.status.update_from_qemu(final if final.get("status") == "completed" else info)
        self._publish_passes(self.status.iteration)
        # Release the source VM before the outcome is visible: whoever sees COMPLETED must find
        # the VM on the destination only.
        with contextlib.suppress(Exception):
            await self.vm.proc.stop(graceful=False)
        self.vm.busy = None
        self.agent.registry.forget(self.vm.name)
        self.status.state = "COMPLETED"
        self.status.percent = 100.0
        self.status.finished = time.time()
        self._publish("completed")

    async def _destination_runs_vm(self) -> bool:
        """The control channel broke after commit: ask the destination directly."""
        try:
            host, port = split_hostport(self.dest, MIGRATION_PORT)
            channel = await self._open(host, port, "session-state")
            await channel.send_json({"op": "session-state", "vm": self.vm.name})
            reply = await asyncio.wait_for(channel.recv_json(), 10)
            await channel.close()
            return bool(reply and reply.get("running"))
        except Exception as err:
            # Unknown: keep the source paused rather than risk the guest running twice.
            raise MigrationError(
                f"VM left paused on source: destination unreachable after commit ({err})",
                f"check {self.dest}; resume the source QEMU only if the VM does not run there",
            ) from None

    async def _rollback(self, err: MigrationError) -> None:
        """Any failure before phase 5 completes: the guest keeps running here, nothing stays there."""
        qmp = self.vm.proc.qmp if self.vm.proc else None
        if qmp is not None:
            with contextlib.suppress(Exception):
                await qmp.execute("migrate_cancel")
            if "left paused" not in err.cause:
                with contextlib.suppress(Exception):
                    for _ in range(50):
                        if (await qmp.execute("query-migrate")).get("status") in (*ENDINGS, None):
                            break
                        await asyncio.sleep(0.1)
                await ensure_running(qmp)
        if self.control is not None:
            with contextlib.suppress(Exception):
                await self.control.send_json({"cmd": "abort"})
        self.vm.busy = None
        self.status.state = "CANCELLED" if self._cancel_reason else "FAILED"
        self.status.error = err.cause
        self.status.fix = err.fix
        self.status.finished = time.time()
        self._publish("cancelled" if self._cancel_reason else "failed", error=err.cause, fix=err.fix)

    async def _teardown(self) -> None:
        if self._from_dest is not None:
            self._from_dest.cancel()
        for watcher in (getattr(self, "_watch_stop", None), getattr(self, "_watch_passes", None)):
            if watcher is not None:
                watcher.cancel()
        if self._server is not None:
            self._server.close()
        for task in list(self._relays):
            task.cancel()
        if self.control is not None:
            with contextlib.suppress(Exception):
                await self.control.close()
        self.vm.last_migration = self.status.as_dict()

    def _publish(self, kind: str, **extra: Any) -> None:
        self.agent.events.publish(self.topic, kind, **{**self.status.as_dict(), **extra})
