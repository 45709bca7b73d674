"""The Linux test guest in a lab: its VM definition, its serial markers, a client and a capture
in the client namespace.

The guest (guest/linux/, `make linux-guest`) boots the cloud kernel with our initramfs from the
lab's shared `images` pool, joins the host's `vmbr0` with a bridged NIC and takes its address
from the kernel command line. Its serial console says `QV-READY`, `QV-FILES-OK n=N`, ...
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..vmm.cmdline import mac_address
from . import images
from .lab import Lab
from .model import LabError, LabHost
from .vmnet import HOST_BRIDGE

READY = "QV-READY"


def linux_vm(lab: Lab, name: str, k: int, *, memory: str = "256M", writer: bool = False, files: int = 200,
             disk: dict[str, Any] | None = None) -> dict[str, Any]:
    """The definition of Linux guest number `k` (address from lab.spec.vm_address(k))."""
    if not images.linux_guest_built():
        raise LabError("the Linux test guest is not built", "run `make linux-guest`")
    cmdline = f"console=ttyS0 quiet panic=-1 qv.ip={lab.spec.vm_address(k)}/24"
    if writer:
        cmdline += f" qv.writer=1 qv.files={files}"
    vm: dict[str, Any] = {
        "name": name, "memory": memory, "vcpus": 1, "cpu": {"model": "qemu64"},
        "nic": {"type": "bridge", "bridge": HOST_BRIDGE},
        "guest": {"boot": {"pool": images.POOL, "kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline}},
    }
    if disk is not None:
        vm["disks"] = [disk]
    return vm


def address_of(vm: dict[str, Any]) -> str:
    m = re.search(r"qv\.ip=([0-9.]+)/", vm["guest"]["boot"]["cmdline"])
    if not m:
        raise LabError(f"VM {vm['name']} has no qv.ip on its kernel command line", "define it with linux_vm()")
    return m.group(1)


def serial_log(host: LabHost, name: str) -> Path:
    return host.file("state") / "vms" / name / "run" / "serial.log"


def serial_text(host: LabHost, name: str) -> str:
    try:
        return serial_log(host, name).read_text(errors="replace")
    except OSError:
        return ""


def wait_serial(host: LabHost, name: str, pattern: str, timeout: float = 90.0, after: int = 0) -> re.Match[str]:
    """Wait until the guest's serial log (from offset `after`) matches `pattern`."""
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, serial_text(host, name)[after:])
        if m:
            return m
        if time.monotonic() > deadline:
            tail = serial_text(host, name)[-300:]
            raise LabError(f"{name} on {host.name}: no {pattern!r} on its serial console in {timeout:.0f}s",
                           f"see {serial_log(host, name)} (ends: {tail!r})")
        time.sleep(0.2)


def control(lab: Lab, address: str, command: str, timeout: float = 60) -> str:
    """Send a control command (verify, halt) to the guest from the client namespace; its answer."""
    argv = [sys.executable, "-m", "qvplan.lab.probe", address, "--control", command]
    done = subprocess.run(lab.client_argv(argv), capture_output=True, text=True, timeout=timeout)
    return done.stdout.strip() or done.stderr.strip()


class Client:
    """`python -m qvplan.lab.probe` in the client namespace: UDP probes and one TCP connection."""

    def __init__(self, lab: Lab, address: str, *, interval: float = 0.001, tcp: bool = True) -> None:
        argv = [sys.executable, "-m", "qvplan.lab.probe", address, "--interval", str(interval)]
        if not tcp:
            argv.append("--no-tcp")
        self.proc = subprocess.Popen(lab.client_argv(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if "probing" not in first:
            raise LabError(f"the lab client did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")

    def stop(self) -> dict[str, Any]:
        """End the probes; what the client saw."""
        out, err = self.proc.communicate("", timeout=60)
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise LabError(f"the lab client printed no report: {err.strip()[-300:]}") from None


class Capture:
    """tcpdump in the client namespace of the frames a MAC sends that announce it (ARP, RARP)."""

    def __init__(self, lab: Lab, mac: str, file: Path) -> None:
        self.file = file
        self.log = open(file, "w")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            lab.client_argv(["tcpdump", "-l", "-n", "-e", "-i", "eth0", f"ether src {mac} and (arp or rarp)"]),
            stdout=self.log, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # tcpdump needs a moment before it listens

    def stop(self) -> list[str]:
        time.sleep(0.3)
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        return [line for line in self.file.read_text().splitlines() if line.strip()]


def guest_mac(name: str) -> str:
    return mac_address(name)
