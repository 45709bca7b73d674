"""The QEMU driver: VM definitions, QEMU processes over QMP, the test guest and its RAM check.

Imports nothing of the project but the foundation (errors, units, paths).
"""

from .disks import create_disk, disk_info
from .errors import QemuError
from .guest import GuestParams, find_guest_image, test_guest_image
from .host import cpu_facts, detect_accel, qemu_version
from .process import QemuProcess
from .spec import BootSpec, CPUSpec, DiskSpec, GuestSpec, NicSpec, SpecError, TestGuestSpec, VMSpec
from .verify import BadPage, RamReport, check_ram, verify_ram

__all__ = [
    "BadPage",
    "BootSpec",
    "CPUSpec",
    "DiskSpec",
    "GuestParams",
    "GuestSpec",
    "NicSpec",
    "QemuError",
    "QemuProcess",
    "RamReport",
    "SpecError",
    "TestGuestSpec",
    "VMSpec",
    "check_ram",
    "cpu_facts",
    "create_disk",
    "detect_accel",
    "disk_info",
    "find_guest_image",
    "qemu_version",
    "test_guest_image",
    "verify_ram",
]
