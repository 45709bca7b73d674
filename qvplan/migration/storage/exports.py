"""The destination's side of a storage migration: where the disks go, room for them, the new
(empty) images, and the NBD exports the source mirrors into.

`--dest-pool` names one of the destination's `[storage] pools`, or an existing directory in one
(the spec's `--dest-pool /var/lib/quantavirt/images/`); without it the disks go to the pool
named `default`. A directory that is a configured pool's path counts as that pool, so the VM's
definition keeps `pool: NAME, file: FILE`; a directory below a pool gives `path: DIR/FILE` disks;
anything outside the pools, or reached through a symlink, is refused (host/pools.py).
Every disk keeps its file name (one path component), virtual size and format. Nothing existing
is ever overwritten.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient

from ...contract.errors import refused
from ...contract.reasons import Reason
from ...host import pools as confined
from ...units import format_size
from ...vmm import DiskSpec, VMSpec, create_disk
from .mirror import node

log = logging.getLogger(__name__)
DEFAULT_POOL = "default"
POOL_FIX = "pass --dest-pool with a pool of the destination's [storage] pools or an existing directory in one"
ROOM_FIX = "free space in that pool or pick another --dest-pool"


@dataclass
class Placement:
    """Where an incoming VM's disks will live on this host."""

    spec: VMSpec  # the definition with its disks pointing at the new images
    images: list[tuple[Path, int, str]] = field(default_factory=list)  # (path, virtual size, format)
    exports: list[str] = field(default_factory=list)  # NBD export name per disk, in disk order


def resolve_pool(pools: Mapping[str, Path], dest_pool: str | None) -> tuple[str | None, Path]:
    """(pool name or None for a plain directory, its directory). Raises the refusal."""
    wanted = dest_pool or DEFAULT_POOL
    if wanted in pools:
        return wanted, Path(pools[wanted])
    if Path(wanted).is_absolute():
        try:  # a pool's directory, or one inside a pool (host/pools.py: no symlink, nothing outside)
            return confined.destination(confined.Roots.of(pools), wanted)
        except confined.PathError as err:
            if err.code == Reason.PATH_OUTSIDE_POOLS:
                raise refused(Reason.PATH_OUTSIDE_POOLS, err.cause, POOL_FIX) from None
    raise refused(Reason.STORAGE_NOT_FOUND, f"storage pool {wanted} not found on destination", POOL_FIX)


def place(spec: VMSpec, disks: list[dict[str, Any]], pools: Mapping[str, Path], dest_pool: str | None,
          free_bytes: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free) -> Placement:
    """Plan the new images for `disks` (the source's list: file, format, size per disk).

    Refuses (before anything is created) when the pool is missing, lacks room for the disks'
    virtual sizes, or already holds a file of the same name."""
    if len(disks) != len(spec.disks):
        raise refused(Reason.BAD_REQUEST, f"the source described {len(disks)} of the VM's {len(spec.disks)} disks",
                      "run the same QuantaVirt version on both hosts")
    pool, directory = resolve_pool(pools, dest_pool)
    label = pool or str(directory)
    need = sum(int(d["size"]) for d in disks)
    free = free_bytes(directory)
    if need > free:
        raise refused(Reason.OUT_OF_RESOURCES, f"destination pool {label} lacks room (needs {format_size(need)}, "
                      f"{format_size(free)} free)", ROOM_FIX)
    new_disks, images, seen = [], [], set()
    for disk, old in zip(disks, spec.disks, strict=True):
        try:  # a name from the peer: one component, no symlink in the pool under it
            name = confined.file_name(disk["file"], f"disk {len(seen)} file name")
            path = confined.confine(directory / name, [directory], f"disk {name}")
        except confined.PathError as err:
            raise refused(Reason.PATH_OUTSIDE_POOLS, err.cause, err.fix) from None
        if path.exists() or name in seen:
            raise refused(Reason.NAME_CLASH, f"disk {name} already exists in destination pool {label}",
                          "remove it there, or pick another --dest-pool")
        seen.add(name)
        size = old.size if old.size is not None else int(disk["size"])
        where: dict[str, Any] = {"pool": pool, "file": name} if pool else {"path": str(path)}
        new_disks.append(DiskSpec(**where, size=size, format=disk["format"]))
        images.append((path, int(disk["size"]), str(disk["format"])))
    new_spec = spec.model_copy(update={"disks": new_disks})
    return Placement(new_spec, images, [node(i) for i in range(len(disks))])


def create_images(placement: Placement, record: Callable[[Path], None]) -> None:
    """Create every empty image and `record` it (for removal if the migration fails). A path
    is recorded only once created by us, so a failure never removes someone else's file."""
    for path, size, fmt in placement.images:
        create_disk(path, size, fmt)  # refuses an existing file
        record(path)


def remove_images(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
            log.info("removed partial image %s", path)


def unix_address(socket: Path, as_qemu_sees_it: str | None = None) -> dict[str, Any]:
    """A unix socket as `nbd-server-start` takes it (QEMU 7.2: SocketAddressLegacy)."""
    socket.unlink(missing_ok=True)
    return {"type": "unix", "data": {"path": as_qemu_sees_it or str(socket)}}


async def export(qmp: QMPClient, addr: dict[str, Any], exports: list[str]) -> None:
    """Serve every disk node writable over NBD at `addr` (QEMU 7.2's block exports)."""
    await qmp.execute("nbd-server-start", {"addr": addr})
    for name in exports:
        # Exporting an inactive (incoming) node activates it: the export writes before switchover.
        await qmp.execute("block-export-add", {"type": "nbd", "id": f"export-{name}", "node-name": name,
                                                "name": name, "writable": True})


async def unexport(qmp: QMPClient) -> None:
    """Before the guest resumes: no one but the guest writes its disks. Closes every export.
    Idempotent: an agent restarted after a commit may find the server stopped already (its
    predecessor got that far); then QEMU refuses the stop, and no export is left to close."""
    try:
        await qmp.execute("nbd-server-stop")
    except ExecuteError:
        if await qmp.execute("query-block-exports"):
            raise

