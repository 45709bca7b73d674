"""A test-only fault hook: stop the agent at a named point of a migration, deterministically.

Off unless the environment variable QUANTAVIRT_TEST_PAUSE_AT names points (comma-separated). At
such a point the agent creates `<state>/faults/<point>.reached` and waits until a test creates
`<point>.go` beside it (or kills the agent meanwhile). The points are listed in
docs/exactly-once.md.

QUANTAVIRT_TEST_BOOT_ID, when set, is the boot id the agent believes it runs in (journal.py
records it): a test restarts an agent "after a host crash" without rebooting the machine.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from ..boot import boot_id

log = logging.getLogger(__name__)
ENV = "QUANTAVIRT_TEST_PAUSE_AT"
BOOT_ENV = "QUANTAVIRT_TEST_BOOT_ID"


def current_boot() -> str:
    """The boot id journal records are written under (the test override, else the kernel's)."""
    return os.environ.get(BOOT_ENV) or boot_id()


async def pause_at(state_dir: Path, point: str) -> None:
    if point not in os.environ.get(ENV, "").split(","):
        return
    folder = state_dir / "faults"
    folder.mkdir(exist_ok=True)
    log.warning("test fault hook: paused at %s", point)
    (folder / f"{point}.reached").touch()
    while not (folder / f"{point}.go").exists():
        await asyncio.sleep(0.02)
    (folder / f"{point}.go").unlink(missing_ok=True)
    (folder / f"{point}.reached").unlink(missing_ok=True)
