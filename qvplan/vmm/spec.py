"""A VM definition (`quantavirt vm define` YAML, API JSON): the pydantic model `VMSpec`.

Sizes stay as the user wrote them (`256M`) so a definition round-trips unchanged; the
`*_bytes` properties give the numbers. `VMSpec.load(data)` turns a validation failure into one
`SpecError` line naming the key; `model_validate` raises pydantic's `ValidationError` as usual.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import QVError
from ..units import format_size, parse_size

PAGE = 4096
MIB = 1 << 20
# The test guest addresses its working set with 32-bit pointers below the PCI hole.
GUEST_ADDR_LIMIT = 3 << 30

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
MACHINE_RE = re.compile(r"^pc(-i440fx-\d{1,2}\.\d{1,2})?$")
CPU_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CPU_FEATURE_RE = re.compile(r"^[+-]?[a-z0-9][a-z0-9_.-]*$")
# A message that starts with "sub.key: " names a key below the field it was raised on.
_SUBKEY_RE = re.compile(r"^([a-z_][a-z0-9_.]*): (.*)$")
_UNION_TAG_RE = re.compile(r"^([A-Z]\w*|[a-z-]+\[.*\])$")


class SpecError(QVError):
    """A VM definition that does not validate."""


def _size(value: str | int, what: str) -> int:
    try:
        n = parse_size(value, what)
    except QVError as err:
        raise ValueError(err.cause) from None
    if n < 0:
        raise ValueError(f"{what} must not be negative")
    return n


def plain_name(name: str) -> bool:
    """One path component: a file name inside a pool (host/pools.py checks it again, beneath the pool)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CPUSpec(_Strict):
    model: str = "host"
    features: list[str] = Field(default_factory=list)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not CPU_MODEL_RE.match(v):
            raise ValueError(f"{v!r} is not a CPU model name (host, max, qemu64, Skylake-Server, ...)")
        return v

    @field_validator("features")
    @classmethod
    def _features(cls, v: list[str]) -> list[str]:
        for feat in v:
            if not CPU_FEATURE_RE.match(feat):
                raise ValueError(f"{feat!r} is not a CPU feature (write +name or -name, e.g. +sse4.2)")
        return v


class DiskSpec(_Strict):
    """A disk image: `file` in a storage `pool` (default "default"), or an absolute `path`."""

    pool: str | None = None
    file: str | None = None
    path: str | None = None
    size: str | int | None = None
    format: Literal["qcow2", "raw"] = "qcow2"

    @field_validator("size")
    @classmethod
    def _size_ok(cls, v: str | int | None) -> str | int | None:
        if v is not None and _size(v, "disk size") < 1:
            raise ValueError("disk size must be positive")
        return v

    @model_validator(mode="after")
    def _where(self) -> DiskSpec:
        if self.path is not None:
            if self.file is not None or self.pool is not None:
                raise ValueError("give either path or pool+file, not both")
            if not Path(self.path).is_absolute():
                raise ValueError(f"path {self.path!r} must be absolute")
            return self
        if self.file is None:
            raise ValueError("a disk needs file (in a pool) or path")
        if not plain_name(self.file):
            raise ValueError(f"file {self.file!r} must be a plain file name inside the pool")
        if self.pool is None:
            self.pool = "default"
        return self

    @property
    def size_bytes(self) -> int | None:
        return None if self.size is None else _size(self.size, "disk size")

    def resolve(self, pools: Mapping[str, Path]) -> Path:
        """The image's absolute path on this host."""
        if self.path is not None:
            return Path(self.path)
        assert self.pool is not None and self.file is not None
        if self.pool not in pools:
            raise SpecError(f"unknown storage pool {self.pool!r}",
                            f"use one of: {', '.join(sorted(pools)) or '(none configured)'}")
        return Path(pools[self.pool]) / self.file


IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")  # a Linux interface name (IFNAMSIZ)


class NicSpec(_Strict):
    """A virtio NIC: none, QEMU's user network, an existing tap (`ifname`), or a tap the agent
    makes on a host `bridge` (removed with its QEMU)."""

    type: Literal["none", "user", "tap", "bridge"] = "none"
    ifname: str | None = None
    bridge: str | None = None

    @model_validator(mode="after")
    def _ifname(self) -> NicSpec:
        if self.type == "tap" and not self.ifname:
            raise ValueError("a tap NIC needs ifname")
        if self.type != "tap" and self.ifname:
            raise ValueError(f"ifname only applies to type tap, not {self.type}")
        if self.type == "bridge" and not self.bridge:
            raise ValueError("a bridge NIC needs bridge (the host bridge's name, e.g. vmbr0)")
        if self.type != "bridge" and self.bridge:
            raise ValueError(f"bridge only applies to type bridge, not {self.type}")
        for name in (self.ifname, self.bridge):
            if name is not None and not IFNAME_RE.match(name):
                raise ValueError(f"{name!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)")
        return self


class BootSpec(_Strict):
    """A direct kernel boot: `kernel` and `initrd` are file names in `pool` (default "default")
    or absolute paths; `cmdline` is the kernel's command line."""

    kernel: str
    initrd: str | None = None
    cmdline: str = ""
    pool: str | None = None

    @model_validator(mode="after")
    def _files(self) -> BootSpec:
        for key, value in (("kernel", self.kernel), ("initrd", self.initrd)):
            if value is None or Path(value).is_absolute():  # where it may be: host/pools.py's rule
                continue
            if not plain_name(value):
                raise ValueError(f"{key}: {value!r} must be a plain file name in the pool or an absolute path")
        if "\n" in self.cmdline or len(self.cmdline) > 2048:
            raise ValueError("cmdline must be one line of at most 2048 characters")
        return self

    def resolve(self, pools: Mapping[str, Path]) -> list[Path]:
        """[kernel, initrd?] as absolute paths on this host."""
        out = []
        for value in (self.kernel, self.initrd):
            if value is None:
                continue
            if Path(value).is_absolute():
                out.append(Path(value))
                continue
            pool = self.pool or "default"
            if pool not in pools:
                raise SpecError(f"unknown storage pool {pool!r} for the kernel boot",
                                f"use one of: {', '.join(sorted(pools)) or '(none configured)'}")
            out.append(Path(pools[pool]) / value)
        return out


class TestGuestSpec(_Strict):
    """Parameters of the test guest (guest/testguest.S): which RAM it sweeps and how fast."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    working_set: str | int = "16M"
    start: str | int = "16M"  # guest-physical address of the working set
    pace: int = Field(0, ge=0, lt=1 << 32)  # busy-loop iterations after each page; 0 = full speed
    marker_every: int = Field(16, ge=0, lt=1 << 32)  # sweeps per serial marker line; 0 = none

    @field_validator("working_set")
    @classmethod
    def _ws(cls, v: str | int) -> str | int:
        n = _size(v, "working set")
        if n < PAGE or n % PAGE:
            raise ValueError(f"working set {v} must be a positive multiple of 4K")
        return v

    @field_validator("start")
    @classmethod
    def _start(cls, v: str | int) -> str | int:
        n = _size(v, "working-set start")
        if n < MIB or n % PAGE:
            raise ValueError(f"start {v} must be 4K-aligned and at least 1M (above the BIOS)")
        return v

    @property
    def working_set_bytes(self) -> int:
        return _size(self.working_set, "working set")

    @property
    def start_bytes(self) -> int:
        return _size(self.start, "working-set start")


class GuestSpec(_Strict):
    """What the VM runs: exactly one of `test` (the test guest), `boot_disk` (an index) or
    `boot` (a kernel, initrd and command line)."""

    test: TestGuestSpec | None = None
    boot_disk: int | None = Field(None, ge=0)
    boot: BootSpec | None = None

    @model_validator(mode="after")
    def _one(self) -> GuestSpec:
        if [self.test, self.boot_disk, self.boot].count(None) != 2:
            raise ValueError("give exactly one of test, boot_disk or boot")
        return self


class VMSpec(_Strict):
    name: str
    memory: str | int = "256M"
    vcpus: int = Field(1, ge=1, le=64)
    cpu: CPUSpec = Field(default_factory=CPUSpec)
    # QEMU's machine type: `pc` (i440fx: the least device state to migrate) or one version of it.
    # The agent pins `pc` to its versioned type when the VM is defined, so the VM keeps the same
    # machine on every host it moves to (a newer QEMU still runs an older type, not the reverse).
    machine: str | None = None
    disks: list[DiskSpec] = Field(default_factory=list)
    nic: NicSpec | list[NicSpec] = Field(default_factory=NicSpec)  # one NIC, or a list
    guest: GuestSpec  # declared last: its checks read memory and disks

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a VM name (1-63 of a-z 0-9 - _ . starting with a letter or digit)")
        return v

    @field_validator("machine")
    @classmethod
    def _machine(cls, v: str | None) -> str | None:
        if v is not None and not MACHINE_RE.match(v):
            raise ValueError(f"machine {v!r} is not pc or a versioned pc-i440fx-N.N machine type")
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | int) -> str | int:
        n = _size(v, "memory")
        if n < 16 * MIB or n % MIB:
            raise ValueError(f"memory {v} must be a whole number of MiB, at least 16M")
        return v

    @field_validator("guest")
    @classmethod
    def _guest_fits(cls, v: GuestSpec, info: ValidationInfo) -> GuestSpec:
        if v.boot_disk is not None and "disks" in info.data and v.boot_disk >= len(info.data["disks"]):
            raise ValueError(f"boot_disk: {v.boot_disk} is not a disk index (the VM has "
                             f"{len(info.data['disks'])} disks)")
        if v.test is not None and "memory" in info.data:
            memory = _size(info.data["memory"], "memory")
            end = v.test.start_bytes + v.test.working_set_bytes
            if end > min(memory, GUEST_ADDR_LIMIT):
                raise ValueError(f"test.working_set: {v.test.working_set} from {v.test.start} ends at "
                                 f"{format_size(end)}, past the VM's memory ({format_size(memory)}"
                                 f"{', or the 3 GiB limit' if memory > GUEST_ADDR_LIMIT else ''})")
        return v

    @field_validator("nic")
    @classmethod
    def _nics(cls, v: NicSpec | list[NicSpec]) -> NicSpec | list[NicSpec]:
        if isinstance(v, list) and len(v) > 8:
            raise ValueError("at most 8 NICs")
        return v

    @property
    def memory_bytes(self) -> int:
        return _size(self.memory, "memory")

    @property
    def nics(self) -> list[NicSpec]:
        """The VM's NICs in order (type none left out); index i is QEMU's net<i>/nic<i>."""
        listed = self.nic if isinstance(self.nic, list) else [self.nic]
        return [n for n in listed if n.type != "none"]

    @property
    def bridges(self) -> list[str]:
        """The host bridges this VM's NICs need."""
        return [n.bridge for n in self.nics if n.type == "bridge" and n.bridge]

    @classmethod
    def load(cls, data: Any) -> VMSpec:
        """Validate a definition; any problem is one `SpecError` line naming the first bad key."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise SpecError(*describe_error(err)) from None


def describe_error(err: ValidationError) -> tuple[str, str]:
    """(cause, fix) for the first error of a `ValidationError`, naming the key like `guest.test.pace`."""
    first = err.errors()[0]
    # A union (nic: one or a list) adds its member's tag to the location: leave those out.
    loc = [str(p) for p in first["loc"] if not _UNION_TAG_RE.match(str(p))]
    msg = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif m := _SUBKEY_RE.match(msg):
        loc.append(m.group(1))
        msg = m.group(2)
    key = ".".join(loc) or "(top level)"
    return f"invalid VM definition: {key}: {msg}", "fix that key (see README: VM definitions)"
