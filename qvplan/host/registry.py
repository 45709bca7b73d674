"""The VMs this host owns: definitions on disk, QEMU processes, lifecycle events.

Each VM lives in `<state>/vms/<name>/`: `vm.json` (its definition) and `run/` (QMP socket,
serial log, pidfile). The registry survives the agent restarting: `load()` re-attaches to
QEMUs still running and cleans up after ones that died.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contract.reasons import Reason
from ..errors import QVError
from ..vmm import QemuProcess, VMSpec
from ..vmm.confine import Confinement
from .events import EventHub
from .pools import Roots, check_spec

log = logging.getLogger(__name__)


class VMError(QVError):
    """A VM cannot do that in its state (a more precise code where one applies)."""

    code = Reason.VM_STATE


def unknown_vm(name: str) -> VMError:
    return VMError(f"unknown VM {name!r}", "see `quantavirt vm list` for the VMs on this host",
                   code=Reason.UNKNOWN_VM)


@dataclass
class VM:
    spec: VMSpec
    dir: Path
    proc: QemuProcess | None = None
    busy: str | None = None  # "migrating" while a migration owns the VM
    last_migration: dict[str, Any] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    @property
    def state(self) -> str:
        if self.busy:
            return self.busy
        return "running" if self.running else "defined"


class Registry:
    def __init__(self, state_dir: Path, pools: dict[str, Path], accel: str, events: EventHub,
                 confinement: Confinement, shared: list[str] | None = None) -> None:
        self.root = state_dir / "vms"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.pools = pools
        self.roots = Roots.of(pools, shared or [])  # where a VM's files may be (host/pools.py)
        self.accel = accel
        self.events = events
        self.vms: dict[str, VM] = {}
        self.confinement = confinement

    # -- loading -------------------------------------------------------------------------

    async def load(self) -> None:
        for vm_json in sorted(self.root.glob("*/vm.json")):
            try:
                spec = VMSpec.model_validate(json.loads(vm_json.read_text()))
            except Exception as err:  # a broken file must not stop the agent
                log.warning("skipping %s: %s", vm_json, err)
                continue
            vm = VM(spec, vm_json.parent)
            proc = self._process(vm)
            self.vms[spec.name] = vm
            if proc.is_alive():
                try:
                    await proc.attach()
                    vm.proc = proc
                    log.info("re-attached to %s (pid %s)", spec.name, proc.pid)
                    continue
                except Exception as err:
                    log.warning("cannot re-attach to %s: %s; stopping it", spec.name, err)
                    await proc.stop(graceful=False)
            self._clean_run_dir(vm)

    def _process(self, vm: VM) -> QemuProcess:
        vm.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return QemuProcess(vm.spec, run_dir=vm.run_dir, accel=self.accel, pool_paths=self.pools,
                           confinement=self.confinement)

    @staticmethod
    def _clean_run_dir(vm: VM) -> None:
        for leftover in ("qmp.sock", "qemu.pid"):
            (vm.run_dir / leftover).unlink(missing_ok=True)

    # -- queries -------------------------------------------------------------------------

    def get(self, name: str) -> VM:
        try:
            return self.vms[name]
        except KeyError:
            raise unknown_vm(name) from None

    def committed_memory(self) -> int:
        return sum(vm.spec.memory_bytes for vm in self.vms.values() if vm.running or vm.busy)

    def describe(self, vm: VM) -> dict[str, Any]:
        return {
            "name": vm.name,
            "state": vm.state,
            "memory": vm.spec.memory_bytes,
            "vcpus": vm.spec.vcpus,
            "cpu": vm.spec.cpu.model_dump(),
            "disks": self.disk_facts(vm.spec),
            "pid": vm.proc.pid if vm.running and vm.proc else None,
            "serial_markers": vm.proc.serial_markers() if vm.proc else 0,
            "spec": vm.spec.model_dump(mode="json"),
            "last_migration": vm.last_migration,
        }

    def disk_facts(self, spec: VMSpec) -> list[dict[str, Any]]:
        out = []
        for disk in spec.disks:
            path = disk.resolve(self.pools)
            out.append({
                "path": str(path),
                "format": disk.format,
                "size": disk.size_bytes,
                "pool": disk.pool,
                "exists": path.exists(),
            })
        return out

    # -- lifecycle -----------------------------------------------------------------------

    def define_here(self, spec: VMSpec) -> VM:
        """A VM made on this host (not one landing from a peer): its machine type is pinned to
        the version this host's QEMU runs, which it then keeps on every host it moves to."""
        from ..vmm.host import qemu_machines

        machines = qemu_machines()
        wanted = spec.machine or "pc"
        if wanted not in machines:
            raise VMError(f"machine type {wanted} is not run by this host's QEMU",
                          "use machine: pc, or a pc-i440fx version this QEMU lists (qemu-system-x86_64 -machine help)",
                          code=Reason.MACHINE_UNSUPPORTED)
        return self.define(spec.model_copy(update={"machine": machines[wanted]}))

    def define(self, spec: VMSpec, *, replace: bool = False) -> VM:
        if spec.name in self.vms and not replace:
            raise VMError(f"VM {spec.name!r} is already defined", "undefine it first or pick another name",
                          code=Reason.NAME_CLASH)
        check_spec(spec, self.roots)  # no file outside the pools and shared roots, no symlink
        vm = VM(spec, self.root / spec.name)
        vm.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (vm.dir / "vm.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
        self.vms[spec.name] = vm
        self.events.publish(spec.name, "defined")
        return vm

    async def start(self, name: str, **start_args: Any) -> VM:
        vm = self.get(name)
        async with vm._lock:
            if vm.running:
                raise VMError(f"VM {name!r} is already running")
            if vm.busy and "incoming" not in start_args:  # only its migration starts a busy VM
                raise VMError(f"VM {name!r} is {vm.busy}", "wait for the migration to finish or cancel it")
            check_spec(vm.spec, self.roots)  # again: a symlink may have been planted since define
            self._ensure_disks(vm.spec)
            proc = self._process(vm)
            await proc.start(**start_args)
            vm.proc = proc
        self.events.publish(name, "started", pid=proc.pid)
        return vm

    async def stop(self, name: str) -> VM:
        vm = self.get(name)
        if vm.busy:
            raise VMError(f"VM {name!r} is {vm.busy}", "wait for it to finish or cancel it first")
        async with vm._lock:
            if vm.proc is not None:
                await vm.proc.stop(graceful=True)
            vm.proc = None
            self._clean_run_dir(vm)
        self.events.publish(name, "stopped")
        return vm

    def undefine(self, name: str) -> None:
        vm = self.get(name)
        if vm.running or vm.busy:
            raise VMError(f"VM {name!r} is {vm.state}", "stop it first: quantavirt vm stop " + name)
        self.forget(name)
        self.events.publish(name, "undefined")

    def forget(self, name: str) -> None:
        """Drop a VM from this host (undefine, or it now lives elsewhere). Disks stay."""
        vm = self.vms.pop(name)
        shutil.rmtree(vm.dir, ignore_errors=True)

    def _ensure_disks(self, spec: VMSpec) -> None:
        from ..vmm import create_disk

        for disk in spec.disks:
            path = disk.resolve(self.pools)
            if not path.exists():
                if disk.size_bytes is None:
                    raise VMError(f"disk {path} does not exist", "create it or give the disk a size")
                create_disk(path, disk.size_bytes, disk.format)
