"""VMSpec: what validates, and that every refusal is one line naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qvplan.vmm import SpecError, VMSpec

BASE: dict[str, Any] = {"name": "web-01", "memory": "256M", "guest": {"test": {}}}


def spec(**over: Any) -> dict[str, Any]:
    return {**BASE, **over}


def test_full_example_round_trips() -> None:
    data = {"name": "web-01", "memory": "256M", "vcpus": 2, "cpu": {"model": "host", "features": ["+sse4.2", "-avx"]},
            "disks": [{"pool": "default", "file": "web-01.qcow2", "size": "1G", "format": "qcow2"},
                      {"path": "/abs/data.raw", "format": "raw"}],
            "nic": {"type": "user"}, "guest": {"boot_disk": 0}}
    vm = VMSpec.load(data)
    assert vm.memory_bytes == 256 << 20 and vm.disks[0].size_bytes == 1 << 30
    assert vm.disks[0].resolve({"default": Path("/pool")}) == Path("/pool/web-01.qcow2")
    assert vm.disks[1].resolve({}) == Path("/abs/data.raw")
    assert VMSpec.load(vm.model_dump(mode="json")) == vm


def test_defaults() -> None:
    vm = VMSpec.load(spec())
    assert (vm.vcpus, vm.cpu.model, vm.nic.type, vm.disks) == (1, "host", "none", [])
    assert vm.guest.test is not None
    assert (vm.guest.test.start_bytes, vm.guest.test.working_set_bytes) == (16 << 20, 16 << 20)
    assert VMSpec.load(spec(disks=[{"file": "a.qcow2"}])).disks[0].pool == "default"


@pytest.mark.parametrize(("data", "message"), [
    (spec(name="Web 01"), "name: 'Web 01' is not a VM name"),
    (spec(memory="lots"), "memory: invalid memory 'lots'"),
    (spec(memory="8M"), "memory: memory 8M must be a whole number of MiB, at least 16M"),
    (spec(vcpus=0), "vcpus: Input should be greater than or equal to 1"),
    (spec(cpu={"features": ["sse4.2!"]}), "cpu.features: 'sse4.2!' is not a CPU feature"),
    (spec(guest={}), "guest: give exactly one of test, boot_disk or boot"),
    (spec(guest={"test": {}, "boot_disk": 0}), "guest: give exactly one of test, boot_disk or boot"),
    (spec(guest={"boot_disk": 1}), "guest.boot_disk: 1 is not a disk index (the VM has 0 disks)"),
    (spec(memory="32M", guest={"test": {"working_set": "32M"}}),
     "guest.test.working_set: 32M from 16M ends at 48.0 MiB, past the VM's memory (32.0 MiB)"),
    (spec(guest={"test": {"working_set": "5000"}}), "guest.test.working_set: working set 5000 must be a positive"),
    (spec(guest={"test": {"pace": -1}}), "guest.test.pace: Input should be greater than or equal to 0"),
    (spec(guest={"test": {"speed": 1}}), "guest.test.speed: unknown key"),
    (spec(disks=[{"file": "a.qcow2", "path": "/x"}]), "disks.0: give either path or pool+file, not both"),
    (spec(disks=[{"path": "rel.qcow2"}]), "disks.0: path 'rel.qcow2' must be absolute"),
    (spec(disks=[{"file": "../etc/passwd"}]), "disks.0: file '../etc/passwd' must be a plain file name"),
    (spec(disks=[{"file": "a", "format": "vmdk"}]), "disks.0.format: Input should be 'qcow2' or 'raw'"),
    (spec(nic={"type": "tap"}), "nic: a tap NIC needs ifname"),
    ({"memory": "64M", "guest": {"test": {}}}, "name: Field required"),
])
def test_errors_are_one_line_naming_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        VMSpec.load(data)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("invalid VM definition: " + message), text
    assert text.endswith(" — fix that key (see README: VM definitions)")


def test_unknown_pool_is_a_clear_error() -> None:
    vm = VMSpec.load(spec(disks=[{"pool": "fast", "file": "a.qcow2"}]))
    with pytest.raises(SpecError, match="unknown storage pool 'fast' — use one of: default"):
        vm.disks[0].resolve({"default": Path("/p")})


@pytest.mark.parametrize(("data", "message"), [
    ({"nic": {"type": "bridge"}}, "nic: a bridge NIC needs bridge"),
    ({"nic": {"type": "user", "bridge": "br0"}}, "bridge only applies to type bridge"),
    ({"nic": {"type": "bridge", "bridge": "a-name-far-too-long"}}, "is not an interface name"),
    ({"guest": {"boot": {"kernel": "sub/vmlinuz"}}}, "must be a plain file name"),
    ({"guest": {"test": {}, "boot": {"kernel": "vmlinuz"}}}, "exactly one of test, boot_disk or boot"),
])
def test_bad_nics_and_boots_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        VMSpec.load({"name": "x", "guest": {"test": {}}, **data})


def test_nic_list_and_single_nic_round_trip() -> None:
    one = VMSpec.load({"name": "a", "nic": {"type": "user"}, "guest": {"test": {}}})
    two = VMSpec.load({"name": "a", "nic": [{"type": "bridge", "bridge": "vmbr0"}, {"type": "none"}],
                       "guest": {"boot": {"kernel": "vmlinuz", "cmdline": "quiet"}}})
    assert [n.type for n in one.nics] == ["user"] and one.bridges == []
    assert [n.type for n in two.nics] == ["bridge"] and two.bridges == ["vmbr0"]
    assert VMSpec.load(two.model_dump(mode="json")) == two
