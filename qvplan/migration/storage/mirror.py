"""The block phase of a storage migration, on the source: one mirror job per disk.

Each disk `diskN` (the node names of vmm/cmdline.py) gets an NBD client node `mig-diskN` on the
destination's export — its socket comes from the caller (the agent carries it through a PQC
channel) — and a `blockdev-mirror` job `mirror-diskN` (sync full) into it. QEMU's
dirty bitmap behind each mirror carries the guest's writes made during the copy. Once every
mirror is ready the memory migration starts; at the switchover (guest paused, `pre-switchover`)
`complete()` cancels each ready mirror: for a ready mirror QEMU treats that cancel as a clean
end — it drains the last dirty blocks, flushes, and leaves the target a consistent point-in-time
copy. `block-job-complete` would instead pivot the *source* VM onto the NBD target, which is
wrong here: the source must keep its own disk, so a later failure resumes it from that disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, QMPClient

from ...contract.errors import failure
from ...contract.ports import MIGRATION_PORT
from ...contract.reasons import Reason, fix_for
from ...vmm import VMSpec
from ..qmp import event_time

WAIT_POLL = 0.05
# Bytes a mirror keeps in flight (allocated in the source QEMU per disk while it is mirrored).
# QEMU allows 16 requests at once, each of buf-size/16 bytes (at least 1 MiB): 64 MiB gives 4 MiB
# NBD writes, so every request carries more per round trip through the two relays (the default
# 16 MiB gave clearly less throughput through them on a loaded host).
MIRROR_BUFFER = 64 << 20


def node(index: int) -> str:
    return f"disk{index}"


TARGET_PREFIX, JOB_PREFIX = "mig-disk", "mirror-disk"


def target_node(index: int) -> str:
    return f"{TARGET_PREFIX}{index}"


def job_id(index: int) -> str:
    return f"{JOB_PREFIX}{index}"


async def describe_disks(qmp: QMPClient, spec: VMSpec, pools: Mapping[str, Path]) -> list[dict[str, Any]]:
    """What the destination needs to create each disk: file name, format, virtual size (as the
    running QEMU sees the image, so a disk defined without a size is covered too)."""
    images = {info["node-name"]: info["image"] for info in
              await qmp.execute("query-named-block-nodes", {"flat": True})}
    return [{"index": i, "file": disk.resolve(pools).name, "format": disk.format,
             "size": int(images[node(i)]["virtual-size"])} for i, disk in enumerate(spec.disks)]


Address = Callable[[int], Awaitable[dict[str, Any]]]


@dataclass
class StorageProgress:
    copied: int = 0  # bytes the mirrors have written to the destination
    total: int = 0  # bytes to copy so far (grows as the guest dirties more)
    dirty: int = 0  # bytes dirty right now (QEMU's dirty bitmaps), still to copy
    ready: bool = False  # every mirror in sync


class DiskMirrors:
    """The mirror jobs of one migration, driven over the source QEMU's QMP."""

    def __init__(self, qmp: QMPClient, indices: list[int], exports: list[str], address: Address) -> None:
        self.qmp = qmp
        self.indices = indices
        self.exports = exports
        self.address = address  # disk index → QMP SocketAddress of its NBD server
        self.started: float | None = None  # wall clock, just before the first blockdev-mirror
        self.ready_at: dict[str, float] = {}  # job → QEMU's BLOCK_JOB_READY timestamp
        self._targets: list[str] = []
        self._jobs: list[str] = []
        self._listener = EventListener(("BLOCK_JOB_READY",))
        self._listening = False

    # -- start and follow --------------------------------------------------------------------

    async def start(self, speed: int) -> None:
        """Connect an NBD client per disk, then start the mirrors (`speed` bytes/s each, 0 = unlimited)."""
        await remove_leftovers(self.qmp)
        self.qmp.register_listener(self._listener)
        self._listening = True
        for i, export in zip(self.indices, self.exports, strict=True):
            await self.qmp.execute("blockdev-add", {
                "node-name": target_node(i), "driver": "nbd", "export": export,
                "server": await self.address(i),
                # unmap lets the mirror zero the (fresh) target cheaply instead of copying zeros
                "discard": "unmap",
            })
            self._targets.append(target_node(i))
        self.started = time.time()
        for i in self.indices:
            await self.qmp.execute("blockdev-mirror", {
                "job-id": job_id(i), "device": node(i), "target": target_node(i), "sync": "full",
                "speed": speed, "auto-dismiss": False,  # keep a failed job around to read its error
                "buf-size": MIRROR_BUFFER,
            })
            self._jobs.append(job_id(i))

    async def progress(self) -> StorageProgress:
        """Current figures; raises when a mirror has failed (a broken NBD link ends it with EIO)."""
        while not self._listener.empty():
            event = await self._listener.get()
            self.ready_at.setdefault(event["data"]["device"], event_time(event))
        jobs = await self._our_jobs()
        out = StorageProgress()
        for job in self._jobs:
            info = jobs.get(job)
            if info is None or info["status"] in ("concluded", "null", "aborting"):
                error = (info or {}).get("error", "the job ended early")
                raise failure(Reason.STORAGE_FAILED, f"Connection reset during transfer: storage copy {job} "
                              f"failed ({error})", fix_for(Reason.CONNECTION_RESET, MIGRATION_PORT))
            out.copied += int(info.get("current-progress", 0))
            out.total += int(info.get("total-progress", 0))
        out.dirty = await self._dirty_bytes(out.total - out.copied)
        out.ready = len(self.ready_at) == len(self.indices)
        return out

    def rate(self, copied: int) -> float:
        """`copied` bytes over the time from the first mirror start to the last ready (or now):
        the bulk copy's throughput, with QEMU's own READY timestamps as the end."""
        if self.started is None:
            return 0.0
        end = max(self.ready_at.values()) if len(self.ready_at) == len(self.indices) else time.time()
        return copied / max(end - self.started, 1e-3)

    async def set_speed(self, speed: int) -> None:
        for job in self._jobs:
            await self.qmp.execute("block-job-set-speed", {"device": job, "speed": speed})

    # -- end -----------------------------------------------------------------------------------

    async def complete(self, timeout: float) -> None:
        """At the switchover, with the guest paused: end every mirror with a consistent copy."""
        for job in self._jobs:
            await self.qmp.execute("block-job-cancel", {"device": job})
        deadline = time.monotonic() + timeout
        while True:
            jobs = await self._our_jobs()
            pending = [job for job in self._jobs if job in jobs and jobs[job]["status"] != "concluded"]
            failed = [f"{job}: {jobs[job]['error']}" for job in self._jobs if jobs.get(job, {}).get("error")]
            if failed:
                raise failure(Reason.STORAGE_FAILED, f"Connection reset during transfer: storage copy failed "
                              f"at switchover ({'; '.join(failed)})", fix_for(Reason.CONNECTION_RESET, MIGRATION_PORT))
            if not pending:
                break
            if time.monotonic() > deadline:
                raise failure(Reason.STORAGE_FAILED, f"storage copy did not finish within {timeout:.0f}s at "
                              "switchover", fix_for(Reason.CONNECTION_RESET, MIGRATION_PORT))
            await asyncio.sleep(WAIT_POLL)
        await self._dismiss_and_detach()

    async def abort(self) -> None:
        """After a failure: stop the mirrors at once and drop the NBD clients. Best effort."""
        for job in self._jobs:
            with contextlib.suppress(Exception):
                await self.qmp.execute("block-job-cancel", {"device": job, "force": True})
        with contextlib.suppress(Exception):
            for _ in range(100):
                jobs = await self._our_jobs()
                if all(jobs.get(job, {}).get("status", "concluded") == "concluded" for job in self._jobs):
                    break
                await asyncio.sleep(0.1)
        await self._dismiss_and_detach()

    async def _dismiss_and_detach(self) -> None:
        for job in self._jobs:
            with contextlib.suppress(Exception):
                await self.qmp.execute("job-dismiss", {"id": job})
        self._jobs = []
        for target in self._targets:
            with contextlib.suppress(Exception):
                await self.qmp.execute("blockdev-del", {"node-name": target})
        self._targets = []
        self.close()

    def close(self) -> None:
        if self._listening:
            self._listening = False
            with contextlib.suppress(Exception):
                self.qmp.remove_listener(self._listener)

    # -- QMP reads -----------------------------------------------------------------------------

    async def _our_jobs(self) -> dict[str, dict[str, Any]]:
        return {job["id"]: job for job in await self.qmp.execute("query-jobs") if job["id"] in self._jobs}

    async def _dirty_bytes(self, fallback: int) -> int:
        """The mirrors' dirty bitmaps (anonymous ones on our disk nodes); else what is left to copy."""
        wanted = {node(i) for i in self.indices}
        try:
            nodes = await self.qmp.execute("query-named-block-nodes", {"flat": True})
        except Exception:
            return fallback
        counts = [bitmap["count"] for info in nodes if info.get("node-name") in wanted
                  for bitmap in info.get("dirty-bitmaps", []) if "name" not in bitmap]
        return sum(counts) if counts else fallback


async def remove_leftovers(qmp: QMPClient, within: float = 10.0) -> None:
    """Drop the mirror jobs and NBD client nodes an earlier migration left in this QEMU (its agent
    was killed mid-copy, so nobody ended them): a new mirror would find its node name taken.
    Best effort; the guest's own disks are never touched."""
    with contextlib.suppress(Exception):
        jobs = [job["id"] for job in await qmp.execute("query-jobs") if job["id"].startswith(JOB_PREFIX)]
        for job in jobs:
            with contextlib.suppress(Exception):
                await qmp.execute("block-job-cancel", {"device": job, "force": True})
        deadline = time.monotonic() + within
        while jobs and time.monotonic() < deadline:
            states = {job["id"]: job["status"] for job in await qmp.execute("query-jobs")}
            if all(states.get(job, "concluded") in ("concluded", "null") for job in jobs):
                break
            await asyncio.sleep(WAIT_POLL)
        for job in jobs:
            with contextlib.suppress(Exception):
                await qmp.execute("job-dismiss", {"id": job})
        for info in await qmp.execute("query-named-block-nodes", {"flat": True}):
            if str(info.get("node-name", "")).startswith(TARGET_PREFIX):
                with contextlib.suppress(Exception):
                    await qmp.execute("blockdev-del", {"node-name": info["node-name"]})
