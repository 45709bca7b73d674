"""Where the agent may touch files: inside its storage pools or shared roots, nowhere else.

The agent runs as root, so every path it opens or hands to QEMU — a local VM definition's disks
and kernel boot, every spec a peer sends (live, storage, offline), `--dest-pool`, a
`storage-check` — passes through `confine()` first. The one rule:

- the path is absolute, without `..`, NUL or empty components, and lies under a pool's or a
  shared root's directory (as configured, or as that directory really is);
- below that root it is walked one component at a time from an open descriptor of the root
  (`dir_fd`, no following): a symlink anywhere below the root is refused, whether it points out
  or not, so what the agent checked is what it opens. (The roots themselves are the operator's
  config and may be symlinks.)

Names a peer sends for files in a pool are one path component (`file_name`). Modes and `shared`
flags a peer sends are never used: `is_shared` says from this host's config whether a path is on
shared storage. Components that do not exist yet (a disk created at first start) pass: nothing
is there to follow, and the walk runs again right before QEMU starts (registry.start). Between
that walk and the open only someone who can write inside the pool (root: new pools are 0700)
could swap a component.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..contract.reasons import Reason
from ..errors import QVError
from ..vmm.spec import plain_name

if TYPE_CHECKING:
    from ..vmm import DiskSpec, VMSpec
    from ..vmm.spec import BootSpec

FIX = "put the file in one of this host's [storage] pools or shared roots (and not behind a symlink)"


class PathError(QVError):
    """A path the agent refuses to touch: outside its pools and shared roots, or through a symlink."""

    code = Reason.PATH_OUTSIDE_POOLS


@dataclass(frozen=True)
class Roots:
    """This host's storage: pools by name, and the shared roots (NFS/Ceph mounts) from its config."""

    pools: Mapping[str, Path]
    shared: tuple[Path, ...] = field(default=())

    @classmethod
    def of(cls, pools: Mapping[str, Path], shared: Iterable[str | Path] = ()) -> Roots:
        return cls(dict(pools), tuple(Path(p) for p in shared))

    def all(self) -> list[Path]:
        return [*self.pools.values(), *self.shared]


def file_name(name: object, what: str = "file name") -> str:
    """A name for a file inside a pool: one path component, or PathError."""
    if not isinstance(name, str) or not plain_name(name):
        raise PathError(f"{what} {name!r} is not a plain file name (one path component)",
                        "name the file without '/', '..' or NUL")
    return name


def confine(path: str | os.PathLike[str], roots: Iterable[Path], what: str = "path") -> Path:
    """`path` if it resolves inside one of `roots` without a symlink below the root; else PathError.
    Returns the path below the root's real directory."""
    text = os.fspath(path)
    if "\0" in text or not text.startswith("/"):
        raise PathError(f"{what} {text!r} is not an absolute path (without NUL)", FIX)
    given = Path(text)
    if ".." in given.parts:
        raise PathError(f"{what} {text} contains '..'", FIX)
    for root in roots:
        real = Path(os.path.realpath(root))
        for base in (Path(os.path.abspath(root)), real):
            with contextlib.suppress(ValueError):
                rest = given.relative_to(base)
                return _walk(real, rest.parts, text, what)
    raise PathError(f"{what} {text} is outside this host's pools and shared roots", FIX)


def _walk(root: Path, parts: tuple[str, ...], text: str, what: str) -> Path:
    """Follow `parts` below `root` with openat-style look-ups that never follow a symlink."""
    try:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise PathError(f"{what} {text}: its root {root} cannot be opened ({err.strerror})",
                        "check the pool or shared root exists (is the shared storage mounted?)",
                        code=Reason.STORAGE_NOT_FOUND) from None
    try:
        for i, part in enumerate(parts):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                break  # nothing there yet, nothing to follow
            if stat.S_ISLNK(st.st_mode):
                raise PathError(f"{what} {text} passes through a symlink ({root.joinpath(*parts[:i + 1])})",
                                "replace the symlink with the file or directory itself")
            if i == len(parts) - 1:
                break
            if not stat.S_ISDIR(st.st_mode):
                raise PathError(f"{what} {text}: {root.joinpath(*parts[:i + 1])} is not a directory", FIX)
            step = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = step
    finally:
        os.close(fd)
    return root.joinpath(*parts)


def in_pool(roots: Roots, pool: str, name: str, what: str = "file") -> Path:
    """The file `name` (one component) of pool `pool`, confined."""
    if pool not in roots.pools:
        raise PathError(f"unknown storage pool {pool!r}",
                        f"use one of: {', '.join(sorted(roots.pools)) or '(none configured)'}",
                        code=Reason.STORAGE_NOT_FOUND)
    base = Path(roots.pools[pool])
    return confine(base / file_name(name, f"{what} name"), [base], what)


def is_shared(path: Path, roots: Roots) -> bool:
    """Is `path` on one of this host's shared roots (its own config decides, never a peer)? A
    root that is not mounted still counts: the disk is then reported missing, not copied in."""
    try:
        confine(path, roots.shared)
    except PathError as err:
        return err.code != Reason.PATH_OUTSIDE_POOLS
    return True


def destination(roots: Roots, wanted: str) -> tuple[str | None, Path]:
    """`--dest-pool`: a pool name, or a directory inside a pool. (pool name, its directory) when
    `wanted` is a pool or a pool's own directory; (None, the directory) for a directory below
    one. Raises PathError (outside the pools) or storage-not-found (no such pool or directory)."""
    if wanted in roots.pools:
        return wanted, Path(roots.pools[wanted])
    if not wanted.startswith("/"):
        raise PathError(f"--dest-pool {wanted!r} is not a pool of this host",
                        f"use one of its pools: {', '.join(sorted(roots.pools)) or '(none configured)'}",
                        code=Reason.STORAGE_NOT_FOUND)
    directory = confine(wanted, roots.pools.values(), "--dest-pool")
    for name, path in roots.pools.items():
        if Path(os.path.realpath(path)) == directory:
            return name, Path(path)
    if not directory.is_dir():
        raise PathError(f"--dest-pool {wanted} is not an existing directory", "create it, or pick another",
                        code=Reason.STORAGE_NOT_FOUND)
    return None, directory


def disk_path(disk: DiskSpec, roots: Roots, what: str = "disk") -> Path:
    """Where a disk's image is on this host, confined."""
    if disk.path is not None:
        return confine(disk.path, roots.all(), f"{what} path")
    assert disk.pool is not None and disk.file is not None
    return in_pool(roots, disk.pool, disk.file, what)


def boot_paths(boot: BootSpec, roots: Roots) -> list[Path]:
    """[kernel, initrd?] of a kernel boot, confined: a file name is in the boot's pool (default
    "default"), an absolute path must be inside a pool or shared root."""
    out = []
    for what, value in (("kernel", boot.kernel), ("initrd", boot.initrd)):
        if value is None:
            continue
        if value.startswith("/"):
            out.append(confine(value, roots.all(), what))
        else:
            out.append(in_pool(roots, boot.pool or "default", value, what))
    return out


def check_spec(spec: VMSpec, roots: Roots) -> list[Path]:
    """Every file of a VM definition (disks, kernel and initrd), confined; their paths in order."""
    out = [disk_path(disk, roots, f"disk {i}") for i, disk in enumerate(spec.disks)]
    if spec.guest.boot is not None:
        out += boot_paths(spec.guest.boot, roots)
    return out
