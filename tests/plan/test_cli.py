"""`qvplan validate | plan | show | schema` through click's CliRunner, on recorded facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from qvplan.cli.qvplan import main
from qvplan.plan import load_saved, save_facts
from qvplan.plan.saved import Freshness, PlanForOtherHosts, StalePlan, check_fresh, freshness

from .factsgen import expand

ROOT = Path(__file__).resolve().parents[2]
HOSTS = {"hv-a": {"address": "10.77.0.2"}, "hv-b": {"address": "10.77.0.3"}, "hv-c": {"address": "10.77.0.4"}}


def lab_facts(**where: str) -> dict:
    """The lab after `qvplan lab up`: vm-1, vm-2 on hv-a, vm-3 on hv-b, vm-4 on hv-c (or as given)."""
    place = {"vm-1": "hv-a", "vm-2": "hv-a", "vm-3": "hv-b", "vm-4": "hv-c", **where}
    compact = {h: {"vms": {vm: {"memory": "128M"} for vm, at in place.items() if at == h}} for h in HOSTS}
    return expand(compact)


@pytest.fixture()
def lab(tmp_path: Path) -> dict[str, Path]:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(yaml.safe_dump({"hosts": {n: {**h, "ssh": {"user": "root", "key": "id_ed25519"},
                                                  "migration": f"{h['address']}:9410"}
                                              for n, h in HOSTS.items()}}))
    before = save_facts(tmp_path / "before.json", lab_facts())
    after = save_facts(tmp_path / "after.json", lab_facts(**{"vm-1": "hv-b", "vm-2": "hv-c", "vm-3": "hv-c",
                                                             "vm-4": "hv-a"}))
    return {"inv": inv, "before": before, "after": after, "dir": tmp_path}


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_demo_plan_shows_moves_and_exit_2(lab: dict[str, Path]) -> None:
    code, out = run("plan", str(ROOT / "plans/demo.yaml"), "--facts", str(lab["before"]),
                    "--var", f"inventory={lab['inv']}", "--detailed-exitcode")
    assert code == 2, out
    assert "~ vm-1  hv-a → hv-b  (live, ML-KEM-768, unlimited, ≤300ms)" in out
    assert "~ vm-2  hv-a → hv-c  (live, ML-KEM-1024, unlimited, ≤300ms)" in out
    assert "~ vm-4  hv-c → hv-a  (live, ML-KEM-768, 1G, ≤300ms)" in out
    assert "✅ trust" in out and "wave 3: vm-3 (hv-b → hv-c)" in out


def test_replanning_after_apply_shows_no_changes(lab: dict[str, Path]) -> None:
    code, out = run("plan", str(ROOT / "plans/demo.yaml"), "--facts", str(lab["after"]),
                    "--var", f"inventory={lab['inv']}", "--detailed-exitcode")
    assert code == 0, out
    assert "No changes." in out and "4 VMs unchanged" in out


def test_failed_check_exits_1_listing_every_failure(lab: dict[str, Path]) -> None:
    facts = lab_facts()
    facts["hv-b"]["pqc"]["trusted"] = {}
    facts["hv-c"]["cpu"]["vendor"] = "AuthenticAMD"
    save_facts(lab["dir"] / "bad.json", facts)
    plan = lab["dir"] / "plan.yaml"
    plan.write_text(f"inventory: {lab['inv']}\nvms: {{vm-1: hv-b, vm-2: hv-c}}\n")
    code, out = run("plan", str(plan), "--facts", str(lab["dir"] / "bad.json"), "--detailed-exitcode")
    assert code == 1
    assert "❌ trust    vm-1: untrusted host: hv-b has not imported the key of hv-a" in out
    assert "❌ cpu      vm-2: CPU incompatible: hv-c vendor GenuineIntel → AuthenticAMD" in out
    assert "fix: exchange and import PQC keys" in out


def test_json_out_show_and_freshness(lab: dict[str, Path]) -> None:
    saved = lab["dir"] / "demo.plan"
    code, out = run("plan", str(ROOT / "plans/demo.yaml"), "--facts", str(lab["before"]), "--json",
                    "--var", f"inventory={lab['inv']}", "-out", str(saved))
    assert code == 0
    data = json.loads(out)
    assert data["summary"]["move"] == 4 and data["summary"]["applyable"]
    move = next(m for m in data["moves"] if m["vm"] == "vm-4")
    assert move["flags"]["bandwidth"] == 1 << 30 and move["flags"]["max_downtime"] == 0.3
    assert [w["moves"] for w in data["waves"]] == [["vm-1", "vm-4"], ["vm-2"], ["vm-3"]]

    code, out = run("show", str(saved))
    assert code == 0 and "~ vm-3  hv-b → hv-c" in out

    s = load_saved(saved)
    assert s.plan.applyable and s.plan.waves[0].moves == ["vm-1", "vm-4"]
    before = json.loads(lab["before"].read_text())["hosts"]
    check_fresh(s, before)  # same facts: fresh
    before["hv-a"]["memory"]["free"] -= 4096  # volatile fields do not make a plan stale
    assert freshness(s, before)[0] is Freshness.FRESH
    with pytest.raises(StalePlan, match=r"plan is stale.*vm-1: hv-a/running → hv-b/running"):
        check_fresh(s, json.loads(lab["after"].read_text())["hosts"])
    other = json.loads(lab["before"].read_text())["hosts"]
    other["hv-b"]["pqc"]["fingerprint"] = "SHA256:reinstalled"
    with pytest.raises(PlanForOtherHosts, match="plan is for other hosts"):
        check_fresh(s, other)


def test_errored_plan_is_not_saved(lab: dict[str, Path]) -> None:
    plan = lab["dir"] / "plan.yaml"
    plan.write_text(f"inventory: {lab['inv']}\nvms: {{vm-1: hv-z}}\n")
    code, _ = run("plan", str(plan), "--facts", str(lab["before"]), "-out", str(lab["dir"] / "x.plan"))
    assert code == 1 and not (lab["dir"] / "x.plan").exists()


def test_show_rejects_edited_plan(lab: dict[str, Path]) -> None:
    saved = lab["dir"] / "demo.plan"
    run("plan", str(ROOT / "plans/demo.yaml"), "--facts", str(lab["before"]), "--var", f"inventory={lab['inv']}",
        "-out", str(saved))
    doc = json.loads(saved.read_text())
    doc["facts"]["hosts"]["hv-a"]["version"] = "9.9.9"
    saved.write_text(json.dumps(doc))
    code, out = run("show", str(saved))
    assert code == 1 and "was edited" in out


@pytest.mark.parametrize("name", ["demo.yaml", "evacuate-hv-a.yaml", "rebalance.yaml"])
def test_example_plans_validate_and_plan(lab: dict[str, Path], name: str) -> None:
    code, out = run("validate", str(ROOT / "plans" / name), "--var", f"inventory={lab['inv']}")
    assert code == 0 and "valid" in out
    code, out = run("plan", str(ROOT / "plans" / name), "--facts", str(lab["before"]),
                    "--var", f"inventory={lab['inv']}")
    assert code == 0, out


def test_evacuate_example_empties_hv_a(lab: dict[str, Path]) -> None:
    code, out = run("plan", str(ROOT / "plans/evacuate-hv-a.yaml"), "--facts", str(lab["before"]),
                    "--var", f"inventory={lab['inv']}", "--json")
    assert code == 0
    moved = {m["vm"]: m["dest"] for m in json.loads(out)["moves"] if m["action"] == "move"}
    assert set(moved) == {"vm-1", "vm-2"} and set(moved.values()) <= {"hv-b", "hv-c"}


def test_validate_reports_every_problem_with_location(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text("hosts: {hv-a: {address: a}}\nlimits: {parallel: 0}\nvms:\n  vm-1: {host: hv-a, speed: 3}\n")
    code, out = run("validate", str(plan))
    assert code == 1
    assert f"Error: {plan}:2 limits.parallel: Input should be greater than or equal to 1" in out
    assert f"Error: {plan}:4 vms.vm-1.speed: unknown key 'speed'" in out


def test_live_facts_without_inventory_hosts_is_one_line(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text("inventory: /nonexistent/inventory.yaml\nvms: {vm-1: hv-a}\n")
    code, out = run("plan", str(plan))
    assert code == 1 and "cannot read inventory /nonexistent/inventory.yaml" in out
    assert "Traceback" not in out


def test_bad_var_and_missing_facts_file(tmp_path: Path) -> None:
    code, out = run("plan", str(ROOT / "plans/demo.yaml"), "--var", "no-equals", "--facts", "x.json")
    assert code == 1 and "invalid --var 'no-equals'" in out
    code, out = run("plan", str(ROOT / "plans/demo.yaml"), "--facts", str(tmp_path / "none.json"))
    assert code == 1 and "cannot read facts file" in out


def test_schema_is_json_schema() -> None:
    code, out = run("schema")
    schema = json.loads(out)
    assert code == 0 and schema["title"] == "qvplan migration plan"
    assert {"vms", "hosts", "trust", "limits", "defaults", "use"} <= set(schema["properties"])


def test_saved_plan_is_known_by_its_content_whatever_its_name(lab: dict[str, Path]) -> None:
    import re
    import subprocess
    import sys

    from qvplan.apply.source import PlanSource

    saved = lab["dir"] / "evac.plan"  # not .json
    planned = subprocess.run([sys.executable, "-m", "qvplan.cli.qvplan", "plan", str(ROOT / "plans/demo.yaml"),
                              "--facts", str(lab["before"]), "--var", f"inventory={lab['inv']}", "-out", str(saved)],
                             capture_output=True, text=True, timeout=120)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    command = re.search(r"apply it with `qvplan (apply [^`]+)`", planned.stdout).group(1).split()
    assert command == ["apply", str(saved)]
    # what that apply command loads: the saved plan itself, not a YAML plan named evac.plan
    source = PlanSource.load(command[1], {}, [])
    assert source.saved is not None and source.loaded is None and set(source.hosts) == set(HOSTS)
    code, out = run("show", str(saved))
    assert code == 0 and "~ vm-3  hv-b → hv-c" in out
    copy = lab["dir"] / "plan.yaml"  # even named like a plan file
    copy.write_text(saved.read_text())
    assert PlanSource.load(str(copy), {}, []).saved is not None
    code, out = run("plan", str(copy), "--facts", str(lab["before"]))
    assert code == 1 and out.strip().splitlines() == [
        f"Error: {copy} is a saved plan, not a plan file — apply it with `qvplan apply {copy}` "
        f"or print it with `qvplan show {copy}`"]
    code, out = run("show", str(ROOT / "plans/demo.yaml"))
    assert code == 1 and "is not a saved plan" in out and "qvplan plan" in out
