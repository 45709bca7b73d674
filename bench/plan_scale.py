"""Planning at fleet scale: 1k VMs / 100 hosts, 10k / 1k, 20k / 2k, from generated facts.

Each size runs in a fresh process (so its peak memory is its own) and is timed in CPU seconds,
best of 3 (the machine's other load does not count); the growth exponent between two sizes is
log(t2/t1) / log(n2/n1). Goals: 10k/1k < 2 s, 20k/2k < 4.5 s, peak memory < 1 GiB, exponent ≤ 1.2.

The fleet is what an operator has: hosts in racks of 20 that trust each other, a plan that moves
VMs anywhere with `trust: {exchange: true}`, 10 % of the moves `after:` another.

Run: .venv/bin/python bench/plan_scale.py [--sizes 1000:100,10000:1000,20000:2000]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1 << 30
RACK = 20
GOALS = {10000: 2.0, 20000: 4.5}


def facts(rng: random.Random, hosts: int, vms: int) -> dict[str, dict]:
    names = [f"hv-{i:04d}" for i in range(hosts)]
    out = {}
    for i, name in enumerate(names):
        rack = names[i - i % RACK: i - i % RACK + RACK]
        out[name] = {
            "name": name, "version": "0.1.0",
            "cpu": {"vendor": "GenuineIntel", "flags": ["sse4_2", "avx", "avx2"],
                    "qemu_host_features": ["sse4.2", "avx", "avx2"]},
            "memory": {"total": 256 * GIB, "free": 200 * GIB, "committed": 0},
            "storage": {"pools": {"default": {"path": "/var/lib/quantavirt/images", "free": 500 * GIB}},
                        "shared": ["/mnt/nfs"]},
            "pqc": {"fingerprint": f"SHA256:{name}", "trusted": {n: f"SHA256:{n}" for n in rack if n != name}},
            "migration": {"address": f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}:9410", "pqc_required": True},
            "vms": [{"name": f"vm-{j:05d}", "state": "running", "memory": rng.choice([1, 2, 4]) * GIB, "vcpus": 1,
                     "cpu": {"model": "host", "features": []},
                     "disks": [{"path": f"/mnt/nfs/vm-{j:05d}.qcow2", "shared": True, "size": 10 * GIB}]}
                    for j in range(i, vms, hosts)],
            "storage_checks": {"/mnt/nfs": True}, "reachable": {},
        }
    return out


def plan_text(rng: random.Random, hosts: int, vms: int) -> str:
    lines = ["hosts:"] + [f"  hv-{i:04d}: {{address: 10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}}}"
                          for i in range(hosts)]
    lines += ["trust: {exchange: true}", "limits: {parallel: 50, per_host_outbound: 2, per_host_inbound: 2}", "vms:"]
    for j in range(vms):
        dest = f"hv-{rng.randrange(hosts):04d}"
        after = f", after: [vm-{j - 1:05d}]" if j % 10 == 9 else ""
        lines.append(f"  vm-{j:05d}: {{host: {dest}{after}}}")
    return "\n".join(lines) + "\n"


def one_size(vms: int, hosts: int) -> dict:
    """Run in a child process: plan one size three times; CPU time and peak RSS."""
    from qvplan.plan import load_plan_text, make_plan
    from qvplan.plan.render import render_plan

    rng = random.Random(42)
    f, text = facts(rng, hosts, vms), plan_text(rng, hosts, vms)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = wall = float("inf")
    for _ in range(3):
        t0, w0 = time.process_time(), time.perf_counter()
        plan = make_plan(load_plan_text(text, "bench.yaml", {}, f), f)
        render_plan(plan)
        best, wall = min(best, time.process_time() - t0), min(wall, time.perf_counter() - w0)
    assert not plan.errored, [c.message for c in plan.failed_checks][:3]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"vms": vms, "hosts": hosts, "cpu": best, "wall": wall, "peak": peak, "inputs": base * 1024,
            "moves": len(plan.changes), "waves": len(plan.waves), "exchanges": len(plan.trust_exchange)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000:100,10000:1000,20000:2000", help="VMS:HOSTS,...")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        vms, hosts = map(int, args.one.split(":"))
        print(json.dumps(one_size(vms, hosts)))
        return 0
    rows = []
    for size in args.sizes.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", size], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ok = True
    print(f"{'VMs':>6} {'hosts':>6} {'moves':>6} {'waves':>6} {'CPU s':>7} {'wall s':>7} {'peak MiB':>9} "
          f"{'exponent':>9} {'goal':>8}")
    for i, r in enumerate(rows):
        exp = ""
        if i:
            p = rows[i - 1]
            e = math.log(r["cpu"] / p["cpu"]) / math.log(r["vms"] / p["vms"])
            exp, ok = f"{e:.2f}", ok and e <= 1.2
        goal = GOALS.get(r["vms"])
        verdict = "" if goal is None else ("PASS" if r["cpu"] < goal else "FAIL") + f" <{goal:g}s"
        ok = ok and (goal is None or r["cpu"] < goal) and r["peak"] < GIB
        print(f"{r['vms']:>6} {r['hosts']:>6} {r['moves']:>6} {r['waves']:>6} {r['cpu']:>7.3f} {r['wall']:>7.3f} "
              f"{r['peak'] / (1 << 20):>9.0f} {exp:>9} {verdict:>8}")
    print(f"plan_scale: {'PASS' if ok else 'FAIL'} (goals: 10k/1k < 2 s, 20k/2k < 4.5 s CPU, peak < 1 GiB, "
          "exponent ≤ 1.2)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
