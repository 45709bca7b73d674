"""Hash-pinned requirements for the wheelhouse: what `pip install --require-hashes` checks.

Every wheel's SHA-256 is computed here, on the controller, from the very files it uploads; the
host installs only wheels whose hash matches (`--no-index`: no registry, no fallback), so a wheel
swapped on the way or on the host is refused instead of run as root.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import ProvisionError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def pin(wheel: Path) -> str:
    """`name==version --hash=sha256:...` for a wheel file (its name: name-version-tags.whl)."""
    parts = wheel.name.split("-")
    if len(parts) < 5 or not wheel.name.endswith(".whl"):
        raise ProvisionError(f"not a wheel file name: {wheel.name}", "rebuild the wheelhouse (rm -rf ~/.cache/qvplan)")
    return f"{parts[0]}=={parts[1]} --hash=sha256:{sha256_file(wheel)}"


def requirements(wheels: list[Path]) -> str:
    return "".join(pin(w) + "\n" for w in wheels)


def checksums(wheels: list[Path]) -> str:
    """A `sha256sum -c` file: checked on the host before pip itself is run from its wheel."""
    return "".join(f"{sha256_file(w)}  {w.name}\n" for w in wheels)
