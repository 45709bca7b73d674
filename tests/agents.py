"""Real `quantavirt agent` processes on loopback addresses, for integration tests.

Each agent gets its own config, state directory, API port and migration port, on its own
127.0.0.x address, so two of them are two hosts as far as migration is concerned, and its own
control socket in its own directory (short, under /tmp: a Unix socket path has 107 bytes), which
`client` and `api` use: they can do everything, as root on the control socket can.
`read_only` is the spec's TCP API (GETs only).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qvplan.agent.client import AgentClient, AgentError, AgentUnreachable
from qvplan.host.config import AgentConfig

QUANTAVIRT = [sys.executable, "-m", "qvplan.cli.quantavirt"]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


ApiError = AgentError  # what a test catches when the agent refuses: .status, .code, .cause, .fix


@dataclass
class AgentProc:
    name: str
    address: str
    root: Path
    api_port: int
    mig_port: int
    memory: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    log_level: str = "debug"
    control_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qv-ctl-")))
    api_extra: dict[str, Any] = field(default_factory=dict)  # more [api] keys (e.g. allow_monitor)
    pools: dict[str, str] = field(default_factory=dict)  # more storage pools (e.g. one path shared by two agents)

    def __post_init__(self) -> None:
        # Others may walk to the socket (not list the dir): the socket's own mode and the agent's
        # credential check are what keep them out, as in /run/quantavirt.
        self.control_dir.chmod(0o711)
        self.env.setdefault("QUANTAVIRT_TEST_ROUTES", "1")  # the tests' narrow disk routes (agent/testroutes.py)

    @property
    def socket(self) -> Path:
        return self.control_dir / "quantavirt" / "api.sock"  # its folder made by the agent, as /run/quantavirt

    @property
    def config(self) -> Path:
        return self.root / "quantavirt.conf"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def migration(self) -> str:
        return f"{self.address}:{self.mig_port}"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(AgentConfig.model_validate({
            "host": {"name": self.name, "state_dir": str(self.state), "memory": self.memory},
            "api": {"listen": f"{self.address}:{self.api_port}", "socket": str(self.socket), **self.api_extra},
            "migration": {"listen": self.migration, "pqc_required": True},
            "storage": {"pools": {"default": str(self.root / "images"), **self.pools}},
        }).to_toml())

    def start(self, timeout: float = 30) -> AgentProc:
        self.write_config()
        log = open(self.root / "agent.log", "ab")  # noqa: SIM115 - lives as long as the process
        command = [*QUANTAVIRT, "--config", str(self.config), "agent", "--log-level", self.log_level]
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.name} exited: {self.log_tail()}")
            try:
                self.api("GET", "host", timeout=5)
                return self
            except AgentUnreachable:
                time.sleep(0.1)
        raise RuntimeError(f"agent {self.name} did not come up: {self.log_tail()}")

    def stop_with_vms(self) -> None:
        """Stop its running VMs (QEMU outlives its agent on purpose), then the agent."""
        if self.proc and self.proc.poll() is None:
            try:
                for vm in self.api("GET", "vms", timeout=10):
                    if vm["state"] == "running":
                        self.api("POST", f"vms/{vm['name']}/stop", {}, timeout=20)
            except Exception:
                pass
        self.stop()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def remove_control_dir(self) -> None:
        """Once the agent is gone for good (the fixture's end)."""
        shutil.rmtree(self.control_dir, ignore_errors=True)

    def log_tail(self, n: int = 30) -> str:
        path = self.root / "agent.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    @property
    def client(self) -> AgentClient:
        """The control socket, as root: every route."""
        return AgentClient(unix=str(self.socket), timeout=120, name=self.name)

    @property
    def read_only(self) -> AgentClient:
        """The spec's TCP API: GETs only."""
        return AgentClient(f"{self.address}:{self.api_port}", timeout=120, name=self.name)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        return self.client.request(method, path, body, timeout=timeout)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*QUANTAVIRT, "--config", str(self.config), *args], capture_output=True,
                              text=True, timeout=timeout)

    def trust(self, other: AgentProc, name: str | None = None) -> None:
        """Import `other`'s identity here (one direction)."""
        ident = other.api("GET", "pqc/identity")
        self.api("POST", "pqc/trust", {"name": name or other.name, "public_key": ident["public_key"]})

    def vm(self, name: str) -> dict[str, Any]:
        return self.api("GET", f"vms/{name}")

    def vm_names(self) -> list[str]:
        return [v["name"] for v in self.api("GET", "vms")]

    def wait_markers(self, name: str, more_than: int, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            count = self.vm(name)["serial_markers"]
            if count > more_than:
                return count
            time.sleep(0.2)
        raise AssertionError(f"{name} on {self.name}: serial markers stuck at {more_than}")


def guest_vm(name: str, memory: str = "128M", working_set: str = "16M", pace: int = 0,
               marker_every: int = 4, **extra: Any) -> dict[str, Any]:
    return {"name": name, "memory": memory, "vcpus": 1,
            "guest": {"test": {"working_set": working_set, "pace": pace, "marker_every": marker_every}}, **extra}


def mutual_trust(a: AgentProc, b: AgentProc) -> None:
    a.trust(b)
    b.trust(a)
