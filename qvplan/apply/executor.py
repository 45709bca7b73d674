"""Run a plan's waves through the source hosts' agents, over SSH.

Each move is one `POST /api/v1/vms/{vm}/migrate` on the source agent — the same code path as
`quantavirt vm migrate` — followed through its event stream. A failed move is always rolled back
by the agents (its guest keeps running on the source); `on_failure` decides what happens next.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..plan.facts import drop_none
from ..plan.model import Move, Plan
from ..remote import HostConnection, HostTarget
from .journal import Journal

OUTCOMES = {"completed", "failed", "cancelled"}
Printer = Callable[[str], None]


@dataclass
class MoveResult:
    vm: str
    source: str
    dest: str
    ok: bool = False
    skipped: bool = False
    error: str | None = None
    started: float = 0.0
    finished: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class ApplyResult:
    moves: list[MoveResult]
    placement: dict[str, str]  # VM → host where it runs now

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.moves)


class Executor:
    def __init__(self, plan: Plan, journal: Journal, say: Printer) -> None:
        self.plan = plan
        self.journal = journal
        self.say = say
        hosts = plan.settings.get("hosts", {})
        self.targets = {name: HostTarget.from_dict(name, drop_none(h)) for name, h in hosts.items()}
        self.conns: dict[str, HostConnection] = {}

    async def conn(self, host: str) -> HostConnection:
        if host not in self.conns:
            c = HostConnection(self.targets[host])
            await c.connect()
            self.conns[host] = c
        return self.conns[host]

    async def close(self) -> None:
        for c in self.conns.values():
            await c.close()

    async def exchange_trust(self) -> None:
        for importer, holder in self.plan.trust_exchange:
            ident = await (await self.conn(holder)).api("GET", "pqc/identity")
            await (await self.conn(importer)).api(
                "POST", "pqc/trust", {"name": holder, "public_key": ident["public_key"], "force": True})
            self.say(f"trust: {importer} imported {holder}'s key ({ident['fingerprint']})")
            self.journal.write("trust", importer=importer, holder=holder, fingerprint=ident["fingerprint"])

    async def migrate(self, move: Move, source: str, dest: str, dest_address: str) -> MoveResult:
        result = MoveResult(move.vm, source, dest, started=time.time())
        self.journal.write("start", vm=move.vm, source=source, dest=dest)
        self.say(f"{move.vm}: {source} → {dest} started")
        try:
            api = await self.conn(source)
            await api.api("POST", f"vms/{move.vm}/migrate", {"dest": dest_address, "flags": move.flags},
                          timeout=120)
            last: dict[str, Any] = {}
            async for ev in api.events(f"vms/{move.vm}/migrate/events"):
                last = ev
                if ev.get("event") in ("phase", "pass"):
                    self.say(f"{move.vm}: phase {ev.get('phase')} ({ev.get('phase_name')}) "
                             f"{ev.get('percent', 0):.0f}% iter {ev.get('iteration')}")
                    self.journal.write("phase", vm=move.vm, phase=ev.get("phase"), percent=ev.get("percent"))
                if ev.get("event") in OUTCOMES:
                    break
            status = await api.api("GET", f"vms/{move.vm}/migrate")
            result.figures = {k: status.get(k) for k in ("transferred", "iteration", "downtime", "pause", "elapsed")}
            result.ok = status.get("state") == "COMPLETED"
            result.error = None if result.ok else (status.get("error") or last.get("error") or "failed")
        except Exception as err:  # one host's trouble must not hide the others' results
            result.error = str(err)
        result.finished = time.time()
        self.journal.write("end", vm=move.vm, source=source, dest=dest, ok=result.ok, error=result.error,
                           **result.figures)
        outcome = f"moved to {dest}" if result.ok else f"FAILED: {result.error} (still on {source})"
        self.say(f"{move.vm}: {outcome}")
        return result

    async def run_wave(self, batch: list[Move], cancel_on_failure: bool) -> list[MoveResult]:
        """Run one wave's moves at once; with `cancel_on_failure`, a failure cancels the others
        (the agents roll each of them back: their guests keep running on their sources)."""
        tasks = {asyncio.ensure_future(self.migrate(m, m.source, m.dest, m.dest_address)): m for m in batch}
        cancelled = False
        for finished in asyncio.as_completed(list(tasks)):
            result = await finished
            if not result.ok and cancel_on_failure and not cancelled:
                cancelled = True
                for task, move in tasks.items():
                    if not task.done():
                        self.say(f"{move.vm}: cancelling (on_failure: rollback)")
                        with contextlib.suppress(Exception):
                            await (await self.conn(move.source)).api("POST", f"vms/{move.vm}/migrate/cancel")
        return [t.result() for t in tasks]

    async def run(self) -> list[MoveResult]:
        policy = self.plan.settings.get("on_failure", "rollback")
        results: dict[str, MoveResult] = {}
        halted = False
        for wave in self.plan.waves:
            batch = []
            for name in wave.moves:
                move = self.plan.move(name)
                failed_dep = [d for d in move.after if d in results and not results[d].ok]
                if halted or failed_dep:
                    results[name] = MoveResult(name, move.source, move.dest, skipped=True,
                                               error="skipped: " + ("an earlier move failed" if halted
                                                                     else f"{', '.join(failed_dep)} failed"))
                    self.journal.write("skip", vm=name, reason=results[name].error)
                    continue
                batch.append(move)
            done = await self.run_wave(batch, cancel_on_failure=policy in ("rollback", "rollback-all"))
            results.update({r.vm: r for r in done})
            if any(not r.ok for r in done) and policy != "continue":
                halted = True
        if halted and policy == "rollback-all":
            for r in reversed([r for r in results.values() if r.ok]):
                back = self.targets[r.source]
                address = back.migration or f"{back.address}:9410"
                self.say(f"{r.vm}: rolling back to {r.source}")
                await self.migrate(self.plan.move(r.vm), r.dest, r.source, address)
        return [results[m.vm] for m in self.plan.changes if m.vm in results]

    async def placement(self) -> dict[str, str]:
        where: dict[str, str] = {}
        for host in self.targets:
            try:
                for vm in await (await self.conn(host)).api("GET", "vms"):
                    if vm["state"] == "running":
                        where[vm["name"]] = host
            except Exception:
                continue
        return where


async def apply_plan(plan: Plan, journal: Journal, say: Printer = print) -> ApplyResult:
    ex = Executor(plan, journal, say)
    try:
        await ex.exchange_trust()
        moves = await ex.run()
        placement = await ex.placement()
    finally:
        await ex.close()
    journal.write("done", ok=all(m.ok for m in moves), placement=placement)
    return ApplyResult(moves, placement)
