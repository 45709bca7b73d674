"""Small QMP helpers the migration state machines share (over qemu.qmp's QMPClient)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from qemu.qmp import QMPClient

from ..contract.flags import MigrateFlags


def event_time(event: dict[str, Any]) -> float:
    """QEMU's own timestamp of an event (host wall clock), in seconds."""
    ts = event.get("timestamp", {})
    return ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6


async def configure(qmp: QMPClient, flags: MigrateFlags) -> None:
    """Set capabilities and parameters; both ends need the same multifd settings."""
    await qmp.execute("migrate-set-capabilities", {"capabilities": flags.qemu_capabilities()})
    await qmp.execute("migrate-set-parameters", flags.qemu_parameters())


async def run_state(qmp: QMPClient) -> str:
    return (await qmp.execute("query-status"))["status"]


async def ensure_running(qmp: QMPClient) -> None:
    """After a failed or cancelled migration: the guest must run on the source again."""
    with contextlib.suppress(Exception):
        if await run_state(qmp) != "running":
            await qmp.execute("cont")


async def wait_migration_end(qmp: QMPClient, poll: float = 0.1) -> dict[str, Any]:
    """Wait until query-migrate reports a final status; return that answer."""
    while True:
        info = await qmp.execute("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        await asyncio.sleep(poll)
