"""The recent migrations from this host, each with its passes, for charts and reports.

Bounded: the last `LIMIT` migrations (each with at most passes.MAX_PASSES passes). Fed by the
event hub like the metrics: a migration is remembered at its first event and its last pass closed
at its outcome. Served by `GET /api/v1/vms/NAME/migrate/passes` (observe_api.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..contract.events import OUTCOMES
from ..contract.events import Event as Kind
from ..host.events import Event

if TYPE_CHECKING:
    from .job import MigrationJob
    from .status import MigrationStatus

LIMIT = 16


class _Record:
    def __init__(self, session: str, status: MigrationStatus) -> None:
        self.session = session
        self.status = status
        self.phases: list[dict[str, Any]] = []  # {phase, time, forced}


class RecentMigrations:
    def __init__(self, jobs: Mapping[str, MigrationJob], limit: int = LIMIT) -> None:
        self.jobs = jobs
        self.records: deque[_Record] = deque(maxlen=limit)

    def on_event(self, event: Event) -> None:
        topic = str(event.get("topic", ""))
        if not topic.endswith("/migrate"):
            return
        vm = topic.removesuffix("/migrate")
        kind = event.get("event")
        if kind == Kind.PHASE and event.get("phase") == 1:
            job = self.jobs.get(vm)
            if job is not None:
                self.records.append(_Record(job.session, job.status))
        record = self.latest(vm)
        if record is None:
            return
        if kind == Kind.PHASE:
            record.phases.append({"phase": event.get("phase"), "time": event["time"],
                                  "forced": bool(event.get("forced"))})
        elif kind in OUTCOMES:
            status = record.status
            status.history.finish(status.finished or event["time"], status.transferred, kind == Kind.COMPLETED)

    def latest(self, vm: str) -> _Record | None:
        for record in reversed(self.records):
            if record.status.vm == vm:
                return record
        return None

    def document(self, vm: str) -> dict[str, Any] | None:
        """The latest migration of `vm` from here: its figures, phases and passes."""
        record = self.latest(vm)
        if record is None:
            return None
        s = record.status
        paused_at = None
        if s.pause is not None and s.finished is not None:
            ends = [p["time"] for p in record.phases if p["phase"] == 5]
            paused_at = (ends[-1] if ends else s.finished) - s.pause
        forced = [p["time"] for p in record.phases if p.get("forced")]
        return {
            "vm": s.vm, "session": record.session, "destination": s.destination, "state": s.state,
            "code": s.code, "error": s.error, "started": s.started, "finished": s.finished,
            "transferred": s.transferred, "iteration": s.iteration, "max_iterations": s.max_iterations,
            "forced_stop_and_copy": s.forced_stop_and_copy, "pause": s.pause, "downtime": s.downtime,
            "switchover": forced[0] if forced else paused_at, "paused_at": paused_at,
            "phases": record.phases, "passes": s.history.as_list(),
        }
