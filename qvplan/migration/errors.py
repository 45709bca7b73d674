"""Migration refusals and failures, in the spec's words (its troubleshooting table)."""

from __future__ import annotations

from typing import Any

from ..errors import QVError


class MigrationError(QVError):
    """A migration that did not happen; the VM keeps running on the source."""


def refused(reason: str, fix: str | None = None) -> MigrationError:
    return MigrationError(f"Migration rejected: {reason}", fix)


def refusal_from(reply: dict[str, Any] | None) -> MigrationError:
    """The destination's {"ok": false, "error", "fix", "reason_code"} as the error it stands for."""
    reply = reply or {}
    err = MigrationError(reply.get("error", "destination closed the connection"), reply.get("fix"))
    if reply.get("reason_code"):
        err.reason_code = str(reply["reason_code"])  # type: ignore[attr-defined]
    return err


CPU_FIX = 'use cpu.model with explicit feature flags, not "host"'
STORAGE_FIX = "run `quantavirt system storage-check`, verify the NFS/Ceph mount on the destination"
RESOURCES_FIX = "free memory on the destination or pick another host"
VERSION_FIX = "run the same QuantaVirt major version on both hosts"
CONVERGE_FIX = "enable auto-converge, increase bandwidth, or reduce VM write load"
NETWORK_FIX = "check port 9410 is open, verify the network route, retry"
