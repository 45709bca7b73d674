"""Errors of the SSH transport: each names the host, so one line says which one failed."""

from __future__ import annotations

from ..errors import QVError


class RemoteError(QVError):
    """Something went wrong on or on the way to a host."""


class HostUnreachable(RemoteError):
    """The SSH connection could not be made (network, sshd, key or host key)."""


class RemoteCommandError(RemoteError):
    """A command run over SSH failed or timed out."""


class AgentUnreachable(RemoteError):
    """SSH works but the agent API behind it does not answer."""


class AgentAPIError(RemoteError):
    """The agent answered with an error (HTTP 4xx/5xx)."""

    def __init__(self, cause: str, fix: str | None = None, status: int = 0) -> None:
        super().__init__(cause, fix)
        self.status = status


class ProvisionError(RemoteError):
    """The agent could not be installed, configured or started on a host."""
