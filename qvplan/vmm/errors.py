"""Errors of the QEMU driver."""

from __future__ import annotations

from ..errors import QVError


class QemuError(QVError):
    """QEMU could not be started, reached or stopped, or answered with an error."""
