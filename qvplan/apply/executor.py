"""Run a plan's moves through the source hosts' agents, over SSH.

Each move is one `POST /api/v1/vms/{vm}/migrate` on the source agent — the same code path as
`quantavirt vm migrate` — followed through its event stream. Moves start as the scheduler allows
(`after:`, limits, room on the destination). A failed move is always rolled back by the agents
(its guest keeps running on the source); `on_failure` decides what happens next.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from ..contract.events import OUTCOMES
from ..contract.reasons import Reason
from ..contract.rules import Policies
from ..errors import QVError
from ..plan.checks import fingerprint as fingerprint_of
from ..plan.facts import drop_none
from ..plan.model import Move, Plan
from ..remote import AgentError, AgentUnreachable, HostConnection, HostTarget, RemoteError
from ..remote.pool import Connections
from .journal import Journal
from .progress import Bar, Board
from .recheck import recheck
from .scheduler import Scheduler

FIGURES = ("transferred", "iteration", "downtime", "pause", "elapsed")
FOLLOW_GRACE = 300.0  # seconds (monotonic) a move is followed across lost connections before giving up


@dataclass
class MoveResult:
    vm: str
    source: str
    dest: str
    ok: bool = False
    skipped: bool = False
    error: str | None = None
    code: str | None = None  # the reason code of a failure or skip
    started: float = 0.0
    finished: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    followed: bool = False      # left running by an interrupted apply; this one followed it to its end
    rolled_back: bool | None = None  # rollback-all: whether it was moved back (None: not asked to)


@dataclass
class ApplyResult:
    moves: list[MoveResult]
    placement: dict[str, str]  # VM → host where it runs now

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.moves)


def targets_of(hosts: dict[str, dict[str, Any]]) -> dict[str, HostTarget]:
    """The plan's hosts (as in `Plan.settings["hosts"]`) as SSH targets."""
    return {name: HostTarget.from_dict(name, drop_none(h)) for name, h in hosts.items()}


class Executor:
    """Carries out moves on `targets`; `journal` may be set after construction (before any move)."""

    def __init__(self, targets: dict[str, HostTarget], journal: Journal | None, board: Board,
                 pool: Connections | None = None) -> None:
        self.targets = targets
        self._journal = journal
        self.board = board
        self.plan: Plan | None = None
        # One connection per host, shared with the locks and the facts (session.py), or ours.
        self.pool = pool if pool is not None else Connections(targets)
        self._own_pool = pool is None
        self.locks: Any = None  # the HostLocks of this apply (session.py), checked before each move
        self.stopping = False    # a move failed: start no new move
        self.cancelling = False  # ... and cancel those that run (on_failure: rollback, rollback-all)

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise RuntimeError("no journal yet")
        return self._journal

    @journal.setter
    def journal(self, journal: Journal) -> None:
        self._journal = journal

    async def conn(self, host: str) -> HostConnection:
        """The live connection to `host` (moves starting at once share it; a dropped one is replaced)."""
        return await self.pool.get(host)

    async def reconnect(self, host: str, why: str, deadline: float,
                        broken: HostConnection | None = None) -> HostConnection:
        """The way to `host` broke: a new connection (retried with backoff until `deadline`,
        monotonic) when the SSH connection `broken` is down, else new agent forward on it."""
        delay = 0.5
        if broken is not None and broken.alive:
            await broken.reset_agent()  # SSH is up (the agent's stream broke): keep it, and the lock on it
        else:
            await self.pool.drop(host, broken)
        while True:
            try:
                return await self.conn(host)
            except RemoteError as err:
                if time.monotonic() + delay > deadline:
                    raise RemoteError(f"{host}: connection lost ({why}) and not back: {err.cause}", err.fix) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def lock_held(self, *hosts: str) -> str | None:
        """None when this apply still holds every host's lock (taken again if its connection died),
        else why not: no new move starts on a host whose lock is gone."""
        if self.locks is None:
            return None
        for host in hosts:
            if host in self.targets and not await self.locks.ensure(host):
                return f"skipped: the lock on {host} was lost with its connection and could not be taken again"
        return None

    async def close(self) -> None:
        if self._own_pool:
            await self.pool.close()

    def address(self, host: str) -> str:
        return self.targets[host].migration_address

    async def exchange_trust(self, plan: Plan) -> None:
        """Import each key the plan showed, and only that one: a host whose key changed since
        planning is refused (`key-changed`), and a name already trusted with another key is never
        overwritten (the importing agent refuses it)."""
        pairs = list(plan.trust_exchange)
        holders = sorted({holder for _, holder in pairs})

        async def identity(holder: str) -> Any:
            return await (await self.conn(holder)).api("GET", "pqc/identity")

        idents = dict(zip(holders, await asyncio.gather(*(identity(h) for h in holders)), strict=True))
        keys = {h: planned_key(plan, h, idents[h]) for h in holders}  # all checked before any import

        async def imports(importer: str) -> None:  # one importer's keys one after another
            for holder in [h for i, h in pairs if i == importer]:
                key, fp = keys[holder]
                await (await self.conn(importer)).api(
                    "POST", "pqc/trust", {"name": holder, "public_key": key, "fingerprint": fp})
                self.board.say(f"trust: {importer} imported {holder}'s key ({fp})")
                self.journal.write("trust", importer=importer, holder=holder, fingerprint=fp)

        await asyncio.gather(*(imports(i) for i in dict.fromkeys(i for i, _ in pairs)))

    # -- one migration -----------------------------------------------------------------------

    async def migrate(self, move: Move, source: str, dest: str, dest_address: str, label: str = "") -> MoveResult:
        result = MoveResult(move.vm, source, dest, started=time.time())
        self.journal.write("start", vm=move.vm, source=source, dest=dest)
        bar = self.board.start(move.vm, source, dest, label)
        try:
            api = await self.conn(source)
            if not label:  # a rollback-all move back was not planned: nothing to re-check it against
                dest_facts = await self._recheck(move, source, dest)
            else:
                dest_facts = await (await self.conn(dest)).api("GET", "host", timeout=30)
            # Pinned: the destination must answer with the key its own agent reports over SSH.
            flags = {**move.flags, "dest_fingerprint": fingerprint_of(dest_facts)}
            body = {"dest": dest_address, "flags": flags, "policies": self._policies()}
            started = await api.api("POST", f"vms/{move.vm}/migrate", body, timeout=120)
            session = started.get("session") if isinstance(started, dict) else None
            if session:
                self.journal.write("session", vm=move.vm, source=source, session=session)
            if self.cancelling and not label:  # a failure elsewhere while this one was being started
                await self.cancel(move.vm, source)
            await self._watch(source, bar, result, session)
        except Exception as err:  # one host's trouble must not hide the others' results
            result.error, result.code = str(err), getattr(err, "code", Reason.ERROR.value)
        return self._end(bar, result)

    def _policies(self) -> dict[str, Any]:
        prerequisites = (self.plan.settings if self.plan else {}).get("prerequisites") or {}
        return {k: v for k, v in prerequisites.items() if k in Policies.model_fields}

    async def _recheck(self, move: Move, source: str, dest: str) -> dict[str, Any]:
        """Refuse a move whose facts changed since planning (raises StaleMove); the destination's
        fresh facts."""
        assert self.plan is not None
        src_conn, dst_conn = await self.conn(source), await self.conn(dest)
        src_facts, dst_facts = await asyncio.gather(src_conn.api("GET", "host", timeout=30),
                                                    dst_conn.api("GET", "host", timeout=30))
        stale = recheck(self.plan, move, {source: src_facts, dest: dst_facts})
        if stale is not None:
            raise stale
        return dst_facts if isinstance(dst_facts, dict) else {}

    async def follow(self, vm: str, source: str, dest: str, session: str | None = None) -> MoveResult:
        """A migration an interrupted apply started: follow it to its outcome, start nothing."""
        result = MoveResult(vm, source, dest, started=time.time(), followed=True)
        self.journal.write("follow", vm=vm, source=source, dest=dest, session=session)
        bar = self.board.start(vm, source, dest, "followed")
        try:
            await self._watch(source, bar, result, session)
        except Exception as err:
            result.error, result.code = str(err), getattr(err, "code", Reason.ERROR.value)
        return self._end(bar, result)

    async def _watch(self, source: str, bar: Bar, result: MoveResult, session: str | None = None) -> None:
        """Follow the move on its source agent to its outcome. A dropped connection is replaced and
        the move followed again by its session; an agent that restarted answers from its journal."""
        vm = result.vm
        last: dict[str, Any] = {}
        deadline = time.monotonic() + FOLLOW_GRACE
        delay = 0.5
        api: HostConnection | None = None
        while True:
            try:
                api = await self.conn(source)
                async for ev in api.events(f"vms/{vm}/migrate/events"):
                    last = ev
                    self.board.event(bar, ev)
                    if ev.get("event") in ("phase", "pass"):
                        self.journal.write("phase", vm=vm, phase=ev.get("phase"), percent=ev.get("percent"))
                    if ev.get("event") in OUTCOMES or (ev.get("event") == "status" and ev.get("state") != "MIGRATING"):
                        break
                else:
                    if last.get("event") not in OUTCOMES and last.get("state", "MIGRATING") == "MIGRATING":
                        raise AgentUnreachable(f"{source}: the event stream of {vm} ended early")
                status = await self._status(api, vm, session)
                if status.get("state") == "MIGRATING":
                    continue  # the stream ended early (an agent restart): follow again
                break
            except (AgentUnreachable, RemoteError) as err:  # the connection, not the agent's answer
                if time.monotonic() > deadline:
                    raise
                self.journal.write("reconnect", vm=vm, source=source, why=err.cause)
                self.board.say(f"{vm}: connection to {source} lost ({err.cause}); following the move again")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                await self.reconnect(source, err.cause, deadline, api)
            except AgentError as err:
                if err.code != Reason.NO_MIGRATION:
                    raise
                status = await self._status(await self.conn(source), vm, session)  # restarted: its journal
                if status.get("state") == "MIGRATING":
                    await asyncio.sleep(delay)
                    continue
                break
        with contextlib.suppress(Exception):  # the move's passes, for the apply report's chart (report.py)
            api = await self.conn(source)
            self.journal.write("passes", **(await api.api("GET", f"vms/{vm}/migrate/passes", timeout=30)))
        result.figures = {k: status.get(k) for k in FIGURES}
        result.ok = status.get("state") == "COMPLETED"
        result.error = None if result.ok else (status.get("error") or last.get("error") or "failed")
        result.code = None if result.ok else (status.get("code") or last.get("code") or Reason.ERROR.value)

    async def _status(self, api: HostConnection, vm: str, session: str | None) -> dict[str, Any]:
        """The move's status: the agent's live one, or (after a restart) its journal's record."""
        # with its session, an agent answers for that move even when a later one of the VM is newer
        status = await api.api("GET", f"vms/{vm}/migrate" + (f"?session={session}" if session else ""))
        if session and status.get("session") not in (None, session):
            raise AgentError(f"{api.name}: the latest migration of {vm} is not this apply's move "
                             f"(session {status.get('session')}, expected {session})", code=Reason.STALE)
        return status

    def _end(self, bar: Bar, result: MoveResult) -> MoveResult:
        result.finished = time.time()
        self.journal.write("end", vm=result.vm, source=result.source, dest=result.dest, ok=result.ok,
                           error=result.error, code=result.code, followed=result.followed or None, **result.figures)
        self.board.finish(bar, result.ok, result.error)
        return result

    async def cancel(self, vm: str, source: str) -> None:
        with contextlib.suppress(Exception):
            await (await self.conn(source)).api("POST", f"vms/{vm}/migrate/cancel", timeout=60)

    # -- the whole plan ----------------------------------------------------------------------

    def _skip(self, results: dict[str, MoveResult], vm: str, reason: str) -> None:
        assert self.plan is not None
        move = self.plan.move(vm)
        results[vm] = MoveResult(vm, move.source or "?", move.dest, skipped=True, error=reason, code="skipped")
        self.journal.write("skip", vm=vm, reason=reason, code="skipped")
        self.board.skip(vm, reason)

    async def run(self, plan: Plan, moves: list[Move], skip: dict[str, str] | None = None) -> list[MoveResult]:
        """Run `moves` as the plan's graph allows (scheduler.py); `skip`: moves not to run, with why."""
        self.plan = plan
        policy = plan.settings.get("on_failure", "rollback")
        sched = Scheduler.of_plan(plan, moves)
        for vm, why in (skip or {}).items():
            sched.skip(vm, why)
        running: dict[asyncio.Task[MoveResult], Move] = {}
        results: dict[str, MoveResult] = {}
        finished: list[MoveResult] = []  # in the order they ended
        while True:
            if not self.stopping:
                for move in sched.ready():
                    lost = await self.lock_held(move.source or "?", move.dest)
                    if lost:
                        sched.finished(move.vm, False)  # returned by ready(): it counted as running
                        sched.skipped[move.vm] = lost
                        continue
                    task = asyncio.ensure_future(self.migrate(move, move.source or "?", move.dest,
                                                              move.dest_address or self.address(move.dest)))
                    running[task] = move
            for vm, why in sched.skipped.items():
                if vm not in results:
                    self._skip(results, vm, why)
            if not running:
                if not sched.pending:
                    break
                # Nothing runs, so nothing will free up: skip what waits (and, next round, its dependants).
                for move in sched.stuck():
                    why = sched.why_waiting(move)
                    sched.skip(move.vm, why)
                    self._skip(results, move.vm, why)
                continue
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                move = running.pop(task)
                result = task.result()
                results[move.vm] = result
                finished.append(result)
                sched.finished(move.vm, result.ok)
                if not result.ok and policy != "continue" and not self.stopping:
                    await self._halt(sched, results, running, policy)
        if self.stopping and policy == "rollback-all":
            self.cancelling = False
            await self._roll_back([r for r in finished if r.ok])
        return [results[m.vm] for m in moves if m.vm in results]

    async def _halt(self, sched: Scheduler, results: dict[str, MoveResult],
                    running: dict[asyncio.Task[MoveResult], Move], policy: str) -> None:
        """A move failed: start nothing more; under rollback(-all) cancel what runs (the agents
        roll each one back, so its guest keeps running on its source)."""
        self.stopping = True
        for vm in sched.halt("skipped: an earlier move failed"):
            self._skip(results, vm, "skipped: an earlier move failed")
        if policy in ("rollback", "rollback-all"):
            self.cancelling = True
            for move in running.values():
                self.board.say(f"{move.vm}: cancelling (on_failure: {policy})")
            await asyncio.gather(*(self.cancel(m.vm, m.source or "?") for m in running.values()))

    async def _roll_back(self, done: list[MoveResult]) -> None:
        """rollback-all: migrate the finished moves back, last first, one at a time."""
        assert self.plan is not None
        self.board.plan_more(len(done))
        for r in reversed(done):
            self.board.say(f"{r.vm}: rolling back to {r.source} (on_failure: rollback-all)")
            back = await self.migrate(self.plan.move(r.vm), r.dest, r.source, self.address(r.source), "rollback")
            r.rolled_back = back.ok
            if not back.ok:
                r.error = f"moved, but the move back failed: {back.error}"

    async def placement(self) -> dict[str, str]:
        """Where every VM runs now, asking every host of the plan (unreachable ones are left out)."""
        async def ask(host: str) -> list[dict[str, Any]]:
            try:
                return list(await (await self.conn(host)).api("GET", "vms", timeout=20))
            except Exception:
                return []

        lists = await asyncio.gather(*(ask(h) for h in self.targets))
        return {vm["name"]: host for host, vms in zip(self.targets, lists, strict=True)
                for vm in vms if vm.get("state") == "running"}


    async def apply(self, plan: Plan, moves: list[Move], followed: list[MoveResult] | None = None,
                    skip: dict[str, str] | None = None) -> ApplyResult:
        """Exchange trust, run `moves`, report where every VM runs; `followed` are moves an
        interrupted apply left running that this one already followed to their end."""
        if moves:
            await self.exchange_trust(plan)
        results = list(followed or []) + await self.run(plan, moves, skip)
        placement = await self.placement()
        self.journal.write("done", ok=all(m.ok for m in results), placement=placement)
        return ApplyResult(results, placement)


def planned_key(plan: Plan, holder: str, identity: Any) -> tuple[str, str]:
    """`holder`'s public key (base64) and fingerprint from its identity document, if that is the
    key the plan showed for it; else `KeyChanged`. The fingerprint is worked out here from the key,
    not taken from the document."""
    import base64

    from ..pqc import fingerprint

    want = (plan.settings.get("trust_keys") or {}).get(holder)
    if not want:
        raise KeyChanged(f"the plan shows no key of {holder} to import", "plan again with `qvplan plan`")
    key = identity.get("public_key") if isinstance(identity, dict) else None
    try:
        got = fingerprint(base64.b64decode(str(key), validate=True)) if isinstance(key, str) else None
    except ValueError:
        got = None
    if got != want:
        raise KeyChanged(f"{holder}'s key is {got or 'unreadable'}, not {want} as planned; nothing imported",
                         f"verify {holder} (reinstalled? impostor?), then plan again")
    return str(key), got


class KeyChanged(QVError):
    code = Reason.KEY_CHANGED.value


def ready_moves(plan: Plan) -> list[Move]:
    """The moves of the plan's waves, in wave order."""
    return [plan.move(vm) for wave in plan.waves for vm in wave.moves]
