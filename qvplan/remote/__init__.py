"""Reaching hosts over SSH: connections, the agent API through them, provisioning, facts."""

from ..addresses import split_hostport
from ..agent.client import AgentError, AgentUnreachable
from ..inventory import HostTarget, SSHOptions, dump_inventory, load_inventory
from .connection import HostConnection, RunResult
from .errors import HostUnreachable, ProvisionError, RemoteCommandError, RemoteError
from .facts import fan_out, gather_facts

__all__ = [
    "AgentError", "AgentStatus", "AgentUnreachable", "HostConnection", "HostTarget", "HostUnreachable",
    "ProvisionError", "ProvisionOptions", "RemoteCommandError", "RemoteError", "RunResult", "SSHOptions",
    "dump_inventory", "ensure_agent", "fan_out", "gather_facts", "load_inventory", "split_hostport",
    "start_agent", "stop_agent",
]

_PROVISION = {"AgentStatus", "ProvisionOptions", "ensure_agent", "start_agent", "stop_agent"}


def __getattr__(name: str) -> object:
    """Provisioning on first use: `qvplan apply` never provisions, and it imports the agent's VM
    layer (qvplan.vmm), which start-up would pay for on every command."""
    if name in _PROVISION:
        from . import provision

        return getattr(provision, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
