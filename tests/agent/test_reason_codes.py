"""Reason codes end to end, through the real `quantavirt` CLI (plain and `--json`) and the agent
API: each refusal carries its own cause, the real address and port, the spec's fix and a stable
code, and nothing moves."""

from __future__ import annotations

import json

import pytest

from ..agents import ApiError, free_port, mutual_trust
from ..migration.helpers import runs_only_on, start_guest, wait_outcome


def migrate_cli(agent, *args: str) -> tuple[dict, str]:
    """`quantavirt vm migrate vm-1 ARGS --json` and the same without --json: (JSON, stderr line)."""
    as_json = agent.cli("vm", "migrate", "vm-1", *args, "--json")
    plain = agent.cli("vm", "migrate", "vm-1", *args)
    assert as_json.returncode == plain.returncode == 1, (as_json, plain)
    return json.loads(as_json.stdout), plain.stderr.strip()


def test_untrusted_host_and_wrong_port_name_their_own_cause(make_agent):
    a, b = make_agent("hv-a"), make_agent("hv-b")
    start_guest(a)
    # The spec's command line, before any key exchange.
    doc, line = migrate_cli(a, "--dest", b.migration)
    assert doc["code"] == "untrusted-host", doc
    assert doc["error"].startswith("Migration rejected: untrusted host"), doc
    assert "key-import" in doc["fix"]
    assert "Connection reset" not in line and "9410" not in line, line
    assert line.endswith("(reason: untrusted-host)"), line

    closed = free_port(b.address)  # nothing listens there
    doc, line = migrate_cli(a, "--dest", f"{b.address}:{closed}")
    assert doc["code"] == "connect-failed", doc
    assert f"{b.address}:{closed}" in doc["error"] and f"port {closed}" in doc["fix"], doc
    assert "Connection reset" not in doc["error"] and "9410" not in line
    runs_only_on(a, b, "vm-1")
    assert b.vm_names() == []


def test_out_of_resources_and_cpu_incompatible(make_agent):
    a, b = make_agent("hv-a"), make_agent("hv-b", memory="64M")
    mutual_trust(a, b)
    start_guest(a)
    doc, line = migrate_cli(a, "--dest", b.migration)
    assert doc["code"] == "out-of-resources" and "Destination out of resources" in doc["error"], doc
    assert line.endswith("(reason: out-of-resources)")
    # A feature this host's CPU model lacks (under TCG or KVM): QEMU starts the guest with a
    # warning here; the destination refuses it.
    c = make_agent("hv-c")
    mutual_trust(a, c)
    missing = absent_feature(c)
    start_guest(a, "vm-2", cpu={"model": "qemu64", "features": [f"+{missing}"]})
    with pytest.raises(ApiError) as err:
        a.api("POST", "vms/vm-2/migrate", {"dest": c.migration, "flags": {}})
    assert err.value.code == "cpu-incompatible" and missing in err.value.cause, err.value
    assert c.vm_names() == [] and b.vm_names() == []


RARE_FEATURES = ("amx-tile", "avx512-fp16", "avx-vnni-int8", "la57", "sgx", "pks")


def absent_feature(agent) -> str:
    """A CPU feature neither the agent's QEMU host model nor its /proc/cpuinfo shows (KVM's model
    follows the real CPU, so which one depends on the machine)."""
    cpu = agent.api("GET", "host")["cpu"]
    have = {f.replace(".", "_").replace("-", "_") for f in cpu["qemu_host_features"] + cpu["flags"]}
    return next(f for f in RARE_FEATURES if f.replace("-", "_") not in have)


def pair_of_versions(make_agent, dest_version: str):
    """hv-a (this checkout's version) running vm-1, and hv-b reporting `dest_version`; trusted."""
    a = make_agent("hv-a")
    b = make_agent("hv-b", start=False)
    b.env = {"QUANTAVIRT_TEST_VERSION": dest_version}
    b.start()
    mutual_trust(a, b)
    start_guest(a)
    return a, b


@pytest.mark.parametrize("policy,refused", [("same-major", True), ("same-minor", True), ("exact", True),
                                            ("any", False)])
def test_version_mismatch_under_each_policy(make_agent, policy, refused):
    a, b = pair_of_versions(make_agent, "0.2.0")
    body = {"dest": b.migration, "flags": {}, "policies": {"version": policy}}
    if refused:
        with pytest.raises(ApiError) as err:
            a.api("POST", "vms/vm-1/migrate", body)
        assert err.value.code == "version-mismatch", err.value
        assert f"policy {policy}" in err.value.cause
        runs_only_on(a, b, "vm-1")
        return
    a.api("POST", "vms/vm-1/migrate", body)
    assert wait_outcome(a, "vm-1")["state"] == "COMPLETED"
    runs_only_on(b, a, "vm-1")


def test_default_policy_on_the_cli_is_same_major(make_agent):
    a, b = pair_of_versions(make_agent, "0.2.0")
    doc, line = migrate_cli(a, "--dest", b.migration)
    assert doc["code"] == "version-mismatch", doc
    assert "Migration rejected: version mismatch" in line and line.endswith("(reason: version-mismatch)")
