"""What every migration an agent runs from the source side shares, live or offline: who and where,
the session, the lifecycle the API drives (start, cancel, setup_done, task) and its events."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from ..contract.flags import MigrateFlags
from ..contract.rules import Policies

if TYPE_CHECKING:
    from ..host.context import Host
    from ..host.registry import VM
    from .status import MigrationStatus


class MigrationJob:
    """Owns a VM from `start()` until the outcome; subclasses write `_run`."""

    def __init__(self, host: Host, vm: VM, dest: str, flags: MigrateFlags, policies: Policies | None,
                 status: MigrationStatus) -> None:
        self.host = host
        self.vm = vm
        self.dest = dest
        self.flags = flags
        self.policies = policies or Policies()  # the plan's prerequisites, or the defaults
        self.status = status
        self.session = uuid.uuid4().hex
        self.topic = f"{vm.name}/migrate"
        self.setup_done = asyncio.Event()  # set once phase 1 passed (or the migration ended)
        self.task: asyncio.Task[None] | None = None
        self._cancel_reason: str | None = None

    def start(self) -> None:
        self.vm.busy = "migrating"  # also keeps `vm start` and a second migration away
        self.vm.last_migration = None
        self.task = asyncio.ensure_future(self._run())

    def cancel(self, reason: str = "cancelled by operator") -> None:
        self._cancel_reason = reason

    async def _run(self) -> None:
        raise NotImplementedError

    def _publish(self, kind: str, **extra: Any) -> None:
        self.host.events.publish(self.topic, kind, **{**self.status.as_dict(), **extra})
