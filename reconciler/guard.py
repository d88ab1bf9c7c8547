"""The removal guard (DESIGN.md 6.1): a transaction may not take many Services off at once.

A typo in intent, a half-read cluster or a prober cut off from the nodes all look the same from
here: most Services vanish from the rendered snapshot. The switches keep forwarding with what
they hold until a person confirms by raising `spec.safety.maxRemovalPercent` in intent.
Pure functions; the callers decide what a refusal does (a CLI exits 1, the loop reports Stalled).
"""

from __future__ import annotations

from dataclasses import dataclass

from .intent.model import LoadBalancerConfig
from .snapshot import Snapshot


@dataclass(frozen=True)
class RemovalVerdict:
    """What a transaction from `before` to `after` takes off the switches, and whether that is allowed."""

    served: int  # Kubernetes Services on the switches before
    removed: tuple[str, ...]  # Service keys (namespace/name) that would leave, sorted
    limit_percent: int

    @property
    def percent(self) -> float:
        return 100.0 * len(self.removed) / self.served if self.served else 0.0

    @property
    def allowed(self) -> bool:
        # One Service may always leave: with a handful of Services any single deletion is a
        # large share, and a single deletion is what people do by hand.
        return len(self.removed) <= 1 or self.percent <= self.limit_percent

    def describe(self, limit: int = 20) -> str:
        names = ", ".join(self.removed[:limit]) + (f" and {len(self.removed) - limit} more" if len(self.removed) > limit else "")
        return (
            f"refused by the removal guard: this change takes {len(self.removed)} of {self.served} Services "
            f"({self.percent:.0f}%) off the switches at once, more than spec.safety.maxRemovalPercent "
            f"({self.limit_percent}%): {names}. The switches keep what they hold. If this is intended, raise "
            f"spec.safety.maxRemovalPercent in the intent for this change"
        )


def service_keys(snapshot: Snapshot | None) -> frozenset[str]:
    """Kubernetes Services (namespace/name) a snapshot puts on the switches."""
    if snapshot is None:
        return frozenset()
    return frozenset(s.service_key for s in snapshot.services)


def removal_verdict(before: Snapshot | None, after: Snapshot, limit_percent: int) -> RemovalVerdict:
    """The guard's view of moving the switches from `before` to `after` (backends that leave,
    e.g. with a lost node, are not Services leaving)."""
    old = service_keys(before)
    return RemovalVerdict(len(old), tuple(sorted(old - service_keys(after))), limit_percent)


def fallback_verdict(snapshot: Snapshot | None, services: tuple[str, ...], limit_percent: int) -> RemovalVerdict:
    """The guard applied to automatic fallbacks before any annotation is written: many
    Services failing their probes at once is far more likely the prober's own network than
    every Service at once, and kube-proxy would send their traffic to the same backends."""
    served = service_keys(snapshot)
    return RemovalVerdict(len(served), tuple(sorted(set(services) & served)), limit_percent)


def unaccounted_message(config: LoadBalancerConfig, held: dict[str, int], where: str) -> str:
    """Why a first apply is refused: the switches serve Services no applied snapshot accounts for."""
    switches = ", ".join(f"{name} holds {count} Service entries" for name, count in sorted(held.items()))
    return (f"{config.key}: {switches}, but {where} has no applied snapshot of this config: refusing to replace "
            f"what no record accounts for (was the audit history lost?). Restore it, or pass --adopt-switches "
            f"to replace the switches' entries with a fresh render")


__all__ = ["RemovalVerdict", "fallback_verdict", "removal_verdict", "service_keys", "unaccounted_message"]
