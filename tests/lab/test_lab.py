"""The lab itself: up/down idempotent and clean, loopback mode, real faults."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from qvplan.lab import Lab, LabError, exec_in, link_down, link_up, netem
from qvplan.lab import sshd as lab_sshd
from qvplan.lab.net import netem_supported
from qvplan.lab.testing import free_subnet, leftovers, unique_prefix
from qvplan.remote import HostConnection, HostUnreachable


def snapshot(lab: Lab) -> dict[str, object]:
    return {
        # Processes come and go (sshd forks per connection): compare the sshd masters instead.
        "leftovers": sorted(x for x in leftovers(lab) if not x.startswith("process ")),
        "sshd": [lab_sshd.pid(h) for h in lab.hosts],
        "files": {p.relative_to(lab.dir).as_posix(): p.read_bytes() for p in sorted(lab.dir.rglob("*"))
                  if p.is_file() and not p.name.endswith(".log") and "state" not in p.parts},
    }


def test_up_twice_changes_nothing_and_down_leaves_nothing(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", hosts=2, prefix=unique_prefix(), subnet=free_subnet(), agents=False)
    try:
        inventory = lab.up()
        first = snapshot(lab)
        assert lab.up() == inventory
        assert snapshot(lab) == first
        assert any(x.startswith("netns ") for x in first["leftovers"])  # type: ignore[union-attr]
        # A lab of another shape in the same dir is refused, not merged.
        with pytest.raises(LabError, match="another shape"):
            Lab(lab.dir, hosts=3, prefix=lab.spec.prefix, subnet=lab.spec.subnet, agents=False).up()
    finally:
        assert lab.down() is True
    assert leftovers(lab) == []
    assert lab.down() is False  # twice is fine


def test_loopback_lab_serves_ssh_on_its_own_addresses(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", hosts=2, prefix=unique_prefix(), mode="loopback",
              subnet=free_subnet("loopback"), agents=False)
    try:
        lab.up()
        host = lab.hosts[1]
        assert host.address.startswith("127.") and host.ssh_port == 2200 + 12

        async def check() -> str:
            async with lab.connect(host.name) as conn:
                return (await conn.run("echo $SSH_CONNECTION", check=True)).stdout

        assert f"{host.address} {host.ssh_port}" in asyncio.run(check())
        with pytest.raises(LabError, match="needs a netns lab"):
            lab.link_down(host.name)
    finally:
        lab.down()
    assert leftovers(lab) == []


async def test_faults_are_real(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", hosts=2, prefix=unique_prefix(), subnet=free_subnet(), agents=False)
    await asyncio.to_thread(lab.up)
    try:
        target = lab.target(lab.host("hv-b"))
        fast = target.model_copy(update={"ssh": target.ssh.model_copy(update={"connect_timeout": 1.0})})
        out = exec_in("hv-b", ["ip", "-br", "addr", "show", "eth0"], lab_dir=lab.dir)
        assert lab.host("hv-b").address in out.stdout

        link_down("hv-b", lab_dir=lab.dir)
        with pytest.raises(HostUnreachable, match=r"hv-b \(10\.77\.\d+\.12:22\): SSH connect failed: timed out"):
            await HostConnection(fast).connect()
        link_up("hv-b", lab_dir=lab.dir)

        if netem_supported():
            netem("hv-b", "delay 100ms", lab_dir=lab.dir)
            async with HostConnection(target) as conn:
                start = time.monotonic()
                await conn.run("true", check=True)
                assert time.monotonic() - start >= 0.2  # 100 ms each way
        else:
            with pytest.raises(LabError, match="no netem qdisc"):
                netem("hv-b", "delay 100ms", lab_dir=lab.dir)
        netem("hv-b", "rate 10mbit", lab_dir=lab.dir)
        assert "rate 10Mbit" in exec_in("hv-b", ["tc", "qdisc", "show", "dev", "eth0"], lab_dir=lab.dir).stdout
        netem("hv-b", None, lab_dir=lab.dir)
        assert "rate" not in exec_in("hv-b", ["tc", "qdisc", "show", "dev", "eth0"], lab_dir=lab.dir).stdout
        async with HostConnection(target) as conn:
            await conn.run("true", check=True)
    finally:
        await asyncio.to_thread(lab.down)
    assert leftovers(lab) == []
