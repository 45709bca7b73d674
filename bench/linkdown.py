"""Link down: the destination host's link (`ip link set DEV down`, netns lab) cut for 60 s during a
live migration, once mid-transfer and once in the commit window, then up again.

Run (root, for the netns lab): .venv/bin/python bench/linkdown.py [--outage 60] [--rounds 1]
                                   [--where transfer,commit] [--keep DIR]

Mid-transfer: 4 MiB into a 2 MiB/s copy. Commit window: the source stopped at the test hook
`source-before-commit` (guest paused there, loaded on the destination), the link taken down, then
the commit sent into it. After the outage the bench waits for the outcome (goal: the guest runs
somewhere within 120 s of the fault, no human) and checks the invariant from outside the agents
(tests/migration/invariant.py: one live QEMU of the guest, from /proc, its serial markers
advancing there only, RAM verified, nothing of it on the other host, both journals settled).
Prints one row per run and the number of violations (goal 0).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qvplan.lab.testing import lab_session
from tests.lab.linkdown import WHERE, link_down_during, reset

GOAL = 120.0  # seconds from the fault to the guest running on one host


def run_one(lab, point: str, outage: float) -> dict:
    try:
        row = link_down_during(lab, point, outage)
        row["violation"] = "" if row["outcome_after"] <= GOAL else f"outcome after {GOAL:.0f}s"
    except Exception as err:
        traceback.print_exc()
        row = {"where": point, "outage": outage, "violation": f"{type(err).__name__}: {err}"}
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the link stays down")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each fault point")
    parser.add_argument("--where", default=",".join(WHERE), help="transfer, commit or both")
    parser.add_argument("--keep", type=Path, help="lab folder (default: a temporary one, removed)")
    args = parser.parse_args()
    where = [w for w in args.where.split(",") if w]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="qv-linkdown-") as tmp, \
            lab_session(args.keep or Path(tmp) / "lab", hosts=2) as lab:
        if lab.agent_errors:
            print(f"lab agents failed: {lab.agent_errors}", file=sys.stderr)
            return 2
        for n in range(args.rounds):
            for point in where:
                rows.append(run_one(lab, point, args.outage))
                print(f"round {n + 1} {point}: {rows[-1]}", flush=True)
                reset(lab)
    print()
    print(f"{'fault point':<12} {'outage':>7} {'outcome':<10} {'code':<17} {'runs on':<8} {'after':>7}  "
          f"{'journals (source/dest)':<24} violation")
    for r in rows:
        journals = f"{r.get('source_journal')}/{r.get('dest_journal')}"
        print(f"{r['where']:<12} {r['outage']:>6.0f}s {r.get('state', '-'):<10} {r.get('code') or '-'!s:<17} "
              f"{r.get('runs_on', '-'):<8} {r.get('outcome_after', 0):>6.1f}s  {journals:<24} {r['violation'] or '-'}")
    violations = sum(1 for r in rows if r["violation"])
    print(f"\nviolations: {violations} of {len(rows)} (goal 0; outcome within {GOAL:.0f}s of the fault)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
