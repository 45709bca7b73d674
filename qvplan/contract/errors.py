"""Migration refusals and failures, in the spec's words (its troubleshooting table), each with
its reason code (reasons.py)."""

from __future__ import annotations

from ..errors import QVError
from .reasons import Reason, fix_for
from .rules import Refusal


class MigrationError(QVError):
    """A migration that did not happen; the VM keeps running on the source."""

    code = Reason.ERROR.value


def failure(code: Reason, cause: str, fix: str | None = None, *, port: int | None = None) -> MigrationError:
    """A failure with its code; the fix defaults to the spec's for that code."""
    return MigrationError(cause, fix if fix is not None else fix_for(code, port), code=code.value)


def refused(code: Reason, detail: str, fix: str | None = None) -> MigrationError:
    """A phase-1 refusal: `Migration rejected: <detail>`, nothing moved."""
    return failure(code, f"Migration rejected: {detail}", fix)


# The destination's sentence for each refusal of the rule book (the spec's troubleshooting words).
_SENTENCES = {
    Reason.VERSION_MISMATCH: "version mismatch ({})",
    Reason.CPU_INCOMPATIBLE: "CPU incompatible (destination {})",
    Reason.OUT_OF_RESOURCES: "Destination out of resources ({})",
    Reason.STORAGE_NOT_FOUND: "Storage not found on destination ({})",
    Reason.NETWORK_NOT_FOUND: "network not found on destination: {}",
    Reason.MACHINE_UNSUPPORTED: "destination's QEMU does not run {}",
}


def refusal_error(refusal: Refusal) -> MigrationError:
    return refused(refusal.code, _SENTENCES.get(refusal.code, "{}").format(refusal.detail), refusal.fix)
