"""Pausing Python's cyclic garbage collector around work that allocates millions of objects
without reference cycles (parsing a large recording or snapshot, a one-shot command over them):
the collector's passes find nothing there and cost a third to a half of the time. Reference
counting still frees everything as usual; the collector is restored as it was."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Also a decorator (`@gc_paused()`): a one-shot command over a recording or snapshot makes
    almost no reference cycles, and the collector's passes over its millions of objects find
    nothing and cost a third to a half of its time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

