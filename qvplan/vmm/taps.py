"""Tap devices of bridged NICs: a stable name per VM and NIC, joining the host bridge, removal.

QEMU creates the tap itself (`-netdev tap,ifname=NAME`, not persistent), so the kernel removes it
the moment that QEMU goes, however it goes (quit, migrated away, rolled back, kill -9). Right
after QEMU starts, `attach` puts it on its bridge and brings it up; `remove` deletes one that
another tool left persistent. Everything runs in the caller's network namespace (a lab host's),
or in `netns` when given.
"""

from __future__ import annotations

import hashlib
import json
import subprocess

from .errors import QemuError

IFNAMSIZ = 15


def tap_name(vm: str, index: int) -> str:
    """`qv` + 8 hex digits of the VM name + `-` + NIC index: the same on every host, ≤ 15 chars."""
    name = f"qv{hashlib.sha256(vm.encode()).hexdigest()[:8]}-{index}"
    assert len(name) <= IFNAMSIZ
    return name


def _ip(*args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    where = ["-n", netns] if netns else []
    try:
        return subprocess.run(["ip", *where, *args], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise QemuError("the `ip` command is missing", "install iproute2") from None


def bridges() -> list[str]:
    """The names of this namespace's Linux bridges."""
    out = _ip("-j", "link", "show", "type", "bridge").stdout
    try:
        return sorted(link["ifname"] for link in json.loads(out or "[]"))
    except (ValueError, KeyError, TypeError):
        return []


def exists(name: str, netns: str | None = None) -> bool:
    return _ip("link", "show", "dev", name, netns=netns).returncode == 0


def attach(tap: str, bridge: str, netns: str | None = None) -> None:
    """Put `tap` on `bridge` and bring it up."""
    for args in (("link", "set", "dev", tap, "master", bridge), ("link", "set", "dev", tap, "up")):
        done = _ip(*args, netns=netns)
        if done.returncode != 0:
            raise QemuError(f"cannot attach tap {tap} to bridge {bridge}: {done.stderr.strip()}",
                            f"check that bridge {bridge} exists on this host (ip link show type bridge)")


def remove(tap: str, netns: str | None = None) -> None:
    """Delete `tap` if it is still there (a no-op once its QEMU is gone)."""
    if exists(tap, netns):
        _ip("link", "del", "dev", tap, netns=netns)
