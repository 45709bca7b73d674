"""The destination side: check, start QEMU -incoming, carry the streams in, commit or roll back.

Protocol on the control channel (source → destination, one JSON message each):
  {"op": "migrate", ...}          → {"ok": true} once QEMU listens, or {"ok": false, "error", "fix"}
                                    (with --storage-migrate also "exports": NBD export per disk)
  (data connections: {"op": "migrate-data" | "storage-data", "session"} each, then raw records)
  ← {"event": "received"}          QEMU has loaded all state and waits paused (-S)
  {"cmd": "commit"}               → resume, announce-self, ← {"event": "running", "resumed_at"}
  {"cmd": "abort"} or EOF before commit → QEMU killed, nothing left behind, ← {"event": "discarded"}
The destination never resumes the guest without the source's commit, and the source releases its
VM only after "running": a VM runs on exactly one host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...contract import rules
from ...contract.errors import MigrationError, failure, refusal_error, refused
from ...contract.flags import MigrateFlags
from ...contract.network import missing_network
from ...contract.reasons import Reason
from ...errors import QVError
from ...pqc import SecureChannel
from ...vmm import VMSpec
from ..incoming import INCOMING_FILES, INCOMING_MARK, record_incoming_files
from ..qmp import configure, event_time
from ..storage import exports
from ..streams.carrier import MIGRATE_DATA, STORAGE_DATA, accept_stream

if TYPE_CHECKING:
    from ...host.context import Host
    from ...host.registry import VM

log = logging.getLogger(__name__)


@dataclass
class Incoming:
    session: str
    vm: VM
    sockets: dict[str, str] = field(default_factory=dict)  # data operation → local QEMU socket
    images: list[Path] = field(default_factory=list)  # created here by a storage migration
    storage: bool = False
    state: str = "waiting"  # waiting, received, running, aborted


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
            or rules.check_boot_files(boot_files or [], reachable))


def boot_files(host: Host, spec: VMSpec) -> list[str]:
    """The kernel boot's files as this host resolves them ([] without a kernel boot)."""
    if spec.guest.boot is None:
        return []
    try:
        return [str(p) for p in spec.guest.boot.resolve(host.pools)]
    except QVError as err:
        raise refused(Reason.STORAGE_NOT_FOUND, err.cause, err.fix) from None


def preflight(host: Host, channel: SecureChannel,
              request: dict[str, Any]) -> tuple[VMSpec, MigrateFlags, exports.Placement | None]:
    """Every check of phase 1, before any VM state moves. Raises the spec's refusal.

    With --storage-migrate the pool replaces the shared-storage check, and the placement's
    definition points at the new images."""
    from ...host.facts import host_facts

    spec = VMSpec.model_validate(request["vm"])
    flags = MigrateFlags.model_validate(request["flags"])
    if channel.peer_fingerprint == host.identity.fingerprint:
        raise refused(Reason.SAME_HOST, "destination is the source host", "pick another --dest")
    if flags.insecure and host.config.migration.pqc_required:
        raise refused(Reason.PQC_REQUIRED, "plaintext migration refused (pqc_required = true on the destination)",
                      "drop --insecure, or set pqc_required = false on the destination")
    if spec.name in host.registry.vms:
        raise refused(Reason.NAME_CLASH, f"a VM named {spec.name!r} already exists on the destination",
                      "undefine it there or rename the VM")
    problem = verdict(spec, flags, request, host_facts(host), os.path.exists, boot_files(host, spec))
    if problem:
        raise refusal_error(problem)
    if flags.storage_migrate:
        placement = exports.place(spec, request.get("storage", []), host.pools, flags.dest_pool)
        return placement.spec, flags, placement
    return spec, flags, None


async def handle_migrate(host: Host, sessions: dict[str, Incoming], channel: SecureChannel,
                         request: dict[str, Any]) -> None:
    log.info("incoming migration of %s from %s", request.get("vm", {}).get("name"), channel.peer_name)
    try:
        spec, flags, placement = preflight(host, channel, request)
    except MigrationError as err:
        await channel.send_json({"ok": False, **err.as_dict()})
        return
    vm = host.registry.define(spec)
    vm.busy = "incoming"
    (vm.dir / INCOMING_MARK).write_text(request["session"])
    incoming = Incoming(request["session"], vm, {MIGRATE_DATA: str(vm.run_dir / "incoming.sock")},
                        storage=placement is not None)
    sessions[incoming.session] = incoming
    try:
        reply: dict[str, Any] = {"ok": True}
        if placement is not None:
            exports.create_images(placement, lambda path: _record_image(incoming, path))
        await host.registry.start(spec.name, incoming="defer", paused=True)
        assert vm.proc is not None
        if placement is not None:
            nbd = vm.run_dir / "nbd.sock"
            await exports.export(vm.proc.qmp, exports.unix_address(nbd), placement.exports)
            incoming.sockets[STORAGE_DATA] = str(nbd)
            reply["exports"] = placement.exports
        await configure(vm.proc.qmp, flags)
        await vm.proc.qmp.execute("migrate-incoming", {"uri": f"unix:{incoming.sockets[MIGRATE_DATA]}"})
        await channel.send_json(reply)
        await _follow(host, channel, incoming)
    except Exception as err:
        log.warning("incoming migration of %s failed: %s", spec.name, err)
        with contextlib.suppress(Exception):
            why = err if isinstance(err, MigrationError) else failure(
                Reason.DESTINATION_FAILED, f"destination failed: {err}", "see the destination agent's log")
            await channel.send_json({"event": "failed", **why.as_dict()})
    finally:
        sessions.pop(incoming.session, None)
        if incoming.state != "running":
            await discard(host, vm, incoming.images)
            with contextlib.suppress(Exception):  # the source reports its outcome once this is done
                await channel.send_json({"event": "discarded"})


def _record_image(incoming: Incoming, path: Path) -> None:
    """Note an image we created, for discard() and for a restarted agent (registry.load)."""
    incoming.images.append(path)
    record_incoming_files(incoming.vm.dir, path)


async def _follow(host: Host, channel: SecureChannel, incoming: Incoming) -> None:
    """Wait for QEMU to load everything, then for the source's verdict."""
    vm = incoming.vm
    assert vm.proc is not None
    qmp = vm.proc.qmp
    loaded = asyncio.ensure_future(_wait_loaded(qmp))
    verdict = asyncio.ensure_future(channel.recv_json())
    try:
        done, _ = await asyncio.wait({loaded, verdict}, return_when=asyncio.FIRST_COMPLETED)
        if verdict in done:  # abort or EOF before QEMU finished loading
            raise failure(Reason.CANCELLED, f"source ended the migration: {verdict.result()}")
        loaded.result()
        incoming.state = "received"
        await channel.send_json({"event": "received"})
        message = await verdict
    finally:
        loaded.cancel()
        verdict.cancel()
    if not message or message.get("cmd") != "commit":
        raise failure(Reason.CONNECTION_RESET, f"source did not commit: {message}")
    if incoming.storage:
        await exports.unexport(qmp)
    with qmp.listener(("RESUME",)) as listener:
        await qmp.execute("cont")
        resume = await asyncio.wait_for(listener.get(), 10)
    incoming.state = "running"
    vm.busy = None
    (vm.dir / INCOMING_MARK).unlink(missing_ok=True)  # the commit point; then the undo list goes
    (vm.dir / INCOMING_FILES).unlink(missing_ok=True)
    with contextlib.suppress(Exception):
        await qmp.execute("announce-self", {"initial": 50, "max": 550, "rounds": 5, "step": 100})
    host.events.publish(vm.name, "migrated-in", source=channel.peer_name)
    await channel.send_json({"event": "running", "resumed_at": event_time(resume),
                             "host": host.config.host.name})


async def _wait_loaded(qmp: Any) -> None:
    while True:
        info = await qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise failure(Reason.QEMU_FAILED, f"destination QEMU could not load the VM state ({status})",
                          "see the VM's qemu.log on the destination")
        # Fast while the stream flows (the end is latency-critical); slow before it starts,
        # which with --storage-migrate is the whole block phase.
        await asyncio.sleep(0.005 if status == "active" else 0.1)


async def discard(host: Host, vm: VM, images: list[Path] | None = None) -> None:
    """Remove an incoming VM that did not become ours: its QEMU, the images it created, its directory."""
    if vm.proc is not None:
        with contextlib.suppress(Exception):
            await vm.proc.stop(graceful=False)
    exports.remove_images(images or [])
    vm.busy = None
    if vm.name in host.registry.vms and host.registry.vms[vm.name] is vm:
        host.registry.forget(vm.name)


async def handle_data(sessions: dict[str, Incoming], channel: SecureChannel, request: dict[str, Any]) -> None:
    """A data stream of a session (`migrate-data` or `storage-data`), relayed into QEMU."""
    incoming = sessions.get(request.get("session", ""))
    if incoming is None or incoming.state != "waiting":
        await channel.send_json({"ok": False, "error": "no such migration session"})
        return
    started = time.monotonic()
    await accept_stream(incoming.sockets, channel, request["op"])
    log.debug("%s stream for %s done after %.1fs", request["op"], incoming.vm.name, time.monotonic() - started)


async def handle_session_state(host: Host, channel: SecureChannel, request: dict[str, Any]) -> None:
    """After a lost control channel: does this host run the VM now? (Decides source resume.)"""
    name = request.get("vm", "")
    vm = host.registry.vms.get(name)
    await channel.send_json({"ok": True, "running": bool(vm and vm.running and not vm.busy)})
