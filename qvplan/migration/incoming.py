"""The undo list of an incoming migration, and what a restarted agent does with it.

While a VM is an uncommitted incoming migration its folder holds INCOMING_MARK; INCOMING_FILES,
beside it, lists (durably, before they are created) what that migration wrote outside the folder:
offline disk copies, storage-migration images. An agent that starts with such a folder was
stopped before the commit: the guest never ran there, so the VM and every listed file go.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..host.registry import VM, Registry

log = logging.getLogger(__name__)
INCOMING_MARK = "incoming"  # file in a VM's folder while it is an uncommitted incoming migration
INCOMING_FILES = "incoming-files.json"


def record_incoming_files(vm_dir: Path, *paths: Path) -> None:
    """Add to INCOMING_FILES, durably, before creating them: what an uncommitted migration leaves."""
    listing = vm_dir / INCOMING_FILES
    try:
        listed = json.loads(listing.read_text())
    except (OSError, ValueError):
        listed = []
    with open(listing, "w") as f:
        json.dump([*listed, *map(str, paths)], f)
        f.flush()
        os.fsync(f.fileno())


def identity(path: Path) -> list[int]:
    """Which file is at `path` (device, inode): names are reused, inodes of a live file are not."""
    info = os.stat(path, follow_symlinks=False)
    return [info.st_dev, info.st_ino]


def record_owned(vm_dir: Path, path: Path, ident: list[int]) -> None:
    """List `path` as ours while it is the file `ident` (or any identity added later): removal
    checks it, so a cleanup never deletes a file another session put under the same name."""
    listing = vm_dir / INCOMING_FILES
    try:
        listed = json.loads(listing.read_text())
    except (OSError, ValueError):
        listed = []
    for item in listed:
        if isinstance(item, dict) and item.get("path") == str(path):
            item["ids"].append(ident)
            break
    else:
        listed.append({"path": str(path), "ids": [ident]})
    with open(listing, "w") as f:
        json.dump(listed, f)
        f.flush()
        os.fsync(f.fileno())


def remove_incoming_files(vm_dir: Path) -> None:
    """Delete what an uncommitted incoming migration listed in its INCOMING_FILES (an owned entry
    only while the file there is still one of ours)."""
    try:
        listed = json.loads((vm_dir / INCOMING_FILES).read_text())
    except (OSError, ValueError):
        return
    for item in listed if isinstance(listed, list) else []:
        if isinstance(item, dict):
            path = Path(str(item.get("path")))
            try:
                if identity(path) in item.get("ids", []):
                    path.unlink()
            except OSError:
                pass
            continue
        path = Path(str(item))
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


async def discard_uncommitted(registry: Registry, keep: Callable[[VM], bool] = lambda vm: False) -> None:
    """At agent start: remove every incoming VM that never committed (its QEMU never ran the guest);
    `keep` spares those whose journal says the commit arrived (they may have run)."""
    for vm in list(registry.vms.values()):
        if (vm.dir / INCOMING_MARK).exists() and not keep(vm):
            await remove_incoming(registry, vm)


async def remove_incoming(registry: Registry, vm: VM) -> None:
    """An incoming VM that never ran here goes: its QEMU, every file of its undo list, its folder."""
    log.info("removing uncommitted incoming VM %s", vm.name)
    if vm.proc is not None:
        await vm.proc.stop(graceful=False)
    await asyncio.to_thread(remove_incoming_files, vm.dir)
    if registry.vms.get(vm.name) is vm:
        registry.forget(vm.name)  # and its folder
