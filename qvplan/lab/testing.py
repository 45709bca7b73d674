"""Helpers for tests that need a lab: unique names, a free subnet, and a context manager.

A test lab never collides with a developer's lab (`qvlab`, 10.77.0.0/24) or another test run:
its prefix is `qvt` + 4 random hex digits and its subnet is one no interface uses.

    from qvplan.lab.testing import lab_session
    @pytest.fixture(scope="session")
    def lab(tmp_path_factory):
        with lab_session(tmp_path_factory.mktemp("lab")) as lab:
            yield lab
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .lab import Lab
from .model import Mode


def unique_prefix() -> str:
    return "qvt" + secrets.token_hex(2)


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True).stdout
    return [ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
            for iface in json.loads(out or "[]") for a in iface.get("addr_info", [])]


def free_subnet(mode: Mode = "netns") -> str:
    """First three octets of a /24 nothing on this machine uses (10.77.100-250 or 127.77.x)."""
    if mode == "loopback":
        return f"127.77.{random.randint(1, 250)}"
    used = _used_networks()
    candidates = list(range(100, 251))
    random.shuffle(candidates)
    for third in candidates:
        net = ipaddress.ip_network(f"10.77.{third}.0/24")
        if not any(net.overlaps(u) for u in used):
            return f"10.77.{third}"
    raise RuntimeError("no free 10.77.x.0/24 subnet for a test lab")


def agent_code_present() -> bool:
    """Whether the agent can run at all in this checkout (it imports its whole stack)."""
    try:
        import qvplan.agent.daemon  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def lab_session(dir: Path, *, hosts: int = 3, agents: bool = True, mode: Mode | None = None,
                wait_agents: float = 30.0) -> Iterator[Lab]:
    """A lab that is up for the `with` block and entirely gone after it.

    With `agents`, waits for them and records failures in `lab.agent_errors` ({} when all up).
    """
    mode = mode or ("netns" if os.geteuid() == 0 else "loopback")
    lab = Lab(dir, hosts=hosts, prefix=unique_prefix(), mode=mode, subnet=free_subnet(mode), agents=agents)
    lab.agent_errors = {}  # type: ignore[attr-defined]
    try:
        lab.up()
        if agents:
            lab.agent_errors = asyncio.run(lab.wait_agents(wait_agents))  # type: ignore[attr-defined]
        yield lab
    finally:
        lab.down()


def leftovers(lab: Lab) -> list[str]:
    """Anything of `lab` still on the machine: namespaces, links, processes, files."""
    found: list[str] = []
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {line.split()[0]}" for line in ns.splitlines() if line.startswith(lab.spec.prefix + "-")]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines()
              if line.split(":")[1].strip().split("@")[0].startswith(lab.spec.prefix + "-")]
    from .procs import alive, cmdline

    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)) and str(lab.dir) in cmdline(int(entry.name)):
            found.append(f"process {entry.name}: {cmdline(int(entry.name))[:80]}")
    if lab.dir.exists():
        found.append(f"dir {lab.dir}: {sorted(p.name for p in lab.dir.iterdir())}")
    return found
