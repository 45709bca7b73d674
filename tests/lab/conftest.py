"""Lab tests need root (network namespaces) and Debian's sshd."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reason = None
    if not Path("/usr/sbin/sshd").exists():
        reason = "needs openssh-server (/usr/sbin/sshd): make setup"
    elif os.geteuid() != 0 or not shutil.which("ip"):
        reason = "needs root and iproute2 for network namespaces"
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.lab)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
