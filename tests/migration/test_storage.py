"""Live migration with storage (--storage-migrate): real agents, real QEMU guests with a local
qcow2 disk that is written while it is being mirrored through the PQC channel."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import pytest

from qvplan.contract.flags import MigrateFlags
from qvplan.errors import QVError
from qvplan.migration.status import MigrationStatus
from qvplan.migration.storage import exports as pools
from qvplan.vmm import VMSpec

from ..agents import ApiError, mutual_trust
from .helpers import migrate, runs_only_on, start_guest, wait_outcome
from .proxy import TapProxy

MIB = 1 << 20
DISK = "vm-1.qcow2"
# A guest whose memory converges quickly even under a bandwidth cap (a small dirty set).
LIGHT = {"memory": "64M", "working_set": "2M"}


def qemu_open_files(agent, name: str) -> set[str]:
    pid = int((agent.state / "vms" / name / "run" / "qemu.pid").read_text())
    return {str(fd.readlink()) for fd in Path(f"/proc/{pid}/fd").iterdir()}


def disk_guest(agent, size: str = "128M", data_mib: int = 0) -> Path:
    """Start vm-1 with one local qcow2 disk holding `data_mib` MiB of 0x11 bytes."""
    start_guest(agent, **LIGHT, disks=[{"pool": "default", "file": DISK, "size": size, "format": "qcow2"}])
    if data_mib:
        write_disk(agent, 0x11, "0", f"{data_mib}M")
    return agent.root / "images" / DISK


def write_disk(agent, pattern: int, offset: str, length: str) -> None:
    """Write vm-1's disk through its running QEMU (so mirrors see the write): the agent's narrow
    test route (agent/testroutes.py), not a monitor passthrough."""
    agent.api("POST", "vms/vm-1/test/disk-write", {"pattern": pattern, "offset": offset, "length": length})


def wait_status(agent, check, what: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = agent.api("GET", "vms/vm-1/migrate")
        if check(status):
            return status
        if status["state"] != "MIGRATING":
            raise AssertionError(f"migration ended before {what}: {status}")
        time.sleep(0.05)
    raise AssertionError(f"never saw {what}")


def storage_events(agent, count: int = 2) -> list[str]:
    """The Storage lines of the first `count` events of vm-1's migration event stream (SSE)."""
    lines = []
    with contextlib.closing(agent.client.events("vms/vm-1/migrate/events")) as events:
        for event in events:
            lines.append(event["storage"])
            if len(lines) == count:
                break
    return lines


def has_pattern(image: Path, byte: int, offset: str, length: str) -> bool:
    run = subprocess.run(["qemu-io", "-r", "-U", "-f", "qcow2", "-c", f"read -P {byte:#x} {offset} {length}",
                          str(image)], capture_output=True, text=True)
    return run.returncode == 0 and "Pattern verification failed" not in run.stdout


def images(agent) -> list[str]:
    return sorted(p.name for p in (agent.root / "images").glob("*"))


def nothing_left_on(agent, timeout: float = 20) -> None:
    """No VM, no VM folder, no image: the destination's cleanup may finish after the source's outcome."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not agent.vm_names() and not images(agent) and not (agent.state / "vms" / "vm-1").exists():
            return
        time.sleep(0.2)
    raise AssertionError(f"left on {agent.name}: VMs {agent.vm_names()}, images {images(agent)}")


def test_storage_migration_copies_a_disk_written_during_the_copy(pair):
    a, b = pair
    source_image = disk_guest(a, data_mib=40)
    # 16 MiB/s for memory and disks together: the 40 MiB copy takes a few seconds.
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {"storage_migrate": True,
                                                                      "bandwidth": "16M"}})
    wait_status(a, lambda s: s["storage_phase"] and s["storage_copied"] >= 8 * MIB, "the block phase")
    write_disk(a, 0x5a, "0", "1M")  # over blocks already copied: the dirty bitmap must carry them
    write_disk(a, 0x6b, "100M", "2M")  # blocks that held nothing when the copy started
    assert all(line and " copied), " in line and " dirty, " in line for line in storage_events(a))
    during = a.api("GET", "vms/vm-1/migrate")
    assert during["storage_phase"], "the writes landed after the block phase; the test proves nothing"
    assert during["storage_total"] >= 40 * MIB

    status = wait_outcome(a, "vm-1")
    assert status["state"] == "COMPLETED", status
    assert status["storage_copied"] == status["storage_total"] >= 42 * MIB and status["storage_dirty"] == 0
    assert 0 < status["storage_rate"] < 20 * MIB  # the cap held (16 MiB/s plus the ramp)
    shown = a.cli("vm", "migrate-status", "vm-1")
    assert "Storage:         100% (" in shown.stdout, shown.stdout
    runs_only_on(b, a, "vm-1")  # guest runs there, RAM verified
    moved = b.vm("vm-1")["spec"]["disks"][0]
    assert (moved["pool"], moved["file"]) == ("default", DISK)
    assert source_image.exists()  # kept: the operator decides

    b.api("POST", "vms/vm-1/stop", {})  # flushes; then both images are at rest
    dest_image = b.root / "images" / DISK
    compare = subprocess.run(["qemu-img", "compare", str(source_image), str(dest_image)],
                             capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert has_pattern(dest_image, 0x5a, "0", "1M") and has_pattern(dest_image, 0x6b, "100M", "2M")
    assert has_pattern(dest_image, 0x11, "1M", "39M")


def test_back_again_refuses_an_existing_image_then_deletes_the_source_disk(pair):
    a, b = pair
    disk_guest(a, size="64M", data_mib=8)
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {"storage_migrate": True}})
    assert wait_outcome(a, "vm-1")["state"] == "COMPLETED"
    runs_only_on(b, a, "vm-1")
    # a kept its copy: going back must not overwrite it
    with pytest.raises(ApiError) as err:
        b.api("POST", "vms/vm-1/migrate", {"dest": a.migration, "flags": {"storage_migrate": True}})
    assert f"disk {DISK} already exists in destination pool default" in err.value.cause
    runs_only_on(b, a, "vm-1")
    (a.root / "images" / DISK).unlink()

    flags = {"storage_migrate": True, "delete_source_disks": True, "dest_pool": str(a.root / "images")}
    b.api("POST", "vms/vm-1/migrate", {"dest": a.migration, "flags": flags})
    assert wait_outcome(b, "vm-1")["state"] == "COMPLETED"
    runs_only_on(a, b, "vm-1")
    assert images(b) == []  # deleted once a runs the guest
    assert images(a) == [DISK]


def test_link_cut_during_block_phase_rolls_back(make_agent):
    a, b = make_agent("hv-a"), make_agent("hv-b")
    mutual_trust(a, b)
    source_image = disk_guest(a, data_mib=32)
    host, port = b.migration.split(":")
    tap = TapProxy(a.address, (host, int(port)))
    flags = {"storage_migrate": True, "bandwidth": "8M", "delete_source_disks": True}
    a.api("POST", "vms/vm-1/migrate", {"dest": tap.address, "flags": flags})
    wait_status(a, lambda s: s["storage_phase"] and s["storage_copied"] >= 4 * MIB, "the block phase")
    assert (b.root / "images" / DISK).exists()  # the destination's image is being filled
    tap.cut()

    status = wait_outcome(a, "vm-1")
    assert status["state"] == "FAILED", status
    assert "Connection reset during transfer" in status["error"]
    runs_only_on(a, b, "vm-1")
    nothing_left_on(b)
    assert source_image.exists()  # --delete-source-disks acts only after a success
    # the guest writes its own disk again, with no mirror or NBD client left behind
    blocks = a.api("POST", "vms/vm-1/test/block")
    files = {d["device"] or d["qdev"]: d["inserted"]["file"] for d in blocks["devices"] if d.get("inserted")}
    assert any(f.startswith("/dev/fdset/") for f in files.values()), files
    assert not [n for n in blocks["nodes"] if n and n.startswith("mig-")], blocks["nodes"]
    assert str(source_image) in qemu_open_files(a, "vm-1")  # the agent hands QEMU its disks by fd
    write_disk(a, 0x77, "0", "1M")


def test_destination_agent_killed_during_block_phase_leaves_no_image(pair):
    a, b = pair
    disk_guest(a, data_mib=32)
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {"storage_migrate": True, "bandwidth": "8M"}})
    wait_status(a, lambda s: s["storage_phase"] and s["storage_copied"] >= 4 * MIB, "the block phase")
    b.kill()  # its QEMU, holding the partial image, outlives it
    status = wait_outcome(a, "vm-1")
    assert status["state"] == "FAILED", status
    assert (b.root / "images" / DISK).exists()
    b.start()  # the restarted agent removes the uncommitted VM and the image it had created
    runs_only_on(a, b, "vm-1")
    nothing_left_on(b)


def test_source_agent_killed_during_block_phase_then_the_vm_moves_with_its_disk(pair):
    """The killed agent cannot end its mirror or drop its NBD client; the restarted one rolls the
    session back and removes them from QEMU, so the next storage migration of the VM works (it
    failed before with "Duplicate nodes with node-name='mig-disk0'", found by bench/chaos.py)."""
    a, b = pair
    disk_guest(a, data_mib=32)
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {"storage_migrate": True, "bandwidth": "8M"}})
    wait_status(a, lambda s: s["storage_phase"] and s["storage_copied"] >= 4 * MIB, "the block phase")
    a.kill()  # its QEMU lives on, mirroring into the destination's export
    a.start()
    deadline = time.monotonic() + 30
    while [n for n in a.api("POST", "vms/vm-1/test/block")["nodes"] if n and n.startswith("mig-")]:
        assert time.monotonic() < deadline, "the killed agent's NBD client is still in QEMU"
        time.sleep(0.2)
    runs_only_on(a, b, "vm-1")
    nothing_left_on(b)
    write_disk(a, 0x5A, "8M", "1M")
    status = migrate(a, b, "vm-1", storage_migrate=True)
    assert status["state"] == "COMPLETED", status
    runs_only_on(b, a, "vm-1")
    assert has_pattern(b.root / "images" / DISK, 0x5A, "8M", "1M")


def test_refusals_leave_the_vm_untouched(pair):
    a, b = pair
    disk_guest(a, size="64T")  # a sparse qcow2 whose virtual size no test machine has free
    cases = {
        "nope": "Migration rejected: storage pool nope not found on destination",
        str(b.root / "images" / "missing-dir"): "not found on destination",
        str(b.root / "elsewhere"): "outside this host's pools and shared roots",
        "default": "Migration rejected: destination pool default lacks room (needs 64.0 TiB,",
    }
    for pool, message in cases.items():
        with pytest.raises(ApiError) as err:
            a.api("POST", "vms/vm-1/migrate", {"dest": b.migration,
                                               "flags": {"storage_migrate": True, "dest_pool": pool}})
        assert message in err.value.cause, err.value
        assert err.value.fix
    cli = a.cli("vm", "migrate", "vm-1", "--dest", b.migration, "--storage-migrate", "--dest-pool", "nope")
    assert cli.returncode != 0
    assert len(cli.stderr.strip().splitlines()) == 1 and " — pass --dest-pool" in cli.stderr, cli.stderr
    runs_only_on(a, b, "vm-1")
    assert b.vm_names() == [] and images(b) == []


# -- pure logic ---------------------------------------------------------------------------------


def _spec(*disks: dict) -> VMSpec:
    return VMSpec.model_validate({"name": "vm-1", "guest": {"test": {}}, "disks": list(disks)})


def test_placement_keeps_pool_names_and_sizes(tmp_path):
    fast, other = tmp_path / "fast", tmp_path / "other"
    fast.mkdir()
    other.mkdir()
    spec = _spec({"pool": "default", "file": "a.qcow2", "size": "1G"}, {"path": "/src/b.img", "format": "raw"})
    disks = [{"file": "a.qcow2", "format": "qcow2", "size": 1 << 30}, {"file": "b.img", "format": "raw", "size": MIB}]
    by_dir = pools.place(spec, disks, {"default": tmp_path, "fast": fast}, str(fast) + "/", lambda _: 1 << 40)
    assert [(d.pool, d.file, d.size, d.format) for d in by_dir.spec.disks] == [
        ("fast", "a.qcow2", "1G", "qcow2"), ("fast", "b.img", MIB, "raw")]
    assert by_dir.exports == ["disk0", "disk1"]
    plain = pools.place(spec, disks, {"default": tmp_path}, str(other), lambda _: 1 << 40)
    assert [d.path for d in plain.spec.disks] == [str(other / "a.qcow2"), str(other / "b.img")]
    with pytest.raises(QVError, match="lacks room"):
        pools.place(spec, disks, {"default": tmp_path}, None, lambda _: (1 << 30) + MIB - 1)
    (tmp_path / "a.qcow2").touch()
    with pytest.raises(QVError, match="already exists"):
        pools.place(spec, disks, {"default": tmp_path}, None, lambda _: 1 << 40)


def test_bandwidth_is_shared_and_flags_need_storage_migrate():
    flags = MigrateFlags(storage_migrate=True, bandwidth="100M")
    assert flags.storage_bandwidth + flags.memory_bandwidth == 100 * MIB
    assert flags.qemu_parameters()["max-bandwidth"] == flags.memory_bandwidth < 100 * MIB
    assert MigrateFlags(storage_migrate=True).memory_bandwidth == 0  # unlimited stays unlimited
    with pytest.raises(ValueError, match="needs --storage-migrate"):
        MigrateFlags(delete_source_disks=True)


def test_status_shows_the_storage_line_during_the_block_phase():
    status = MigrationStatus("vm-1", "hv-b:9410", "ML-KEM-768 / AES-256-GCM", 30, phase=2, storage_phase=True,
                             storage_copied=96 * MIB, storage_total=128 * MIB, storage_dirty=2 * MIB,
                             storage_rate=50e6)
    shown = status.render()
    assert "State:           MIGRATING (phase 2: initial transfer, copying disks)" in shown
    assert "Storage:         75% (96.0 MiB / 128.0 MiB copied), 2.0 MiB dirty, 50 MB/s" in shown
    assert "Storage:" not in MigrationStatus("vm-1", "hv-b:9410", "x", 30).render()  # shared storage


def test_destination_pool_removed_during_the_copy_refuses_to_commit(pair):
    import shutil

    from .invariant import exactly_one

    a, b = pair
    source_image = disk_guest(a, data_mib=16)
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {"storage_migrate": True, "bandwidth": "8M"}})
    wait_status(a, lambda s: s["storage_phase"] and s["storage_copied"] >= 2 * MIB, "the block phase")
    shutil.rmtree(b.root / "images")  # QEMU there keeps writing into the unlinked image
    status = wait_outcome(a, "vm-1")
    assert status["state"] == "FAILED", status
    assert status["code"] == "storage-failed" and "was removed during the copy" in status["error"], status
    assert source_image.exists()
    exactly_one(a, b)
