"""Real `quantavirt agent` processes on loopback addresses, for integration tests.

Each agent gets its own config, state directory, API port and migration port, on its own
127.0.0.x address, so two of them are two hosts as far as migration is concerned.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUANTAVIRT = [sys.executable, "-m", "qvplan.cli.quantavirt"]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class AgentProc:
    name: str
    address: str
    root: Path
    api_port: int
    mig_port: int
    memory: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    extra_config: str = ""
    env: dict[str, str] = field(default_factory=dict)
    log_level: str = "debug"

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
        memory = f'memory = "{self.memory}"\n' if self.memory else ""
        self.config.write_text(
            f'[host]\nname = "{self.name}"\nstate_dir = "{self.state}"\n{memory}'
            f'[api]\nlisten = "{self.address}:{self.api_port}"\n'
            f'[migration]\nlisten = "{self.address}:{self.mig_port}"\npqc_required = true\n'
            f'[storage]\npools = {{ default = "{self.root / "images"}" }}\n{self.extra_config}'
        )

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
                self.api("GET", "host")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise RuntimeError(f"agent {self.name} did not come up: {self.log_tail()}")

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

    def log_tail(self, n: int = 30) -> str:
        path = self.root / "agent.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    def api(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{self.address}:{self.api_port}/api/v1/{path}", data=data,
                                     method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, json.loads(err.read() or b"{}")) from None

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
