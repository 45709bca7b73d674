"""Plan-file fuzzing: generated plans and mutations of the examples never raise anything but a
clear QVError (or give a valid plan). 1,500 generated + 1,500 mutated examples in the suite;
QVPLAN_FUZZ_EXAMPLES sets how many."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qvplan.errors import QVError
from qvplan.plan import load_plan_text, make_plan

from .factsgen import expand

ROOT = Path(__file__).resolve().parents[2]
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
FACTS = expand({
    "hv-a": {"vms": {"vm-1": {"memory": "1G"}, "vm-2": {"state": "defined"},
                     "db": {"disks": [{"path": "/mnt/nfs/db.qcow2", "shared": True}]}}},
    "hv-b": {"free": "1G", "vms": {"vm-3": {}}, "trusted": []},
    "hv-c": {"vendor": "AuthenticAMD", "vms": {"vm-4": {"cpu": {"model": "Nehalem", "features": ["+avx9"]}}}},
})
# 1,500 examples each in the suite (about 12 s); QVPLAN_FUZZ_EXAMPLES=50000 for a long hunt
SETTINGS = settings(deadline=None, database=None, derandomize=True,
                    max_examples=int(os.environ.get("QVPLAN_FUZZ_EXAMPLES", "1500")),
                    suppress_health_check=list(HealthCheck))

names = st.sampled_from(["vm-1", "vm-2", "vm-3", "vm-4", "db", "ghost", "hv-a", "hv-b", "hv-c", "hv-z", "",
                         "bad name", "-x"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(allow_nan=True), names,
                    st.sampled_from(["10G", "300ms", "1.5s", "unlimited", "10X", "ML-KEM-768", "ML-KEM-512",
                                     "live", "offline", "rollback", "{{ x }}", "0"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(names, inner, max_size=3)), max_leaves=4)
flag_keys = ["pqc_kem", "bandwidth", "timeout", "max_iterations", "max_downtime", "auto_converge", "compress",
             "threads", "insecure"]
placement = st.one_of(names, st.fixed_dictionaries({"host": names}, optional={
    **{k: scalars for k in flag_keys}, "mode": scalars, "after": st.one_of(names, st.lists(names, max_size=3)),
    "storage": st.one_of(values, st.fixed_dictionaries({}, optional={"migrate": st.booleans(),
                                                                     "dest_pool": names})),
    "colour": scalars}))
plans = st.fixed_dictionaries({}, optional={
    "hosts": st.one_of(values, st.dictionaries(names, st.one_of(values, st.fixed_dictionaries(
        {"address": names}, optional={"ssh": values, "migration": names})), max_size=4)),
    "trust": st.one_of(values, st.fixed_dictionaries({}, optional={"exchange": st.booleans(),
                                                                   "pinned": st.dictionaries(names, names)})),
    "prerequisites": st.one_of(values, st.fixed_dictionaries({}, optional={
        "version": st.sampled_from(["same-major", "same-minor", "exact", "any", "x"]),
        "cpu": st.sampled_from(["strict", "vendor", "any", "y"]), "shared_storage": values})),
    "defaults": st.one_of(values, st.dictionaries(st.sampled_from([*flag_keys, "nope"]), scalars, max_size=4)),
    "limits": st.one_of(values, st.dictionaries(st.sampled_from(["parallel", "per_host_outbound",
                                                                "per_host_inbound"]), scalars)),
    "on_failure": scalars,
    "use": st.one_of(values, st.fixed_dictionaries({"module": st.sampled_from(["evacuate-host", "rebalance",
                                                                                "nope"])},
                                                   optional={"with": st.dictionaries(
                                                       st.sampled_from(["host", "to", "flags", "tolerance",
                                                                        "hosts", "x"]), values)})),
    "vms": st.one_of(values, st.dictionaries(names, placement, max_size=5)),
    "bogus": values,
})


def plan_or_qverror(text: str, variables: dict[str, Any] | None = None) -> None:
    try:
        plan = make_plan(load_plan_text(text, "fuzz.yaml", variables, FACTS, ROOT / "plans"), FACTS)
    except QVError as err:
        assert str(err).strip(), "an error says what is wrong"
        return
    plan.to_dict()  # a valid plan renders as data too


@SETTINGS
@given(plans)
def test_generated_plans(plan: dict[str, Any]) -> None:
    plan.setdefault("hosts", {"hv-a": {"address": "a"}, "hv-b": {"address": "b"}, "hv-c": {"address": "c"}})
    plan_or_qverror(yaml.dump(plan, Dumper=DUMPER, sort_keys=False, allow_unicode=True))


def _examples() -> list[str]:
    texts = [p.read_text() for p in sorted((ROOT / "plans").glob("*.yaml"))]
    for case in sorted((Path(__file__).parent / "cases").glob("*.yaml")):
        texts.append(yaml.safe_load(case.read_text())["plan"])
    return texts


EXAMPLES = _examples()
JUNK = st.sampled_from(["{{", "}}", "{%", "%}", ":", "- ", "  ", "\n", "[", "]", "{", "}", "&a", "*a",
                        "!!python/object:os.system", "'", '"', "#", "\t",
                        "after: [vm-1]", "host: hv-b", "{{ 1/0 }}", "{{ nope }}",
                        "{% for x in [1] %}", "{% endfor %}", "\x00", "é", "vms:", "use:", "999999999999999999999"])


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(1, 3))):
        lines = text.split("\n")
        op = draw(st.integers(0, 4))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
        elif op == 2:
            j = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:j] + draw(JUNK) + lines[i][j:]
        elif op == 3:
            j = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:j] + lines[i][j + draw(st.integers(1, 8)):]
        else:
            j = draw(st.integers(0, max(0, len(lines) - 1)))
            lines[i], lines[j] = lines[j], lines[i]
        text = "\n".join(lines)
    return text


@SETTINGS
@given(mutated(), st.sampled_from([{}, {"inventory": "/nonexistent.yaml"}, {"host": "hv-b", "bandwidth": "2G"}]))
def test_mutated_examples(text: str, variables: dict[str, Any]) -> None:
    plan_or_qverror(text, variables)
