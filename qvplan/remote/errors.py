"""Errors of the SSH transport: each names the host, so one line says which one failed.

The agent's own answers (and an agent that does not answer) are the agent client's errors:
`qvplan.agent.client.AgentError` and `AgentUnreachable`."""

from __future__ import annotations

from ..errors import QVError


class RemoteError(QVError):
    """Something went wrong on or on the way to a host."""


class HostUnreachable(RemoteError):
    """The SSH connection could not be made (network, sshd, key or host key)."""


class RemoteCommandError(RemoteError):
    """A command run over SSH failed or timed out."""


class ProvisionError(RemoteError):
    """The agent could not be installed, configured or started on a host."""
