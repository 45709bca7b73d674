"""The link-down fault in a netns lab: `ip link set DEV down` on the destination host's link during a
live migration (mid-transfer, or in the commit window), up again after an outage; then the
exactly-once invariant, checked from /proc, the serial logs and the state folders
(tests/migration/invariant.py) through a thin adapter over the lab's hosts.

Shared by tests/lab/test_linkdown.py (a few seconds' outage) and bench/linkdown.py (60 s).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qvplan.lab import Lab, agents

from ..migration.invariant import exactly_one, journal, qemu_pids

POINT = "QUANTAVIRT_TEST_PAUSE_AT"
GUEST = {"name": "vm-1", "memory": "64M", "vcpus": 1, "guest": {"test": {"working_set": "8M", "marker_every": 4}}}
WHERE = ("transfer", "commit")


class _Alive:
    def __init__(self, host: Any) -> None:
        self.host = host

    def poll(self) -> int | None:
        return None if agents.pid(self.host) is not None else 0


@dataclass
class LabAgent:
    """What invariant.exactly_one needs of an agent, for a lab host (its API over SSH)."""

    lab: Lab
    name: str

    @property
    def state(self) -> Path:
        return self.lab.host(self.name).file("state")

    @property
    def root(self) -> Path:  # its pool `default` is <state>/images
        return self.state

    @property
    def proc(self) -> _Alive:
        return _Alive(self.lab.host(self.name))

    def api(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        async def call() -> Any:
            async with self.lab.connect(self.name) as conn:
                return await conn.api(method, path, body, timeout=timeout)
        return asyncio.run(call())

    def vm(self, name: str) -> dict[str, Any]:
        return self.api("GET", f"vms/{name}")

    def vm_names(self) -> list[str]:
        return [v["name"] for v in self.api("GET", "vms")]


def start_agents(lab: Lab, source_env: dict[str, str]) -> tuple[LabAgent, LabAgent]:
    """Restart hv-a's agent with `source_env` (SIGTERM: its VMs run on); vm-1 running on hv-a."""
    if agents.kill(lab.host("hv-a"), 15):
        _until(lambda: agents.pid(lab.host("hv-a")) is None, "hv-a's agent gone", 30)
    lab.start_agent("hv-a", source_env)
    errors = asyncio.run(lab.wait_agents())
    assert not errors, errors
    asyncio.run(lab.exchange_trust())
    a, b = LabAgent(lab, "hv-a"), LabAgent(lab, "hv-b")
    if "vm-1" not in a.vm_names():
        a.api("POST", "vms", GUEST)
    if a.vm("vm-1")["state"] != "running":
        a.api("POST", "vms/vm-1/start", {})
    _until(lambda: a.vm("vm-1")["serial_markers"] > 0, "vm-1's first serial marker", 60)
    return a, b


def link_down_during(lab: Lab, where: str, outage: float) -> dict[str, Any]:
    """Migrate vm-1 from hv-a to hv-b, hv-b's link down at `where` for `outage` seconds.
    Returns the outcome row: state, where the guest runs, seconds from the fault to the outcome."""
    assert where in WHERE
    a, b = start_agents(lab, {POINT: "source-before-commit"} if where == "commit" else {})
    flags: dict[str, Any] = {"threads": 1}
    if where == "transfer":
        flags |= {"bandwidth": "2M", "auto_converge": False}  # ≈30 s of copy: the outage lands in it
    a.api("POST", "vms/vm-1/migrate", {"dest": lab.host("hv-b").migration, "flags": flags})
    if where == "commit":  # guest paused on hv-a, loaded on hv-b, commit not yet sent
        _until(lambda: (a.state / "faults" / "source-before-commit.reached").exists(), "the commit window", 120)
    else:
        _until(lambda: a.api("GET", "vms/vm-1/migrate").get("transferred", 0) > 4 << 20, "4 MiB copied", 60)
    lab.link_down("hv-b")
    down = time.monotonic()
    status: dict[str, Any] | None = None
    try:
        if where == "commit":
            (a.state / "faults" / "source-before-commit.go").touch()  # the commit leaves into a dead link
        while (left := outage - (time.monotonic() - down)) > 0:  # hv-a's own link is up: ask it meanwhile
            if status is None and (status := _try(lambda: _ended(a))):
                took = time.monotonic() - down
            time.sleep(min(0.5, left))
    finally:
        lab.link_up("hv-b")
    if status is None:
        status = _until(lambda: _ended(a), "the migration's outcome", 180)
        took = time.monotonic() - down
    here, there = (b, a) if status["state"] == "COMPLETED" else (a, b)
    _until(lambda: not _open(a) and not _open(b), "both journals settled", 60)
    exactly_one(here, there)
    return {"where": where, "outage": outage, "state": status["state"], "code": status.get("code"),
            "runs_on": here.name, "outcome_after": round(took, 1), "source_journal": journal(a)[-1]["state"],
            "dest_journal": journal(b)[-1]["state"] if journal(b) else None,
            "qemus": {"hv-a": qemu_pids(a, "vm-1"), "hv-b": qemu_pids(b, "vm-1")}}


def reset(lab: Lab) -> None:
    """vm-1 back on hv-a for the next round (migrated back plainly if it moved)."""
    a, b = LabAgent(lab, "hv-a"), LabAgent(lab, "hv-b")
    if "vm-1" in b.vm_names():
        b.api("POST", "vms/vm-1/migrate", {"dest": lab.host("hv-a").migration, "flags": {"threads": 1}})
        _until(lambda: _ended(b), "vm-1 back on hv-a", 180)
    for agent in (a, b):
        for mark in (agent.state / "faults").glob("*"):
            mark.unlink()


def _ended(agent: LabAgent) -> dict[str, Any] | None:
    status = agent.api("GET", "vms/vm-1/migrate", timeout=30)
    return status if status["state"] != "MIGRATING" else None


def _open(agent: LabAgent) -> list[dict[str, Any]]:
    return [r for r in journal(agent) if r.get("state") in
            ("loading", "loaded", "committing", "transferring", "awaiting-commit", "committed")]


def _try(check: Any) -> Any:
    try:
        return check()
    except Exception:  # an agent busy or its SSH slow: ask again
        return None


def _until(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if found := check():
                return found
        except Exception:  # an agent busy or its SSH slow: ask again
            pass
        time.sleep(0.2)
    raise AssertionError(f"never saw {what} in {timeout:.0f}s")
