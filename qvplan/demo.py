"""`make demo`: bring up the lab, plan the demo, apply it with progress, verify every guest.

Runs the same commands an operator would type, so what it prints is what they would see.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QVPLAN = [sys.executable, "-m", "qvplan.cli.qvplan"]


def step(title: str, *args: str, ok_codes: tuple[int, ...] = (0,), capture: bool = True) -> str:
    """Run one qvplan command as an operator would. `capture=False` leaves it the terminal (so
    `apply` shows its live view there)."""
    print(f"\n\033[1m$ qvplan {' '.join(args)}\033[0m  # {title}", flush=True)
    out = subprocess.run([*QVPLAN, *args], cwd=ROOT, stdout=subprocess.PIPE if capture else None, text=True)
    print(out.stdout or "", end="", flush=True)
    if out.returncode not in ok_codes:
        sys.exit(f"demo: `qvplan {' '.join(args)}` failed (exit {out.returncode})")
    return out.stdout or ""


async def verify_all(inventory: str) -> bool:
    from .remote import HostConnection, load_inventory

    ok = True
    for name, target in load_inventory(inventory).items():
        async with HostConnection(target) as conn:
            for vm in await conn.api("GET", "vms"):
                if vm["state"] != "running":
                    continue
                report = await conn.api("POST", f"vms/{vm['name']}/verify-ram", timeout=60)
                print(f"  {vm['name']:<8} on {name}: RAM {'verified ✅' if report['ok'] else 'CORRUPT ❌'}"
                      f"  ({report['report'].splitlines()[0]})")
                ok &= report["ok"]
    return ok


def main() -> None:
    step("tear down any earlier lab", "lab", "down")
    inventory = step("3 hosts: network namespaces, sshd, agents, 4 running test guests", "lab", "up").split()[-1]
    step("the lab", "lab", "status")
    var = f"inventory={inventory}"
    step("dry run: what would move, every check, the schedule", "plan", "plans/demo.yaml", "--var", var,
         ok_codes=(0, 2))
    step("carry it out (the hosts are locked while it runs)", "apply", "plans/demo.yaml", "--var", var,
         "--auto-approve", capture=False)
    print("\n\033[1mVerifying every guest's RAM after the moves\033[0m")
    if not asyncio.run(verify_all(inventory)):
        sys.exit("demo: a guest's RAM did not verify")
    step("planning again shows no changes", "plan", "plans/demo.yaml", "--var", var, "--detailed-exitcode")
    print("\nDemo complete. The lab is still up: `qvplan lab status`; remove it with `qvplan lab down`.")


if __name__ == "__main__":
    main()
