"""The root of every error a user can hit.

Concrete errors live beside the code that raises them and subclass `QVError`. The CLI prints
`str(err)`: one line with the cause and, when known, the fix. `code` is the stable reason code
(`contract/reasons.py` lists them) that machines use: apply, `--json`, JUnit, the HTTP API and the
PQC channel carry it unchanged; no logic ever reads the message text.
"""

from __future__ import annotations

from typing import Any


class QVError(Exception):
    """An error meant for the operator: a cause, when one is known a fix, and a reason code."""

    code = "error"  # subclasses name their own; an instance may carry a more precise one

    def __init__(self, cause: str, fix: str | None = None, *, code: str | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.fix = fix
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.cause} — {self.fix}" if self.fix else self.cause

    def as_dict(self) -> dict[str, Any]:
        """The error as the HTTP API, the PQC channel and `--json` carry it."""
        return {"error": self.cause, "fix": self.fix, "code": self.code}

    @classmethod
    def from_dict(cls, data: dict[str, Any], default_code: str = "error") -> QVError:
        code = str(data.get("code") or default_code)
        return cls(str(data.get("error") or "unknown error"), data.get("fix"), code=code)


class UsageError(QVError):
    """Bad input from the command line or a file."""

    code = "bad-request"
