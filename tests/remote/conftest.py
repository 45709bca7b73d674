"""The remote tests share one lab (root: network namespaces, Debian's sshd)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory):
    """One 3-host netns lab for the whole remote test session, with agents when they can run."""
    from qvplan.lab.testing import agent_code_present, lab_session

    with lab_session(tmp_path_factory.mktemp("lab"), agents=agent_code_present()) as the_lab:
        yield the_lab


@pytest.fixture
def agents_up(lab):
    """Skip while the agent code has not landed; fail if it has but the lab's agents are down."""
    from qvplan.lab.testing import agent_code_present

    if not agent_code_present():
        pytest.skip("the quantavirt agent is not importable in this checkout yet")
    assert not lab.agent_errors, lab.agent_errors
    return lab
