"""The destination's link down in the commit window of a live migration, up again after a few
seconds (the 60 s outages, mid-transfer and in the commit window, are bench/linkdown.py's): the
guest runs on exactly one host, checked from /proc and the serial logs, both journals settled."""

from __future__ import annotations

import os

import pytest

from qvplan.lab.testing import lab_session

from .linkdown import link_down_during

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="link faults need a netns lab (root)")


def test_link_down_in_the_commit_window_then_up(tmp_path):
    with lab_session(tmp_path / "lab", hosts=2) as lab:
        assert not lab.agent_errors, lab.agent_errors
        row = link_down_during(lab, "commit", outage=4.0)
    # the commit, sent into the dead link, is retransmitted once it is up: the guest moved
    assert row["state"] == "COMPLETED" and row["runs_on"] == "hv-b", row
    assert (row["source_journal"], row["dest_journal"]) == ("released", "running"), row
