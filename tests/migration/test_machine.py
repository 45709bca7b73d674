"""A VM keeps its machine type across hosts (contract/machine.py): pinned when defined, to the
version its host's QEMU runs; a newer QEMU takes it, an older one refuses it in phase 1.

Two real agents on two QEMU versions: Debian 12's 7.2 (unpacked by make, first on one agent's
PATH) and the installed one (9.0 or later). The machine each QEMU really runs is read from its
command line in /proc, and the pinned names from QEMU's own `-machine help`, not the agents.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from qvplan.contract.machine import unsupported_machine
from qvplan.contract.reasons import Reason

from ..agents import mutual_trust
from .helpers import migrate, start_guest
from .invariant import exactly_one, qemu_pids
from .test_ramcheck import QEMU_72, needs_qemu


def pc_of(qemu: str) -> str:
    """What `pc` stands for in this QEMU, from its own `-machine help`."""
    out = subprocess.run([qemu, "-machine", "help"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"^pc\s+.*\(alias of (pc-i440fx-[0-9.]+)\)", out, re.M)
    assert found, out
    return found.group(1)


def machine_run(agent, name: str) -> str:
    (pid,) = qemu_pids(agent, name)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return argv[argv.index(b"-machine") + 1].decode()


def test_the_rule_refuses_only_a_type_the_destination_lacks() -> None:
    assert unsupported_machine({"machine": "pc-i440fx-7.2"}, ["pc", "pc-i440fx-7.2", "pc-i440fx-10.0"]) is None
    refusal = unsupported_machine({"machine": "pc-i440fx-10.0"}, ["pc", "pc-i440fx-7.2"])
    assert refusal is not None and refusal.code == Reason.MACHINE_UNSUPPORTED
    assert refusal.detail == "machine type pc-i440fx-10.0" and "upgrade QEMU on the destination" in refusal.fix
    assert unsupported_machine({}, ["pc-i440fx-7.2"]) is None  # defined before types were pinned: pc anywhere
    assert unsupported_machine({"machine": "pc-i440fx-10.0"}, None) is None  # a destination that did not say


def test_the_plan_refuses_the_move_with_the_same_rule() -> None:
    from qvplan.plan import checks

    cpu = {"vendor": "GenuineIntel", "flags": [], "qemu_host_features": []}
    facts = {"hv-a": {"cpu": cpu, "qemu_version": "10.0.2", "qemu_machines": ["pc", "pc-i440fx-7.2", "pc-i440fx-10.0"]},
             "hv-b": {"cpu": cpu, "qemu_version": "7.2.22", "qemu_machines": ["pc", "pc-i440fx-7.2"]}}
    vm = {"cpu": {"model": "qemu64"}, "spec": {"machine": "pc-i440fx-10.0"}}
    result = checks.check_cpu(vm, "hv-a", "hv-b", facts, "strict")
    assert not result.ok and result.code == Reason.MACHINE_UNSUPPORTED
    assert result.message == "hv-b's QEMU 7.2.22 does not run machine type pc-i440fx-10.0", result
    assert checks.check_cpu({**vm, "spec": {"machine": "pc-i440fx-7.2"}}, "hv-b", "hv-a", facts, "strict").ok


@needs_qemu
def test_a_vm_moves_to_a_newer_qemu_keeping_its_type_and_not_back_from_it(make_agent) -> None:
    assert (QEMU_72 / "qemu-system-x86_64").exists(), "no QEMU 7.2 unpacked: run make setup"
    old = make_agent("hv-a", start=False)
    old.env = {"PATH": f"{QEMU_72}:{os.environ['PATH']}"}
    old.start()
    new = make_agent("hv-b")
    mutual_trust(old, new)
    old_pc, new_pc = pc_of(str(QEMU_72 / "qemu-system-x86_64")), pc_of("qemu-system-x86_64")
    assert old_pc != new_pc, (old_pc, new_pc)

    # Defined on the old QEMU: pinned to its type; the newer QEMU runs that same type after the move
    start_guest(old, "vm-1", memory="64M", working_set="4M")
    assert old.vm("vm-1")["spec"]["machine"] == old_pc == machine_run(old, "vm-1")
    status = migrate(old, new, "vm-1", threads=1)
    assert status["state"] == "COMPLETED", status
    assert machine_run(new, "vm-1") == old_pc
    exactly_one(new, old)  # RAM verified on the destination, nothing left on the source

    # Defined on the newer QEMU: its type is unknown to 7.2, so the move back is refused in phase 1
    start_guest(new, "vm-2", memory="64M", working_set="4M")
    assert machine_run(new, "vm-2") == new_pc
    refused = new.cli("vm", "migrate", "vm-2", "--dest", old.migration, "--json")
    assert refused.returncode != 0, refused.stdout
    answer = json.loads(refused.stdout)
    assert answer["code"] == "machine-unsupported", answer
    assert answer["error"] == f"Migration rejected: destination's QEMU does not run machine type {new_pc}", answer
    exactly_one(new, old, "vm-2")
