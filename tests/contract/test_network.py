"""The bridge rule (pure) and that plan and agent both judge by it, with its reason code."""

from __future__ import annotations

from qvplan.contract.network import NETWORK_NOT_FOUND, missing_network, vm_bridges
from qvplan.migration import checks as agent_checks
from qvplan.plan.checks import check_network as plan_check

VM = {"name": "web-01", "nic": [{"type": "bridge", "bridge": "vmbr0"}, {"type": "user"},
                                {"type": "bridge", "bridge": "vmbr1"}]}


def test_rule() -> None:
    assert vm_bridges(VM) == ["vmbr0", "vmbr1"]
    assert vm_bridges({"nic": {"type": "user"}}) == [] and vm_bridges({}) == []
    assert missing_network(VM, ["vmbr0", "vmbr1", "br9"]) is None
    problem = missing_network(VM, ["vmbr0"])
    assert problem is not None and problem.bridge == "vmbr1" and problem.reason_code == NETWORK_NOT_FOUND
    assert problem.message == "network not found on destination: bridge vmbr1"
    assert missing_network(VM, None) is not None  # a host that reports no bridges has none
    assert missing_network({"nic": {"type": "none"}}, None) is None


def test_agent_and_plan_say_the_same() -> None:
    err = agent_checks.check_network(VM, ["vmbr0"])
    assert err is not None and err.reason_code == "network-not-found"  # type: ignore[attr-defined]
    assert err.cause == "Migration rejected: network not found on destination: bridge vmbr1"
    facts = {"a": {}, "b": {"bridges": ["vmbr0"]}}
    result = plan_check("a", "b", facts, "b:9410", {"spec": VM})
    assert not result.ok and result.reason_code == "network-not-found"
    assert result.message.startswith("network not found on destination: bridge vmbr1")
    assert plan_check("a", "b", facts, "b:9410", {"spec": {"nic": {"type": "user"}}}).ok
