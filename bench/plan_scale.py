"""Plan 1,000 VMs over 100 hosts from generated recorded facts. Target: < 1 s.

Prints the planning time (load + graph + schedule + render) and its ratio to the 1 s target;
exits 1 when over the target. Run: .venv/bin/python bench/plan_scale.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qvplan.plan import load_plan_text, make_plan
from qvplan.plan.render import render_plan

HOSTS, VMS, TARGET = 100, 1000, 1.0
GIB = 1 << 30


def facts(rng: random.Random) -> dict[str, dict]:
    names = [f"hv-{i:03d}" for i in range(HOSTS)]
    out = {}
    for i, name in enumerate(names):
        vms = [{"name": f"vm-{j:04d}", "state": "running", "memory": rng.choice([1, 2, 4]) * GIB, "vcpus": 1,
                "cpu": {"model": "host", "features": []},
                "disks": [{"path": f"/mnt/nfs/vm-{j:04d}.qcow2", "shared": True, "size": 10 * GIB}]}
               for j in range(i, VMS, HOSTS)]
        out[name] = {
            "name": name, "version": "0.1.0",
            "cpu": {"vendor": "GenuineIntel", "flags": ["sse4_2", "avx", "avx2"],
                    "qemu_host_features": ["sse4.2", "avx", "avx2"]},
            "memory": {"total": 256 * GIB, "free": 200 * GIB, "committed": 0},
            "storage": {"pools": {"default": {"path": "/var/lib/quantavirt/images", "free": 500 * GIB}},
                        "shared": ["/mnt/nfs"]},
            "pqc": {"fingerprint": f"SHA256:{name}", "trusted": {n: f"SHA256:{n}" for n in names if n != name}},
            "migration": {"address": f"10.0.{i // 250}.{i % 250 + 1}:9410", "pqc_required": True},
            "vms": vms, "storage_checks": {"/mnt/nfs": True}, "reachable": {},
        }
    return out


def plan_text(rng: random.Random) -> str:
    lines = ["hosts:"] + [f"  hv-{i:03d}: {{address: 10.0.{i // 250}.{i % 250 + 1}}}" for i in range(HOSTS)]
    lines += ["limits: {parallel: 50, per_host_outbound: 2, per_host_inbound: 2}", "vms:"]
    for j in range(VMS):
        dest = f"hv-{rng.randrange(HOSTS):03d}"
        after = f", after: [vm-{j - 1:04d}]" if j % 10 == 9 else ""
        lines.append(f"  vm-{j:04d}: {{host: {dest}{after}}}")
    return "\n".join(lines) + "\n"


def main() -> int:
    rng = random.Random(42)
    f, text = facts(rng), plan_text(rng)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        plan = make_plan(load_plan_text(text, "bench.yaml", {}, f), f)
        render_plan(plan)
        best = min(best, time.perf_counter() - t0)
    assert not plan.errored, [c.message for c in plan.failed_checks][:3]
    print(f"plan_scale: {VMS} VMs over {HOSTS} hosts: {len(plan.changes)} moves, {len(plan.checks)} checks, "
          f"{len(plan.waves)} waves in {best:.3f} s (best of 3); ratio to the {TARGET:.0f} s target: "
          f"{best / TARGET:.2f}")
    return 0 if best < TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
