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
from typing import Any

from . import demo_linux as linux_guests

ROOT = Path(__file__).resolve().parent.parent
QVPLAN = [sys.executable, "-m", "qvplan.cli.qvplan"]
RAM_MISMATCH_RETRIES = 2  # a refused copy (live/ramcheck.py) leaves its guest on the source: apply again


def step(title: str, *args: str, ok_codes: tuple[int, ...] = (0,), capture: bool = True) -> Any:
    """Run one qvplan command as an operator would: its output, or with `capture=False` (the
    terminal is left to it, so `apply` shows its live view there) its exit code."""
    print(f"\n\033[1m$ qvplan {' '.join(args)}\033[0m  # {title}", flush=True)
    out = subprocess.run([*QVPLAN, *args], cwd=ROOT, stdout=subprocess.PIPE if capture else None, text=True)
    print(out.stdout or "", end="", flush=True)
    if out.returncode not in ok_codes:
        sys.exit(f"demo: `qvplan {' '.join(args)}` failed (exit {out.returncode})")
    if not capture:
        return out.returncode
    return out.stdout or ""


def only_refused_copies(journal_dir: Path = ROOT / "plans" / ".qvplan") -> bool:
    """Did the last apply fail only because copies were refused as ram-mismatch (and the moves its
    rollback cancelled)? Read from its journal."""
    from .apply.journal import read_journal

    journals = sorted(journal_dir.glob("apply-*-demo.jsonl"), key=lambda p: p.stat().st_mtime)
    if not journals:
        return False
    failed = [e.get("code") for e in read_journal(journals[-1]) if e.get("kind") == "end" and not e.get("ok")]
    return "ram-mismatch" in failed and set(failed) <= {"ram-mismatch", "cancelled"}


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
        for attempt in range(1 + RAM_MISMATCH_RETRIES):
            out = step("carry it out (the hosts are locked while it runs)" if not attempt else
                       "apply again: the plan is declarative, what already moved stays", "apply", "plans/demo.yaml",
                       "--var", var, *var_linux, "--auto-approve", capture=False, ok_codes=(0, 1))
            if out == 0 or not only_refused_copies():
                break
            print("\n  A move was refused as ram-mismatch: under TCG, QEMU before 9.0 loses guest writes during "
                  "pre-copy, so the copy was compared before the commit and the guest kept running on its source "
                  "(README: live migration). KVM hosts are not affected.", flush=True)
        if out != 0:
            sys.exit("demo: `qvplan apply plans/demo.yaml` failed")
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
