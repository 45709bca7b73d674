"""The network rule of a move: every host bridge a VM's NICs join must exist on the destination.

One pure function, `missing_network`, judged the same by `qvplan plan` (from host facts) and by
the destination agent in phase 1 (from its own bridges): both refuse with the code
`network-not-found` and the detail `bridge NAME` ("network not found on destination: bridge NAME").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .reasons import Reason
from .rules import Refusal

NETWORK_NOT_FOUND = Reason.NETWORK_NOT_FOUND.value


def vm_bridges(definition: Mapping[str, Any]) -> list[str]:
    """The bridges a VM definition (its JSON form) attaches NICs to, in NIC order."""
    nic = definition.get("nic")
    nics = nic if isinstance(nic, list) else [nic]
    return [str(n["bridge"]) for n in nics
            if isinstance(n, Mapping) and n.get("type") == "bridge" and n.get("bridge")]


def missing_network(definition: Mapping[str, Any], dest_bridges: Iterable[str] | None) -> Refusal | None:
    """The refusal for the first bridge of `definition` that `dest_bridges` lacks, or None.

    `dest_bridges` None means the destination did not report its bridges (an older agent): a VM
    with bridged NICs cannot be placed there either."""
    have = set(dest_bridges or ())
    for bridge in vm_bridges(definition):
        if bridge not in have:
            return Refusal(Reason.NETWORK_NOT_FOUND, f"bridge {bridge}",
                           f"create bridge {bridge} on the destination (ip link add {bridge} type bridge) "
                           "or pick another destination")
    return None
