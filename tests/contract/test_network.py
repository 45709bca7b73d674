"""The bridge rule (pure), and that the plan and the destination judge by it with one code."""

from __future__ import annotations

from qvplan.contract import rules
from qvplan.contract.errors import refusal_error
from qvplan.contract.network import NETWORK_NOT_FOUND, missing_network, vm_bridges
from qvplan.contract.reasons import Reason
from qvplan.plan.checks import check_network as plan_check

VM = {"name": "web-01", "nic": [{"type": "bridge", "bridge": "vmbr0"}, {"type": "user"},
                                {"type": "bridge", "bridge": "vmbr1"}]}


def test_rule() -> None:
    assert vm_bridges(VM) == ["vmbr0", "vmbr1"]
    assert vm_bridges({"nic": {"type": "user"}}) == [] and vm_bridges({}) == []
    assert missing_network(VM, ["vmbr0", "vmbr1", "br9"]) is None
    problem = missing_network(VM, ["vmbr0"])
    assert problem is not None and problem.code is Reason.NETWORK_NOT_FOUND == NETWORK_NOT_FOUND
    assert problem.detail == "bridge vmbr1" and problem.fix and "ip link add vmbr1 type bridge" in problem.fix
    assert missing_network(VM, None) is not None  # a host that reports no bridges has none
    assert missing_network({"nic": {"type": "none"}}, None) is None


def test_agent_and_plan_say_the_same() -> None:
    problem = missing_network(VM, ["vmbr0"])
    assert problem is not None
    err = refusal_error(problem)  # what the destination raises in phase 1
    assert err.cause == "Migration rejected: network not found on destination: bridge vmbr1"
    assert err.code == "network-not-found"
    facts = {"a": {}, "b": {"bridges": ["vmbr0"]}}
    result = plan_check("a", "b", facts, "b:9410", {"spec": VM})
    assert not result.ok and result.code == "network-not-found"
    assert result.message == "network not found on destination: bridge vmbr1 (b)"
    assert plan_check("a", "b", facts, "b:9410", {"spec": {"nic": {"type": "user"}}}).ok


def test_boot_files_must_exist_on_the_destination() -> None:
    there = {"/img/vmlinuz"}
    assert rules.check_boot_files(["/img/vmlinuz"], there.__contains__) is None
    refusal = rules.check_boot_files(["/img/vmlinuz", "/img/initrd.img"], there.__contains__)
    assert refusal is not None and refusal.code is Reason.STORAGE_NOT_FOUND
    assert refusal_error(refusal).cause == "Migration rejected: Storage not found on destination (boot file " \
                                           "/img/initrd.img)"
