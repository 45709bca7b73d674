"""Apply's host lock under attack, through a real sshd: a symlink planted at the lock path is not
followed, the old predictable /run/lock path is never touched, and an unsafe lock directory is
refused. Outcomes are read from the file system (the symlink's target, stat), not from the lock."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from qvplan.apply import lock
from qvplan.apply.lock import HostLocks, LockError, owner
from qvplan.lab.testing import lab_session
from qvplan.remote import HostConnection, load_inventory

TARGET_TEXT = "precious: must stay as it is\n"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_session(tmp_path_factory.mktemp("lab"), hosts=1, agents=False) as lab:
        yield lab


@pytest.fixture
def lock_dir(tmp_path, monkeypatch) -> Path:
    """A lock directory of this test (the same code takes /run/quantavirt/locks by default)."""
    where = tmp_path / "qv" / "locks"
    monkeypatch.setattr(lock, "LOCK_DIR", str(where))
    return where


def targets(lab):
    return {"hv-a": load_inventory(lab.inventory_path)["hv-a"]}


async def lock_name(lab) -> str:
    conn = HostConnection(targets(lab)["hv-a"])
    await conn.connect()
    try:
        return lock.lock_path(conn)
    finally:
        await conn.close()


def test_lock_lives_in_a_private_directory_and_never_in_run_lock(lab, tmp_path) -> None:
    name = asyncio.run(lock_name(lab))
    old = Path("/run/lock") / name  # where earlier versions wrote, as root, following symlinks
    victim = tmp_path / "victim"
    victim.write_text(TARGET_TEXT)
    if old.parent.is_dir():
        old.unlink(missing_ok=True)
        old.symlink_to(victim)

    async def take() -> None:
        async with HostLocks(targets(lab), owner("p.yaml", None)) as held:
            path = Path(held.held["hv-a"].file)
            assert path == Path("/run/quantavirt/locks") / name
            info = path.parent.stat()
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o700)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert '"plan":"p.yaml"' in path.read_text()

    try:
        asyncio.run(take())
        assert victim.read_text() == TARGET_TEXT
    finally:
        if old.is_symlink():
            old.unlink()


def test_a_symlink_at_the_lock_path_is_not_followed(lab, lock_dir: Path, tmp_path) -> None:
    lock_dir.mkdir(parents=True, mode=0o700)
    name = asyncio.run(lock_name(lab))
    victim = tmp_path / "victim"
    victim.write_text(TARGET_TEXT)
    (lock_dir / name).symlink_to(victim)
    with pytest.raises(LockError) as err:
        asyncio.run(HostLocks(targets(lab), owner("p.yaml", None)).__aenter__())
    assert "a symlink is refused" in str(err.value) and "\n" not in str(err.value)
    assert err.value.reason_code == "lock-failed"
    assert victim.read_text() == TARGET_TEXT and (lock_dir / name).is_symlink()


@pytest.mark.parametrize("unsafe", ["world-writable", "symlinked"])
def test_an_unsafe_lock_directory_is_refused(lab, lock_dir: Path, tmp_path, unsafe: str) -> None:
    lock_dir.parent.mkdir(parents=True, mode=0o755)
    if unsafe == "world-writable":
        lock_dir.mkdir()
        os.chmod(lock_dir, 0o777)
    else:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        lock_dir.symlink_to(elsewhere)
    with pytest.raises(LockError) as err:
        asyncio.run(HostLocks(targets(lab), owner("p.yaml", None)).__aenter__())
    assert "unsafe lock directory" in str(err.value)
    assert not any(p.name.endswith(".lock") for p in tmp_path.rglob("*"))


def test_a_held_lock_refuses_a_second_apply_at_once(lab, lock_dir: Path) -> None:
    async def scenario() -> float:
        async with HostLocks(targets(lab), owner("first.yaml", None)):
            start = time.monotonic()
            with pytest.raises(LockError) as err:
                async with HostLocks(targets(lab), owner("second.yaml", None)):
                    pass
            assert "hv-a is locked by another apply" in str(err.value) and "first.yaml" in str(err.value)
            assert err.value.reason_code == "host-locked"
            return time.monotonic() - start

    assert asyncio.run(scenario()) < 3
    async def again() -> None:  # released with the first apply's session
        async with HostLocks(targets(lab), owner("third.yaml", None)) as held:
            assert list(held.held) == ["hv-a"]

    asyncio.run(again())
