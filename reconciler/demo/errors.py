"""The demo's one failure: a step that did not do what it said."""

from __future__ import annotations


class DemoFailed(Exception):
    """A step did not do what it says: the demo stops and exits 1 with this message."""


__all__ = ["DemoFailed"]
