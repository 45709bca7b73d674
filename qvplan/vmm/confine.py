"""How a QEMU is confined: a seccomp sandbox always, and its own unprivileged user under a root agent.

Every QEMU gets `-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny`:
even a caller who reaches its monitor cannot make it run a program (`migrate "exec:..."` dies in
the sandbox), gain privileges or change its resource limits.

A root agent also starts QEMU as the system user `quantavirt-qemu` (`make setup` and provisioning
create it). QEMU 7.2's `-runas` switches user *after* the sandbox is in place, which
`elevateprivileges=deny` forbids (QEMU is killed by SIGSYS), so the agent switches user itself
before exec instead. That user can reach only what the agent hands it:

- the VM's run directory, `root:quantavirt-qemu` mode 1770: QEMU creates its sockets, pidfile and
  serial log there, and the sticky bit stops it from replacing the agent's own files (qemu.log,
  spec.json). QEMU runs with the run directory as its working directory and sees the files in it
  by relative name (`qemu_path`), so no directory above it needs to be open to that user;
- its taps, created by the agent (as root, in the VM host's namespace) and passed as fds
  (`-netdev tap,fd=N`): creating a tap needs CAP_NET_ADMIN;
- a kernel and initrd (`-kernel`, `-initrd`: QEMU reads them with fopen, no fd sets), copied
  into the run directory;
- the pidfile, written by the agent (QEMU's own `-pidfile` resolves the full path);
- its disks, opened by the agent and passed as file descriptors (`-add-fd` + `/dev/fdset/N`):
  QEMU needs no access to the pools at all, and never opens a path of its own choosing;
- `/dev/kvm`, through the device's group (`kvm` on Debian) as QEMU's one supplementary group,
  when the agent found KVM working and the device grants its group read and write. Otherwise
  that user cannot open it, and the agent runs its guests under TCG instead.

An unprivileged agent cannot switch user: its QEMU keeps the agent's user, in the sandbox.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import QemuError

QEMU_USER = "quantavirt-qemu"
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
RUN_DIR_MODE = 0o1770  # root:qemu-group, sticky: QEMU adds files, cannot replace the agent's
USERADD = f"useradd --system --no-create-home --shell /usr/sbin/nologin {QEMU_USER}"
KVM_DEVICE = "/dev/kvm"


class ConfinementError(QemuError):
    """QEMU cannot be confined as asked."""

    reason_code = code = "qemu-confinement"


@functools.cache
def sandbox_supported(qemu: str) -> bool:
    """Is QEMU built with seccomp? Without it `-sandbox` is refused while the options are parsed,
    before `-version` is reached; with it, `-version` answers."""
    try:
        done = subprocess.run([qemu, "-sandbox", "on", "-version"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@dataclass(frozen=True)
class Confinement:
    """What a QEMU runs under: `uid`/`gid` None means the agent's own user (no switch)."""

    sandbox: bool = True
    user: str | None = None
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()  # supplementary groups QEMU keeps (the KVM device's)
    kvm: bool = False  # QEMU under this confinement can open /dev/kvm

    @classmethod
    def for_agent(cls, user: str = QEMU_USER, kvm: bool = False, device: str = KVM_DEVICE) -> Confinement:
        """Sandbox always; under a root agent also the unprivileged user, which must exist.
        `kvm`: the agent found KVM working (vmm.host.detect_accel); QEMU keeps it only where its
        user can reach `device` through the device's group."""
        if os.geteuid() != 0:
            return cls(kvm=kvm)  # QEMU keeps the agent's user, which the detection ran as
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise ConfinementError(f"the unprivileged QEMU user {user!r} does not exist",
                                   f"run make setup, or create it: {USERADD}") from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise ConfinementError(f"the QEMU user {user!r} has uid or gid 0", "make it an unprivileged system user")
        group = device_group(device) if kvm else None
        return cls(user=user, uid=entry.pw_uid, gid=entry.pw_gid, groups=(group,) if group is not None else (),
                   kvm=group is not None)

    @property
    def switches_user(self) -> bool:
        return self.uid is not None

    def launch(self, argv: list[str], netns: str | None = None,
               taps: Sequence[tuple[str, int]] = ()) -> tuple[list[str], dict[str, Any]]:
        """(argv, extra Popen arguments) to start QEMU, in network namespace `netns` if given,
        with the tap devices `taps` (name, fd) opened for it (see `tap_fds`). Entering a namespace
        and creating taps need root: then `ip netns exec` and the tap opener run as root and
        `setpriv` drops to QEMU's user just before QEMU (fds, working directory and umask carry
        through)."""
        if netns is None and not taps:
            return argv, self.popen_args()
        prefix = ["ip", "netns", "exec", netns] if netns else []
        if taps:
            prefix += [sys.executable, "-c", TAP_OPENER, *(f"{name}:{fd}" for name, fd in taps), "--"]
        if self.switches_user:
            groups = f"--groups={','.join(map(str, self.groups))}" if self.groups else "--clear-groups"
            prefix += ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", groups, "--"]
        return [*prefix, *argv], {"umask": 0o077}

    def popen_args(self) -> dict[str, Any]:
        """Extra `subprocess.Popen` arguments: the user switch happens after the chdir into the
        run directory and before exec; files QEMU creates are private (umask 077)."""
        args: dict[str, Any] = {"umask": 0o077}
        if self.switches_user:
            args.update(user=self.uid, group=self.gid, extra_groups=list(self.groups))
        return args

    def prepare_run_dir(self, run_dir: Path) -> None:
        """The run directory QEMU works in: root-owned, group = QEMU's, sticky, nothing for others."""
        if self.switches_user:
            os.chown(run_dir, 0, self.gid)
            os.chmod(run_dir, RUN_DIR_MODE)
        else:
            os.chmod(run_dir, 0o700)

    def sweep(self, run_dir: Path) -> None:
        """Before a QEMU starts (none runs): remove whatever an earlier one left in its run dir.
        A QEMU taken over by its guest could have planted symlinks named like files the agent
        writes there later (`testguest.img.tmp`, ...); the agent must never follow them as root."""
        if not self.switches_user:
            return
        for entry in run_dir.iterdir():
            st = entry.lstat()
            if st.st_uid != os.geteuid():
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def share(self, path: Path) -> None:
        """A file or socket the agent made that QEMU must open (a unix socket QEMU connects to)."""
        if self.switches_user:
            os.chown(path, 0, self.gid)
            os.chmod(path, 0o660)


def device_group(path: str) -> int | None:
    """The group through which an unprivileged user may read and write device `path`: its own
    group, when the mode grants that group rw and the group is not root's; else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    granted = st.st_mode & (stat.S_IRGRP | stat.S_IWGRP) == stat.S_IRGRP | stat.S_IWGRP
    return st.st_gid if stat.S_ISCHR(st.st_mode) and granted and st.st_gid != 0 else None


def sandbox_args(qemu: str) -> list[str]:
    if not sandbox_supported(qemu):
        raise ConfinementError(f"{qemu} has no seccomp sandbox (-sandbox is not compiled in)",
                               "install a QEMU built with seccomp (Debian's qemu-system-x86 is)")
    return ["-sandbox", SANDBOX]


def qemu_path(run_dir: Path, path: Path | str) -> str:
    """A path as the VM's QEMU must be given it: a file in its run directory by relative name
    (QEMU's working directory), anything else unchanged."""
    path = Path(path)
    with contextlib.suppress(ValueError):
        return str(path.relative_to(run_dir))
    return str(path)


@dataclass
class PassedFiles:
    """Disk images the agent opened for QEMU: `-add-fd` arguments and the fds to inherit."""

    argv: list[str]
    fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def pass_disks(argv: list[str], run_dir: Path) -> PassedFiles:
    """Rewrite every `-blockdev` file node of `argv` to `/dev/fdset/N`, its image opened here
    (O_RDWR and O_RDONLY, QEMU picks the one whose access mode it needs; O_NOFOLLOW: a disk that
    is a symlink is refused). Relative file names are inside `run_dir`."""
    out = PassedFiles([])
    try:
        args = iter(argv)
        for arg in args:
            if arg != "-blockdev":
                out.argv.append(arg)
                continue
            node = json.loads(next(args))
            file = node.get("file")
            if isinstance(file, dict) and file.get("driver") == "file":
                fdset = len(out.fds) // 2 + 1
                path = run_dir / file["filename"]
                for flags in (os.O_RDWR, os.O_RDONLY):
                    try:
                        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
                    except OSError as err:
                        raise ConfinementError(f"cannot open disk {path}: {err.strerror}",
                                               "check the disk file exists and is not a symlink") from None
                    out.fds.append(fd)
                    out.argv += ["-add-fd", f"fd={fd},set={fdset},opaque={_opaque(path)}"]
                file["filename"] = f"/dev/fdset/{fdset}"
            out.argv += ["-blockdev", json.dumps(node)]
    except BaseException:
        out.close()
        raise
    return out


BOOT_FILES = {"-kernel": "boot-kernel", "-initrd": "boot-initrd"}


def boot_files_in_run_dir(argv: list[str], run_dir: Path, conf: Confinement) -> list[str]:
    """QEMU reads `-kernel`/`-initrd` with plain fopen() (no fd sets): for a QEMU of its own user,
    copy them into its run directory (root:qemu 0640) and give them by relative name."""
    if not conf.switches_user:
        return argv
    out, args = [], iter(argv)
    for arg in args:
        out.append(arg)
        if arg in BOOT_FILES:
            source, name = Path(next(args)), BOOT_FILES[arg]
            dest = run_dir / name
            dest.unlink(missing_ok=True)
            with open(source, "rb") as src, \
                    open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.chown(dest, 0, conf.gid)
            os.chmod(dest, 0o640)  # the agent's umask (077) took the group's read bit at create
            out.append(name)
    return out


# Run as root (in the VM host's namespace, where a tap must be created): create each tap with
# TUNSETIFF (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, not persistent: it goes with its last holder,
# QEMU) at the given fd, then exec the rest of the command line.
TAP_OPENER = """
import fcntl, os, struct, sys
cut = sys.argv.index("--")
for spec in sys.argv[1:cut]:
    name, fd = spec.rsplit(":", 1)
    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, 0x400454CA, struct.pack("16sH", name.encode(), 0x0002 | 0x1000 | 0x4000))
    os.dup2(tun, int(fd))
    os.close(tun)
os.execvp(sys.argv[cut + 1], sys.argv[cut + 1:])
"""


def tap_fds(argv: list[str], conf: Confinement, above: int) -> tuple[list[str], list[tuple[str, int]]]:
    """A QEMU of its own user cannot create a tap (CAP_NET_ADMIN): rewrite each
    `-netdev tap,...,ifname=NAME,...` to `tap,...,fd=N`, N above `above` (the fds already
    passed), for `launch` to open NAME there as root."""
    if not conf.switches_user:
        return argv, []
    out, taps, args = [], [], iter(argv)
    for arg in args:
        out.append(arg)
        if arg == "-netdev":
            value = next(args)
            kind, *opts = value.split(",")
            names = [o.split("=", 1)[1] for o in opts if o.startswith("ifname=")]
            if kind == "tap" and names:
                fd = above + 64 + len(taps)  # clear of the fds a starting interpreter uses
                taps.append((names[0], fd))
                kept = [o for o in opts if o.split("=", 1)[0] not in ("ifname", "script", "downscript")]
                value = ",".join([kind, *kept, f"fd={fd}"])
            out.append(value)
    return out, taps


def without_pidfile(argv: list[str]) -> list[str]:
    """`argv` without `-pidfile`: QEMU resolves that path with realpath(), which needs every
    directory above the run dir open to its user. The agent writes the pidfile itself."""
    out, args = [], iter(argv)
    for arg in args:
        if arg == "-pidfile":
            next(args)
        else:
            out.append(arg)
    return out


def _opaque(path: Path) -> str:
    return str(path).replace(",", ",,")

