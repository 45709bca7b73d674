"""A destination session `lost`: its QEMU died after the commit (or a host crash left it unknown
whether the commit arrived, reboot.py), and what the operator does with it.

At `lost` the definition and the images the session landed stay (they may hold the newest data),
and the journal's `lost` line lists those images with the file each one is (device, inode), so a
later settle removes only them, even after a restart. The source stays paused in doubt, asking.

`quantavirt vm migrate-settle NAME --discard-here` on the destination journals `discarded`
(fsync'd, before anything is removed), then removes the definition and those images; the source,
which keeps asking, is told `discarded` and resumes its paused copy. `--resume-here` is refused
(`qemu-lost`): the guest's RAM died with its QEMU; the only copy with it is the paused source.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...contract.reasons import Reason
from ...errors import QVError
from ...host import pools
from ...host.registry import VMError
from ..incoming import INCOMING_FILES, INCOMING_MARK
from ..journal import Journal, Record

if TYPE_CHECKING:
    from ...host.context import Host
    from ...host.registry import VM

log = logging.getLogger(__name__)


def landed_images(vm_dir: Path) -> list[dict[str, Any]]:
    """The files the session listed in its undo list, each with the file it is now (missing ones left out)."""
    try:
        listed = json.loads((vm_dir / INCOMING_FILES).read_text())
    except (OSError, ValueError):
        return []
    out = []
    for item in listed if isinstance(listed, list) else []:
        path = str(item.get("path")) if isinstance(item, dict) else str(item)
        try:
            info = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        out.append({"path": path, "id": [info.st_dev, info.st_ino]})
    return out


def mark_lost(journal: Journal, session: str, vm: VM | None, **extra: Any) -> None:
    """QEMU is gone after commit: journal `lost` with the images kept (they may hold the newest data)."""
    images = landed_images(vm.dir) if vm is not None else []
    journal.set(session, "lost", images=images, **extra)
    if vm is None:
        return
    vm.busy = None
    (vm.dir / INCOMING_MARK).unlink(missing_ok=True)
    (vm.dir / INCOMING_FILES).unlink(missing_ok=True)  # the journal's `lost` line lists them now


def qemu_lost(name: str, session: str, how: str = "died after the commit") -> QVError:
    return QVError(f"the destination QEMU of {name} {how} (session {session}): its RAM is gone, "
                   "nothing to resume here",
                   f"run `quantavirt vm migrate-settle {name} --discard-here` here; the source resumes its "
                   "paused copy", code=Reason.QEMU_LOST)


async def settle_lost(host: Host, journal: Journal, record: Record, decision: str) -> dict[str, Any]:
    """The operator's word on a lost destination session; the record as it ends."""
    if decision == "resume-here":
        rebooted = record.state == "rebooted" or "source_state" in record.extra
        raise qemu_lost(record.vm, record.session, "went with this host's restart" if rebooted else
                        "died after the commit")
    vm = host.registry.vms.get(record.vm)
    if vm is not None and vm.running:  # started by hand since: it may be the only running copy
        raise VMError(f"VM {record.vm!r} runs on this host since its session was lost",
                      f"stop it first (`quantavirt vm stop {record.vm}`) if the source's paused copy is the one "
                      "to keep", code=Reason.VM_STATE)
    # Durable before anything goes: from here the source, asking, is told "discarded" and resumes.
    journal.set(record.session, "discarded", settled_by="operator")
    removed = remove_images(host, record.extra.get("images") or [])
    if vm is not None and host.registry.vms.get(record.vm) is vm:
        host.registry.forget(vm.name)  # and its folder
    log.warning("%s: lost session %s discarded by the operator (%d images removed)", record.vm, record.session,
                len(removed))
    return {**record.as_dict(), "removed": removed}


def remove_images(host: Host, images: list[Any]) -> list[str]:
    """Remove the listed images, each only inside a pool and only while it is still the same file."""
    removed = []
    for item in images:
        if not isinstance(item, dict):
            continue
        try:
            path = pools.confine(str(item.get("path")), host.registry.roots.pools.values(), "image")
            info = os.stat(path, follow_symlinks=False)
            if [info.st_dev, info.st_ino] != item.get("id"):
                log.warning("not removing %s: another file has its name now", path)
                continue
            path.unlink()
            removed.append(str(path))
        except (pools.PathError, OSError) as err:
            log.warning("not removing image %s: %s", item.get("path"), err)
    return removed
