"""Test guest images, qemu-img disks and host facts (real tools, no VM)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qvplan.vmm import QemuError, create_disk, detect_accel, disk_info, qemu_version
from qvplan.vmm.guest import (
    IMAGE_SIZE,
    PARAMS_OFFSET,
    REPO,
    GuestParams,
    build_guest_image,
    find_guest_image,
    read_params,
)
from qvplan.vmm.guest import test_guest_image as patch_image
from qvplan.vmm.host import cpu_facts

from .conftest import needs_qemu

GUEST_SRC = REPO / "guest"


def test_build_from_source_matches_the_layout(tmp_path: Path) -> None:
    image = build_guest_image(GUEST_SRC, tmp_path / "testguest.img").read_bytes()
    assert len(image) == 512 and image[-2:] == b"\x55\xaa"
    assert image[PARAMS_OFFSET:PARAMS_OFFSET + 4] == b"QVGP"
    assert read_params(image) == GuestParams(start=16 << 20, size=4 << 20, pace=0, marker_every=16)


def test_patched_copy(tmp_path: Path) -> None:
    source = build_guest_image(GUEST_SRC, tmp_path / "src.img")
    params = GuestParams(start=32 << 20, size=8 << 20, pace=1000, marker_every=4)
    out = patch_image(params, tmp_path / "vm" / "guest.img", source=source)
    data = out.read_bytes()
    assert len(data) == IMAGE_SIZE and read_params(data) == params
    assert data[:PARAMS_OFFSET] == source.read_bytes()[:PARAMS_OFFSET] and data[510:512] == b"\x55\xaa"


def test_image_lookup_prefers_the_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = build_guest_image(GUEST_SRC, tmp_path / "mine.img")
    monkeypatch.setenv("QVPLAN_GUEST_IMAGE", str(image))
    assert find_guest_image() == image
    monkeypatch.setenv("QVPLAN_GUEST_IMAGE", str(tmp_path / "missing.img"))
    with pytest.raises(QemuError, match=r"QVPLAN_GUEST_IMAGE=.* does not exist"):
        find_guest_image()


def test_image_without_parameter_block_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.img"
    bogus.write_bytes(bytes(512))
    with pytest.raises(QemuError, match="no parameter block"):
        patch_image(GuestParams(16 << 20, 4096), tmp_path / "out.img", source=bogus)


def test_disks(tmp_path: Path) -> None:
    path = create_disk(tmp_path / "pool" / "a.qcow2", 64 << 20, "qcow2")
    info = disk_info(path)
    assert (info["format"], info["virtual-size"]) == ("qcow2", 64 << 20)
    assert disk_info(create_disk(tmp_path / "b.raw", 1 << 20, "raw"))["format"] == "raw"
    with pytest.raises(QemuError, match="already exists"):
        create_disk(path, 1 << 20)
    with pytest.raises(QemuError, match="cannot read disk"):
        disk_info(tmp_path / "nope.qcow2")


@needs_qemu
def test_host_facts() -> None:
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", qemu_version())
    assert detect_accel() in ("kvm", "tcg")
    facts = cpu_facts("tcg")
    assert facts["vendor"] and facts["flags"] and facts["qemu_model"] == "max"
    assert {"sse2", "lm"} <= set(facts["qemu_host_features"])


def sweeps_in(accel: str, tmp_path: Path, seconds: float = 1.0) -> int:
    """Sweeps of a 64 MiB working set the test guest makes in `seconds` after QEMU starts."""
    import subprocess
    import time

    from qvplan.vmm.guest import SWEEP_LINE

    disk = patch_image(GuestParams(start=16 << 20, size=64 << 20, marker_every=1), tmp_path / f"{accel}.img",
                       source=find_guest_image())
    serial = tmp_path / f"{accel}.log"
    qemu = subprocess.Popen(["qemu-system-x86_64", "-nodefaults", "-display", "none", "-machine", "pc",
                             "-accel", accel, "-cpu", "host" if accel == "kvm" else "max", "-m", "128M",
                             "-drive", f"file={disk},format=raw,if=ide", "-serial", f"file:{serial}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(seconds)
        return serial.read_bytes().count(SWEEP_LINE) if serial.exists() else 0
    finally:
        qemu.kill()
        qemu.wait()


@needs_qemu
def test_the_accelerator_chosen_runs_a_guest_at_least_as_well_as_tcg(tmp_path: Path) -> None:
    """KVM is chosen only where it runs a guest that touches memory; a KVM that boots a tiny guest
    but crawls through RAM (a nested one without hardware paging) loses to TCG. Measured here
    with a stopwatch, apart from the detection's own probe."""
    chosen = detect_accel()
    other = "tcg" if chosen == "kvm" else "kvm"  # without a usable /dev/kvm, QEMU exits: 0 sweeps
    mine, theirs = sweeps_in(chosen, tmp_path), sweeps_in(other, tmp_path)
    assert mine > 0 and mine >= theirs // 2, (chosen, mine, other, theirs)
