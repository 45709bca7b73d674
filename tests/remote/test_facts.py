"""Facts over SSH from the lab's agents; an unreachable host is one line and hides nothing."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from qvplan import __version__
from qvplan.cli.qvplan import main
from qvplan.remote import gather_facts


def quick(lab):
    """The lab's targets with a short connect timeout (a cut link costs 1.5 s, not 5)."""
    return {name: t.model_copy(update={"ssh": t.ssh.model_copy(update={"connect_timeout": 1.5})})
            for name, t in lab.targets().items()}


async def test_facts_from_three_hosts(agents_up) -> None:
    lab = agents_up
    shared = lab.dir / "images"  # the pool every lab host has (qvplan/lab/agents.py)
    shared.mkdir(exist_ok=True)
    facts, errors = await gather_facts(lab.targets(), storage_paths=[str(shared), "/no/such/path"])
    assert errors == {}
    assert sorted(facts) == ["hv-a", "hv-b", "hv-c"]
    for name, f in facts.items():
        assert f["name"] == name and f["version"] == __version__
        assert f["storage_checks"] == {str(shared): True, "/no/such/path": False}
        assert f["reachable"] == {other: True for other in facts if other != name}
        assert f["migration"]["address"] == lab.host(name).migration


async def test_link_down_host_is_one_error_line(agents_up) -> None:
    lab = agents_up
    lab.link_down("hv-c")
    try:
        facts, errors = await gather_facts(quick(lab))
    finally:
        lab.link_up("hv-c")
    assert sorted(facts) == ["hv-a", "hv-b"]
    assert list(errors) == ["hv-c"]
    assert errors["hv-c"].startswith(f"hv-c ({lab.host('hv-c').address}:22): SSH connect failed: timed out")
    assert "\n" not in errors["hv-c"]
    assert facts["hv-a"]["reachable"] == {"hv-b": True, "hv-c": False}


def test_facts_command_records_a_file(agents_up, tmp_path: Path) -> None:
    out = tmp_path / "facts.json"
    result = CliRunner().invoke(main, ["facts", "--inventory", str(agents_up.inventory_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert set(doc) == {"gathered_at", "hosts"}
    assert sorted(doc["hosts"]) == ["hv-a", "hv-b", "hv-c"]
