"""The audit repository behind `p4kube run`: reopened after any failure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import AuditError
from .repo import AuditRepo


class ReopeningAudit:
    """The audit repository, opened on first use and again after any failure, so that `p4kube
    run` keeps running while it cannot be reached: every call raises AuditError meanwhile, and
    the loop reports Stalled and retries with backoff, writing nothing to the switches."""

    def __init__(self, opener: Callable[[], AuditRepo]) -> None:
        self._opener = opener
        self._repo: AuditRepo | None = None

    def __getattr__(self, name: str) -> Any:
        if self._repo is None:
            self._repo = self._opener()  # AuditError when it cannot be opened
        attr = getattr(self._repo, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except AuditError:
                self._repo = None  # open it afresh next time (deleted, moved, remounted)
                raise

        return call
