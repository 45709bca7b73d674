"""`make demo`: bring up the lab, plan the demo, apply it with progress, verify every guest.

Runs the same commands an operator would type, so what it prints is what they would see. Besides
the lab's test guests it starts two Linux guests (guest/linux) on the lab's VM network; while the
plan moves them, a client in the client namespace keeps one TCP connection to each and probes it
over UDP every millisecond, and the demo prints what that client saw. At the end the test guests,
whose RAM sweep never rests, are stopped, and the lab's idle CPU is printed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from . import demo_linux as linux_guests

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
                if vm["state"] != "running" or (vm.get("spec") or {}).get("guest", {}).get("test") is None:
                    continue  # a Linux guest's check is its client's report
                report = await conn.api("POST", f"vms/{vm['name']}/verify-ram", timeout=60)
                print(f"  {vm['name']:<8} on {name}: RAM {'verified ✅' if report['ok'] else 'CORRUPT ❌'}"
                      f"  ({report['report'].splitlines()[0]})")
                ok &= report["ok"]
    return ok


def main() -> None:
    from .lab import Lab

    step("tear down any earlier lab", "lab", "down")
    inventory = step("3 hosts: network namespaces, sshd, agents, 4 running test guests", "lab", "up").split()[-1]
    lab = Lab.load()
    print("\n\033[1mStarting the Linux guests on the lab's VM network\033[0m", flush=True)
    linux = asyncio.run(linux_guests.start(lab))
    step("the lab", "lab", "status")
    var = f"inventory={inventory}"
    var_linux = ("--var", "linux=yes")
    step("dry run: what would move, every check, the schedule", "plan", "plans/demo.yaml", "--var", var,
         *var_linux, ok_codes=(0, 2))
    clients = linux_guests.talk_to(lab, linux)
    try:
        step("carry it out (the hosts are locked while it runs)", "apply", "plans/demo.yaml", "--var", var,
             *var_linux, "--auto-approve", capture=False)
    finally:
        seen = linux_guests.listen(clients)
    print("\n\033[1mVerifying every guest after the moves\033[0m")
    ram_ok = asyncio.run(verify_all(inventory))
    talk_ok = linux_guests.report(seen)
    if not (ram_ok and talk_ok):
        sys.exit("demo: a guest's RAM did not verify or a client lost its guest")
    step("planning again shows no changes", "plan", "plans/demo.yaml", "--var", var, *var_linux,
         "--detailed-exitcode")
    print("\n\033[1mResting the lab\033[0m: the test guests sweep RAM without pause, so they are stopped; "
          "the Linux guests idle on their own", flush=True)
    asyncio.run(linux_guests.stop_test_guests(lab))
    print(f"  idle lab: {linux_guests.idle_cpu(lab) * 100:.1f}% of one core (its agents, sshd and QEMUs, "
          "over 5 s)")
    print("\nDemo complete. The lab is still up: `qvplan lab status`; remove it with `qvplan lab down`.")


if __name__ == "__main__":
    main()
