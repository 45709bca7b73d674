"""What host-side commands need from the local host: its config, state, identity, agent.

Cheap on purpose: the agent client and the config file's `[api] socket` need only the stdlib, so
`quantavirt vm list` starts without pydantic or aiohttp; the validated config is built only by
commands that need more of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..agent.client import AgentClient
    from ..host.config import AgentConfig
    from ..pqc import HostIdentity, TrustStore


def config(ctx: click.Context) -> AgentConfig:
    from ..host.config import load_config

    obj = ctx.find_root().obj
    if "_config" not in obj:
        obj["_config"] = load_config(obj.get("config"))
    return obj["_config"]


def state_dir(ctx: click.Context) -> Path:
    return config(ctx).state_dir(ctx.find_root().obj.get("state_dir"))


def agent_client(ctx: click.Context, timeout: float = 60.0) -> AgentClient:
    """The local agent's control API, at the config's `[api] socket` (root or the quantavirt group)."""
    from ..agent.client import AgentClient
    from ..host.configfile import api_socket

    return AgentClient(unix=api_socket(ctx.find_root().obj.get("config")), timeout=timeout)


def identity_and_trust(ctx: click.Context) -> tuple[HostIdentity, TrustStore]:
    from ..pqc import HostIdentity, TrustStore

    sdir = state_dir(ctx)
    return HostIdentity.load_or_create(sdir), TrustStore(sdir)
