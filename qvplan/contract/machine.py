"""The machine rule of a move: the destination's QEMU must run the VM's machine type.

A VM keeps its machine type (`pc-i440fx-7.2`, say) on every host it moves to: the device state a
migration carries is that type's. A newer QEMU runs older types; an older QEMU lacks newer ones.
One pure function, judged the same by `qvplan plan` (from host facts) and by the destination agent
in phase 1 (from its own QEMU): both refuse with the code `machine-unsupported`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .reasons import Reason
from .rules import Refusal


def unsupported_machine(definition: Mapping[str, Any], dest_machines: Iterable[str] | None) -> Refusal | None:
    """The refusal when `definition` (a VM's JSON form) names a machine type `dest_machines`
    lacks, or None. A VM with no machine type (defined before types were pinned) runs `pc` on
    every host, and a destination that did not report its machine types is not judged."""
    machine = definition.get("machine")
    if not machine or dest_machines is None or machine in set(dest_machines):
        return None
    return Refusal(Reason.MACHINE_UNSUPPORTED, f"machine type {machine}",
                   f"upgrade QEMU on the destination to a version that runs {machine}, or pick another "
                   "destination")
