"""Pause Python's cyclic garbage collector while a plan is built.

Loading and planning allocate hundreds of thousands of small objects that all stay alive until the
plan is done, and make no reference cycles worth collecting. Each full collection walks every live
object, and their number grows with the fleet, so the collector alone made planning grow faster than
linearly (measured: 40× the parse time for 10× the VMs). Reference counting still frees everything.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
