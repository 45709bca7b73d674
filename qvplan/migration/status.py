"""A migration's live figures, as `vm migrate-status` prints them and events carry them."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..contract.events import PHASE_NAMES as PHASES
from ..units import format_duration, format_rate, format_size
from .passes import PassHistory

WRITEBACK_SHOWN = 0.01  # seconds: a disk write-back shorter than this is not worth a line


@dataclass
class MigrationStatus:
    vm: str
    destination: str
    encryption: str
    max_iterations: int
    state: str = "MIGRATING"  # MIGRATING, COMPLETED, FAILED, CANCELLED
    phase: int = 1
    transferred: int = 0
    total: int = 0  # honest estimate: transferred + remaining, never shrinking below transferred
    iteration: int = 0
    dirty_rate: float = 0.0  # bytes/s
    transfer_rate: float = 0.0  # bytes/s
    expected_downtime: float | None = None  # seconds
    started: float = field(default_factory=time.time)
    finished: float | None = None
    downtime: float | None = None  # QEMU's figure, seconds
    pause: float | None = None  # source STOP → destination RESUME, seconds
    stopped_at: float | None = None  # wall time of the source's STOP (QEMU's event time)
    resumed_at: float | None = None  # wall time of the destination's RESUME
    ram_check: float | None = None  # seconds of the pause spent comparing RAM (live/ramcheck.py); None: not needed
    disk_writeback: float = 0.0  # seconds the guest's stop is expected to spend flushing its disks (flush.py)
    error: str | None = None
    fix: str | None = None
    code: str | None = None  # the reason code of a failure or cancel
    storage_copied: int = 0  # bytes the disk mirrors have written to the destination
    storage_total: int = 0  # bytes they have to copy so far (grows with the guest's writes)
    storage_dirty: int = 0  # bytes dirty right now, not yet copied (QEMU's dirty bitmaps)
    storage_rate: float = 0.0  # bytes/s of the bulk copy (first mirror start → last in sync)
    storage_phase: bool = False  # the block phase: disks copying, memory not yet moving
    forced_stop_and_copy: bool = False
    # past --max-iterations, the source holds its stop until the pause would fit --max-downtime
    waiting_to_fit: bool = False
    cpu_throttle: int = 0  # auto-converge's vCPU throttle, % (QEMU only raises it; kept after the end)
    percent: float = 0.0  # never runs backwards
    doubt: str | None = None  # after commit, while the destination's word is missing: where the VM is, what settles it
    session: str | None = None
    _mono_started: float = field(default_factory=time.monotonic, repr=False)
    _mono_finished: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.history = PassHistory()  # per pass: the true dirty rate (passes.py); not a field: kept out of as_dict

    @property
    def elapsed(self) -> float:
        # monotonic: a clock jump neither fires nor stretches --timeout (started/finished are for people)
        end = self._mono_finished if self._mono_finished is not None else time.monotonic()
        return end - self._mono_started

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "finished" and value is not None and getattr(self, "_mono_finished", None) is None:
            object.__setattr__(self, "_mono_finished", time.monotonic())
        object.__setattr__(self, name, value)

    @property
    def done(self) -> bool:
        return self.state != "MIGRATING"

    def update_from_qemu(self, info: dict[str, Any]) -> None:
        """Fold one `query-migrate` answer into the figures."""
        ram = info.get("ram") or {}
        if ram:
            self.transferred = max(self.transferred, int(ram.get("transferred", 0)))
            remaining = int(ram.get("remaining", 0))
            self.total = max(self.transferred + remaining, self.transferred)
            if not self.forced_stop_and_copy:  # QEMU's passes after a forced stop are not iterations
                self.iteration = max(self.iteration, int(ram.get("dirty-sync-count", 0)))
            page = int(ram.get("page-size", 4096))
            self.history.paused = self.forced_stop_and_copy or info.get("status") in ("device", "pre-switchover")
            self.history.observe(info, time.time())
            ours = self.history.dirty_rate()  # QEMU's own figure lags a second, and is 0 in short passes
            self.dirty_rate = float(ram.get("dirty-pages-rate", 0)) * page if ours is None else ours
            self.transfer_rate = float(ram.get("mbps", 0.0)) * 1e6 / 8
        self.cpu_throttle = max(self.cpu_throttle, int(info.get("cpu-throttle-percentage", 0)))
        if (estimate := self.history.expected_downtime()) is not None:
            self.expected_downtime = estimate
        elif "expected-downtime" in info:
            self.expected_downtime = info["expected-downtime"] / 1000
        if "downtime" in info:
            self.downtime = info["downtime"] / 1000
        status = info.get("status")
        if status in ("device", "pre-switchover"):
            self.phase = 4
        elif self.iteration >= 2:
            self.phase = max(self.phase, 3)
        elif status == "active":
            self.phase = max(self.phase, 2)
        if self.total:
            self.percent = max(self.percent, min(99.0 if not self.done else 100.0,
                                                 100.0 * self.transferred / self.total))

    def storage_line(self) -> str:
        """`54% (138.0 MiB / 256.0 MiB copied), 1.2 MiB dirty, 85 MB/s` (disk mirrors)."""
        percent = 100.0 * self.storage_copied / self.storage_total if self.storage_total else 0.0
        return (f"{percent:.0f}% ({format_size(self.storage_copied)} / {format_size(self.storage_total)} copied), "
                f"{format_size(self.storage_dirty)} dirty, {format_rate(self.storage_rate)}")

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        out["elapsed"] = self.elapsed
        out["phase_name"] = PHASES[self.phase]
        out["storage"] = self.storage_line() if self.storage_total else None  # the Storage line
        last = self.history.last_closed
        out["last_pass"] = last.as_dict() if last else None  # the latest finished pass (passes.py)
        return out

    def render(self) -> str:
        """The spec's migrate-status layout."""
        lines = [f"VM:              {self.vm}"]
        if self.done:
            lines.append(f"State:           {self.state}" + (f" ({self.error})" if self.error else ""))
        else:
            block = ", copying disks" if self.storage_phase else ""
            lines.append(f"State:           MIGRATING (phase {self.phase}: {PHASES[self.phase]}{block})")
            if self.doubt:
                lines.append(f"In Doubt:        {self.doubt}")
        lines += [
            f"Destination:     {self.destination}",
            f"Encryption:      {self.encryption}",
            f"Progress:        {self.percent:.0f}% ({format_size(self.transferred)} / "
            f"{format_size(self.total)} transferred)",
            f"Iteration:       {self.iteration} / {self.max_iterations}"
            + (" (forced stop-and-copy)" if self.forced_stop_and_copy else "")
            + (" (past the budget: stopping once the pause fits --max-downtime)" if self.waiting_to_fit else ""),
            f"Dirty Rate:      {format_rate(self.dirty_rate)}",
            f"Transfer Rate:   {format_rate(self.transfer_rate)}",
        ]
        if self.storage_total:
            lines.append(f"Storage:         {self.storage_line()}")
        if self.disk_writeback >= WRITEBACK_SHOWN:
            lines.append(f"Disk Write-back: ~{self.disk_writeback * 1000:.0f} ms per round, kept out of the pause "
                         "(the guest writes its disks faster than this host writes them back)")
        if self.done:
            if self.downtime is not None:
                lines.append(f"Downtime:        {format_duration(self.downtime)} (QEMU)")
            if self.pause is not None:
                lines.append(f"Guest Pause:     {format_duration(self.pause)} (source stop → destination resume)")
            lines.append(f"Total Time:      {format_duration(self.elapsed)}")
            if self.fix:
                lines.append(f"Fix:             {self.fix}")
            if self.code:
                lines.append(f"Reason:          {self.code}")
        else:
            est = "n/a" if self.expected_downtime is None else f"~{self.expected_downtime * 1000:.0f} ms"
            lines += [f"Est. Downtime:   {est}", f"Elapsed:         {format_duration(self.elapsed)}"]
        return "\n".join(lines)
