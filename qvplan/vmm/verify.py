"""Is the test guest's RAM intact? The invariant of guest/testguest.S, checked on a RAM dump.

Every page of the working set holds MARKER repeated except byte 0, a counter the guest bumps
page by page, sweep after sweep. So all counters are equal, except that the pages before the one
the sweep was interrupted at are exactly one ahead (mod 256). `check_ram` finds the (value, edge)
that explains the most pages and names every page that does not fit it.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import QemuError
from .guest import MARKER, GuestParams

if TYPE_CHECKING:
    from .process import QemuProcess
    from .spec import VMSpec

PAGE = 4096
FILL = MARKER * (PAGE // len(MARKER))
_FILL_TAIL = FILL[1:]
MAX_SHOWN = 8


@dataclass(frozen=True)
class BadPage:
    index: int  # page index within the working set
    address: int  # guest-physical address of the page
    what: str  # "counter" or "fill at +0xNNN"
    expected: int
    found: int

    def __str__(self) -> str:
        return (f"page {self.index} (0x{self.address:x}) {self.what} "
                f"expected 0x{self.expected:02x} found 0x{self.found:02x}")


@dataclass
class RamReport:
    """The verdict on one dump. `edge` is the index of the first page the current sweep has not
    reached yet (None when all counters are equal); `value` is the counter of the pages from the
    edge on. `bad_pages` holds the first few offenders, `bad_count` all of them."""

    pages: int
    start: int
    value: int | None = None
    edge: int | None = None
    bad_pages: list[BadPage] = field(default_factory=list)
    bad_count: int = 0

    @property
    def ok(self) -> bool:
        return self.pages > 0 and self.bad_count == 0

    def __str__(self) -> str:
        where = f"{self.pages} pages at 0x{self.start:x}"
        if self.ok:
            edge = "no sweep edge" if self.edge is None else f"sweep edge at page {self.edge}"
            return f"RAM ok: {where}, counter 0x{self.value or 0:02x}, {edge}"
        if self.pages == 0:
            return "RAM not checked: empty working set"
        shown = "; ".join(str(p) for p in self.bad_pages)
        more = f"; +{self.bad_count - len(self.bad_pages)} more" if self.bad_count > len(self.bad_pages) else ""
        return f"RAM corrupt: {self.bad_count} of {where} bad: {shown}{more}"


def best_split(counters: bytes) -> tuple[int, int, int]:
    """(behind, edge, mismatches): pages [0, edge) should hold behind+1, pages [edge, n) behind.

    Tries the values the most common counters can be (the behind or the ahead group) and every
    edge, in O(n) each, keeping the split with the fewest mismatching pages."""
    n = len(counters)
    # The true values are the behind and ahead counters; with a few corrupt pages they are still
    # among the three most common (with very few pages a corrupt value can tie with them).
    common = [value for value, _ in Counter(counters).most_common(3)]
    candidates = dict.fromkeys(v for value in common for v in (value, (value - 1) % 256))
    best: tuple[int, int, int] | None = None
    for behind in candidates:
        ahead = (behind + 1) % 256
        not_behind_total = sum(1 for c in counters if c != behind)
        ahead_misses = 0  # pages before k that are not `ahead`
        not_behind_before = 0  # pages before k that are not `behind`
        for k in range(n + 1):
            misses = ahead_misses + (not_behind_total - not_behind_before)
            if best is None or misses < best[2]:
                best = (behind, k, misses)
            if k < n:
                ahead_misses += counters[k] != ahead
                not_behind_before += counters[k] != behind
    assert best is not None
    return best


def check_ram(data: bytes, start: int = 0) -> RamReport:
    """Check a dump of the working set (whole pages; `start` is its guest-physical address)."""
    pages = len(data) // PAGE
    report = RamReport(pages=pages, start=start)
    if pages == 0:
        return report
    counters = bytes(data[i * PAGE] for i in range(pages))
    behind, edge, _ = best_split(counters)
    if edge in (0, pages):  # everything equal: no sweep in progress at the pause
        report.value, report.edge = (behind if edge == 0 else (behind + 1) % 256), None
    else:
        report.value, report.edge = behind, edge
    bad: list[BadPage] = []
    view = memoryview(data)
    for i in range(pages):
        base = i * PAGE
        want = (behind + 1) % 256 if i < edge else behind
        if counters[i] != want:
            bad.append(BadPage(i, start + base, "counter", want, counters[i]))
        if view[base + 1:base + PAGE] != _FILL_TAIL:
            off = next(j for j in range(1, PAGE) if data[base + j] != FILL[j])
            bad.append(BadPage(i, start + base, f"fill at +0x{off:03x}", FILL[off], data[base + off]))
    report.bad_count = len(bad)
    report.bad_pages = bad[:MAX_SHOWN]
    return report


async def verify_ram(proc: QemuProcess, spec: VMSpec) -> RamReport:
    """Pause the VM (if running), dump its working set with `pmemsave`, resume it, check the dump."""
    if spec.guest.test is None:
        raise QemuError(f"VM {spec.name!r} does not run the test guest", "only test guests can be verified")
    params = GuestParams.from_spec(spec.guest.test)
    status = await proc.execute("query-status")
    running = bool(status.get("running"))
    dump = proc.run_dir / f"ramdump-{uuid.uuid4().hex[:8]}.bin"
    try:
        if running:
            await proc.execute("stop")
        await proc.execute("pmemsave", {"val": params.start, "size": params.size, "filename": proc.qemu_path(dump)})
        with open(os.open(dump, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:  # QEMU wrote it: no symlink
            data = f.read()
    finally:
        if running:
            await proc.execute("cont")
        dump.unlink(missing_ok=True)
    if len(data) != params.size:
        raise QemuError(f"pmemsave wrote {len(data)} bytes, expected {params.size}", "check the QEMU log")
    return check_ram(data, params.start)
