"""What this host offers VMs: the accelerator, the QEMU version, the CPU.

Each answer is cached for the life of the process. `detect_accel` also keeps its answer in a
small file in the temp dir, keyed by boot id and QEMU binary, because the honest check (boot the
test guest under KVM) takes seconds when KVM is broken and every agent start asks.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..boot import boot_id
from .errors import QemuError

QEMU = "qemu-system-x86_64"
KVM_BOOT_TIMEOUT = 4.0
# The KVM check's guest: RAM, working set, and the sweeps of it that must be done within
# KVM_BOOT_TIMEOUT. Working KVM does thousands a second; a nested KVM without hardware paging
# (seen in a Firecracker VM here) boots a tiny guest but crawls through memory, far slower
# than TCG (~800 sweeps a second of this working set): a Linux kernel prints nothing in 25 s.
KVM_PROBE_MEMORY, KVM_PROBE_WORKING_SET, KVM_PROBE_SWEEPS = "128M", 64 << 20, 200
PROBE_VERSION = 2  # part of the cache key: a changed check must not trust an old answer
_accel_cache: str | None = None


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise QemuError(f"{QEMU} is not installed", "install it: apt-get install qemu-system-x86")
    return path


@functools.cache
def qemu_version() -> str:
    """`7.2.22` from `qemu-system-x86_64 --version`."""
    out = subprocess.run([qemu_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    if not m:
        raise QemuError(f"cannot read the QEMU version from {out.strip()[:60]!r}", "check the QEMU install")
    return m.group(1)


def detect_accel() -> str:
    """"kvm" if KVM really runs a guest here, else "tcg". `$QVPLAN_ACCEL` overrides."""
    global _accel_cache
    if forced := os.environ.get("QVPLAN_ACCEL"):
        if forced not in ("kvm", "tcg"):
            raise QemuError(f"QVPLAN_ACCEL={forced} is not kvm or tcg", "unset it or set kvm or tcg")
        return forced
    if _accel_cache is None:
        key = _accel_key()
        cache = Path(tempfile.gettempdir()) / f"qvplan-accel-{os.getuid()}.json"
        try:
            saved = json.loads(cache.read_text())
            _accel_cache = saved["accel"] if saved.get("key") == key else None
        except (OSError, ValueError, KeyError):
            pass
        if _accel_cache is None:
            _accel_cache = "kvm" if _kvm_works() else "tcg"
            try:
                cache.write_text(json.dumps({"key": key, "accel": _accel_cache}))
            except OSError:
                pass
    return _accel_cache


def _accel_key() -> str:
    binary = shutil.which(QEMU)
    stamp = os.stat(binary).st_mtime if binary else 0
    return f"{boot_id() or '?'}:{binary}:{stamp}:{PROBE_VERSION}"


def _kvm_works() -> bool:
    """/dev/kvm opens read-write, runs a `hlt` (qvplan.vmm.kvmprobe), and the test guest with
    `-cpu host` (our default model) sweeps a real working set at KVM's speed within seconds.

    The last step matters: some nested setups pass the ioctl check while QEMU aborts setting
    MSRs for `-cpu host`, or boot a tiny guest but run any guest that touches memory far slower
    than TCG."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or shutil.which(QEMU) is None:
        return False
    try:
        probe = subprocess.run([sys.executable, "-m", "qvplan.vmm.kvmprobe"], capture_output=True, timeout=5)
    except subprocess.TimeoutExpired:
        return False
    if probe.returncode != 0:
        return False
    return _boots_under_kvm()


def _boots_under_kvm() -> bool:
    from .guest import SWEEP_LINE, GuestParams, find_guest_image, test_guest_image

    try:
        image = find_guest_image()
    except QemuError:
        return True  # nothing to boot; the ioctl probe is all we can check
    with tempfile.TemporaryDirectory(prefix="qvplan-kvm-") as tmp:
        params = GuestParams(start=16 << 20, size=KVM_PROBE_WORKING_SET, marker_every=1)
        disk = test_guest_image(params, Path(tmp, "g.img"), source=image)
        serial = Path(tmp, "serial.log")
        argv = [QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-machine", "pc", "-accel", "kvm",
                "-cpu", "host", "-m", KVM_PROBE_MEMORY, "-drive", f"file={disk},format=raw,if=ide",
                "-serial", f"file:{serial}"]
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + KVM_BOOT_TIMEOUT
            while time.monotonic() < deadline and qemu.poll() is None:
                if serial.exists() and serial.read_bytes().count(SWEEP_LINE) >= KVM_PROBE_SWEEPS:
                    return True
                time.sleep(0.05)
            return False
        finally:
            qemu.kill()
            qemu.wait()


@functools.cache
def _cpuinfo() -> dict[str, Any]:
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return {
        "vendor": fields.get("vendor_id", "unknown"),
        "model": fields.get("model name", "unknown"),
        "flags": sorted(fields.get("flags", "").split()),
    }


def _probe(accel: str, command: dict[str, Any], what: str) -> Any:
    """The answer to one QMP command of a short-lived QEMU with no machine."""
    requests = [{"execute": "qmp_capabilities"}, command, {"execute": "quit"}]
    argv = [qemu_binary(), "-machine", "none", "-accel", accel, "-nodefaults", "-no-user-config",
            "-display", "none", "-S", "-qmp", "stdio"]
    try:
        run = subprocess.run(argv, input="".join(json.dumps(r) + "\n" for r in requests),
                             capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        raise QemuError(f"QEMU's {what} probe timed out", "check that qemu-system-x86_64 runs") from None
    replies = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    answers = [r["return"] for r in replies if "return" in r and r["return"] != {}]
    if answers:
        return answers[0]
    last = (run.stderr.strip().splitlines() or ["no answer"])[-1]
    raise QemuError(f"QEMU's {what} probe failed: {last}", "check that qemu-system-x86_64 runs")


@functools.cache
def qemu_cpu_features(accel: str) -> tuple[str, list[str]]:
    """(model, enabled features) of QEMU's `host` (kvm) or `max` (tcg) CPU model, asked with
    `query-cpu-model-expansion` from a short-lived QEMU with no machine."""
    model = "host" if accel == "kvm" else "max"
    answer = _probe(accel, {"execute": "query-cpu-model-expansion",
                            "arguments": {"type": "full", "model": {"name": model}}}, "CPU")
    props = answer.get("model", {}).get("props") if isinstance(answer, dict) else None
    if not isinstance(props, dict):
        raise QemuError("QEMU's CPU probe answered no CPU model", "check that qemu-system-x86_64 runs")
    return model, sorted(k for k, v in props.items() if v is True)


@functools.cache
def qemu_machines() -> dict[str, str]:
    """The machine types this QEMU runs, each name → the versioned type it stands for (an alias
    such as `pc` → `pc-i440fx-10.0`; a versioned type → itself). Asked with `query-machines`."""
    answer = _probe("tcg", {"execute": "query-machines"}, "machine")
    machines: dict[str, str] = {}
    for m in answer if isinstance(answer, list) else []:
        machines[str(m["name"])] = str(m["name"])
        if m.get("alias"):
            machines[str(m["alias"])] = str(m["name"])
    return machines


def cpu_facts(accel: str | None = None) -> dict[str, Any]:
    """Vendor, model and flags from /proc/cpuinfo, and the features QEMU's host/max model exposes."""
    accel = accel or detect_accel()
    model, features = qemu_cpu_features(accel)
    return {**_cpuinfo(), "qemu_model": model, "qemu_host_features": features}
