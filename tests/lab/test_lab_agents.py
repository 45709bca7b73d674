"""The lab's CLI, and the parts that need the agent: test guests, trust, killed agents, clean down."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qvplan.cli.qvplan import main
from qvplan.lab import Lab
from qvplan.lab.agents import quantavirt_bin
from qvplan.lab.testing import agent_code_present, free_subnet, leftovers, unique_prefix


def test_cli_up_status_down(tmp_path: Path) -> None:
    lab_dir, prefix, subnet = tmp_path / "lab", unique_prefix(), free_subnet()
    run = CliRunner().invoke
    up = run(main, ["lab", "up", "--no-agents", "--hosts", "2", "--dir", str(lab_dir), "--prefix", prefix,
                    "--subnet", subnet])
    try:
        assert up.exit_code == 0, up.output
        assert up.output.strip().splitlines()[-1] == str(lab_dir / "inventory.yaml")
        status = run(main, ["lab", "status", "--dir", str(lab_dir)])
        assert status.exit_code == 0, status.output
        assert f"hv-b     {subnet}.12" in status.output and " up    down " in status.output
        third = subnet.split(".")[2]
        assert f"VM network: 10.88.{third}.0/24 on {prefix}-vm0 (up)" in status.output
        assert f"client netns {prefix}-client at 10.88.{third}.2" in status.output
        assert "CPU of the lab's processes:" in status.output
    finally:
        down = run(main, ["lab", "down", "--dir", str(lab_dir)])
    assert down.exit_code == 0 and "removed" in down.output
    assert "No lab running" in run(main, ["lab", "down", "--dir", str(lab_dir)]).output
    assert leftovers(Lab(lab_dir, prefix=prefix, subnet=subnet)) == []


@pytest.mark.qemu
async def test_guests_trust_and_a_killed_agent(tmp_path: Path) -> None:
    if not agent_code_present():
        pytest.skip("the quantavirt agent is not importable in this checkout yet")
    lab = Lab(tmp_path / "lab", hosts=2, prefix=unique_prefix(), subnet=free_subnet())
    await asyncio.to_thread(lab.up)
    try:
        assert await lab.wait_agents() == {}
        assert await lab.create_vms(3) == ["vm-1", "vm-2", "vm-3"]
        assert await lab.create_vms(3) == []  # idempotent
        # The spec's command line on a fresh lab, before any key exchange: refused as untrusted,
        # in its own words, not as a connection reset.
        hv_a, hv_b = lab.host("hv-a"), lab.host("hv-b")
        argv = [quantavirt_bin(), "--config", str(hv_a.file("agent.toml")), "vm", "migrate", "vm-1",
                "--dest", f"{hv_b.address}:9410"]
        refused = await asyncio.to_thread(lab.exec_in, "hv-a", argv, timeout=120)
        assert refused.returncode == 1, refused
        line = refused.stderr.strip()
        assert line.startswith("Error: Migration rejected: untrusted host"), line
        assert line.endswith("(reason: untrusted-host)") and "Connection reset" not in line, line
        as_json = await asyncio.to_thread(lab.exec_in, "hv-a", [*argv, "--json"], timeout=120)
        assert json.loads(as_json.stdout)["code"] == "untrusted-host", as_json
        await lab.exchange_trust()
        async with lab.connect("hv-b") as conn:
            host = await conn.api("GET", "host")
        assert "hv-a" in host["pqc"]["trusted"]
        by_host = {st.name: st for st in await lab.status()}
        assert sorted(v["name"] for v in by_host["hv-a"].vms) == ["vm-1", "vm-2"]
        assert [v["state"] for v in by_host["hv-b"].vms] == ["running"]

        assert lab.kill_agent("hv-a") is True
        await asyncio.sleep(0.3)
        st = {s.name: s for s in await lab.status()}["hv-a"]
        assert (st.agent, st.api) == (False, False)
        lab.start_agent("hv-a")
        assert await lab.wait_agents() == {}
        # QEMU outlived its agent; the restarted agent found its VMs again.
        st = {s.name: s for s in await lab.status()}["hv-a"]
        assert sorted(v["state"] for v in st.vms) == ["running", "running"]
    finally:
        await asyncio.to_thread(lab.down)
    assert leftovers(lab) == []  # QEMUs included: their command lines name the lab dir
