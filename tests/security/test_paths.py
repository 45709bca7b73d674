"""Paths confined (issue 12, item 6; storage-check of item 10): every file the agent opens or hands
to QEMU is inside its pools or shared roots, whoever names it — a local definition, or a trusted
peer that sends crafted specs (a source agent tampered by craft_hook/sitecustomize.py). Each
escape (an absolute path outside, `..`, a symlink inside a pool pointing out, `--dest-pool`) is
refused with `path-outside-pools`, and the file system shows nothing created or read outside."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from qvplan.host import pools
from qvplan.host.pools import PathError, Roots, confine, destination, file_name

from ..agents import ApiError, guest_vm, mutual_trust
from ..migration.helpers import migrate, start_guest

MIB = 1 << 20
HOOK = Path(__file__).parent / "craft_hook"
OUTSIDE = "path-outside-pools"


# -- the rule, pure (over a real file system) -----------------------------------------------------


def test_confine_accepts_inside_and_refuses_every_escape(tmp_path: Path) -> None:
    pool, out = tmp_path / "pool", tmp_path / "out"
    (pool / "sub").mkdir(parents=True)
    out.mkdir()
    (pool / "a.raw").write_bytes(b"a")
    (out / "secret").write_bytes(b"s")
    (pool / "link.raw").symlink_to(out / "secret")
    (pool / "inner.raw").symlink_to(pool / "a.raw")  # pointing inside: still refused (what is checked is opened)
    (pool / "dir").symlink_to(out)
    alias = tmp_path / "alias"
    alias.symlink_to(pool)  # a configured root may itself be a symlink: the operator's word
    assert confine(pool / "a.raw", [pool]) == pool / "a.raw"
    assert confine(pool / "sub" / "new.qcow2", [pool]) == pool / "sub" / "new.qcow2"  # not there yet
    assert confine(alias / "a.raw", [alias]) == pool / "a.raw"
    assert confine(pool / "a.raw", [alias]) == pool / "a.raw"
    for bad in ("/etc/shadow", f"{pool}/../out/secret", f"{pool}/link.raw", f"{pool}/inner.raw",
                f"{pool}/dir/secret", f"{pool}/dir", "relative.raw", f"{pool}/a\0.raw", f"{pool}/a.raw/x"):
        with pytest.raises(PathError) as err:
            confine(bad, [pool])
        assert err.value.code == OUTSIDE and err.value.fix and "\n" not in str(err.value), bad


def test_peer_file_names_are_one_component_and_dest_pool_stays_in_a_pool(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    (pool / "sub").mkdir(parents=True)
    (pool / "out").symlink_to("/etc")
    assert file_name("vm-1.qcow2") == "vm-1.qcow2"
    for bad in ("", ".", "..", "a/b", "../x", "x\0", None, 3):
        with pytest.raises(PathError):
            file_name(bad)
    roots = Roots.of({"default": pool})
    assert destination(roots, "default") == ("default", pool)
    assert destination(roots, str(pool) + "/") == ("default", pool)
    assert destination(roots, str(pool / "sub")) == (None, pool / "sub")
    with pytest.raises(PathError) as err:
        destination(roots, "nope")
    assert err.value.code == "storage-not-found"
    for bad in ("/etc", str(pool / ".." / "x"), str(pool / "out")):
        with pytest.raises(PathError) as err:
            destination(roots, bad)
        assert err.value.code == OUTSIDE, bad
    assert pools.is_shared(tmp_path / "nfs" / "x.qcow2", Roots.of({}, [tmp_path / "nfs"]))
    assert not pools.is_shared(pool / "a", Roots.of({"default": pool}, [tmp_path / "nfs"]))


# -- real agents ------------------------------------------------------------------------------------


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """Every entry below `root` with what it is: the file system's own account of it."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "link" if p.is_symlink() else ("dir" if p.is_dir() else sha(p))
    return out


def opened_anywhere(path: Path) -> list[int]:
    """PIDs of processes holding `path` open (read from /proc, not from the agent)."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
        except OSError:
            continue
    return pids


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory no pool includes, holding a secret the agent must never read or hand out."""
    where = tmp_path / "outside"
    where.mkdir()
    (where / "secret.raw").write_bytes(b"root's secret" * 4096)
    return where


def refused(call) -> ApiError:
    with pytest.raises(ApiError) as err:
        call()
    assert err.value.code == OUTSIDE, err.value
    assert err.value.fix and "\n" not in err.value.cause
    return err.value


def test_local_definitions_stay_in_the_pools(make_agent, outside: Path) -> None:
    a = make_agent("hv-a")
    images = a.root / "images"
    before = tree(outside)
    (images / "link.raw").symlink_to(outside / "secret.raw")
    (images / "dir").symlink_to(outside)
    escapes = [
        {"disks": [{"path": "/etc/shadow", "format": "raw"}]},
        {"disks": [{"path": str(outside / "secret.raw"), "format": "raw"}]},
        {"disks": [{"path": f"{images}/../outside/secret.raw", "format": "raw"}]},
        {"disks": [{"pool": "default", "file": "link.raw", "format": "raw"}]},
        {"disks": [{"path": str(images / "dir" / "secret.raw"), "format": "raw"}]},
        {"disks": [{"path": str(images / "dir" / "new.qcow2"), "size": "1G"}]},
    ]
    for extra in escapes:
        refused(lambda extra=extra: a.api("POST", "vms", guest_vm("vm-x", memory="64M", **extra)))
    boot = {"name": "vm-k", "memory": "64M", "guest": {"boot": {"kernel": "/etc/shadow"}}}
    refused(lambda: a.api("POST", "vms", boot))
    boot["guest"]["boot"] = {"kernel": "link.raw"}  # a file name in the pool, which is a symlink out
    refused(lambda: a.api("POST", "vms", boot))
    assert a.vm_names() == []
    # Planted after the definition: the start walks the path again and QEMU never sees it.
    a.api("POST", "vms", guest_vm("vm-1", memory="64M", disks=[{"pool": "default", "file": "late.raw",
                                                                  "size": "64M", "format": "raw"}]))
    (images / "late.raw").symlink_to(outside / "secret.raw")
    refused(lambda: a.api("POST", "vms/vm-1/start", {}))
    assert a.vm("vm-1")["state"] == "defined" and not (a.state / "vms" / "vm-1" / "run" / "qemu.pid").exists()
    assert tree(outside) == before and opened_anywhere(outside / "secret.raw") == []
    # Inside a pool (here in a folder of it) a path disk is fine.
    (images / "sub").mkdir()
    a.api("POST", "vms", guest_vm("vm-2", memory="64M", disks=[{"path": str(images / "sub" / "d.qcow2"),
                                                                  "size": "64M"}]))
    a.api("POST", "vms/vm-2/start", {})
    assert (images / "sub" / "d.qcow2").is_file() and a.vm("vm-2")["state"] == "running"


def test_storage_check_answers_only_inside_pools_and_shared_roots(make_agent, outside: Path) -> None:
    a, b = make_agent("hv-a"), make_agent("hv-b")
    mutual_trust(a, b)
    (b.root / "images" / "there.qcow2").write_bytes(b"x")
    (b.root / "images" / "link").symlink_to(outside / "secret.raw")
    ok = a.cli("system", "storage-check", "--host", b.migration, "--path", str(b.root / "images" / "there.qcow2"))
    assert ok.returncode == 0 and "Accessible: ✅" in ok.stdout, ok.stdout + ok.stderr
    for path in ("/etc/shadow", str(outside / "secret.raw"), str(outside / "nothing-here"),
                 str(b.root / "images" / "link"), f"{b.root}/images/../outside/secret.raw"):
        no = a.cli("system", "storage-check", "--host", b.migration, "--path", path)
        assert no.returncode == 1, no.stdout + no.stderr
        # The same answer whether or not the file exists: nothing learned about the rest of the host.
        assert "Accessible: ❌" in no.stdout and ("outside this host's pools" in no.stdout
                                                 or "symlink" in no.stdout or "'..'" in no.stdout), no.stdout


@pytest.fixture
def tampered(make_agent, tmp_path: Path):
    """(a, b, craft): a is a trusted source agent that rewrites its migration requests with the
    edits written to `craft` (JSON) before each send; b is an honest destination."""
    craft = tmp_path / "craft.json"
    craft.write_text("{}")
    a = make_agent("hv-a", start=False)
    a.env.update(PYTHONPATH=str(HOOK), QV_TEST_CRAFT=str(craft))
    a.start()
    b = make_agent("hv-b")
    mutual_trust(a, b)
    return a, b, craft


def offline_vm(a) -> None:
    disk = a.root / "images" / "vm-1.raw"
    disk.parent.mkdir(parents=True, exist_ok=True)
    disk.write_bytes(b"qvplan" * (MIB // 2))
    a.api("POST", "vms", guest_vm("vm-1", memory="64M",
                                  disks=[{"pool": "default", "file": "vm-1.raw", "format": "raw"}]))


def test_a_trusted_peer_cannot_land_offline_disks_outside_the_pools(tampered, outside: Path) -> None:
    a, b, craft = tampered
    offline_vm(a)
    images = b.root / "images"
    (images / "link.raw").symlink_to(outside / "landed.raw")  # dangling, pointing out
    (images / "dir").symlink_to(outside)
    (images / "sub").mkdir()
    before, pool_before = tree(outside), tree(images)
    shadow = Path("/etc/shadow")
    shadow_was = shadow.stat() if shadow.exists() else None
    crafts = [
        {"vm.disks.0": {"path": str(outside / "landed.raw"), "format": "raw"}},
        {"vm.disks.0": {"path": f"{images}/../outside/landed.raw", "format": "raw"}},
        {"vm.disks.0": {"pool": "default", "file": "link.raw", "format": "raw"}},
        {"vm.disks.0": {"path": str(images / "dir" / "landed.raw"), "format": "raw"}},
        # "It is on shared storage", says the peer: not by this host's config, so nothing is defined on it.
        {"vm.disks.0": {"path": str(shadow), "format": "raw"}, "disks.0.shared": True},
        {"vm.guest": {"boot": {"kernel": str(outside / "secret.raw")}}},
    ]
    for edits in crafts:
        craft.write_text(json.dumps(edits))
        refused(lambda: a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {"offline": True}}))
    craft.write_text("{}")
    for dest_pool in ("/etc", str(outside), f"{images}/../outside", str(images / "dir")):
        refused(lambda dest_pool=dest_pool: a.api("POST", "vms/vm-1/migrate", {
            "dest": b.migration, "flags": {"offline": True, "dest_pool": dest_pool}}))
    assert b.vm_names() == [] and a.vm("vm-1")["state"] == "defined"
    assert tree(outside) == before and tree(images) == pool_before
    assert shadow_was is None or (shadow.stat().st_mtime_ns, shadow.stat().st_size) == (
        shadow_was.st_mtime_ns, shadow_was.st_size)
    # The peer's file mode is not used either: the landed disk is private, in the folder of the pool asked.
    craft.write_text(json.dumps({"disks.0.mode": 0o6777}))
    status = migrate(a, b, "vm-1", offline=True, dest_pool=str(images / "sub"))
    assert status["state"] == "COMPLETED", status
    landed = images / "sub" / "vm-1.raw"
    assert landed.stat().st_mode & 0o7777 == 0o600
    assert b.vm("vm-1")["spec"]["disks"][0]["path"] == str(landed)


def test_a_trusted_peer_cannot_point_live_specs_outside_the_pools(tampered, outside: Path) -> None:
    a, b, craft = tampered
    start_guest(a, memory="64M", working_set="2M",
                disks=[{"pool": "default", "file": "vm-1.qcow2", "size": "64M", "format": "qcow2"}])
    before, pool_before = tree(outside), tree(b.root / "images")
    attempts = [
        ({"vm.disks.0": {"path": str(outside / "secret.raw"), "format": "raw"}}, {}),  # live: QEMU would open it
        ({"vm.disks.0": {"path": "/etc/shadow", "format": "raw"}}, {}),
        ({"vm.guest": {"boot": {"kernel": str(outside / "secret.raw")}}}, {}),
        ({"storage.0.file": "../outside/escape.qcow2"}, {"storage_migrate": True}),
        ({"storage.0.file": "/tmp/escape.qcow2"}, {"storage_migrate": True}),
        ({}, {"storage_migrate": True, "dest_pool": str(outside)}),
        ({}, {"storage_migrate": True, "dest_pool": f"{b.root}/images/../outside"}),
    ]
    for edits, flags in attempts:
        craft.write_text(json.dumps(edits))
        refused(lambda flags=flags: a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": flags}))
        assert a.vm("vm-1")["state"] == "running"
    assert b.vm_names() == []
    assert tree(outside) == before and tree(b.root / "images") == pool_before
    assert not Path("/tmp/escape.qcow2").exists() and not (b.root / "outside").exists()
    assert opened_anywhere(outside / "secret.raw") == []
