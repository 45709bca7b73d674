"""gcpause: holds from concurrent migrations nest; the collector runs again after the last one."""

from __future__ import annotations

import gc

from qvplan import gcpause


def test_holds_nest_and_the_last_release_restores_the_collector() -> None:
    assert gc.isenabled()
    gcpause.hold()  # one migration's switchover
    gcpause.hold()  # another's, at once
    gcpause.release()
    assert not gc.isenabled()  # the second is still in its pause
    gcpause.release()
    assert gc.isenabled()
    gcpause.release()  # a release without a hold changes nothing
    assert gc.isenabled()
    gcpause.hold()
    gcpause.release()
    assert gc.isenabled()
