"""`--target`, `--limit` and `--report` end to end on a small lab of its own (real sshd, agents,
QEMU), and the report opened in a real headless Chromium with no network."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qvplan.lab.testing import lab_session

ROOT = Path(__file__).resolve().parents[2]
QVPLAN = [sys.executable, "-m", "qvplan.cli.qvplan"]
CHROMIUM = shutil.which("chromium")
PLAN = """
inventory: {inventory}
trust: {{exchange: true}}
defaults: {{threads: 1}}
limits: {{parallel: 2}}
vms:
  vm-1: hv-b
  vm-2: {{host: hv-c, after: [vm-1]}}   # a dependant of vm-1
  vm-3: hv-c                          # on hv-b now
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_session(tmp_path_factory.mktemp("lab")) as lab:
        assert not lab.agent_errors, lab.agent_errors
        asyncio.run(lab.create_vms(3))  # vm-1, vm-2 on hv-a; vm-3 on hv-b
        yield lab


def qvplan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QVPLAN, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


async def placement(lab) -> dict[str, str]:
    out = {}
    for host in lab.spec.host_names():
        async with lab.connect(host) as conn:
            for vm in await conn.api("GET", "vms"):
                if vm["state"] == "running":
                    out[vm["name"]] = host
    return out


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium in a network namespace of its own: nothing but loopback exists there."""
    profile = page.parent / "chromium-profile"
    return subprocess.run(
        ["unshare", "-n", "--", CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--virtual-time-budget=3000", *args,
         page.as_uri()], capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(page.parent)})


def test_target_leaves_a_dependant_out_then_limit_and_the_report(lab, tmp_path):
    plan = tmp_path / "targets.yaml"
    plan.write_text(PLAN.format(inventory=lab.inventory_path))
    dry = qvplan("plan", str(plan), "--target", "vm-1")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "left out: vm-2 (hv-a → hv-c): comes after vm-1: a dependant, not a --target" in dry.stdout
    assert "left out: vm-3 (hv-b → hv-c): not a --target" in dry.stdout
    assert "Plan: 1 to move" in dry.stdout and "2 left out" in dry.stdout
    wrong = qvplan("plan", str(plan), "--target", "vm-9")
    assert wrong.returncode == 1 and "--target vm-9 is not a VM of this plan" in wrong.stderr

    report = tmp_path / "report"
    applied = qvplan("apply", str(plan), "--target", "vm-1", "--auto-approve", "--json", "--report", str(report))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert json.loads(applied.stdout)["placement"] == {"vm-1": "hv-b", "vm-2": "hv-a", "vm-3": "hv-b"}
    assert asyncio.run(placement(lab)) == {"vm-1": "hv-b", "vm-2": "hv-a", "vm-3": "hv-b"}

    # --limit hv-b: vm-3 leaves hv-b; vm-2 (hv-a → hv-c, its vm-1 done) touches neither: left out
    limited = qvplan("apply", str(plan), "--limit", "hv-b", "--auto-approve")
    assert limited.returncode == 0, limited.stdout + limited.stderr
    assert "left out: vm-2 (hv-a → hv-c): touches neither of --limit hv-b" in limited.stdout
    assert asyncio.run(placement(lab)) == {"vm-1": "hv-b", "vm-2": "hv-a", "vm-3": "hv-c"}
    journals = sorted((tmp_path / ".qvplan").glob("apply-*.jsonl"))
    assert len(journals) == 2
    later = tmp_path / "later"
    shown = qvplan("show", str(journals[-1]), "--report", str(later))
    assert shown.returncode == 0, shown.stderr
    missing = qvplan("show", str(tmp_path / "nope.jsonl"), "--report", str(later))
    assert missing.returncode != 0 and "no apply journal at" in missing.stderr and "Traceback" not in missing.stderr

    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (make setup)")
    for folder, moved, left in ((report, ["vm-1"], ["vm-2", "vm-3"]), (later, ["vm-3"], ["vm-2"])):
        page = folder / "report.html"
        text = page.read_text()
        # Nothing to fetch: no scripts, stylesheets, images or fonts from anywhere (XML namespaces are names only).
        for fetch in ('src="http', "src='http", 'href="http', "url(http", "@import", "<script", "<link", "<img"):
            assert fetch not in text, fetch
        dom = chromium(page, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        timeline = html[html.index('id="timeline"'):html.index('id="outcomes"')]
        outcomes = html[html.index('id="outcomes"'):html.index('id="charts"')]
        for vm in moved:
            assert f'data-vm="{vm}"' in timeline and vm in outcomes
            assert f'<tr data-vm="{vm}"><td>{vm}</td><td><span class="badge moved">moved</span>' in outcomes
        for vm in left:
            assert f'<tr data-vm="{vm}"><td>{vm}</td><td><span class="badge left">left out</span>' in outcomes
        assert html.count("<svg") >= 1 + len(moved)  # the timeline and a chart per move
    shot = chromium(report / "report.html", "--screenshot=" + str(report / "report.png"), "--window-size=1000,1800")
    assert shot.returncode == 0 and (report / "report.png").read_bytes()[:4] == b"\x89PNG", shot.stderr[-2000:]
