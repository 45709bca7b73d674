"""The agent's Prometheus metrics (`GET /metrics`, the text exposition format).

Counters and histograms are fed by the event hub (every migration event passes through
`on_event`: nothing in the migration code calls a metric); the gauges of migrations in progress,
the VMs by state and the PQC channel's bytes are read when Prometheus scrapes (`collect`). Each
agent has its own `CollectorRegistry`, never the process-global one, so two agents in one test
process, or a restarted service, never share a series.

Imported only by the agent's metrics route: the CLI never pays for prometheus_client.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..contract.events import OUTCOMES, Inbound
from ..contract.events import Event as Kind
from ..host.events import Event
from .streams.relay import TRAFFIC

if TYPE_CHECKING:
    from ..host import Host
    from .job import MigrationJob

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Guest pause and QEMU downtime: tens of ms when it converges, seconds after a forced stop.
PAUSE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOTAL_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
HANDSHAKE_REFUSED = "handshake-refused"  # the listener's event on topic "host", with `code`


def _mode(event: Event) -> str:
    return str(event.get("mode") or "live")


class AgentMetrics:
    """One agent's metrics; `on_event` is an EventHub observer."""

    def __init__(self, host: Host, jobs: Mapping[str, MigrationJob]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.started = Counter("quantavirt_migrations_started",
                               "Migrations started: out from this host, or in (accepted by this destination)",
                               ["direction", "mode"], registry=r)
        self.completed = Counter("quantavirt_migrations_completed", "Migrations completed, by direction",
                                 ["direction", "mode"], registry=r)
        self.failed = Counter("quantavirt_migrations_failed",
                              "Migrations failed or cancelled, by reason code (contract/reasons.py)",
                              ["direction", "mode", "code"], registry=r)
        self.pause = Histogram("quantavirt_migration_guest_pause_seconds",
                               "Guest pause of completed live migrations: source STOP to destination RESUME",
                               buckets=PAUSE_BUCKETS, registry=r)
        self.downtime = Histogram("quantavirt_migration_qemu_downtime_seconds",
                                  "QEMU's downtime figure of completed live migrations",
                                  buckets=PAUSE_BUCKETS, registry=r)
        self.total = Histogram("quantavirt_migration_duration_seconds", "Total time of completed migrations",
                               ["mode"], buckets=TOTAL_BUCKETS, registry=r)
        self.refusals = Counter("quantavirt_handshake_refusals", "PQC handshakes this host refused, by reason",
                                ["code"], registry=r)
        r.register(_LiveCollector(host, jobs))

    def on_event(self, event: Event) -> None:
        kind = event.get("event")
        topic = str(event.get("topic", ""))
        if kind == HANDSHAKE_REFUSED:
            self.refusals.labels(code=str(event.get("code") or "error")).inc()
        elif kind == Inbound.STARTED:
            self.started.labels(direction="in", mode=_mode(event)).inc()
        elif kind == Inbound.REFUSED:
            self.failed.labels(direction="in", mode=_mode(event), code=str(event.get("code") or "error")).inc()
        elif kind == Inbound.LANDED:
            self.completed.labels(direction="in", mode="offline" if event.get("offline") else "live").inc()
        elif not topic.endswith("/migrate"):
            return
        elif kind == Kind.PHASE and event.get("phase") == 1:
            self.started.labels(direction="out", mode=_mode(event)).inc()
        elif kind == Kind.COMPLETED:
            self.completed.labels(direction="out", mode=_mode(event)).inc()
            self.total.labels(mode=_mode(event)).observe(float(event.get("elapsed") or 0.0))
            if event.get("pause") is not None:
                self.pause.observe(float(event["pause"]))
            if event.get("downtime") is not None:
                self.downtime.observe(float(event["downtime"]))
        elif kind in OUTCOMES:
            self.failed.labels(direction="out", mode=_mode(event), code=str(event.get("code") or "error")).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """What is read at scrape time: migrations in progress, VMs by state, the channel's bytes."""

    GAUGES = (  # (name, help, status field)
        ("quantavirt_migration_bytes_sent", "Bytes of guest memory sent so far", "transferred"),
        ("quantavirt_migration_bytes_remaining", "Bytes of guest memory left to send (QEMU's estimate)", None),
        ("quantavirt_migration_dirty_rate_bytes_per_second", "Bytes/s re-dirtied in the last pass",
         "dirty_rate"),
        ("quantavirt_migration_transfer_rate_bytes_per_second", "Bytes/s QEMU sends", "transfer_rate"),
        ("quantavirt_migration_iteration", "Pre-copy passes so far", "iteration"),
        ("quantavirt_migration_cpu_throttle_percent", "auto-converge's vCPU throttle", "cpu_throttle"),
    )

    def __init__(self, host: Host, jobs: Mapping[str, MigrationJob]) -> None:
        self.host = host
        self.jobs = jobs

    def collect(self) -> Iterator[Any]:
        families = {name: GaugeMetricFamily(name, doc, labels=["vm", "destination"]) for name, doc, _ in self.GAUGES}
        for job in list(self.jobs.values()):
            status = job.status
            if status.done:
                continue
            labels = [status.vm, status.destination]
            for name, _, field in self.GAUGES:
                value = (status.total - status.transferred) if field is None else getattr(status, field)
                families[name].add_metric(labels, float(value))
        yield from families.values()
        states = GaugeMetricFamily("quantavirt_vms", "VMs defined on this host, by state", labels=["state"])
        counts: dict[str, int] = {"running": 0, "defined": 0, "migrating": 0}
        for vm in list(self.host.registry.vms.values()):
            counts[vm.state] = counts.get(vm.state, 0) + 1
        for state, n in sorted(counts.items()):
            states.add_metric([state], n)
        yield states
        carried = CounterMetricFamily("quantavirt_pqc_channel_bytes",
                                      "Bytes of QEMU streams carried by PQC channels (plaintext payload)",
                                      labels=["direction"])
        carried.add_metric(["sent"], TRAFFIC.sent)
        carried.add_metric(["received"], TRAFFIC.received)
        yield carried
