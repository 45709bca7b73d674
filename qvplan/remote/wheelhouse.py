"""A local wheelhouse of this very qvplan and its dependencies, to install agents offline.

Hosts get exactly the versions the controller runs: the qvplan wheel is built from the source
tree (`pip wheel --no-deps`, or packed directly when pip cannot build offline), and every
dependency is repacked from the dists installed in the controller's environment (their files are
listed in each dist's RECORD). No registry is needed on either side; hosts need the same Python
minor version and platform as the controller for the binary wheels (else pip may fall back to its
index). Everything is cached under ~/.cache/qvplan/wheels, keyed by content.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from .. import __version__
from .errors import ProvisionError

SKIP_DIST_INFO = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def cache_root() -> Path:
    if env := os.environ.get("QVPLAN_WHEEL_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qvplan" / "wheels"


def source_root() -> Path | None:
    """The source checkout this qvplan runs from (None when installed from a wheel)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() and (root / "qvplan").is_dir() else None


def _requirement_names(dist_name: str, seen: set[str]) -> None:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - pip always vendors it
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    for spec in metadata.requires(dist_name) or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = _norm(req.name)
        if key not in seen:
            seen.add(key)
            _requirement_names(req.name, seen)


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def dependency_dists() -> list[metadata.Distribution]:
    """Installed dists qvplan needs at run time (transitively), plus pip to install them."""
    names: set[str] = {"pip"}
    _requirement_names("qvplan", names)
    names.discard("qvplan")
    dists = []
    for name in sorted(names):
        try:
            dists.append(metadata.distribution(name))
        except metadata.PackageNotFoundError:
            raise ProvisionError(f"dependency {name} is not installed here",
                                 "install qvplan with its dependencies on the controller") from None
    return dists


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def _wheel_tag(wheel_text: str) -> str:
    tags = [line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")]
    if not tags:
        return "py3-none-any"
    parts = [t.split("-") for t in tags]
    # Compressed tag set: each of python/abi/platform is the dotted union, in order.
    return "-".join(".".join(dict.fromkeys(p[i] for p in parts)) for i in range(3))


def _write_wheel(out: Path, name: str, version: str, tag: str,
                 files: list[tuple[str, bytes]], dist_info: dict[str, bytes]) -> Path:
    info = f"{_norm(name)}-{version}.dist-info"
    target = out / f"{_norm(name)}-{version}-{tag}.whl"
    tmp = target.with_suffix(".tmp")
    record = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for arcname, data in [*files, *((f"{info}/{k}", v) for k, v in dist_info.items())]:
            zf.writestr(arcname, data)
            record.append(_record_line(arcname, data))
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    tmp.rename(target)
    return target


def repack(dist: metadata.Distribution, out: Path) -> Path:
    """Turn an installed dist back into a wheel (package files + metadata, no scripts/pyc)."""
    files: list[tuple[str, bytes]] = []
    dist_info: dict[str, bytes] = {}
    info_dir = None
    for entry in dist.files or []:
        posix = entry.as_posix()
        if posix.startswith("..") or "__pycache__" in entry.parts or posix.endswith(".pyc"):
            continue
        path = Path(str(dist.locate_file(entry)))
        if not path.is_file():
            continue
        if entry.parts[0].endswith(".dist-info"):
            info_dir = entry.parts[0]
            sub = "/".join(entry.parts[1:])
            if sub not in SKIP_DIST_INFO:
                dist_info[sub] = path.read_bytes()
            continue
        files.append((posix, path.read_bytes()))
    if info_dir is None or "WHEEL" not in dist_info:
        raise ProvisionError(f"cannot repack {dist.metadata['Name']}: no wheel metadata installed",
                             "reinstall it from a wheel on the controller")
    tag = _wheel_tag(dist_info["WHEEL"].decode())
    return _write_wheel(out, dist.metadata["Name"], dist.version, tag, files, dist_info)


def _pack_source(root: Path, out: Path) -> Path:
    """Pack qvplan from the source tree (pure Python) when `pip wheel` cannot run (offline)."""
    dist = metadata.distribution("qvplan")
    files = [(p.relative_to(root).as_posix(), p.read_bytes())
             for p in sorted((root / "qvplan").rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    info = {"METADATA": (dist.read_text("METADATA") or "").encode(),
            "WHEEL": b"Wheel-Version: 1.0\nGenerator: qvplan\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            "entry_points.txt": (dist.read_text("entry_points.txt") or "").encode()}
    return _write_wheel(out, "qvplan", __version__, "py3-none-any", files, info)


def _source_key(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((root / "qvplan").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            st = p.stat()
            h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    h.update((root / "pyproject.toml").read_bytes())
    return h.hexdigest()[:16]


def qvplan_wheel() -> Path:
    """This qvplan as a wheel, cached by the content of the source tree."""
    root = source_root()
    if root is None:
        # Installed from a wheel: repack what is installed.
        out = cache_root() / f"qvplan-installed-{__version__}"
        out.mkdir(parents=True, exist_ok=True)
        found = sorted(out.glob("qvplan-*.whl"))
        return found[0] if found else repack(metadata.distribution("qvplan"), out)
    out = cache_root() / f"qvplan-src-{_source_key(root)}"
    found = sorted(out.glob("qvplan-*.whl"))
    if found:
        return found[0]
    tmp = Path(tempfile.mkdtemp(prefix="qvwheel-"))
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp), str(root)],
                              capture_output=True, text=True, timeout=300)
        built = sorted(tmp.glob("qvplan-*.whl"))
        if proc.returncode != 0 or not built:
            built = [_pack_source(root, tmp)]
        out.mkdir(parents=True, exist_ok=True)
        final = out / built[0].name
        shutil.move(str(built[0]), final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dependency_wheels() -> list[Path]:
    """Wheels of all run-time dependencies (and pip), cached by their exact versions."""
    dists = dependency_dists()
    key = hashlib.sha256(("|".join(f"{d.metadata['Name']}=={d.version}" for d in dists) +
                          sys.version).encode()).hexdigest()[:16]
    out = cache_root() / f"deps-py{sys.version_info.major}{sys.version_info.minor}-{key}"
    done = out / ".complete"
    if not done.exists():
        out.mkdir(parents=True, exist_ok=True)
        for whl in out.glob("*.whl"):
            whl.unlink()
        for dist in dists:
            repack(dist, out)
        done.touch()
    return sorted(out.glob("*.whl"))


def wheelhouse() -> list[Path]:
    """Every wheel a host needs to run `quantavirt agent` of this version."""
    return [qvplan_wheel(), *dependency_wheels()]
