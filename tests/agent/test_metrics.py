"""`GET /metrics`: a real Prometheus scrapes two real agents; PromQL sees a migration."""

from __future__ import annotations

import urllib.request

import pytest

from qvplan.migration.metrics import AgentMetrics

from ..agents import guest_vm, mutual_trust
from ..migration.helpers import migrate, runs_only_on, start_guest
from ..prometheus import PrometheusProc


def scrape(agent) -> str:
    with urllib.request.urlopen(f"http://{agent.address}:{agent.api_port}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return resp.read().decode()


def value(result: list[dict], **labels: str) -> float:
    for series in result:
        if all(series["metric"].get(k) == v for k, v in labels.items()):
            return float(series["value"][1])
    raise AssertionError(f"no series {labels} in {result}")


@pytest.fixture
def prometheus(tmp_path):
    servers: list[PrometheusProc] = []

    def start(targets: list[str]) -> PrometheusProc:
        servers.append(PrometheusProc(tmp_path / "prometheus", targets))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_prometheus_scrapes_two_agents_and_sees_a_migration(make_agent, prometheus):
    a, b = make_agent("hv-a"), make_agent("hv-b")
    mutual_trust(a, b)
    prom = prometheus([f"{a.address}:{a.api_port}", f"{b.address}:{b.api_port}"])
    start_guest(a, memory="64M", working_set="4M")
    prom.wait_for('quantavirt_vms{state="running"}', lambda r: len(r) == 2 and value(
        r, instance=f"{a.address}:{a.api_port}") == 1)

    status = migrate(a, b, "vm-1")
    assert status["state"] == "COMPLETED", status
    runs_only_on(b, a, "vm-1")
    # A host that does not trust the caller refuses its handshake: counted by reason.
    c = make_agent("hv-c")
    c.trust(b)
    assert c.cli("system", "ping", "--host", b.migration).returncode != 0

    # An incoming migration the destination refuses (a VM of that name runs there): counted on the
    # destination by direction and code.
    a.api("POST", "vms", guest_vm("vm-1", memory="64M"))
    refused_move = a.cli("vm", "migrate", "vm-1", "--dest", b.migration, "--offline")
    assert refused_move.returncode != 0 and "name-clash" in refused_move.stderr, refused_move

    src, dst = f"{a.address}:{a.api_port}", f"{b.address}:{b.api_port}"
    done = prom.wait_for("sum by (instance, direction) (quantavirt_migrations_completed_total)",
                         lambda r: len(r) == 2)
    assert value(done, instance=src, direction="out") == 1
    assert value(done, instance=dst, direction="in") == 1
    started = prom.wait_for(f'quantavirt_migrations_started_total{{instance="{dst}",direction="in"}}',
                            lambda r: len(r) == 1)
    assert value(started, mode="live") == 1
    failed_in = prom.wait_for(f'quantavirt_migrations_failed_total{{instance="{dst}",direction="in"}}',
                              lambda r: len(r) == 1)
    assert value(failed_in, mode="offline", code="name-clash") == 1
    pause = prom.wait_for(f'quantavirt_migration_guest_pause_seconds_count{{instance="{src}"}}',
                          lambda r: len(r) == 1)
    assert value(pause) == 1
    total = prom.query(f'quantavirt_migration_guest_pause_seconds_sum{{instance="{src}"}}')
    assert value(total) == pytest.approx(status["pause"], rel=1e-6)
    buckets = f'quantavirt_migration_guest_pause_seconds_bucket{{instance="{src}"}}'
    quantile = prom.query(f"histogram_quantile(0.5, {buckets})")
    assert 0 < value(quantile) <= 30
    refused = prom.wait_for(f'quantavirt_handshake_refusals_total{{instance="{dst}"}}', lambda r: len(r) == 1)
    assert value(refused, code="untrusted-host") == 1
    carried = prom.wait_for(f'quantavirt_pqc_channel_bytes_total{{instance="{src}",direction="sent"}}',
                            lambda r: len(r) == 1 and float(r[0]["value"][1]) > 0)
    assert value(carried) >= status["transferred"] * 0.5
    vms = prom.wait_for('quantavirt_vms{state="running"}', lambda r: value(r, instance=dst) == 1 and value(
        r, instance=src) == 0)
    assert len(vms) == 2
    assert all(t["health"] == "up" for t in prom.targets_up())
    text = scrape(a)
    assert "# TYPE quantavirt_migration_guest_pause_seconds histogram" in text


def fake_job(status):
    return type("Job", (), {"status": status})()


def test_counters_follow_the_events_and_gauges_read_the_migrations_in_progress():
    from qvplan.migration.status import MigrationStatus

    host = type("Host", (), {"registry": type("R", (), {"vms": {}})()})()
    running = MigrationStatus("vm-2", "10.0.0.2:9410", "ML-KEM-768", 30, transferred=100, total=300,
                              dirty_rate=5.0, iteration=3)
    metrics = AgentMetrics(host, {"vm-2": fake_job(running)})
    metrics.on_event({"event": "phase", "topic": "vm-1/migrate", "phase": 1})
    metrics.on_event({"event": "failed", "topic": "vm-1/migrate", "code": "cpu-incompatible"})
    metrics.on_event({"event": "phase", "topic": "vm-1/migrate", "phase": 1, "mode": "offline"})
    metrics.on_event({"event": "cancelled", "topic": "vm-1/migrate", "code": "cancelled", "mode": "offline"})
    metrics.on_event({"event": "completed", "topic": "vm-1/migrate", "elapsed": 3.0, "pause": 0.2,
                      "downtime": 0.1})
    metrics.on_event({"event": "started", "topic": "vm-1"})  # not a migration's
    metrics.on_event({"event": "incoming-started", "topic": "vm-3", "mode": "live"})
    metrics.on_event({"event": "incoming-refused", "topic": "vm-3", "mode": "live", "code": "ram-mismatch"})
    text = metrics.exposition().decode()
    assert 'quantavirt_migrations_started_total{direction="out",mode="live"} 1.0' in text
    assert 'quantavirt_migrations_failed_total{code="cpu-incompatible",direction="out",mode="live"} 1.0' in text
    assert 'quantavirt_migrations_failed_total{code="cancelled",direction="out",mode="offline"} 1.0' in text
    assert 'quantavirt_migrations_started_total{direction="in",mode="live"} 1.0' in text
    assert 'quantavirt_migrations_failed_total{code="ram-mismatch",direction="in",mode="live"} 1.0' in text
    assert 'quantavirt_migration_guest_pause_seconds_bucket{le="0.25"} 1.0' in text
    assert 'quantavirt_migration_bytes_remaining{destination="10.0.0.2:9410",vm="vm-2"} 200.0' in text
    assert 'quantavirt_migration_iteration{destination="10.0.0.2:9410",vm="vm-2"} 3.0' in text
