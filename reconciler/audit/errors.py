"""Errors of the audit repository, each naming what failed and where."""

from __future__ import annotations


class AuditError(Exception):
    """An audit repository operation that cannot be done: names the repository and the cause."""


class PushError(AuditError):
    """The audit branch could not be pushed after every retry; the commits stay local."""

    def __init__(self, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.commit = commit


class SignatureError(AuditError):
    """A signing or verification tool failed to run (not: a signature that does not verify)."""
