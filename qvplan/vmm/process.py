"""One QEMU process: start it detached, reach it over QMP, re-attach to it later, stop it.

QEMU runs in its own session with its output in `run_dir/qemu.log`, so it outlives the agent that
started it; a new agent finds it again through `run_dir` (pidfile + QMP socket) with `attach()`.

Events: `proc.listener("STOP", "RESUME")` is qemu.qmp's listener context (each listener gets
its own copy of every event); `proc.events(...)` iterates one; `proc.wait_event(...)` waits for
one. Register a listener *before* the command that causes the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, ExecuteError, Message, QMPClient, QMPError

from .cmdline import CommandLine, RunPaths, build_command
from .errors import QemuError
from .guest import START_LINE, SWEEP_LINE, test_guest_image
from .host import qemu_binary
from .spec import VMSpec
from .taps import attach as attach_tap
from .taps import remove as remove_tap
from .taps import tap_name

# "2026-01-02T03:04:05.123456Z qemu-system-x86_64: " before each QEMU message (-msg timestamp=on)
_LOG_PREFIX = re.compile(r"^(\S+Z )?qemu-system-\w+: ")
CONNECT_TIMEOUT = 15.0  # QEMU under TCG on a loaded 2-core CI box can take a while
QUIT_TIMEOUT = 10.0


class QemuProcess:
    def __init__(self, spec: VMSpec, run_dir: Path, accel: str = "tcg",
                 pool_paths: Mapping[str, Path] | None = None, netns: str | None = None) -> None:
        self.spec = spec
        self.netns = netns  # run QEMU (and its taps) in this network namespace; None: our own
        self.paths = RunPaths(Path(run_dir).absolute())
        self.accel = accel
        self.pool_paths = dict(pool_paths or {})
        self.warnings: list[str] = []
        self._popen: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._qmp: QMPClient | None = None
        self._serial_pos = 0  # serial_markers() counts incrementally from here
        self._serial_count = 0

    # -- paths ---------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self.paths.run_dir

    @property
    def qmp_socket(self) -> Path:
        return self.paths.qmp_socket

    @property
    def serial_log(self) -> Path:
        return self.paths.serial_log

    @property
    def qemu_log(self) -> Path:
        return self.paths.qemu_log

    # -- lifecycle -----------------------------------------------------------------------

    def command_line(self, incoming: str | None = None, paused: bool = False) -> CommandLine:
        return build_command(self.spec, self.paths, accel=self.accel, pool_paths=self.pool_paths,
                             qemu=qemu_binary(), incoming=incoming, paused=paused)

    async def start(self, incoming: str | None = None, paused: bool = False) -> None:
        """Start QEMU (with `-incoming` / `-S` when asked) and connect QMP."""
        if self.is_alive():
            raise QemuError(f"VM {self.spec.name!r} is already running (pid {self.pid})", "stop it first")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (self.qmp_socket, self.paths.pidfile, self.serial_log):
            stale.unlink(missing_ok=True)
        self._serial_pos = self._serial_count = 0
        self.paths.spec_file.write_text(self.spec.model_dump_json(indent=2))
        if self.spec.guest.test is not None:
            test_guest_image(self.spec.guest.test, self.paths.guest_image)
        for disk in self.spec.disks:
            if not disk.resolve(self.pool_paths).exists():
                raise QemuError(f"disk {disk.resolve(self.pool_paths)} does not exist", "create it first")
        if self.spec.guest.boot is not None:
            for file in self.spec.guest.boot.resolve(self.pool_paths):
                if not file.is_file():
                    raise QemuError(f"boot file {file} does not exist",
                                    "put the kernel and initrd there (see guest.boot in the VM definition)")
        cmd = self.command_line(incoming, paused)
        self.warnings = cmd.warnings
        with open(self.qemu_log, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd.argv)}\n".encode())
            for warning in cmd.warnings:
                log.write(f"--- warning: {warning}\n".encode())
            log.flush()
            argv = ["ip", "netns", "exec", self.netns, *cmd.argv] if self.netns else cmd.argv
            self._popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           cwd=self.run_dir, start_new_session=True, close_fds=True)
        self._pid = self._popen.pid
        try:
            await self._connect(CONNECT_TIMEOUT)
            self._attach_taps()
        except BaseException:
            await self.stop(graceful=False)
            raise

    def _bridge_taps(self) -> list[tuple[str, str]]:
        """(tap, bridge) of each bridged NIC."""
        return [(tap_name(self.spec.name, i), nic.bridge) for i, nic in enumerate(self.spec.nics)
                if nic.type == "bridge" and nic.bridge]

    def _attach_taps(self) -> None:
        """QEMU made its taps before its monitor answered: join each to its bridge."""
        for tap, bridge in self._bridge_taps():
            attach_tap(tap, bridge, self.netns)

    async def attach(self, timeout: float = 5.0) -> None:
        """Re-attach to a QEMU started earlier (maybe by another process) from this run_dir."""
        pid = self._read_pidfile()
        if pid is None or not _pid_alive(pid, self.paths.pidfile):
            raise QemuError(f"VM {self.spec.name!r} is not running (no live QEMU for {self.paths.pidfile})",
                            "start it instead")
        self._pid = pid
        self._popen = None
        await self._connect(timeout)

    async def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.is_alive():
                raise QemuError(f"QEMU for {self.spec.name!r} exited: {self._log_tail()}",
                                f"see {self.qemu_log}")
            if self.qmp_socket.exists():
                client = QMPClient(self.spec.name)
                try:
                    await asyncio.wait_for(client.connect(str(self.qmp_socket)), max(0.5, deadline - time.monotonic()))
                    self._qmp = client
                    return
                except (TimeoutError, QMPError, OSError) as err:
                    last = err
                    with contextlib.suppress(Exception):
                        await client.disconnect()
            await asyncio.sleep(0.05)
        raise QemuError(f"cannot reach QMP of {self.spec.name!r} at {self.qmp_socket}: {last or 'no socket'}",
                        "is another client connected? see " + str(self.qemu_log))

    async def stop(self, graceful: bool = True, timeout: float = QUIT_TIMEOUT) -> None:
        """QMP `quit` (when graceful) and wait; SIGKILL if it does not go."""
        if self.is_alive() and graceful:
            if self._qmp is not None:
                with contextlib.suppress(QMPError, OSError, TimeoutError, EOFError):
                    await asyncio.wait_for(self._qmp.execute("quit"), timeout)
            else:
                self._signal(signal.SIGTERM)
            await self._wait_exit(timeout)
        if self.is_alive():
            self._signal(signal.SIGKILL)
            await self._wait_exit(5.0)
        await self.disconnect()
        if not self.is_alive():
            self.qmp_socket.unlink(missing_ok=True)
            self.paths.pidfile.unlink(missing_ok=True)
            for tap, _ in self._bridge_taps():
                remove_tap(tap, self.netns)

    async def disconnect(self) -> None:
        """Drop the QMP connection, leaving QEMU running."""
        client, self._qmp = self._qmp, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()

    def _signal(self, sig: int) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def _wait_exit(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # -- state ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._pid if self._pid is not None else self._read_pidfile()

    def is_alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        pid = self.pid
        return pid is not None and _pid_alive(pid, self.paths.pidfile)

    def _read_pidfile(self) -> int | None:
        try:
            return int(self.paths.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _log_tail(self) -> str:
        try:
            lines = [line for line in self.qemu_log.read_text(errors="replace").splitlines()
                     if line.strip() and not line.startswith("---")]
        except OSError:
            return "no log"
        return _LOG_PREFIX.sub("", lines[-1]) if lines else "no output"

    # -- QMP -----------------------------------------------------------------------------

    @property
    def qmp(self) -> QMPClient:
        if self._qmp is None:
            raise QemuError(f"not connected to QMP of {self.spec.name!r}", "start() or attach() first")
        return self._qmp

    async def execute(self, cmd: str, args: Mapping[str, object] | None = None) -> Any:
        """Run a QMP command; a QMP error becomes a `QemuError`."""
        try:
            return await self.qmp.execute(cmd, args)
        except ExecuteError as err:
            raise QemuError(f"QMP {cmd} failed on {self.spec.name!r}: {err.error.desc}") from err

    def listener(self, *names: str) -> contextlib.AbstractContextManager[EventListener]:
        """`with proc.listener("STOP") as l: ...; await l.get()` — qemu.qmp's listener context."""
        return self.qmp.listener(names or None)

    async def events(self, *names: str) -> AsyncIterator[Message]:
        """Iterate events (all, or only `names`) from now on, until the caller stops."""
        with self.listener(*names) as listener:
            async for event in listener:
                yield event

    async def wait_event(self, *names: str, timeout: float = 30.0) -> Message:
        """Wait for the next of `names`; register with `listener()` first if the trigger is yours."""
        with self.listener(*names) as listener:
            return await asyncio.wait_for(listener.get(), timeout)

    # -- serial --------------------------------------------------------------------------

    def serial_markers(self) -> int:
        """How many "QVG SWEEP" lines the test guest has written since this QEMU started."""
        try:
            with open(self.serial_log, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._serial_pos:  # a new QEMU truncated the log
                    self._serial_pos = self._serial_count = 0
                f.seek(self._serial_pos)
                chunk = f.read()
        except FileNotFoundError:
            return 0
        complete = chunk[:chunk.rfind(b"\n") + 1]  # count whole lines only
        self._serial_count += complete.count(SWEEP_LINE)
        self._serial_pos += len(complete)
        return self._serial_count

    def serial_started(self) -> bool:
        """Has the test guest finished filling its working set (its "QVG START" line)?"""
        try:
            with open(self.serial_log, "rb") as f:
                return START_LINE in f.read(4096)
        except FileNotFoundError:
            return False

    async def wait_markers(self, more_than: int = 0, timeout: float = 30.0) -> int:
        """Wait until the guest has written more than `more_than` sweep markers; returns the count."""
        deadline = time.monotonic() + timeout
        while (count := self.serial_markers()) <= more_than:
            if time.monotonic() > deadline:
                raise QemuError(f"VM {self.spec.name!r}: serial markers stuck at {count} for {timeout:.0f}s",
                                f"see {self.serial_log} and {self.qemu_log}")
            if not self.is_alive():
                raise QemuError(f"QEMU for {self.spec.name!r} exited: {self._log_tail()}", f"see {self.qemu_log}")
            await asyncio.sleep(0.05)
        return count


def _pid_alive(pid: int, pidfile: Path) -> bool:
    """Is `pid` a live (not zombie) QEMU that owns `pidfile`? Guards against pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and str(pidfile).encode() in cmdline
