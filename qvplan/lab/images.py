"""The lab's shared images directory `<lab dir>/images`: the pool `images` of every lab host.

It holds the Linux test guest's kernel and initrd (`make linux-guest` builds them in
guest/build/linux), so a VM booting them (`guest.boot: {pool: images, ...}`) finds the same files
on every host, as a fleet would keep kernels on shared storage.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .model import LabSpec

REPO = Path(__file__).resolve().parents[2]
LINUX_BUILD = REPO / "guest" / "build" / "linux"
LINUX_FILES = ("vmlinuz", "initrd.img")
POOL = "images"


def directory(spec: LabSpec) -> Path:
    return spec.path / "images"


def linux_guest_built() -> bool:
    return all((LINUX_BUILD / f).is_file() for f in LINUX_FILES)


def install(spec: LabSpec) -> None:
    """Create the directory and copy the Linux guest's files in when built (and changed)."""
    target = directory(spec)
    target.mkdir(parents=True, exist_ok=True)
    if not linux_guest_built():
        return
    for name in LINUX_FILES:
        src, dst = LINUX_BUILD / name, target / name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size or dst.stat().st_mtime < src.stat().st_mtime:
            shutil.copyfile(src, dst.with_suffix(".tmp"))
            dst.with_suffix(".tmp").replace(dst)


def remove(spec: LabSpec) -> None:
    shutil.rmtree(directory(spec), ignore_errors=True)
