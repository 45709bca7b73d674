"""SSH transport against real sshd in lab namespaces: commands, host keys, SFTP, API tunnel, SSE."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from qvplan.remote import AgentError, AgentUnreachable, HostConnection, HostUnreachable, fan_out

SERVER = Path(__file__).with_name("http_server.py")


async def test_run_on_every_host_at_once(lab) -> None:
    async def job(conn: HostConnection) -> str:
        return (await conn.run(["sh", "-c", "hostname; uname -s"], check=True)).stdout.split()[0]

    results, errors = await fan_out(lab.targets().values(), job)
    assert errors == {}
    assert results == {h.name: h.name for h in lab.hosts}


async def test_failed_command_is_one_line(lab) -> None:
    async with lab.connect("hv-a") as conn:
        res = await conn.run("echo out; echo oops >&2; exit 3")
        assert (res.exit_status, res.stdout, res.stderr, res.ok) == (3, "out\n", "oops\n", False)
        with pytest.raises(Exception, match=r"hv-a: `exit 4` exited 4"):
            await conn.run("exit 4", check=True)


async def test_host_key_checking(lab, tmp_path: Path) -> None:
    target = lab.target(lab.host("hv-a"))
    wrong = tmp_path / "known_hosts"
    other = lab.host("hv-b").file("ssh_host_ed25519_key.pub").read_text().split()[:2]
    wrong.write_text(f"{target.address} {' '.join(other)}\n")
    bad = target.model_copy(update={"ssh": target.ssh.model_copy(update={"known_hosts": str(wrong)})})
    with pytest.raises(HostUnreachable, match="host key not verifiable"):
        await HostConnection(bad).connect()
    unchecked = target.model_copy(update={"ssh": target.ssh.model_copy(update={"known_hosts": "none"})})
    async with HostConnection(unchecked) as conn:
        assert (await conn.run("true")).ok


async def test_sftp_put(lab, tmp_path: Path) -> None:
    src = tmp_path / "payload.bin"
    src.write_bytes(b"x" * 100_000)
    remote = str(lab.dir / "upload-test")
    async with lab.connect("hv-b") as conn:
        await conn.put([src], remote)
        res = await conn.run(f"wc -c < {remote}/payload.bin", check=True)
    assert res.stdout.strip() == "100000"


async def test_api_and_sse_through_the_tunnel(lab) -> None:
    host = lab.host("hv-c")
    sock = host.file("fake-api.sock")
    server = subprocess.Popen(["ip", "netns", "exec", host.netns, sys.executable, str(SERVER), str(sock)])
    target = lab.target(host).model_copy(update={"control": str(sock)})
    try:
        async with HostConnection(target) as conn:
            for _ in range(100):  # wait for the server inside the namespace
                try:
                    reply = await conn.api("GET", "/api/v1/host?q=a%20b")
                    break
                except AgentUnreachable:
                    await asyncio.sleep(0.1)
            assert reply == {"name": "fake", "version": "0.0.0", "echo": "a b"}
            assert await conn.api("POST", "echo", {"k": [1, 2]}) == {"got": {"k": [1, 2]}}
            with pytest.raises(AgentError, match="hv-c: GET fail: unknown VM nope — list VMs") as err:
                await conn.api("GET", "fail")
            assert err.value.status == 404
            events = [e async for e in conn.events("vms/x/migrate/events")]
            assert events == [{"i": 0, "event": "progress"}, {"i": 1, "event": "progress"},
                              {"i": 2, "event": "progress"}, {"event": "completed"}]
    finally:
        server.kill()
        server.wait()
    async with HostConnection(target) as conn:
        with pytest.raises(AgentUnreachable, match=rf"hv-c: agent API {sock} \(through SSH\): nothing answers"):
            await conn.api("GET", "host")


async def test_unreachable_host_is_one_line_and_hides_nothing(lab) -> None:
    targets = list(lab.targets().values())
    ghost = targets[0].model_copy(update={
        "name": "ghost", "address": f"{lab.spec.subnet}.99",
        "ssh": targets[0].ssh.model_copy(update={"connect_timeout": 1.0})})

    async def job(conn: HostConnection) -> str:
        return (await conn.run("hostname", check=True)).stdout.strip()

    results, errors = await fan_out([*targets, ghost], job)
    assert set(results) == {h.name for h in lab.hosts}
    assert errors == {"ghost": f"ghost ({lab.spec.subnet}.99:22): SSH connect failed: timed out after 1s — "
                               "check the address, that sshd runs there, and ssh user/key/known_hosts"}
