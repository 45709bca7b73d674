"""Two trusted agents for the migration tests."""

from __future__ import annotations

import pytest

from ..agents import mutual_trust


@pytest.fixture
def pair(make_agent):
    a, b = make_agent("hv-a"), make_agent("hv-b")
    mutual_trust(a, b)
    return a, b
