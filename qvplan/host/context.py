"""`Host`: the one object the agent builds and hands to the layers it is made of (migration)."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import QVError
from ..pqc import HostIdentity, SecureChannel, TrustStore, get_provider
from ..units import parse_size
from .config import AgentConfig
from .events import EventHub
from .registry import Registry

log = logging.getLogger(__name__)

# Tests of the version policies need two agents of different versions from one checkout: this
# variable (documented in the README, test and lab use only) sets the version an agent reports.
VERSION_OVERRIDE = "QUANTAVIRT_TEST_VERSION"

# One request on an authenticated channel of :9410 (the request is its first JSON message).
Operation = Callable[[SecureChannel, dict[str, Any]], Awaitable[None]]


class Host:
    """This host's config, state directory, pools, identity, trust store, VMs and events."""

    def __init__(self, config: AgentConfig, state_override: str | None = None) -> None:
        from ..vmm import detect_accel
        from ..vmm.confine import Confinement

        self.config = config
        self.state_dir: Path = config.state_dir(state_override)
        self.pools = config.pool_paths(state_override)
        self.memory_capacity = parse_size(config.host.memory) if config.host.memory else None
        self.identity = HostIdentity.load_or_create(self.state_dir)
        self.trust = TrustStore(self.state_dir)
        self.provider_name = get_provider().name
        accel = detect_accel()
        confinement = Confinement.for_agent(kvm=accel == "kvm")  # sandbox; own user under a root agent
        if accel == "kvm" and not confinement.kvm:
            log.warning("KVM works here but QEMU's user %s cannot open /dev/kvm (no group grants it): "
                        "guests run under TCG", confinement.user)
        self.accel = "kvm" if confinement.kvm else "tcg"
        self.events = EventHub()
        self.registry = Registry(self.state_dir, self.pools, self.accel, self.events, confinement,
                                 shared=config.storage.shared)
        self.version = os.environ.get(VERSION_OVERRIDE) or __version__  # what peers and facts are told

    @property
    def name(self) -> str:
        return self.config.host.name

    def hello_extra(self) -> dict[str, Any]:
        return {"host": self.name, "version": self.version, "provider": self.provider_name}

    def identity_document(self) -> dict[str, str]:
        return {
            "name": self.name,
            "fingerprint": self.identity.fingerprint,
            "public_key": base64.b64encode(self.identity.public_key).decode(),
        }

    def import_trust(self, name: str, public_key_b64: str, force: bool = False) -> str:
        try:
            raw = base64.b64decode(public_key_b64, validate=True)
        except ValueError:
            raise QVError("public_key is not base64", "send the key as exported by /api/v1/pqc/identity") from None
        return self.trust.add(name, raw, force=force)
