"""Parsing and printing sizes, rates and durations: `10G`, `512M`, `300ms`, `1.5s`.

Sizes are binary (K = 1024). A bandwidth like `10G` means 10 GiB/s of payload, as QEMU's
`max-bandwidth` counts bytes per second.
"""

from __future__ import annotations

import re

from .errors import UsageError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_TIME_MULT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(text: str | int, what: str = "size") -> int:
    """`512M` → 536870912. Plain integers are bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"invalid {what} {text!r}", "use a number with an optional K/M/G/T suffix, e.g. 512M")
    return int(float(m.group(1)) * _SIZE_MULT[m.group(2).upper()])


def parse_duration(text: str | int | float, what: str = "duration", default_unit: str = "s") -> float:
    """`300ms` → 0.3, `1.5s` → 1.5, `600` → 600.0 (seconds unless `default_unit` says otherwise)."""
    if isinstance(text, int | float):
        return float(text) * _TIME_MULT[default_unit]
    m = _TIME_RE.match(str(text))
    if not m:
        raise UsageError(f"invalid {what} {text!r}", "use a number with a unit, e.g. 300ms, 1.5s, 10m")
    return float(m.group(1)) * _TIME_MULT[(m.group(2) or default_unit).lower()]


def format_size(n: float) -> str:
    """536870912 → `512.0 MiB`."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_rate(bytes_per_s: float) -> str:
    """Bytes per second as the spec prints it: `120 MB/s`."""
    mb = bytes_per_s / 1e6
    return f"{mb:.0f} MB/s" if mb >= 10 else f"{mb:.1f} MB/s"


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
