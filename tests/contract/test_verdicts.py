"""One rule book: for any two hosts, VM and policies, `qvplan plan`'s verdict on a move equals the
destination agent's phase-1 verdict, reason code for reason code (2,000 generated cases)."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qvplan.contract.flags import MigrateFlags
from qvplan.contract.reasons import Reason
from qvplan.migration.live.destination import verdict
from qvplan.plan import load_plan_text, make_plan
from qvplan.vmm import VMSpec

from ..plan.factsgen import host

# Version, CPU and memory are what both sides judge; the rest of the plan's checks pass here.
JUDGED = {Reason.VERSION_MISMATCH.value, Reason.CPU_INCOMPATIBLE.value, Reason.OUT_OF_RESOURCES.value}
MIB = 1 << 20
FLAG_POOL = ["sse4_2", "avx", "avx2", "aes", "avx512f", "avx512_vnni", "pdpe1gb"]


def spelled(flag: str, style: int) -> str:
    """A flag as /proc/cpuinfo (sse4_2), QEMU (sse4.2, avx512-vnni) or upper-case spells it."""
    return [flag, flag.replace("_", "."), flag.replace("_", "-"), flag.upper()][style]


flags = st.lists(st.sampled_from(FLAG_POOL), unique=True)
cpu_facts = st.fixed_dictionaries({
    "vendor": st.sampled_from(["GenuineIntel", "AuthenticAMD"]), "flags": flags,
    "style": st.integers(0, 3)})
vm_cpu = st.one_of(
    st.fixed_dictionaries({"model": st.sampled_from(["host", "max"]), "features": st.just([])}),
    st.fixed_dictionaries({"model": st.sampled_from(["Skylake-Server", "Nehalem", "EPYC"]),
                           "features": st.lists(st.builds(lambda f, sign, style: sign + spelled(f, style),
                                                          st.sampled_from(FLAG_POOL), st.sampled_from(["", "+", "-"]),
                                                          st.integers(0, 2)), max_size=3, unique=True)}))
cases = st.fixed_dictionaries({
    "src_version": st.sampled_from(["0.1.0", "0.1.3", "0.2.0", "1.0.0", "1.0.7", "1.2.0", "2.0.0"]),
    "dst_version": st.sampled_from(["0.1.0", "0.1.3", "0.2.0", "1.0.0", "1.0.7", "1.2.0", "2.0.0"]),
    "version": st.sampled_from(["same-major", "same-minor", "exact", "any"]),
    "cpu_policy": st.sampled_from(["strict", "vendor", "any"]),
    "src_cpu": cpu_facts, "dst_cpu": cpu_facts, "vm_cpu": vm_cpu,
    "memory": st.sampled_from([128, 256, 1024, 4096]),
    "free": st.sampled_from([0, 127, 128, 256, 1000, 1024, 8192]),
})


def facts_of(case: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = ["hv-a", "hv-b"]
    vm = {"memory": f"{case['memory']}M", "cpu": case["vm_cpu"]}
    a = host("hv-a", names, {"version": case["src_version"], "vms": {"vm-1": vm}})
    b = host("hv-b", names, {"version": case["dst_version"], "free": f"{case['free']}M"})
    for doc, cpu in ((a, case["src_cpu"]), (b, case["dst_cpu"])):
        doc["cpu"] = {"vendor": cpu["vendor"], "model": "test", "flags": list(cpu["flags"]),
                      "qemu_host_features": [spelled(f, cpu["style"]) for f in cpu["flags"]]}
    b["memory"]["free"] = case["free"] * MIB
    return {"hv-a": a, "hv-b": b}


def plan_verdict(case: dict[str, Any], facts: dict[str, dict[str, Any]]) -> str | None:
    text = yaml.safe_dump({
        "hosts": {"hv-a": {"address": "a"}, "hv-b": {"address": "b"}},
        "prerequisites": {"version": case["version"], "cpu": case["cpu_policy"]},
        "vms": {"vm-1": "hv-b"},
    })
    plan = make_plan(load_plan_text(text, "prop.yaml", None, facts), facts)
    order = {"version": 0, "cpu": 1, "memory": 2}  # the destination's order
    failed = sorted((c for c in plan.failed_checks if c.code in JUDGED), key=lambda c: order[c.kind])
    others = [c for c in plan.failed_checks if c.code not in JUDGED]
    assert not others, f"only judged checks may fail here: {others}"
    return failed[0].code if failed else None


def destination_verdict(case: dict[str, Any], facts: dict[str, dict[str, Any]]) -> str | None:
    # What the source sends (its version and CPU facts, the plan's policies) and the destination's
    # own facts document: the inputs the real preflight hands to the same function.
    spec = VMSpec.model_validate({"name": "vm-1", "memory": f"{case['memory']}M", "cpu": case["vm_cpu"],
                               "guest": {"test": {}}})
    request = {"version": facts["hv-a"]["version"], "cpu": facts["hv-a"]["cpu"], "disks": [],
               "policies": {"version": case["version"], "cpu": case["cpu_policy"]}}
    refusal = verdict(spec, MigrateFlags(), request, facts["hv-b"], lambda _: True)
    return refusal.code.value if refusal else None


@settings(deadline=None, database=None, derandomize=True, max_examples=2000,
          suppress_health_check=list(HealthCheck))
@given(cases)
def test_plan_and_destination_agree(case: dict[str, Any]) -> None:
    facts = facts_of(case)
    assert plan_verdict(case, facts) == destination_verdict(case, facts)


def test_the_cases_reach_every_verdict() -> None:
    """The generator is not trivially agreeing on "ok": each code shows up among fixed cases."""
    base = {"src_version": "0.1.0", "dst_version": "0.1.0", "version": "same-major", "cpu_policy": "strict",
            "src_cpu": {"vendor": "GenuineIntel", "flags": ["avx"], "style": 0},
            "dst_cpu": {"vendor": "GenuineIntel", "flags": ["avx"], "style": 1},
            "vm_cpu": {"model": "host", "features": []}, "memory": 256, "free": 1024}
    variants = {None: {}, "version-mismatch": {"dst_version": "0.2.0"},
                "cpu-incompatible": {"dst_cpu": {"vendor": "AuthenticAMD", "flags": ["avx"], "style": 0}},
                "out-of-resources": {"free": 128}}
    for code, change in variants.items():
        case = {**base, **change}
        facts = facts_of(case)
        assert plan_verdict(case, facts) == destination_verdict(case, facts) == code
    any_version = {**base, "dst_version": "2.0.0", "version": "any"}
    assert destination_verdict(any_version, facts_of(any_version)) is None  # the agent honours the plan
