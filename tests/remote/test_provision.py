"""Provisioning an agent over SSH onto a lab host that has none: wheelhouse over SFTP, venv, start."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qvplan import __version__
from qvplan.lab.testing import agent_code_present, lab_session
from qvplan.remote import ProvisionError, ProvisionOptions, ensure_agent, gather_facts
from qvplan.remote.provision import install, installed_version


@pytest.fixture(scope="module")
def bare_lab(tmp_path_factory: pytest.TempPathFactory):
    """One host with sshd only: no agent, nothing installed."""
    with lab_session(tmp_path_factory.mktemp("bare"), hosts=1, agents=False) as lab:
        yield lab


def options(lab) -> ProvisionOptions:
    host = lab.hosts[0]
    return ProvisionOptions(prefix=str(lab.dir / "opt"), config=str(host.file("provisioned.toml")),
                            state_dir=str(host.file("pstate")), python="/usr/bin/python3",
                            use_systemd=False, start_timeout=20)


async def test_ensure_agent_installs_and_starts_it(bare_lab) -> None:
    opts = options(bare_lab)
    async with bare_lab.connect("hv-a") as conn:
        assert await installed_version(conn, opts) is None
        start = time.monotonic()
        if not agent_code_present():
            with pytest.raises(ProvisionError, match="hv-a: the agent exited: "):
                await ensure_agent(conn, opts)
            assert (await conn.run(["test", "-x", opts.quantavirt])).ok
            pytest.skip("installed; the agent itself is not importable in this checkout yet")
        status = await ensure_agent(conn, opts)
        took = time.monotonic() - start
        assert (status.installed, status.configured, status.started) == (True, True, True), status
        assert await installed_version(conn, opts) == __version__
        assert "name = \"hv-a\"" in Path(opts.config).read_text()
        # Second time: it runs, nothing to do, fast.
        again = await ensure_agent(conn, opts)
        assert (again.installed, again.started) == (False, False)
    pool = str(Path(opts.state_dir or "") / "images")  # the provisioned agent's default pool
    facts, errors = await gather_facts(bare_lab.targets(), storage_paths=[pool, str(bare_lab.dir), "/nonexistent"])
    assert errors == {}
    assert facts["hv-a"]["name"] == "hv-a" and facts["hv-a"]["version"] == __version__
    # storage-check answers only inside pools and shared roots (issue 12)
    assert facts["hv-a"]["storage_checks"] == {pool: True, str(bare_lab.dir): False, "/nonexistent": False}
    assert took < 60


async def test_bad_python_is_one_line_naming_the_host(bare_lab) -> None:
    opts = ProvisionOptions(prefix=str(bare_lab.dir / "opt2"), config=str(bare_lab.dir / "opt2.toml"),
                            python="/nonexistent/python3", use_systemd=False)
    async with bare_lab.connect("hv-a") as conn:
        with pytest.raises(ProvisionError, match=r"^hv-a: cannot create a venv with /nonexistent/python3"):
            await install(conn, opts)


async def test_a_wheel_swapped_on_the_host_is_refused_not_installed(bare_lab, monkeypatch) -> None:
    """Wheels go to a fresh 0700 directory; one altered after upload fails the hash check, nothing
    is installed from it or from an index, and the directory is gone afterwards."""
    import os
    import stat

    from qvplan.remote.connection import HostConnection

    opts = ProvisionOptions(prefix=str(bare_lab.dir / "opt3"), config=str(bare_lab.dir / "opt3.toml"),
                            python="/usr/bin/python3", use_systemd=False)
    seen: list[tuple[str, int, int]] = []
    real_put = HostConnection.put

    async def put_then_tamper(self, local, remote_dir):
        await real_put(self, local, remote_dir)
        info = os.stat(remote_dir)  # the lab host shares this file system
        seen.append((remote_dir, info.st_uid, stat.S_IMODE(info.st_mode)))
        victim = Path(remote_dir) / Path(str(local[0])).name  # the qvplan wheel
        with open(victim, "ab") as f:
            f.write(b"tampered")

    monkeypatch.setattr(HostConnection, "put", put_then_tamper)
    before = set(Path("/tmp").glob("qvplan-wheels.*"))
    async with bare_lab.connect("hv-a") as conn:
        with pytest.raises(ProvisionError) as err:
            await install(conn, opts)
        assert await installed_version(conn, opts) is None
    assert str(err.value).startswith("hv-a: installing qvplan") and "\n" not in str(err.value)
    (where, uid, mode), = seen
    assert where.startswith("/tmp/qvplan-wheels.") and (uid, mode) == (os.geteuid(), 0o700)
    assert not Path(where).exists() and set(Path("/tmp").glob("qvplan-wheels.*")) == before
