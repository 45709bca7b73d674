"""The qemu-system-x86_64 command line for a VMSpec. Pure: no files touched, nothing started.

Choices that matter for migration: machine `pc` (i440fx, the least device state; the spec pins its version), no default
devices, every block node named (`disk0`, `disk0-file`, ... and `guest0` for the test guest) so
block mirroring and NBD exports can address them, and the same devices in the same order on both
sides.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import QemuError
from .spec import NicSpec, VMSpec
from .taps import tap_name

MIB = 1 << 20
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes including the NUL


@dataclass
class RunPaths:
    """The files of one VM's run directory."""

    run_dir: Path

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def serial_log(self) -> Path:
        return self.run_dir / "serial.log"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"

    @property
    def qemu_log(self) -> Path:
        return self.run_dir / "qemu.log"

    @property
    def spec_file(self) -> Path:
        return self.run_dir / "spec.json"

    @property
    def guest_image(self) -> Path:
        return self.run_dir / "testguest.img"


@dataclass
class CommandLine:
    argv: list[str]
    warnings: list[str] = field(default_factory=list)
    cpu: str = ""  # the -cpu value actually used


def opt(value: str | Path) -> str:
    """A value inside a QEMU `key=value,...` option: commas are escaped by doubling."""
    return str(value).replace(",", ",,")


def mac_address(name: str, index: int = 0) -> str:
    """A stable MAC for a VM's NIC `index`, the same on every host (52:54:00 is QEMU's prefix)."""
    digest = hashlib.sha256((name if index == 0 else f"{name}#{index}").encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def cpu_option(spec: VMSpec, accel: str) -> tuple[str, list[str]]:
    model, warnings = spec.cpu.model, []
    if model == "host" and accel != "kvm":
        model = "max"
        warnings.append("CPU model host needs KVM; using max under TCG")
    features = [f if f[0] in "+-" else "+" + f for f in spec.cpu.features]
    return ",".join([model, *features]), warnings


def build_command(spec: VMSpec, paths: RunPaths, *, accel: str, pool_paths: Mapping[str, Path],
                  qemu: str = "qemu-system-x86_64", incoming: str | None = None,
                  paused: bool = False) -> CommandLine:
    if accel not in ("kvm", "tcg"):
        raise QemuError(f"unknown accelerator {accel!r}", "use kvm or tcg")
    if len(str(paths.qmp_socket)) > UNIX_PATH_MAX:
        raise QemuError(f"QMP socket path is too long for a Unix socket: {paths.qmp_socket}",
                        "use a shorter state directory")
    cpu, warnings = cpu_option(spec, accel)
    argv = [
        qemu,
        "-name", opt(spec.name),
        "-machine", spec.machine or "pc",
        "-accel", "tcg,thread=multi" if accel == "tcg" else "kvm",
        "-cpu", cpu,
        "-m", f"{spec.memory_bytes // MIB}M",
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
        "-msg", "timestamp=on",
        "-pidfile", str(paths.pidfile),
        "-chardev", f"socket,id=qmp,path={opt(paths.qmp_socket)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"file,id=serial0,path={opt(paths.serial_log)}",
        "-device", "isa-serial,chardev=serial0",
    ]
    if spec.guest.test is not None:
        argv += ["-blockdev", blockdev("guest0", paths.guest_image, "raw"),
                 "-device", "ide-hd,drive=guest0,bus=ide.0,unit=0,bootindex=0"]
    for i, disk in enumerate(spec.disks):
        boot = ",bootindex=0" if spec.guest.boot_disk == i else ""
        argv += ["-blockdev", blockdev(f"disk{i}", disk.resolve(pool_paths), disk.format),
                 "-device", f"virtio-blk-pci,drive=disk{i},id=vd{i}{boot}"]
    if spec.guest.boot is not None:
        files = spec.guest.boot.resolve(pool_paths)
        argv += ["-kernel", str(files[0]), "-append", spec.guest.boot.cmdline]
        if len(files) > 1:
            argv += ["-initrd", str(files[1])]
    for i, nic in enumerate(spec.nics):
        argv += ["-netdev", netdev(spec.name, i, nic),
                 "-device", f"virtio-net-pci,netdev=net{i},id=nic{i},mac={mac_address(spec.name, i)},romfile="]
    if incoming is not None:
        argv += ["-incoming", incoming]
    if paused:
        argv.append("-S")
    return CommandLine(argv, warnings, cpu)


def netdev(vm: str, index: int, nic: NicSpec) -> str:
    """The -netdev of NIC `index`: QEMU's user network, a given tap, or the bridge NIC's own tap."""
    if nic.type == "user":
        return f"user,id=net{index}"
    ifname = nic.ifname if nic.type == "tap" else tap_name(vm, index)
    return f"tap,id=net{index},ifname={opt(ifname or '')},script=no,downscript=no"


def blockdev(node: str, path: Path, fmt: str) -> str:
    """A format node `node` over a file node `node-file`, as JSON (no comma escaping needed)."""
    return json.dumps({"node-name": node, "driver": fmt,
                       "file": {"driver": "file", "filename": str(path), "node-name": f"{node}-file"}})
