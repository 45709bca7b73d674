"""Does KVM really run a guest here? Run one `hlt` in a fresh KVM VM and look at the exit.

Opening /dev/kvm is not enough: some sandboxes expose a /dev/kvm whose vCPUs never run. Run as
`python -m qvplan.vmm.kvmprobe` (in a child process, so a hung KVM_RUN is killed by a timeout);
exit status 0 means KVM works.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import sys

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_SET_REGS = 0x4090AE82
KVM_EXIT_HLT = 5


def probe() -> str | None:
    """None if a vCPU ran to its `hlt`, else what went wrong."""
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    if fcntl.ioctl(kvm, KVM_GET_API_VERSION) != 12:
        return "unexpected KVM API version"
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    mem = mmap.mmap(-1, 0x1000)
    mem[0] = 0xF4  # hlt
    addr = _address(mem)
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, struct.pack("<IIQQQ", 0, 0, 0, 0x1000, addr))
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    run = mmap.mmap(vcpu, fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE), mmap.MAP_SHARED,
                    mmap.PROT_READ | mmap.PROT_WRITE)
    sregs = bytearray(312)
    fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs)
    struct.pack_into("<Q", sregs, 0, 0)   # cs.base = 0
    struct.pack_into("<H", sregs, 12, 0)  # cs.selector = 0
    fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
    regs = [0] * 18
    regs[17] = 2  # rflags; rip (regs[16]) = 0
    fcntl.ioctl(vcpu, KVM_SET_REGS, struct.pack("<18Q", *regs))
    fcntl.ioctl(vcpu, KVM_RUN, 0)
    reason = struct.unpack_from("<I", run, 8)[0]
    return None if reason == KVM_EXIT_HLT else f"vCPU exited with reason {reason}, not hlt"


def _address(buf: mmap.mmap) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


if __name__ == "__main__":
    try:
        problem = probe()
    except OSError as err:
        problem = str(err)
    if problem:
        print(problem, file=sys.stderr)
    sys.exit(1 if problem else 0)
