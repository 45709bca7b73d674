"""Which boot of this machine's kernel we run in.

The kernel draws a new boot id at every boot. A record that names the boot it was written in
tells a reader whether the page cache it was written to survived since: same boot, whatever was
written is there (a killed process loses nothing it wrote); another boot, only what was flushed to
the device is.
"""

from __future__ import annotations

from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's id, or "" where the kernel does not say (then no two boots can be told apart)."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""
