"""Fixtures shared by the integration tests: real agents on loopback addresses."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .agents import AgentProc, free_port

_addresses = itertools.count(20)
# Every pytest process its own 127.N.0.0/16: engineers' sessions run at once on this machine, and an
# agent restarted on its port must not find it taken by another session's free_port() meanwhile.
_NET = 1 + os.getpid() % 250
LAB_FOLDERS = ("lab", "remote", "apply", "guest")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests of the lab folders need root (network namespaces) and Debian's sshd."""
    reason = None
    if not Path("/usr/sbin/sshd").exists():
        reason = "needs openssh-server (/usr/sbin/sshd): make setup"
    elif os.geteuid() != 0 or not shutil.which("ip"):
        reason = "needs root and iproute2 for network namespaces"
    here = Path(__file__).parent
    for item in items:
        if any(here / folder in Path(item.fspath).parents for folder in LAB_FOLDERS):
            item.add_marker(pytest.mark.lab)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator:
    """Start agents named hv-a, hv-b… on their own 127.N.x.y addresses; all stopped at the end."""
    started: list[AgentProc] = []

    def make(name: str, memory: str | None = None, start: bool = True) -> AgentProc:
        address = f"127.{_NET}.{next(_addresses) % 250}.{len(started) + 2}"
        agent = AgentProc(name, address, tmp_path / name, free_port(address), free_port(address),
                          memory=memory)
        started.append(agent)
        return agent.start() if start else agent

    yield make
    for agent in started:
        agent.stop_with_vms()
        _kill_leftover_qemus(agent.state)
        agent.remove_control_dir()


def _kill_leftover_qemus(state: Path) -> None:
    import os
    import signal

    for pidfile in state.glob("vms/*/run/qemu.pid"):
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass
