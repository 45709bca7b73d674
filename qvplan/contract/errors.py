"""Migration refusals and failures, in the spec's words (its troubleshooting table), each with
its reason code (reasons.py)."""

from __future__ import annotations

from ..errors import QVError
from .reasons import Reason, fix_for


class MigrationError(QVError):
    """A migration that did not happen; the VM keeps running on the source."""

    code = Reason.ERROR.value


def failure(code: Reason, cause: str, fix: str | None = None, *, port: int | None = None) -> MigrationError:
    """A failure with its code; the fix defaults to the spec's for that code."""
    return MigrationError(cause, fix if fix is not None else fix_for(code, port), code=code.value)


def refused(code: Reason, detail: str, fix: str | None = None) -> MigrationError:
    """A phase-1 refusal: `Migration rejected: <detail>`, nothing moved."""
    return failure(code, f"Migration rejected: {detail}", fix)
