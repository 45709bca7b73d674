"""Least exposure, as the file system shows it: a real agent's state is private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..agents import guest_vm


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_logs_keys_and_umask_are_private(make_agent) -> None:
    agent = make_agent("hv-a")
    agent.api("POST", "vms", guest_vm("vm-1", memory="64M", working_set="4M"))
    agent.api("POST", "vms/vm-1/start", {})
    agent.wait_markers("vm-1", 0)
    assert agent.proc is not None
    status = Path(f"/proc/{agent.proc.pid}/status").read_text()
    assert "Umask:\t0077" in status
    state = agent.state
    for folder in (state, state / "vms", state / "vms/vm-1", state / "pqc", agent.root / "images"):
        assert mode(folder) == 0o700, folder
    assert mode(state / "pqc/host-identity.key") == 0o600
    run = state / "vms/vm-1/run"
    for log in (run / "qemu.log", run / "serial.log", run / "qemu.pid"):
        assert mode(log) & 0o077 == 0, (log, oct(mode(log)))
    assert mode(run) in (0o700, 0o1770)  # 1770 root:quantavirt-qemu under a root agent
    assert mode(state / "vms/vm-1/vm.json") & 0o077 == 0


def test_an_open_state_dir_is_narrowed(tmp_path: Path) -> None:
    from qvplan.paths import state_dir

    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    assert mode(state_dir(loose)) == 0o700
    assert mode(state_dir(tmp_path / "new" / "state")) == 0o700
