"""Where a host keeps its state: one directory per host.

`/var/lib/quantavirt` as root, `$XDG_DATA_HOME/quantavirt` otherwise; `--state-dir` or
`QUANTAVIRT_STATE_DIR` override both.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/quantavirt/quantavirt.conf")


def state_dir(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        path = Path(override)
    elif env := os.environ.get("QUANTAVIRT_STATE_DIR"):
        path = Path(env)
    elif os.geteuid() == 0:
        path = Path("/var/lib/quantavirt")
    else:
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        path = Path(xdg) / "quantavirt"
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_path(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override)
    if env := os.environ.get("QUANTAVIRT_CONFIG"):
        return Path(env)
    return DEFAULT_CONFIG
