"""Smoke runs of the long benches (bench/chaos.py, bench/soak.py, bench/pqc_channel.py,
bench/storage.py), so they keep working; their full runs (chaos 50/200, soak 100, the channel's
GiB, 384 MiB disks) are not part of the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_chaos_smoke_one_offline_fault():
    run = bench("bench/chaos.py", "-n", "1", "--seed", "6")  # offline, source agent killed mid-copy
    assert run.returncode == 0, run.stdout + run.stderr
    assert "offline  kill-source@copy" in run.stdout and "violations: 0" in run.stdout


def test_soak_smoke_two_round_trips():
    run = bench("bench/soak.py", "--count", "2", "--warmup", "1", "--anchor", "2", "--disk-writer")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "failures: 0" in run.stdout and "pause − QEMU downtime" in run.stdout
    assert "flushes of 8 MiB meanwhile" in run.stdout
    assert "anchor: pause (2)" in run.stdout and "ours ÷ anchor" in run.stdout


def test_channel_bench_smoke_carries_the_migration_data_path():
    run = bench("bench/pqc_channel.py", "--size", "64M", "--handshakes", "3", "--repeat", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "migration data path (streams/relay.py)" in run.stdout and "s/GiB" in run.stdout, run.stdout


def test_storage_bench_smoke_times_every_offline_row():
    run = bench("bench/storage.py", "--size", "16M", "--runs", "1", "--warmup", "0", "--no-mirror")
    assert run.returncode == 0, run.stdout + run.stderr
    for path in ("local copy", "PQC channel alone", "offline via agents", "--compress (zstd)"):
        assert path in run.stdout, run.stdout
    assert "target: offline ≥ 0.6" in run.stdout, run.stdout
