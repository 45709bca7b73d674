"""The destination side of an offline migration: check, receive every disk, land it, commit.

Where things are written: each disk first goes into a staging folder `.qv-incoming-<session>` in
its target directory (the pool, so landing never crosses a filesystem), is checked against the
source's SHA-256 and made durable, then renamed to its final name. Each final name is reserved
for the session before any byte moves (an empty placeholder created with O_EXCL, so a second
session landing the same file name in the same pool is refused), and the rename replaces only that
placeholder, checked by inode. The VM is defined from the start with the incoming mark, like a live
incoming VM: listed as "incoming", not startable. INCOMING_FILES lists the staging folders, and
the final names as owned entries (path + the inodes that are ours), so until the
source's commit removes the mark, any failure — or an agent restart after a crash (registry.load) —
removes every trace. Removing the mark (then syncing the folder) is the commit point.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ...contract import rules, wire
from ...contract.errors import MigrationError, failure, refusal_error, refused
from ...contract.events import Inbound
from ...contract.flags import MigrateFlags
from ...contract.machine import unsupported_machine
from ...contract.network import missing_network
from ...contract.reasons import Reason
from ...host import pools
from ...pqc import SecureChannel
from ...pqc.bulk import receive_run
from ...units import format_size
from ...vmm import VMSpec
from ...vmm.spec import DiskSpec
from ..digest import parse_key
from ..flush import DiskFlusher
from ..incoming import INCOMING_FILES, INCOMING_MARK, identity, record_owned, remove_incoming_files
from ..journal import journal_for
from .disks import DiskSink, WireError, is_chunk

if TYPE_CHECKING:
    from ...host.context import Host
    from ...host.registry import VM

log = logging.getLogger(__name__)
IDLE_TIMEOUT = 60.0  # longest wait for the source's next record
STAGING_PREFIX = ".qv-incoming-"
SESSION_RE = re.compile(r"^[0-9a-f]{32}$")
ROOM_FIX = "free space in the destination pool, pick another pool with --dest-pool, or another host"
DISK_MODE = 0o600


@dataclass
class Target:
    """One disk to receive: written as `staged`, landed as `final`."""

    index: int
    final: Path
    staged: Path
    size: int
    data: int
    mode: int
    sink: DiskSink | None = None


@dataclass
class Landing:
    spec: VMSpec  # as it will be defined here (disks may have moved to --dest-pool)
    session: str
    targets: list[Target] = field(default_factory=list)

    @property
    def staging_dirs(self) -> list[Path]:
        return sorted({t.staged.parent for t in self.targets})

    def files(self) -> list[str]:
        """What to remove without asking whose it is: this session's own staging folders (the
        final names are listed as owned entries once reserved, see _reserve)."""
        return [str(p) for p in self.staging_dirs]


# -- checks (phase 1) ------------------------------------------------------------------------------


def check_room(needs: Iterable[tuple[Path, int]], free: Callable[[Path], int]) -> MigrationError | None:
    """`needs`: (directory, bytes) with one directory per filesystem. Pure over `free`."""
    for where, need in needs:
        have = free(where)
        if need > have:
            return refused(Reason.OUT_OF_RESOURCES, f"Destination out of resources (disks need "
                           f"{format_size(need)} in {where}, {format_size(have)} free)", ROOM_FIX)
    return None


def _pool_named(host: Host, wanted: str) -> tuple[str | None, Path]:
    """--dest-pool: a pool name, or a directory in a pool (host/pools.py)."""
    try:
        return pools.destination(host.registry.roots, wanted)
    except pools.PathError as err:
        if err.code == Reason.PATH_OUTSIDE_POOLS:
            raise refused(Reason.PATH_OUTSIDE_POOLS, err.cause, err.fix) from None
        raise refused(Reason.STORAGE_NOT_FOUND, f"Storage not found on destination (no pool {wanted!r})",
                      f"use one of its pools: {', '.join(sorted(host.pools)) or '(none configured)'}") from None


def _retarget(disk: DiskSpec, where: tuple[str | None, Path] | None) -> DiskSpec:
    if where is None:
        return disk
    pool, directory = where
    name = pools.file_name(disk.file if disk.file is not None else Path(str(disk.path)).name)
    if pool is None:
        return DiskSpec(path=str(directory / name), size=disk.size, format=disk.format)
    return DiskSpec(pool=pool, file=name, size=disk.size, format=disk.format)


def preflight(host: Host, channel: SecureChannel, request: dict[str, Any], cpu: dict[str, Any]) -> Landing:
    """Every check before any byte of disk moves (`cpu`: this host's CPU facts). Raises the spec's refusal."""
    spec = VMSpec.model_validate(request["vm"])
    flags = MigrateFlags.model_validate(request["flags"])
    session = str(request.get("session", ""))
    if not SESSION_RE.match(session):
        raise refused(Reason.BAD_REQUEST, "malformed session id", "run the same QuantaVirt version on both hosts")
    if channel.peer_fingerprint == host.identity.fingerprint:
        raise refused(Reason.SAME_HOST, "destination is the source host", "pick another --dest")
    if spec.name in host.registry.vms:
        raise refused(Reason.NAME_CLASH, f"a VM named {spec.name!r} already exists on the destination",
                      "undefine it there or rename the VM")
    policies = rules.Policies.model_validate(request.get("policies") or {})
    from ...vmm.host import qemu_machines
    from ...vmm.taps import bridges
    from ..live.destination import boot_files, confined

    problem = (rules.check_version(str(request.get("version", "?")), host.version, policies.version)
               or rules.check_cpu(spec.cpu.model_dump(), request.get("cpu", {}), cpu, policies.cpu)
               or missing_network(spec.model_dump(mode="json"), bridges())
               or unsupported_machine(spec.model_dump(mode="json"), qemu_machines())
               or rules.check_boot_files(boot_files(host, spec), os.path.exists))
    if problem:
        raise refusal_error(problem)
    info = {d.get("index"): d for d in request.get("disks", []) if isinstance(d, dict)}
    pool = _pool_named(host, flags.dest_pool) if flags.dest_pool else None
    landing = Landing(spec, session)
    disks: list[DiskSpec] = []
    needs: dict[int, tuple[Path, int]] = {}
    roots = host.registry.roots
    for i, disk in enumerate(spec.disks):
        about = info.get(i, {})
        # Shared or not is this host's config's word (its shared roots), never the peer's flag.
        if disk.path is not None and pools.is_shared(Path(disk.path), roots):
            shared_problem = rules.check_shared_disks([disk.path], os.path.exists)
            if shared_problem:
                raise refusal_error(shared_problem)
            disks.append(disk)
            continue
        if about.get("shared"):
            if disk.path is not None:
                with confined():  # nowhere this host may reach: say so, not whether it exists
                    pools.confine(disk.path, roots.all(), f"disk {i} path")
            raise refused(Reason.STORAGE_NOT_FOUND, f"Storage not found on destination (disk {i} is on shared "
                          "storage at the source, not under a shared root here)",
                          "mount it here and list it in [storage] shared, or copy it: pass --dest-pool")
        with confined():
            disk = _retarget(disk, pool)
        if disk.pool is not None and disk.pool not in host.pools:
            raise refused(Reason.STORAGE_NOT_FOUND, f"Storage not found on destination (no pool {disk.pool!r})",
                          "add the pool to [storage] pools there, or pass --dest-pool")
        with confined():
            final = pools.disk_path(disk, roots, f"disk {i}")
        disks.append(disk)
        if final.exists() or any(t.final == final for t in landing.targets):
            raise refused(Reason.NAME_CLASH, f"disk {final} already exists on the destination",
                          "remove or rename it there, or pass --dest-pool")
        if not about.get("present"):
            continue  # never created on the source: created here at first start
        if not final.parent.is_dir():
            raise refused(Reason.STORAGE_NOT_FOUND, f"Storage not found on destination ({final.parent})")
        # The peer's file mode is not used: a landed disk is private (QEMU gets it by fd).
        landing.targets.append(Target(i, final, final.parent / f"{STAGING_PREFIX}{session}" / final.name,
                                      int(about["size"]), int(about["data"]), DISK_MODE))
        dev = os.stat(final.parent).st_dev
        where, need = needs.get(dev, (final.parent, 0))
        needs[dev] = (where, need + int(about.get("allocated", about["data"])))
    problem = check_room(needs.values(), lambda p: shutil.disk_usage(p).free)
    if problem:
        raise problem
    landing.spec = spec.model_copy(update={"disks": disks})
    with confined():
        pools.check_spec(landing.spec, roots)  # and the kernel boot's files
    return landing


# -- the operation ---------------------------------------------------------------------------------


async def handle_receive(host: Host, channel: SecureChannel, request: dict[str, Any]) -> None:
    log.info("incoming offline migration of %s from %s", request.get("vm", {}).get("name"), channel.peer_name)
    from ...vmm import cpu_facts

    cpu = await asyncio.to_thread(cpu_facts, host.accel)  # may ask QEMU the first time
    name = str((request.get("vm") or {}).get("name")) if isinstance(request.get("vm"), dict) else "?"
    try:
        landing = preflight(host, channel, request, cpu)
    except (MigrationError, ValidationError, KeyError, ValueError, TypeError) as err:
        why = err if isinstance(err, MigrationError) else refused(
            Reason.BAD_REQUEST, f"malformed request ({err})", "run the same QuantaVirt version on both hosts")
        host.events.publish(name, Inbound.REFUSED, mode="offline", code=why.code)
        await channel.send_json({"ok": False, **why.as_dict()})
        return
    journal = journal_for(host.state_dir)  # loading → landed | discarded, following the mark (the commit point)
    journal.open_session(landing.session, "destination", landing.spec.name, channel.peer_name, "loading",
                         kind="offline")
    host.events.publish(landing.spec.name, Inbound.STARTED, mode="offline", source=channel.peer_name)
    vm = host.registry.define(landing.spec)
    vm.busy = "incoming"
    committed = replied = False
    try:
        await asyncio.to_thread(_mark_incoming, vm, landing)
        await asyncio.to_thread(_reserve, vm, landing)
        for staging in landing.staging_dirs:
            staging.mkdir()
        await channel.send_json({"ok": True})
        replied = True
        await _receive(channel, landing)
        await asyncio.to_thread(_land, landing, vm)
        await channel.send_json({"event": "received"})
        verdict = await asyncio.wait_for(channel.recv_json(), IDLE_TIMEOUT)
        if not verdict or verdict.get("cmd") != "commit":
            raise failure(Reason.CONNECTION_RESET, f"source did not commit ({verdict or 'connection closed'})")
        await asyncio.to_thread(_commit, vm)  # the commit point is the mark's removal; the journal follows it
        committed = True
        journal.set(landing.session, "landed")
        vm.busy = None
        log.info("offline migration of %s from %s committed", vm.name, channel.peer_name)
        host.events.publish(vm.name, Inbound.LANDED, source=channel.peer_name, offline=True)
        with contextlib.suppress(Exception):
            await channel.send_json({"event": "committed", "host": host.config.host.name})
    except Exception as err:
        log.warning("incoming offline migration of %s failed: %s", vm.name, err)
        why = err if isinstance(err, MigrationError) else failure(
            Reason.DESTINATION_FAILED, f"destination failed to receive the VM: {err}",
            "see the destination agent's log")
        host.events.publish(vm.name, Inbound.REFUSED, mode="offline", code=why.code)
        with contextlib.suppress(Exception):
            await channel.send_json({"event": "failed", **why.as_dict()} if replied else
                                    {"ok": False, **why.as_dict()})
    finally:
        if not committed:
            journal.set(landing.session, "discarded")
            await discard(host, vm, landing)


async def _next(channel: SecureChannel) -> bytes:
    record = await asyncio.wait_for(channel.recv(), IDLE_TIMEOUT)
    if record is None:
        raise failure(Reason.CONNECTION_RESET, "source closed the connection mid-copy")
    return record


def _message(record: bytes) -> dict[str, Any]:
    if is_chunk(record) or not record.startswith(b"{"):
        raise WireError("source sent a chunk where a message was expected")
    message = json.loads(record)
    if message.get("cmd") == "abort":
        raise failure(Reason.CANCELLED, "source aborted the migration")
    return message


async def _receive(channel: SecureChannel, landing: Landing) -> None:
    """Every disk, in order. A worker thread receives, opens and writes (and hashes) each disk's
    chunk records (pqc/bulk.py); the record after the last chunk is the disk's end message."""
    for target in landing.targets:
        start = _message(await _next(channel))
        key = parse_key(start.get("key"))
        if start.get("disk") != target.index or key is None:
            raise WireError(f"expected disk {target.index} and its digest key, source sent {sorted(start)}")
        sink = target.sink = await asyncio.to_thread(DiskSink, target.staged, target.size, target.mode, key=key)

        def write(record: memoryview, sink: DiskSink = sink) -> bool:
            if not is_chunk(record):
                return False  # the disk's end message: back to the event loop
            sink.write(record)
            return True

        # written back as it arrives (never waited for): the final fsync has little left
        flusher = DiskFlusher([target.staged], wait=False)
        flusher.start()
        try:
            record = await receive_run(channel, write, idle=IDLE_TIMEOUT, stop=threading.Event())
        finally:
            flusher.close()
        if record is None:
            raise failure(Reason.CONNECTION_RESET, "source closed the connection mid-copy")
        end = _message(record)
        if end.get("disk_end") != target.index:
            raise WireError(f"disk {target.index} ended with {end}")
        await asyncio.to_thread(sink.finish, str(end.get("digest", "")), int(end.get("data", -1)))
        log.debug("disk %d of %s checked (%d bytes of data)", target.index, landing.spec.name, sink.written)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mark_incoming(vm: VM, landing: Landing) -> None:
    """The mark and the list of what to remove without it, durable before any disk byte lands."""
    for name, text in ((INCOMING_MARK, landing.session), (INCOMING_FILES, json.dumps(landing.files()))):
        with open(vm.dir / name, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    _fsync_dir(vm.dir)


def _reserve(vm: VM, landing: Landing) -> None:
    """Take every final name for this session before any byte moves: an empty placeholder created
    exclusively (O_EXCL), listed as ours by its inode. A second session wanting the same name is
    refused here, and no cleanup ever removes a file it did not create."""
    for target in landing.targets:
        try:
            fd = os.open(target.final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise refused(Reason.NAME_CLASH, f"disk {target.final} already exists on the destination "
                          "(or another migration is receiving it)", "remove or rename it there, or pass "
                          "--dest-pool") from None
        os.close(fd)
        record_owned(vm.dir, target.final, identity(target.final))
    for where in {t.final.parent for t in landing.targets}:
        _fsync_dir(where)


def _land(landing: Landing, vm: VM) -> None:
    """Every disk checked: give each its final name, replacing only this session's own placeholder
    (checked by inode), durably."""
    for target in landing.targets:
        if target.sink is not None:
            target.sink.close()
        placeholder = _listed_ids(vm, target.final)
        try:
            current = identity(target.final)
        except OSError:
            current = None
        if current is None or current not in placeholder:
            raise failure(Reason.NAME_CLASH, f"disk {target.final} was removed or replaced on the destination "
                          "during the copy", "remove or rename it there and retry")
        record_owned(vm.dir, target.final, identity(target.staged))  # listed before it takes the name
        os.rename(target.staged, target.final)
    for where in {t.final.parent for t in landing.targets}:
        _fsync_dir(where)
    for staging in landing.staging_dirs:
        shutil.rmtree(staging, ignore_errors=True)
    with open(vm.dir / "vm.json", "rb") as f:
        os.fsync(f.fileno())


def _listed_ids(vm: VM, path: Path) -> list[list[int]]:
    try:
        listed = json.loads((vm.dir / INCOMING_FILES).read_text())
    except (OSError, ValueError):
        return []
    return next((item["ids"] for item in listed if isinstance(item, dict) and item.get("path") == str(path)), [])


def _commit(vm: VM) -> None:
    """The commit point: without the mark the VM is this host's, and stays so across a crash."""
    (vm.dir / INCOMING_MARK).unlink()
    _fsync_dir(vm.dir)
    (vm.dir / INCOMING_FILES).unlink(missing_ok=True)


async def discard(host: Host, vm: VM, landing: Landing) -> None:
    """Remove an incoming VM that did not commit: its staged and landed disks, and its folder."""
    for target in landing.targets:
        if target.sink is not None:
            target.sink.close()
    await asyncio.to_thread(remove_incoming_files, vm.dir)
    vm.busy = None
    if host.registry.vms.get(vm.name) is vm:
        host.registry.forget(vm.name)
    log.info("incoming offline migration of %s discarded", vm.name)


async def handle_state(host: Host, channel: SecureChannel, request: dict[str, Any]) -> None:
    """After a lost answer to commit: does this host own the VM now? (Decides the source's cleanup.)"""
    try:
        query = wire.parse(request, wire.OfflineStateQuery)
    except wire.WireError as err:
        await channel.send_json({"ok": False, **failure(Reason.PROTOCOL_ERROR, str(err)).as_dict()})
        return
    assert isinstance(query, wire.OfflineStateQuery)
    record = journal_for(host.state_dir).get(query.session)
    vm = host.registry.vms.get(query.vm)
    if record is not None and record.role == "destination" and record.state in ("landed", "discarded"):
        state = "committed" if record.state == "landed" else "absent"  # this session's own word
    elif vm is None:
        state = "absent"
    elif vm.busy or (vm.dir / INCOMING_MARK).exists():
        state = "pending"
    else:
        state = "committed"
    await channel.send_json(wire.OfflineStateAnswer(state=state).dump())
