"""The test guest image: find (or build) it, and patch a VM's parameters into a copy.

Parameter block (guest/testguest.S), at byte 0x1E0 of the boot sector, little-endian u32s:

    0x1E0  magic "QVGP"
    0x1E4  working-set start (guest-physical address, 4 KiB aligned)
    0x1E8  working-set size in bytes (whole 4 KiB pages)
    0x1EC  pace: busy-loop iterations after each page (0 = full speed)
    0x1F0  marker_every: sweeps per "QVG SWEEP" serial line (0 = none)
    0x1F4  reserved, 0

Where the built image is looked for, first match wins:
  1. `$QVPLAN_GUEST_IMAGE`;
  2. `<repo>/guest/build/testguest.img` (what `make guest` builds; the repo is the checkout this
     package was imported from);
  3. `<state dir>/guest/testguest.img`, a cache: built there from `<repo>/guest/testguest.S` when
     the sources exist, or put there by whoever provisions a host from a wheel.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..paths import state_dir
from .errors import QemuError
from .spec import TestGuestSpec

PARAMS_OFFSET = 0x1E0
PARAMS_MAGIC = b"QVGP"
PARAMS = struct.Struct("<4sIIIII")
MARKER = b"QVGUEST-MARKER!!"
START_LINE = b"QVG START\n"
SWEEP_LINE = b"QVG SWEEP\n"
SECTOR = 512
# The per-VM copy is padded so the IDE disk has a sane geometry; sparse, so it costs nothing.
IMAGE_SIZE = 1 << 20

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("testguest.S", "testguest.ld")


@dataclass(frozen=True)
class GuestParams:
    start: int
    size: int
    pace: int = 0
    marker_every: int = 16

    @classmethod
    def from_spec(cls, spec: TestGuestSpec) -> GuestParams:
        return cls(spec.start_bytes, spec.working_set_bytes, spec.pace, spec.marker_every)

    @property
    def pages(self) -> int:
        return self.size // 4096

    def pack(self) -> bytes:
        return PARAMS.pack(PARAMS_MAGIC, self.start, self.size, self.pace, self.marker_every, 0)


def read_params(image: bytes) -> GuestParams:
    magic, start, size, pace, every, _ = PARAMS.unpack_from(image, PARAMS_OFFSET)
    if magic != PARAMS_MAGIC:
        raise QemuError("the test guest image has no parameter block", "rebuild it: make guest")
    return GuestParams(start, size, pace, every)


def find_guest_image(state: Path | None = None) -> Path:
    """The built boot sector, building it into the state dir's cache if only the sources exist."""
    if env := os.environ.get("QVPLAN_GUEST_IMAGE"):
        path = Path(env)
        if not path.is_file():
            raise QemuError(f"QVPLAN_GUEST_IMAGE={env} does not exist", "unset it or point it at testguest.img")
        return path
    built = REPO / "guest" / "build" / "testguest.img"
    sources = [REPO / "guest" / name for name in SOURCES]
    have_sources = all(p.is_file() for p in sources)
    newest_source = max((p.stat().st_mtime for p in sources), default=0.0) if have_sources else 0.0
    if built.is_file() and built.stat().st_mtime >= newest_source:
        return built
    cached = (state or state_dir()) / "guest" / "testguest.img"
    if have_sources and (not cached.is_file() or cached.stat().st_mtime < newest_source):
        build_guest_image(REPO / "guest", cached)
    if cached.is_file():
        return cached
    raise QemuError("the test guest image was not found",
                    f"run `make guest` in the qvplan checkout, set QVPLAN_GUEST_IMAGE, or copy it to {cached}")


def build_guest_image(src_dir: Path, dest: Path) -> Path:
    """Assemble and link the boot sector exactly as the Makefile does (needs binutils)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        obj, elf, img = Path(tmp, "testguest.o"), Path(tmp, "testguest.elf"), Path(tmp, "testguest.img")
        steps = [
            ["as", "--32", "-o", str(obj), str(src_dir / "testguest.S")],
            ["ld", "-m", "elf_i386", "-T", str(src_dir / "testguest.ld"), "-o", str(elf), str(obj)],
            ["objcopy", "-O", "binary", str(elf), str(img)],
        ]
        for argv in steps:
            if shutil.which(argv[0]) is None:
                raise QemuError(f"cannot build the test guest: {argv[0]} is not installed",
                                "install binutils (apt-get install binutils)")
            run = subprocess.run(argv, capture_output=True, text=True)
            if run.returncode != 0:
                last = (run.stderr.strip().splitlines() or ["?"])[-1]
                raise QemuError(f"cannot build the test guest: {argv[0]} failed: {last}", "fix guest/testguest.S")
        data = img.read_bytes()
        if len(data) != SECTOR or data[-2:] != b"\x55\xaa":
            raise QemuError(f"the built test guest is {len(data)} bytes, not one boot sector", "fix guest/testguest.S")
        os.replace(img, dest)
    return dest


def test_guest_image(params: GuestParams | TestGuestSpec, dest: Path, source: Path | None = None) -> Path:
    """Write a per-VM copy of the test guest with `params` patched in; returns `dest`."""
    if isinstance(params, TestGuestSpec):
        params = GuestParams.from_spec(params)
    data = bytearray((source or find_guest_image()).read_bytes())
    read_params(bytes(data))  # refuse an image without the block
    data[PARAMS_OFFSET:PARAMS_OFFSET + PARAMS.size] = params.pack()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)  # in a VM's run dir: never through a symlink left there
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb") as f:
        f.write(data)
        f.truncate(IMAGE_SIZE)
    os.replace(tmp, dest)
    return dest


test_guest_image.__test__ = False  # type: ignore[attr-defined]  # not a pytest test function
