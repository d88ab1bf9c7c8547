"""What `p4kube status` reports, as values: per config the last applied version, each switch's
connection, pipeline, entry counts and drift against that snapshot, and the Services fallen back
to kube-proxy. Pure: the face and reconciler/app/inspection.py gather the inputs (the audit
record, switch readings, Services) and these functions only combine them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .snapshot import Entry, Value

__all__ = ["ConfigStatus", "FallenBack", "SwitchStatus", "TableDrift", "table_drift"]


@dataclass(frozen=True)
class TableDrift:
    """How one table of a switch differs from what the snapshot says it must hold."""

    table: str
    missing: int  # in the snapshot, not on the switch
    extra: int  # on the switch, not in the snapshot
    different: int  # same key, another action or parameters

    @property
    def total(self) -> int:
        return self.missing + self.extra + self.different

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "missing": self.missing, "extra": self.extra, "different": self.different}


def table_drift(expected: Iterable[Entry], actual: Iterable[Entry]) -> tuple[TableDrift, ...]:
    """Per table (of either side), the entries missing, extra and different on the switch;
    entries are compared by table, key, action and parameters (the Service plays no part)."""
    want: dict[tuple[str, tuple[Value, ...]], Entry] = {(e.table, e.key): e for e in expected}
    have: dict[tuple[str, tuple[Value, ...]], Entry] = {(e.table, e.key): e for e in actual}
    tables = sorted({k[0] for k in want} | {k[0] for k in have})
    counts = {t: [0, 0, 0] for t in tables}
    for k, w in want.items():
        h = have.get(k)
        if h is None:
            counts[k[0]][0] += 1
        elif (h.action, h.args) != (w.action, w.args):
            counts[k[0]][2] += 1
    for k in have.keys() - want.keys():
        counts[k[0]][1] += 1
    return tuple(TableDrift(t, *counts[t]) for t in tables)


@dataclass(frozen=True)
class SwitchStatus:
    """One switch of a config as read now (connected) or why it could not be read."""

    name: str
    address: str
    role: str  # primary | standby, as intent names it
    device_id: int
    connected: bool
    error: str = ""  # why it could not be read
    api_version: str | None = None
    has_pipeline: bool = False
    pipeline_cookie: int | None = None
    expected_cookie: int | None = None  # the cookie of the config's own pipeline, when known
    counts: Mapping[str, int] | None = None  # entries per table
    drift: tuple[TableDrift, ...] | None = None  # None: not read, or no applied snapshot to compare with

    @property
    def drifted(self) -> bool:
        return self.drift is not None and any(d.total for d in self.drift)

    @property
    def state(self) -> str:
        """One word: unreachable | no-pipeline | foreign-pipeline | drifted | in-sync | unknown."""
        if not self.connected:
            return "unreachable"
        if not self.has_pipeline:
            return "no-pipeline"
        if self.expected_cookie is not None and self.pipeline_cookie != self.expected_cookie:
            return "foreign-pipeline"
        if self.drift is None:
            return "unknown"
        return "drifted" if self.drifted else "in-sync"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "address": self.address, "role": self.role, "deviceId": self.device_id,
            "connected": self.connected, "state": self.state,
        }
        if self.error:
            out["error"] = self.error
        if self.connected:
            out["apiVersion"] = self.api_version
            out["pipelineCookie"] = self.pipeline_cookie
        if self.expected_cookie is not None:
            out["expectedCookie"] = self.expected_cookie
        if self.counts is not None:
            out["entries"] = dict(self.counts)
        if self.drift is not None:
            out["drift"] = [d.to_json() for d in self.drift if d.total]
        return out


@dataclass(frozen=True)
class FallenBack:
    """A Service p4kube handed to kube-proxy, and why."""

    service: str  # namespace/name
    reason: str
    since: str | None = None  # RFC 3339, from the annotation
    source: str = "api"  # api | recording | audit: where this was read

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"service": self.service, "reason": self.reason, "source": self.source}
        if self.since:
            out["since"] = self.since
        return out


@dataclass(frozen=True)
class ConfigStatus:
    """One LoadBalancerConfig: what was last applied, and what its switches hold now."""

    config: str
    applied_version: int | None
    applied_digest: str | None
    applied_at: str | None = None  # the record's time, RFC 3339
    last_outcome: str | None = None  # the newest record's outcome (may be newer than the applied one)
    last_reason: str = ""
    record_source: str = ""  # where the applied snapshot was read: the audit repository or the state directory
    switches: tuple[SwitchStatus, ...] = ()
    fallen_back: tuple[FallenBack, ...] = ()
    next_retry: str | None = None  # when the reconciler tries again, when it says
    problems: tuple[str, ...] = ()  # what could not be read (the audit repository, the API)
    expected_counts: Mapping[str, int] | None = None  # entries per table in the applied snapshot
    draining_until: str | None = None  # RFC 3339: the applied snapshot's drains end then (DESIGN.md 5.1)

    @property
    def healthy(self) -> bool:
        """Every switch reachable and in sync with the applied snapshot."""
        return self.applied_version is not None and bool(self.switches) and all(
            s.state == "in-sync" for s in self.switches)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "healthy": self.healthy,
            "applied": {
                "version": self.applied_version, "digest": self.applied_digest, "time": self.applied_at,
                "from": self.record_source, "entries": dict(self.expected_counts) if self.expected_counts else None,
            },
            "lastOutcome": {"outcome": self.last_outcome, "reason": self.last_reason} if self.last_outcome else None,
            "switches": [s.to_json() for s in self.switches],
            "fallenBack": [f.to_json() for f in self.fallen_back],
            "nextRetry": self.next_retry,
            "drainingUntil": self.draining_until,
            "problems": list(self.problems),
        }
