"""Real test guests under TCG: boot, re-attach, and the verifier catching real corruption."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qvplan.vmm import QemuError, QemuProcess, verify_ram
from qvplan.vmm.debug import read_guest_memory, write_guest_memory
from qvplan.vmm.guest import MARKER
from qvplan.vmm.verify import PAGE

from .conftest import StartVM, guest_spec, needs_qemu

pytestmark = [needs_qemu, pytest.mark.qemu]


async def test_boot_markers_verify_stop(start_vm: StartVM) -> None:
    spec = guest_spec("boot", working_set="8M")
    proc = await start_vm(spec)
    assert proc.is_alive() and proc.pid is not None
    assert proc.warnings == ["CPU model host needs KVM; using max under TCG"]
    first = await proc.wait_markers(0, timeout=30)
    assert proc.serial_started()
    assert await proc.wait_markers(first, timeout=30) > first  # still sweeping

    report = await verify_ram(proc, spec)
    assert report.ok, str(report)
    assert report.pages == 2048
    assert (await proc.execute("query-status"))["status"] == "running"  # resumed after the dump

    pid = proc.pid
    await proc.stop()
    assert not proc.is_alive()
    assert not Path(f"/proc/{pid}").exists()  # exited and reaped
    assert not proc.qmp_socket.exists()


async def test_verify_keeps_a_paused_vm_paused(start_vm: StartVM) -> None:
    spec = guest_spec("paused")
    proc = await start_vm(spec)
    await proc.wait_markers(0)
    with proc.listener("STOP") as stopped:
        await proc.execute("stop")
        await asyncio.wait_for(stopped.get(), 10)
    markers = proc.serial_markers()
    assert (await verify_ram(proc, spec)).ok
    assert (await proc.execute("query-status"))["status"] == "paused"
    await asyncio.sleep(0.3)
    assert proc.serial_markers() == markers


async def test_reattach_from_run_dir(start_vm: StartVM, tmp_path: Path) -> None:
    spec = guest_spec("again")
    first = await start_vm(spec)
    await first.wait_markers(0)
    pid = first.pid
    await first.disconnect()  # what an agent restart leaves behind: QEMU alone with its run dir
    del first

    proc = QemuProcess(spec, run_dir=tmp_path / spec.name, accel="tcg")
    assert proc.is_alive()
    await proc.attach()
    assert proc.pid == pid
    assert (await proc.execute("query-status"))["status"] == "running"
    seen = proc.serial_markers()
    assert await proc.wait_markers(seen) > seen
    assert (await verify_ram(proc, spec)).ok
    await proc.stop()
    assert not proc.is_alive()
    with pytest.raises(QemuError, match="is not running"):
        await proc.attach()


async def test_verifier_names_a_corrupted_page(start_vm: StartVM) -> None:
    spec = guest_spec("corrupt", working_set="4M")
    proc = await start_vm(spec)
    await proc.wait_markers(0)
    base = spec.guest.test.start_bytes if spec.guest.test else 0
    assert (await verify_ram(proc, spec)).ok

    # Corrupt the marker fill of page 100, and byte 0 of page 700 by +0x80: the sweep keeps
    # incrementing that counter with the others, so it stays 0x80 away from its neighbours.
    await write_guest_memory(proc, base + 100 * PAGE + 37, b"\x00")
    counter = (await read_guest_memory(proc, base + 700 * PAGE, 16))
    assert counter[1:] == MARKER[1:]
    await write_guest_memory(proc, base + 700 * PAGE, bytes([(counter[0] + 0x80) % 256]))
    assert (await proc.execute("query-status"))["status"] == "running"

    await proc.wait_markers(proc.serial_markers())  # the guest swept on after the damage
    report = await verify_ram(proc, spec)
    assert not report.ok
    assert [(p.index, p.what) for p in report.bad_pages] == [(100, "fill at +0x025"), (700, "counter")]
    assert report.bad_pages[0].address == base + 100 * PAGE
    assert report.bad_pages[0].expected == MARKER[37 % 16] and report.bad_pages[0].found == 0
    assert "page 700 (0x12bc000) counter" in str(report)


async def test_events_reach_every_listener(start_vm: StartVM) -> None:
    proc = await start_vm(guest_spec("events"))
    seen: list[str] = []

    async def watch() -> None:
        async for event in proc.events("STOP", "RESUME"):
            seen.append(event["event"])
            if len(seen) == 2:
                return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.05)  # let the watcher register its listener
    with proc.listener("RESUME") as resumed:
        await proc.execute("stop")
        await proc.execute("cont")
        assert (await asyncio.wait_for(resumed.get(), 10))["event"] == "RESUME"
    await asyncio.wait_for(watcher, 10)
    assert seen == ["STOP", "RESUME"]


async def test_start_failure_is_one_line(start_vm: StartVM) -> None:
    spec = guest_spec("badcpu")
    spec.cpu.model = "nosuchcpu"
    with pytest.raises(QemuError) as err:
        await start_vm(spec)
    assert "QEMU for 'badcpu' exited" in str(err.value) and "nosuchcpu" in str(err.value)
    assert "\n" not in str(err.value)
