"""`qvplan apply` end to end: a real lab (network namespaces, sshd, agents, QEMU guests)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qvplan.apply.journal import read_journal
from qvplan.lab.testing import lab_session

ROOT = Path(__file__).resolve().parents[2]
QVPLAN = [sys.executable, "-m", "qvplan.cli.qvplan"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_session(tmp_path_factory.mktemp("lab")) as lab:
        assert not lab.agent_errors, lab.agent_errors
        asyncio.run(lab.create_vms(4))
        yield lab


def qvplan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QVPLAN, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def test_apply_honours_limits_then_is_a_noop(lab, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text((ROOT / "plans" / "demo.yaml").read_text())
    var = f"inventory={lab.inventory_path}"
    junit = tmp_path / "report.xml"
    out = qvplan("apply", str(plan), "--var", var, "--auto-approve", "--junit", str(junit))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Apply complete: 4/4" in out.stdout
    cases = ET.parse(junit).getroot().findall("testcase")
    assert len(cases) == 4 and not any(c.find("failure") is not None for c in cases)

    journal = read_journal(next((tmp_path / ".qvplan").glob("apply-*.jsonl")))
    starts = {e["vm"]: e for e in journal if e["kind"] == "start"}
    ends = {e["vm"]: e for e in journal if e["kind"] == "end"}
    assert set(ends) == {"vm-1", "vm-2", "vm-3", "vm-4"} and all(e["ok"] for e in ends.values())
    spans = {vm: (starts[vm]["time"], ends[vm]["time"]) for vm in ends}
    assert most_at_once(list(spans.values())) <= 2  # limits.parallel
    for host in ("hv-a", "hv-b", "hv-c"):  # per_host_outbound / per_host_inbound: 1
        assert most_at_once([spans[v] for v in ends if ends[v]["source"] == host]) <= 1
        assert most_at_once([spans[v] for v in ends if ends[v]["dest"] == host]) <= 1
    assert spans["vm-3"][0] >= spans["vm-2"][1]  # after: [vm-2]

    again = qvplan("apply", str(plan), "--var", var, "--auto-approve")
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout + again.stderr
    replan = qvplan("plan", str(plan), "--var", var, "--detailed-exitcode")
    assert replan.returncode == 0, replan.stdout


ROLLBACK_ALL = """
inventory: {inventory}
trust: {{exchange: true}}
limits: {{parallel: 1}}
on_failure: rollback-all
vms:
  vm-4: hv-b
  vm-1: {{host: hv-c, bandwidth: 1M, timeout: 3s, auto_converge: false, after: [vm-4]}}
"""


def test_failed_move_rolls_back_all_and_reports_it(lab, tmp_path):
    """Runs after the first test: vm-1 is on hv-b and vm-4 on hv-a."""
    plan = tmp_path / "rollback.yaml"
    plan.write_text(ROLLBACK_ALL.format(inventory=lab.inventory_path))
    junit = tmp_path / "report.xml"
    out = qvplan("apply", str(plan), "--auto-approve", "--junit", str(junit), "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    import json

    report = json.loads(out.stdout)
    assert report["placement"]["vm-1"] == "hv-b"  # the failed move: still on its source
    assert report["placement"]["vm-4"] == "hv-a"  # the finished move: migrated back
    failures = [c for c in ET.parse(junit).getroot().findall("testcase") if c.find("failure") is not None]
    assert len(failures) == 1 and "vm-1" in failures[0].get("name")
    assert "Timeout exceeded" in failures[0].find("failure").get("message")
