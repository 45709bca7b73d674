"""Pause Python's cyclic garbage collector where a full collection would cost the most.

- Planning: loading and planning allocate hundreds of thousands of small objects that all stay
  alive until the plan is done, and make no reference cycles worth collecting. Each full
  collection walks every live object, and their number grows with the fleet, so the collector
  alone made planning grow faster than linearly (measured: 40× the parse time for 10× the VMs).
- A live migration's switchover, on both agents: a full collection there (40–60 ms measured in an
  agent) holds the GIL, so the relays stall and the guest's pause grows by as much.

Reference counting still frees everything meanwhile. Holds nest, from concurrent migrations too:
the collector runs again once the last hold is released.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_holds = 0
_was_enabled = True


def hold() -> None:
    """Pause the collector until the matching `release`."""
    global _holds, _was_enabled
    if _holds == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _holds += 1


def release() -> None:
    global _holds
    if _holds == 0:
        return
    _holds -= 1
    if _holds == 0 and _was_enabled:
        gc.enable()


@contextmanager
def gc_paused() -> Iterator[None]:
    hold()
    try:
        yield
    finally:
        release()
