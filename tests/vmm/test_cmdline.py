"""The QEMU command line for a spec (pure: nothing is started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qvplan.vmm import QemuError, VMSpec
from qvplan.vmm.cmdline import RunPaths, build_command, mac_address

RUN = RunPaths(Path("/state/vms/web-01/run"))
POOLS = {"default": Path("/pool")}


def argv_of(data: dict, accel: str = "tcg", **kw: object) -> list[str]:
    return build_command(VMSpec.load(data), RUN, accel=accel, pool_paths=POOLS, **kw).argv  # type: ignore[arg-type]


def values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_test_guest_basics() -> None:
    cmd = build_command(VMSpec.load({"name": "web-01", "memory": "128M", "vcpus": 2, "guest": {"test": {}}}),
                        RUN, accel="tcg", pool_paths=POOLS)
    argv = cmd.argv
    assert values(argv, "-machine") == ["pc"] and values(argv, "-accel") == ["tcg,thread=multi"]
    assert values(argv, "-m") == ["128M"] and values(argv, "-smp") == ["2"]
    assert {"-nodefaults", "-no-user-config"} <= set(argv) and values(argv, "-display") == ["none"]
    assert values(argv, "-pidfile") == ["/state/vms/web-01/run/qemu.pid"]
    assert "socket,id=qmp,path=/state/vms/web-01/run/qmp.sock,server=on,wait=off" in values(argv, "-chardev")
    assert "file,id=serial0,path=/state/vms/web-01/run/serial.log" in values(argv, "-chardev")
    guest = json.loads(values(argv, "-blockdev")[0])
    assert guest["node-name"] == "guest0" and guest["file"]["filename"] == "/state/vms/web-01/run/testguest.img"
    assert "ide-hd,drive=guest0,bus=ide.0,unit=0,bootindex=0" in values(argv, "-device")
    assert "-incoming" not in argv and "-S" not in argv
    # host is KVM-only: TCG gets max, and says so
    assert cmd.cpu == "max" and cmd.warnings == ["CPU model host needs KVM; using max under TCG"]


def test_cpu_under_kvm_keeps_host_and_features() -> None:
    cmd = build_command(VMSpec.load({"name": "a", "cpu": {"model": "host", "features": ["+sse4.2", "-avx", "aes"]},
                                     "guest": {"test": {}}}), RUN, accel="kvm", pool_paths=POOLS)
    assert cmd.cpu == "host,+sse4.2,-avx,+aes" and cmd.warnings == []
    assert values(cmd.argv, "-accel") == ["kvm"]


def test_disks_are_named_nodes_and_boot_disk_boots() -> None:
    argv = argv_of({"name": "db", "disks": [{"file": "db.qcow2"}, {"path": "/data/x.raw", "format": "raw"}],
                    "guest": {"boot_disk": 1}})
    nodes = [json.loads(b) for b in values(argv, "-blockdev")]
    assert [(n["node-name"], n["driver"], n["file"]["node-name"], n["file"]["filename"]) for n in nodes] == [
        ("disk0", "qcow2", "disk0-file", "/pool/db.qcow2"), ("disk1", "raw", "disk1-file", "/data/x.raw")]
    assert values(argv, "-device")[1:] == ["virtio-blk-pci,drive=disk0,id=vd0",
                                           "virtio-blk-pci,drive=disk1,id=vd1,bootindex=0"]


def test_nics() -> None:
    user = argv_of({"name": "n", "nic": {"type": "user"}, "guest": {"test": {}}})
    assert values(user, "-netdev") == ["user,id=net0"]
    assert f"virtio-net-pci,netdev=net0,id=nic0,mac={mac_address('n')},romfile=" in values(user, "-device")
    tap = argv_of({"name": "n", "nic": {"type": "tap", "ifname": "tap0"}, "guest": {"test": {}}})
    assert values(tap, "-netdev") == ["tap,id=net0,ifname=tap0,script=no,downscript=no"]
    assert mac_address("n") == mac_address("n") != mac_address("m")


def test_incoming_and_paused() -> None:
    argv = argv_of({"name": "in", "guest": {"test": {}}}, incoming="defer", paused=True)
    assert values(argv, "-incoming") == ["defer"] and argv[-1] == "-S"


def test_commas_in_paths_are_escaped() -> None:
    argv = build_command(VMSpec.load({"name": "c", "guest": {"test": {}}}), RunPaths(Path("/a,b")),
                         accel="tcg", pool_paths=POOLS).argv
    assert "socket,id=qmp,path=/a,,b/qmp.sock,server=on,wait=off" in values(argv, "-chardev")


def test_socket_path_too_long() -> None:
    with pytest.raises(QemuError, match="too long for a Unix socket"):
        build_command(VMSpec.load({"name": "c", "guest": {"test": {}}}), RunPaths(Path("/x" * 60)),
                      accel="tcg", pool_paths=POOLS)


def test_kernel_boot_resolves_in_the_pool_or_takes_an_absolute_path() -> None:
    argv = argv_of({"name": "lx", "guest": {"boot": {"kernel": "vmlinuz", "initrd": "/img/initrd.img",
                                                     "cmdline": "console=ttyS0 qv.ip=10.88.0.21/24"}}})
    assert values(argv, "-kernel") == ["/pool/vmlinuz"] and values(argv, "-initrd") == ["/img/initrd.img"]
    assert values(argv, "-append") == ["console=ttyS0 qv.ip=10.88.0.21/24"]
    assert "-blockdev" not in argv  # no test-guest disk
    with pytest.raises(Exception, match="unknown storage pool 'images'"):
        argv_of({"name": "lx", "guest": {"boot": {"kernel": "vmlinuz", "pool": "images"}}})


def test_bridged_nics_get_stable_taps_and_macs() -> None:
    from qvplan.vmm.taps import tap_name

    argv = argv_of({"name": "web-01", "nic": [{"type": "bridge", "bridge": "vmbr0"}, {"type": "user"}],
                    "guest": {"test": {}}})
    tap = tap_name("web-01", 0)
    assert len(tap) <= 15 and tap == tap_name("web-01", 0) != tap_name("web-02", 0)
    assert values(argv, "-netdev") == [f"tap,id=net0,ifname={tap},script=no,downscript=no", "user,id=net1"]
    macs = [d.split("mac=")[1].split(",")[0] for d in values(argv, "-device") if d.startswith("virtio-net")]
    assert macs == [mac_address("web-01"), mac_address("web-01", 1)] and macs[0] != macs[1]
