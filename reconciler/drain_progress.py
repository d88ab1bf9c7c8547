"""What a snapshot, or a step from one snapshot to the next, says about connection drains
(DESIGN.md 5.1), in the words the loop, `reconcile --once`, the audit record and status share.

Step 1 of a move is a snapshot whose drains are new (`started`); step 2 is one in which drains of
the previous snapshot are gone (`finished`); a snapshot with drains is "draining until T".
Pure functions of snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .snapshot import Drain, Snapshot, format_time


@dataclass(frozen=True)
class DrainSummary:
    """A set of draining buckets: how many, of how many Kubernetes Services, and when they end."""

    buckets: int
    services: int
    first_until: float  # the earliest drain ends here (the loop's wake-up)
    until: float  # the last one ends here (a pass after it finishes them all)
    generation: int  # the highest generation among them

    def describe(self) -> str:
        """ "12 buckets of 1 Service until 2026-12-06T04:01:00Z (generation 1796529660)" """
        text = (f"{self.buckets} bucket{'s' if self.buckets != 1 else ''} of {self.services} "
                f"Service{'s' if self.services != 1 else ''} until {format_time(self.until)}")
        if self.first_until != self.until:
            text += f" (the first end at {format_time(self.first_until)})"
        return text + f" (generation {self.generation})"

    def to_json(self) -> dict[str, Any]:
        return {"buckets": self.buckets, "services": self.services, "until": format_time(self.until),
                "firstUntil": format_time(self.first_until), "generation": self.generation}


def _summary(drains: list[tuple[str, Drain]]) -> DrainSummary | None:
    if not drains:
        return None
    untils = [d.until for _, d in drains]
    return DrainSummary(len(drains), len({key for key, _ in drains}), min(untils), max(untils),
                        max(d.generation for _, d in drains))


def _drains(snap: Snapshot | None) -> dict[tuple[str, int], tuple[str, Drain]]:
    """(Service port, bucket) -> (Service key, drain); empty without drains (cached check first)."""
    if snap is None or snap.drain_until() is None:
        return {}
    return {(s.name, d.bucket): (s.service_key, d) for s in snap.services for d in s.drains}


def draining(snap: Snapshot | None) -> DrainSummary | None:
    """Every drain `snap` carries (None: nothing drains)."""
    return _summary(list(_drains(snap).values()))


def started(before: Snapshot | None, after: Snapshot) -> DrainSummary | None:
    """The drains `after` starts: not in `before` as they are (a bucket moved again mid-drain
    starts a new one)."""
    old = _drains(before)
    return _summary([v for k, v in _drains(after).items() if old.get(k) != v])


def finished(before: Snapshot | None, after: Snapshot) -> DrainSummary | None:
    """The drains of `before` whose bucket holds a plain entry in `after` (a bucket moved again
    mid-drain counts as a start, not as a finish, as `plan` counts it)."""
    new = _drains(after)
    return _summary([v for k, v in _drains(before).items() if k not in new])


def buckets_of(summary: DrainSummary) -> str:
    """ "12 buckets of 1 Service (generation G)": what a finished drain names (its end is now)."""
    return (f"{summary.buckets} bucket{'s' if summary.buckets != 1 else ''} of {summary.services} "
            f"Service{'s' if summary.services != 1 else ''} (generation {summary.generation})")


def reason_parts(before: Snapshot | None, after: Snapshot) -> list[str]:
    """The audit Reason's words for the step from `before` to `after`: "drain started: ...",
    "drain finished: ..." (step 2), or "draining until T" for another change made mid-drain."""
    if (before is None or before.drain_until() is None) and after.drain_until() is None:
        return []  # the usual step: no drains either side
    parts = []
    begun = started(before, after)
    if begun is not None:
        parts.append(f"drain started: {begun.describe()}")
    ended = finished(before, after)
    if ended is not None:
        parts.append(f"drain finished: {buckets_of(ended)}")
    still = draining(after)
    if still is not None and begun is None:
        parts.append(f"draining until {format_time(still.until)}")
    return parts
