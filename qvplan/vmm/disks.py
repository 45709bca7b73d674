"""Disk images through qemu-img: create one, read what it is."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .errors import QemuError

FORMATS = ("qcow2", "raw")


def _qemu_img(args: list[str], what: str) -> str:
    if shutil.which("qemu-img") is None:
        raise QemuError("qemu-img is not installed", "install it: apt-get install qemu-utils")
    run = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["?"])[-1]
        raise QemuError(f"{what}: {last}", "check the path, its directory and free space")
    return run.stdout


def create_disk(path: Path | str, size: int, fmt: str = "qcow2") -> Path:
    """Create an empty image of `size` bytes; refuses to overwrite an existing file."""
    path = Path(path)
    if fmt not in FORMATS:
        raise QemuError(f"unknown disk format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    if path.exists():
        raise QemuError(f"disk {path} already exists", "remove it first or use another file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    _qemu_img(["create", "-q", "-f", fmt, str(path), str(size)], f"cannot create disk {path}")
    return path


def disk_info(path: Path | str) -> dict[str, Any]:
    """`qemu-img info` as a dict (keys `format`, `virtual-size`, `actual-size`, ...).

    Uses `-U` (force share) so it works on an image a running QEMU holds open."""
    out = _qemu_img(["info", "-U", "--output=json", str(path)], f"cannot read disk {path}")
    return json.loads(out)
