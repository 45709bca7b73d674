"""The root of every error a user can hit.

Concrete errors live beside the code that raises them and subclass `QVError`. The CLI prints
`str(err)`: one line with the cause and, when known, the fix.
"""

from __future__ import annotations


class QVError(Exception):
    """An error meant for the operator: a cause and, when one is known, a fix."""

    def __init__(self, cause: str, fix: str | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.cause} — {self.fix}" if self.fix else self.cause


class UsageError(QVError):
    """Bad input from the command line or a file."""
