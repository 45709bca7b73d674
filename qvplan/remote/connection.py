"""One SSH connection to one host: run commands, copy files, and talk to the agent API through it.

The agent's control API is a Unix socket on the host (`control:` of the inventory, the agent's
`[api] socket`), root's and the quantavirt group's. We reach it by forwarding a Unix socket in a
private (0700) temp dir here to that socket over the SSH connection (the SSH user's credentials
are what the agent checks), and talk to it with the agent client (qvplan/agent/client.py) over
that socket — so no TCP port is opened on either side that other local users could use, and SSE
streams work as they do locally.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from ..agent.client import AgentUnreachable, AsyncAgentClient
from ..inventory import HostTarget
from .errors import HostUnreachable, RemoteCommandError

FIX_AGENT = "start it with `quantavirt agent` on the host (or let qvplan provision it)"


@dataclass(frozen=True)
class RunResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def describe_ssh_error(err: BaseException, target: HostTarget) -> str:
    """A short reason for a failed SSH connect, without a traceback."""
    if isinstance(err, asyncssh.HostKeyNotVerifiable):
        return f"host key not verifiable against {target.ssh.known_hosts or '~/.ssh/known_hosts'}"
    if isinstance(err, asyncssh.PermissionDenied):
        return f"authentication failed for {target.ssh.user} (key {target.ssh.key or 'default'})"
    if isinstance(err, TimeoutError):
        return f"timed out after {target.ssh.connect_timeout:g}s"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, OSError):
        return err.strerror or str(err) or type(err).__name__
    if isinstance(err, asyncssh.Error):
        return err.reason or type(err).__name__
    return str(err) or type(err).__name__


class HostConnection:
    """An SSH connection to `target` (use `async with`, or `connect()` / `close()`)."""

    def __init__(self, target: HostTarget) -> None:
        self.target = target
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sock_dir: Path | None = None
        self._forward: asyncssh.SSHListener | None = None
        self._agent: AsyncAgentClient | None = None
        self._agent_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def alive(self) -> bool:
        """Is the SSH connection still up? (A dropped one is replaced, never reused.)"""
        return self._conn is not None and not self._conn.is_closed()

    @property
    def ssh(self) -> asyncssh.SSHClientConnection:
        if self._conn is None:
            raise RuntimeError(f"{self.name}: not connected")
        return self._conn

    async def __aenter__(self) -> HostConnection:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> HostConnection:
        t, opts = self.target, self.target.ssh
        kwargs: dict[str, Any] = {
            "username": opts.user, "port": opts.port,
            "connect_timeout": opts.connect_timeout,
            "keepalive_interval": 15, "keepalive_count_max": 3,
            "config": [],  # never pick up ~/.ssh/config: the inventory says it all
        }
        if opts.key:
            kwargs["client_keys"] = [opts.key]
            kwargs["agent_path"] = None
        if not opts.host_key_checking:
            kwargs["known_hosts"] = None
        elif opts.known_hosts:
            kwargs["known_hosts"] = opts.known_hosts
        try:
            self._conn = await asyncio.wait_for(asyncssh.connect(t.address, **kwargs),
                                                opts.connect_timeout + 1)
        except (TimeoutError, OSError, asyncssh.Error) as err:
            raise HostUnreachable(
                f"{t.name} ({t.ssh_address}): SSH connect failed: {describe_ssh_error(err, t)}",
                "check the address, that sshd runs there, and ssh user/key/known_hosts") from None
        return self

    async def reset_agent(self) -> None:
        """Forget the agent client and its forward (the next call makes new ones): for an agent
        stream that broke while the SSH connection itself stayed up."""
        if self._agent is not None:
            await self._agent.close()
            self._agent = None
        if self._forward is not None:
            self._forward.close()
            self._forward = None
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
            self._sock_dir = None

    async def close(self) -> None:
        await self.reset_agent()
        if self._conn is not None:
            self._conn.close()
            try:
                await asyncio.wait_for(self._conn.wait_closed(), 5)
            except (TimeoutError, OSError):
                pass
            self._conn = None

    # -- commands and files ------------------------------------------------------------------

    async def run(self, command: str | Sequence[str], *, check: bool = False, timeout: float | None = 60,
                  input: str | None = None) -> RunResult:
        """Run a shell command (a string, or an argv that gets quoted) and collect its output."""
        cmd = command if isinstance(command, str) else shlex.join(command)
        try:
            proc = await self.ssh.run(cmd, check=False, timeout=timeout, input=input)
        except asyncssh.TimeoutError:
            raise RemoteCommandError(f"{self.name}: `{cmd}` timed out after {timeout:g}s") from None
        except (OSError, asyncssh.Error) as err:
            raise RemoteCommandError(f"{self.name}: `{cmd}` failed: {describe_ssh_error(err, self.target)}") \
                from None
        result = RunResult(cmd, proc.exit_status if proc.exit_status is not None else -1,
                           _text(proc.stdout), _text(proc.stderr))
        if check and not result.ok:
            last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or [""]
            raise RemoteCommandError(f"{self.name}: `{cmd}` exited {result.exit_status}: {last[0]}")
        return result

    async def put(self, local: Sequence[str | Path], remote_dir: str) -> None:
        """Copy local files into `remote_dir` (created if missing) over SFTP."""
        async with self.ssh.start_sftp_client() as sftp:
            await sftp.makedirs(remote_dir, exist_ok=True)
            await sftp.put([str(p) for p in local], remote_dir)

    async def write_file(self, remote_path: str, text: str, mode: int = 0o644) -> None:
        async with self.ssh.start_sftp_client() as sftp:
            parent = str(Path(remote_path).parent)
            await sftp.makedirs(parent, exist_ok=True)
            async with sftp.open(remote_path, "w") as f:
                await f.write(text)
            await sftp.chmod(remote_path, mode)

    # -- the agent API -----------------------------------------------------------------------

    async def agent(self) -> AsyncAgentClient:
        """The agent API client, through a Unix socket that this SSH connection forwards."""
        async with self._agent_lock:  # callers at once share one forward
            if self._agent is None:
                await self._open_agent()
        assert self._agent is not None
        return self._agent

    async def _open_agent(self) -> None:
        self._sock_dir = Path(tempfile.mkdtemp(prefix="qvssh-"))  # mode 0700
        sock = self._sock_dir / "api.sock"
        try:
            self._forward = await self.ssh.forward_local_path(str(sock), self.target.control)
        except (OSError, asyncssh.Error) as err:
            raise AgentUnreachable(f"{self.name}: cannot forward the agent's control socket "
                                   f"{self.target.control}: {describe_ssh_error(err, self.target)}",
                                   FIX_AGENT) from None
        self._agent = AsyncAgentClient(self.target.control, unix=str(sock), name=self.name,
                                       route=" (through SSH)", fix=FIX_AGENT)

    async def api(self, method: str, path: str, json: Any = None, *, timeout: float = 30.0) -> Any:
        """Call the agent API (`/api/v1/host` or just `host`) and return the decoded JSON."""
        return await (await self.agent()).request(method, path, json, timeout=timeout)

    async def events(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """Server-sent events of an API stream (e.g. `vms/web-01/migrate/events`), one dict each."""
        async for event in (await self.agent()).events(path):
            yield event


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
