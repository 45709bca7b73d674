"""Where a host keeps its state: one directory per host.

`/var/lib/quantavirt` as root, `$XDG_DATA_HOME/quantavirt` otherwise; `--state-dir` or
`QUANTAVIRT_STATE_DIR` override both. The state directory is private (0700): keys, VM definitions,
run directories and logs are nobody else's business (a VM's QEMU reaches its own run directory
without passing through it: see vmm/confine.py).
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
    return private_dir(path)


def private_dir(path: Path) -> Path:
    """Create `path` 0700 if missing; narrow it to 0700 if it is ours and open to others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def config_path(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override)
    if env := os.environ.get("QUANTAVIRT_CONFIG"):
        return Path(env)
    return DEFAULT_CONFIG
