"""Real QEMU (TCG) test guests, stopped at the end of each test whatever happens."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from qvplan.vmm import QemuProcess, VMSpec

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")

StartVM = Callable[..., Coroutine[Any, Any, QemuProcess]]


def guest_spec(name: str = "tg", memory: str = "64M", working_set: str = "8M", pace: int = 0,
               marker_every: int = 16) -> VMSpec:
    return VMSpec.load({"name": name, "memory": memory,
                        "guest": {"test": {"working_set": working_set, "pace": pace, "marker_every": marker_every}}})


@pytest.fixture
async def start_vm(tmp_path: Path) -> AsyncIterator[StartVM]:
    """`proc = await start_vm(spec)`: a running test guest in its own run dir under tmp_path."""
    procs: list[QemuProcess] = []

    async def start(spec: VMSpec, **start_args: Any) -> QemuProcess:
        proc = QemuProcess(spec, run_dir=tmp_path / spec.name, accel="tcg")
        procs.append(proc)
        await proc.start(**start_args)
        return proc

    yield start
    for proc in procs:
        await proc.stop(graceful=False)
