"""What host-side commands need from the local host: its config, state, identity, agent."""

from __future__ import annotations

from pathlib import Path

import click

from ..agent.client import AgentClient
from ..host.config import AgentConfig, load_config


def config(ctx: click.Context) -> AgentConfig:
    obj = ctx.find_root().obj
    if "_config" not in obj:
        obj["_config"] = load_config(obj.get("config"))
    return obj["_config"]


def state_dir(ctx: click.Context) -> Path:
    return config(ctx).state_dir(ctx.find_root().obj.get("state_dir"))


def agent_client(ctx: click.Context, timeout: float = 60.0) -> AgentClient:
    host, port = config(ctx).api_address
    return AgentClient(f"http://{host}:{port}", timeout=timeout)


def identity_and_trust(ctx: click.Context):
    from ..pqc import HostIdentity, TrustStore

    sdir = state_dir(ctx)
    return HostIdentity.load_or_create(sdir), TrustStore(sdir)
