"""A 2-host netns lab with trusted agents and the Linux test guest, for the guest tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qvplan.lab import Lab, images
from qvplan.lab.testing import lab_session


class Hosts:
    """Sync calls to a lab's agents (over SSH, as qvplan does)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def api(self, host: str, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        async def call() -> Any:
            async with self.lab.connect(host) as conn:
                return await conn.api(method, path, body, timeout=timeout)

        return asyncio.run(call())

    def migrate(self, name: str, src: str, dst: str, timeout: float = 180, **flags: Any) -> dict[str, Any]:
        """Migrate and wait for the outcome (the source's status)."""
        dest = self.lab.host(dst).migration
        self.api(src, "POST", f"vms/{name}/migrate", {"dest": dest, "flags": flags})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.api(src, "GET", f"vms/{name}/migrate")
            if status["state"] != "MIGRATING":
                return status
            time.sleep(0.3)
        raise AssertionError(f"migration of {name} {src} → {dst} did not end in {timeout}s")

    def links(self, host: str) -> list[str]:
        """Interface names in the host's namespace (ip link, not the agent's word)."""
        out = self.lab.exec_in(host, ["ip", "-o", "link", "show"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    if not images.linux_guest_built():
        pytest.skip("the Linux test guest is not built: make linux-guest")
    with lab_session(Path(tmp_path_factory.mktemp("lab")), hosts=2) as lab:
        assert lab.agent_errors == {}  # type: ignore[attr-defined]
        asyncio.run(lab.exchange_trust())
        yield Hosts(lab)
