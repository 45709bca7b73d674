"""The network rule of a move: every host bridge a VM's NICs join must exist on the destination.

One pure function, `missing_network`, judged the same by `qvplan plan` (from host facts) and by
the destination agent in phase 1 (from its own bridges), so both refuse with the same words and
the same reason code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

NETWORK_NOT_FOUND = "network-not-found"


@dataclass(frozen=True)
class NetworkNotFound:
    """The destination lacks a bridge the VM needs."""

    bridge: str
    reason_code: str = NETWORK_NOT_FOUND

    @property
    def message(self) -> str:
        return f"network not found on destination: bridge {self.bridge}"

    @property
    def fix(self) -> str:
        return (f"create bridge {self.bridge} on the destination (ip link add {self.bridge} type bridge) "
                "or pick another destination")


def vm_bridges(definition: Mapping[str, Any]) -> list[str]:
    """The bridges a VM definition (its JSON form) attaches NICs to, in NIC order."""
    nic = definition.get("nic")
    nics = nic if isinstance(nic, list) else [nic]
    return [str(n["bridge"]) for n in nics
            if isinstance(n, Mapping) and n.get("type") == "bridge" and n.get("bridge")]


def missing_network(definition: Mapping[str, Any], dest_bridges: Iterable[str] | None) -> NetworkNotFound | None:
    """The first bridge of `definition` that `dest_bridges` lacks, or None when all are there.

    `dest_bridges` None means the destination did not report its bridges (an older agent): a VM
    with bridged NICs cannot be placed there either."""
    have = set(dest_bridges or ())
    for bridge in vm_bridges(definition):
        if bridge not in have:
            return NetworkNotFound(bridge)
    return None
