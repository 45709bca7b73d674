"""Facts over SSH from the lab's agents; an unreachable host is one line and hides nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from click.testing import CliRunner

from qvplan import __version__
from qvplan.cli.qvplan import main
from qvplan.lab import sshd
from qvplan.lab.net import wait_tcp
from qvplan.remote import HostConnection, gather_facts
from qvplan.remote.facts import reachability


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


async def test_reachability_falls_back_to_bash_where_sshd_forbids_forwarding(agents_up, tmp_path: Path) -> None:
    """A second sshd on hv-a with `AllowTcpForwarding no`: the probes, which sshd itself makes
    elsewhere, go through a bash command instead, with the same answers."""
    lab = agents_up
    host, port = lab.host("hv-a"), 2222
    listen = "0.0.0.0" if host.netns else host.address
    lines = [line for line in sshd.config_text(lab.spec, host).splitlines()
             if not line.startswith(("ListenAddress", "PidFile", "AllowTcpForwarding"))]
    config = tmp_path / "sshd_config"
    config.write_text("\n".join([*lines, f"ListenAddress {listen}:{port}", f"PidFile {tmp_path / 'sshd.pid'}",
                                 "AllowTcpForwarding no", ""]))
    log = tmp_path / "sshd.log"
    argv = [sshd.SSHD, "-f", str(config), "-E", str(log)]
    subprocess.run(["ip", "netns", "exec", host.netns, *argv] if host.netns else argv, check=True)
    try:
        assert wait_tcp(host.address, port, 10)
        key = host.file("ssh_host_ed25519_key.pub").read_text().split()[:2]
        known = tmp_path / "known_hosts"
        known.write_text(f"[{host.address}]:{port} {key[0]} {key[1]}\n")
        t = lab.targets()["hv-a"]
        target = t.model_copy(update={"ssh": t.ssh.model_copy(update={"port": port, "known_hosts": str(known)})})
        b = lab.host("hv-b")
        async with HostConnection(target) as conn:
            got = await reachability(conn, {"hv-b": b.migration, "closed": f"{b.address}:9"})
        assert got == {"hv-b": True, "closed": False}
        assert "refused local port forward" in log.read_text()  # it was asked, and said no
    finally:
        pid = (tmp_path / "sshd.pid").read_text().strip() if (tmp_path / "sshd.pid").exists() else ""
        if pid.isdigit():
            os.kill(int(pid), signal.SIGTERM)
