"""What one pass of the loop ended in, typed, and what each outcome means for status.

One place maps outcomes to the kstatus-style phase that the CR status, /readyz, metrics and
logs show, instead of string tables in each of them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

# The phases a pass can end in (kube.crstatus adds "invalid", for intent that never reached a pass).
Phase = Literal["applied", "degraded", "failed", "reconciling"]


class Outcome(StrEnum):
    """A pass's outcome. A StrEnum: it compares equal to its value ("applied")."""

    APPLIED = "applied"  # both switches took a new snapshot (read back), probes passed
    UNCHANGED = "unchanged"  # the transaction ran and nothing needed writing
    UP_TO_DATE = "up-to-date"  # nothing new rendered, and both switches are trusted
    RESYNCED = "resynced"  # a switch was read back and repaired to the last applied snapshot
    DEGRADED = "degraded"  # the switches that can be reached hold the snapshot; one cannot be reached
    ROLLED_BACK = "rolled-back"  # the transaction failed; both switches are back on the last good snapshot
    FAILED = "failed"  # nothing could be written, or a rollback itself failed
    FELL_BACK = "fell-back"  # Services were handed to kube-proxy on data-path evidence
    REFUSED = "refused"  # the removal guard held the change back: nothing was written
    WAITING = "waiting"  # an input or a dependency is not there yet (audit, cluster): nothing was written

    @property
    def phase(self) -> Phase:
        """applied | degraded | failed | reconciling: kube.crstatus's phases (failed is Stalled=True)."""
        return _PHASE[self][0]

    @property
    def reason(self) -> str:
        """The CamelCase reason the CR's conditions and Events carry."""
        return _PHASE[self][1]

    @property
    def converged(self) -> bool:
        """The switches hold the last applied snapshot, as far as can be read."""
        return self in (Outcome.APPLIED, Outcome.UNCHANGED, Outcome.UP_TO_DATE, Outcome.RESYNCED)


_PHASE: dict[Outcome, tuple[Phase, str]] = {
    Outcome.APPLIED: ("applied", "Applied"),
    Outcome.UNCHANGED: ("applied", "Applied"),
    Outcome.UP_TO_DATE: ("applied", "Applied"),
    Outcome.RESYNCED: ("applied", "Resynced"),
    Outcome.DEGRADED: ("degraded", "AppliedDegraded"),
    Outcome.FELL_BACK: ("degraded", "FellBack"),
    Outcome.ROLLED_BACK: ("failed", "RolledBack"),
    Outcome.FAILED: ("failed", "ApplyFailed"),
    Outcome.REFUSED: ("failed", "RemovalRefused"),
    Outcome.WAITING: ("reconciling", "Waiting"),
}

__all__ = ["Outcome"]
