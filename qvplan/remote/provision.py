"""Make sure a host runs a `quantavirt agent` of our version: install, configure, start, verify.

Install = upload the local wheelhouse over SFTP into a fresh private directory and install it
into a venv on the host with `pip install --no-index --require-hashes` against hashes computed
here (works offline; never falls back to an index: a host that cannot use these wheels is told
so). Start = a systemd unit where systemd runs, else a detached process whose pid is recorded
next to the venv.
"""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass

from .. import __version__
from ..agent.client import AgentError, AgentUnreachable
from ..contract.ports import CONTROL_GROUP
from ..vmm.confine import QEMU_USER, USERADD
from . import hashes
from .connection import HostConnection
from .errors import ProvisionError, RemoteError
from .wheelhouse import wheelhouse

UNIT_NAME = "quantavirt-agent.service"


@dataclass(frozen=True)
class ProvisionOptions:
    """Where the agent goes on a host. The defaults are the production layout."""

    prefix: str = "/opt/quantavirt"                        # venv, wheelhouse, pid and log
    config: str = "/etc/quantavirt/quantavirt.conf"        # written only if missing
    state_dir: str | None = None                           # None: the agent's default
    python: str = "python3"                                # the host's interpreter for the venv
    use_systemd: bool | None = None                        # None: when systemd is PID 1 and running
    start_timeout: float = 30.0

    @property
    def venv(self) -> str:
        return f"{self.prefix}/venv"

    @property
    def quantavirt(self) -> str:
        return f"{self.venv}/bin/quantavirt"


@dataclass
class AgentStatus:
    host: str
    version: str
    installed: bool = False   # we installed the package this time
    configured: bool = False  # we wrote the config this time
    started: bool = False     # we started the agent this time


def default_config(conn: HostConnection, opts: ProvisionOptions) -> str:
    """The agent config qvplan writes on a host that has none (from the agent's own model)."""
    from ..host.config import AgentConfig

    t = conn.target
    return AgentConfig.model_validate({
        "host": {"name": t.name, "state_dir": opts.state_dir},
        "api": {"listen": t.api, "socket": t.control},
        "migration": {"advertise": t.migration_address, "pqc_required": True},
    }).to_toml()


async def running_version(conn: HostConnection) -> str | None:
    """The version of the agent answering on the host's API, or None when none answers."""
    try:
        host = await conn.api("GET", "host", timeout=10)
    except AgentUnreachable:
        return None
    return str(host.get("version")) if isinstance(host, dict) else None


async def installed_version(conn: HostConnection, opts: ProvisionOptions) -> str | None:
    res = await conn.run(f"{shlex.quote(opts.quantavirt)} --version", timeout=30)
    return (res.stdout.strip() or None) if res.ok else None


async def install(conn: HostConnection, opts: ProvisionOptions) -> None:
    """Upload the wheelhouse and install qvplan into `opts.venv` on the host."""
    venv = shlex.quote(opts.venv)
    # --without-pip: no ensurepip needed on the host (Debian splits it out); pip runs from its wheel.
    made = await conn.run(f"{shlex.quote(opts.python)} -m venv --without-pip {venv}", timeout=120)
    if not made.ok:
        last = (made.stderr.strip() or made.stdout.strip()).splitlines()[-1:] or ["?"]
        raise ProvisionError(f"{conn.name}: cannot create a venv with {opts.python}: {last[0]}",
                             "install Python 3.11+ with venv on the host or set the python to use")
    wheels = await asyncio.to_thread(wheelhouse)
    reqs = await asyncio.to_thread(hashes.requirements, wheels)
    pins = await asyncio.to_thread(hashes.checksums, wheels)
    # A fresh private directory every time (mktemp -d: 0700, unpredictable): nothing left from
    # an earlier upload, and no other user can swap a wheel between upload and install.
    made_dir = await conn.run("umask 077 && mktemp -d /tmp/qvplan-wheels.XXXXXXXXXX", check=True)
    remote_wh = made_dir.stdout.strip()
    if not remote_wh.startswith("/tmp/qvplan-wheels."):
        raise ProvisionError(f"{conn.name}: mktemp answered {remote_wh!r}", "check mktemp on the host")
    wh = shlex.quote(remote_wh)
    try:
        await conn.put(wheels, remote_wh)
        await conn.write_file(f"{remote_wh}/requirements.txt", reqs, mode=0o600)
        await conn.write_file(f"{remote_wh}/qvplan.txt", reqs.splitlines()[0] + "\n", mode=0o600)
        await conn.write_file(f"{remote_wh}/SHA256SUMS", pins, mode=0o600)
        pip_whl = next(w.name for w in wheels if w.name.startswith("pip-"))
        pip = (f"{venv}/bin/python {wh}/{shlex.quote(pip_whl)}/pip install -q --disable-pip-version-check "
               f"--no-index --require-hashes --find-links {wh}")
        # pip runs from its wheel before it can check anything: check every wheel's hash first.
        done = await conn.run(f"cd {wh} && sha256sum -c --quiet --strict SHA256SUMS && "
                              f"{pip} --force-reinstall --no-deps -r {wh}/qvplan.txt && "
                              f"{pip} -r {wh}/requirements.txt", timeout=600)
    finally:
        await conn.run(f"rm -rf {wh}", timeout=60)
    if not done.ok:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["?"]
        raise ProvisionError(f"{conn.name}: installing qvplan {__version__} into {opts.venv} failed: {last[0]}",
                             f"the host needs the controller's Python minor version ({opts.python}) with venv; "
                             "wheels are installed only from the uploaded, hash-checked set")


async def _ensure_as_root(conn: HostConnection, present: str, create: str, what: str) -> None:
    """Run `create` on a root host where `present` fails (idempotent); a non-root agent needs neither."""
    done = await conn.run(["sh", "-c", f'[ "$(id -u)" != 0 ] || {present} >/dev/null || {create}'], timeout=60)
    if not done.ok:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["?"]
        raise ProvisionError(f"{conn.name}: cannot create {what}: {last[0]}", f"create it on the host: {create}")


async def ensure_qemu_user(conn: HostConnection) -> None:
    """A root agent runs QEMU as the unprivileged QEMU_USER: create it when missing.
    A non-root agent keeps QEMU under its own user and needs none."""
    await _ensure_as_root(conn, f"getent passwd {QEMU_USER}", USERADD, f"the QEMU user {QEMU_USER}")


async def ensure_api_group(conn: HostConnection) -> None:
    """The control socket's group (members may steer the agent): create it when missing."""
    await _ensure_as_root(conn, f"getent group {CONTROL_GROUP}", f"groupadd --system {CONTROL_GROUP}",
                          f"the group {CONTROL_GROUP}")


async def systemd_available(conn: HostConnection) -> bool:
    res = await conn.run("test -d /run/systemd/system && systemctl is-system-running", timeout=15)
    return res.stdout.strip() in ("running", "degraded", "starting")


def unit_text(opts: ProvisionOptions) -> str:
    return (
        "[Unit]\nDescription=QuantaVirt host agent\nAfter=network-online.target\n\n"
        f"[Service]\nExecStart={opts.quantavirt} --config {opts.config} agent\n"
        "Restart=on-failure\nKillMode=process\n\n[Install]\nWantedBy=multi-user.target\n"
    )


async def start_agent(conn: HostConnection, opts: ProvisionOptions) -> bool:
    """Start the agent: systemd unit when systemd runs, else a detached process (pid recorded).
    Returns True when detached (pid in PREFIX/agent.pid)."""
    use_systemd = opts.use_systemd if opts.use_systemd is not None else await systemd_available(conn)
    if use_systemd:
        await conn.write_file(f"/etc/systemd/system/{UNIT_NAME}", unit_text(opts))
        await conn.run(f"systemctl daemon-reload && systemctl enable --now {UNIT_NAME} && "
                       f"systemctl restart {UNIT_NAME}", check=True, timeout=60)
        return False
    # KillMode=process above and start_new_session here: VMs (QEMU) outlive agent restarts.
    argv = [opts.quantavirt, "--config", opts.config, "agent"]
    launcher = (
        "import os, subprocess, sys\n"
        "os.umask(0o077)\n"
        "log = open(sys.argv[1], 'ab')\n"
        "os.chmod(sys.argv[1], 0o600)\n"
        "p = subprocess.Popen(sys.argv[3:], stdin=subprocess.DEVNULL, stdout=log, stderr=log,"
        " start_new_session=True)\n"
        "open(sys.argv[2], 'w').write(str(p.pid))\n"
    )
    await conn.run([f"{opts.venv}/bin/python", "-c", launcher, f"{opts.prefix}/agent.log",
                    f"{opts.prefix}/agent.pid", *argv], check=True, timeout=30)
    return True


async def stop_agent(conn: HostConnection, opts: ProvisionOptions) -> None:
    """Stop an agent we started detached (by its recorded pid); VMs keep running."""
    pidfile = shlex.quote(f"{opts.prefix}/agent.pid")
    await conn.run(f"test -f {pidfile} && kill $(cat {pidfile}) 2>/dev/null; rm -f {pidfile}", timeout=15)
    for _ in range(50):
        if await running_version(conn) is None:
            return
        await asyncio.sleep(0.2)


async def wait_agent(conn: HostConnection, opts: ProvisionOptions, detached: bool) -> str:
    """Wait for the agent's API; a detached agent that exits is reported at once, with its log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + opts.start_timeout
    log = f"{opts.prefix}/agent.log"
    pidfile = shlex.quote(f"{opts.prefix}/agent.pid")
    while True:
        version = await running_version(conn)
        if version is not None:
            return version
        exited = detached and not (await conn.run(f"kill -0 $(cat {pidfile})", timeout=10)).ok
        if exited or loop.time() > deadline:
            tail = await conn.run(f"tail -n 3 {shlex.quote(log)} 2>/dev/null", timeout=10)
            last = tail.stdout.strip().splitlines()[-1:] or ["no log"]
            why = "exited" if exited else f"did not answer within {opts.start_timeout:g}s"
            raise ProvisionError(f"{conn.name}: the agent {why}: {last[0]}",
                                 f"see {log if detached else 'journalctl -u ' + UNIT_NAME} on the host")
        await asyncio.sleep(0.3)


async def ensure_agent(conn: HostConnection, opts: ProvisionOptions | None = None) -> AgentStatus:
    """Check that the host runs an agent of our version; install/configure/start it if not."""
    opts = opts or ProvisionOptions()
    status = AgentStatus(conn.name, __version__)
    running = await running_version(conn)
    if running == __version__:
        return status
    try:
        if running is not None:
            await stop_agent(conn, opts)
            if (now := await running_version(conn)) is not None:
                raise ProvisionError(f"{conn.name}: an agent of version {now} runs and is not ours to stop",
                                     f"stop it on the host, then rerun (we need {__version__})")
        if await installed_version(conn, opts) != __version__:
            await install(conn, opts)
            status.installed = True
        if not (await conn.run(["test", "-e", opts.config])).ok:
            await conn.write_file(opts.config, default_config(conn, opts))
            status.configured = True
        await ensure_qemu_user(conn)
        await ensure_api_group(conn)
        detached = await start_agent(conn, opts)
        status.started = True
        await wait_agent(conn, opts, detached)
    except ProvisionError:
        raise
    except (RemoteError, AgentError) as err:
        raise ProvisionError(f"{conn.name}: provisioning failed: {err.cause}", err.fix) from None
    return status
