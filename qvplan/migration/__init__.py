"""Live migration: source and destination state machines, stream tunnels, convergence control."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..agent.daemon import Agent


def install(agent: Agent) -> None:
    """Give an agent its migration operations (on :9410) and API routes (on :9400)."""
    from ..agent.listener import OPERATIONS
    from . import api, destination, offline_dest, offline_doubt

    agent.incoming = {}
    agent.migrations = {}
    OPERATIONS["migrate"] = destination.handle_migrate
    OPERATIONS["migrate-data"] = destination.handle_data
    OPERATIONS["storage-data"] = destination.handle_data
    OPERATIONS["session-state"] = destination.handle_session_state
    OPERATIONS["offline-receive"] = offline_dest.handle_receive
    OPERATIONS["offline-state"] = offline_dest.handle_state
    offline_doubt.resume(agent)
    agent.api_extensions.append(api.add_routes)
