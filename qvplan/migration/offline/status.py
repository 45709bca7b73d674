"""An offline migration's figures: the same document as a live one (so every consumer of migration
status and events keeps working), marked `mode: offline`, with its own phases and layout.

`transferred`/`total` and `storage_copied`/`storage_total` both count image data copied of the data
to copy (holes excluded); `wire_bytes` is what crossed the channel (less with --compress).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...contract.events import OFFLINE_PHASE_NAMES as PHASES
from ...units import format_duration, format_rate, format_size
from ..status import MigrationStatus


@dataclass
class OfflineStatus(MigrationStatus):
    mode: str = "offline"
    compress: bool = False
    disk: int = 0  # 1-based index of the disk being copied
    disks: int = 0  # disks to copy (shared and never-created disks are not copied)
    wire_bytes: int = 0

    def add_copied(self, data: int, wire: int) -> None:
        self.transferred += data
        self.storage_copied += data
        self.wire_bytes += wire
        if self.total:
            self.percent = max(self.percent, min(99.0, 100.0 * self.transferred / self.total))

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        out["phase_name"] = PHASES.get(self.phase, "")
        return out

    @classmethod
    def from_dict(cls, status: dict[str, Any]) -> OfflineStatus:
        return cls(**{k: v for k, v in status.items() if k in cls.__dataclass_fields__})

    def ratio(self) -> str:
        if not self.wire_bytes or not self.transferred:
            return ""
        return f" (zstd {self.transferred / self.wire_bytes:.1f}:1)" if self.compress else ""

    def render(self) -> str:
        lines = [f"VM:              {self.vm}"]
        if self.done:
            lines.append(f"State:           {self.state}" + (f" ({self.error})" if self.error else ""))
        else:
            where = f", disk {self.disk} of {self.disks}" if self.phase == 2 and self.disks else ""
            lines.append(f"State:           MIGRATING (offline, phase: {PHASES.get(self.phase, '')}{where})")
        lines += [
            f"Destination:     {self.destination}",
            f"Encryption:      {self.encryption}",
            f"Mode:            offline (VM stopped), {self.disks} disk(s) to copy"
            + (", zstd" if self.compress else ""),
            f"Progress:        {self.percent:.0f}% ({format_size(self.transferred)} / "
            f"{format_size(self.total)} copied)",
            f"On the Wire:     {format_size(self.wire_bytes)}{self.ratio()}",
            f"Transfer Rate:   {format_rate(self.transfer_rate)}",
            f"{('Total Time:' if self.done else 'Elapsed:'):<17}{format_duration(self.elapsed)}",
        ]
        if self.done and self.fix:
            lines.append(f"Fix:             {self.fix}")
        if self.done and self.code:
            lines.append(f"Reason:          {self.code}")
        return "\n".join(lines)


def describe(ev: dict[str, Any]) -> str:
    """One plain progress line for an offline migration event."""
    disk = f" disk {ev.get('disk', 0)}/{ev.get('disks', 0)}" if ev.get("phase") == 2 else ""
    return (f"{ev.get('vm')}: {ev['event']} offline {PHASES.get(ev.get('phase', 1), '')}{disk} "
            f"{ev.get('percent', 0):.0f}% {format_size(ev.get('transferred', 0))}/{format_size(ev.get('total', 0))}"
            f" wire {format_size(ev.get('wire_bytes', 0))} {format_rate(ev.get('transfer_rate', 0))}")
