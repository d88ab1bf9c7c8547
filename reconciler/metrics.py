"""Prometheus metrics of the reconciler, in a registry of its own (DESIGN.md 2, issue 7).

A `Metrics` object owns a CollectorRegistry (never the process-global one: tests and several
reconcilers in one process stay isolated) and the helpers the controller calls: it records
what happened (an ApplyResult, a reconcile's duration, a fallback) and mirrors state (switch
connections, snapshot version, leadership, render issues, per-backend packet counters read
from the switches). The HTTP endpoint (reconciler/httpserver.py) serves the registry.

The registry also holds `p4kube_build_info` (what runs: version, commit, Python) and
prometheus_client's own process, platform and GC collectors (RSS, CPU, open fds, start time):
the memory target of a 5,000-Service reconciler must be watchable, and those collectors are the
names every Prometheus user already knows (process_resident_memory_bytes, ...).

Label values are bounded on purpose: configs, switches, tables, outcomes, Services and nodes
are finite sets; free text (reasons, messages) never becomes a label, and fallback reasons are
short slugs from a fixed vocabulary.
"""

from __future__ import annotations

import platform
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from . import p4names as n
from .buildinfo import build_commit
from .apply import ApplyResult
from .snapshot import Snapshot
from .switch import CounterCell, SwitchSession

__all__ = [
    "FALLBACK_REASONS",
    "BackendPackets",
    "Metrics",
    "backend_packet_counts",
    "read_backend_packets",
]

# Reconcile durations: from a one-Service change (milliseconds) to a full 5,000-Service apply.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Why Services were fallen back to kube-proxy (the `reason` label of p4kube_fallbacks_total).
FALLBACK_REASONS = (
    "probe-failed",  # the probe after an apply failed: rolled back, the failing Services fell back
    "backends-down",  # periodic probes: every backend of the Service is down
    "switch-unhealthy",  # a switch failed on its own: the Services it carries fell back
    "apply-failed",  # the transaction failed and the switches could not be trusted
    "recovered",  # not a fallback: an automatic fallback was lifted (counted apart, see below)
)
_SLUG = re.compile(r"^[a-z][a-z0-9-]{0,39}$")


class BackendPackets(Collector):
    """p4kube_backend_packets_total{config, service, node}: the switches' per-backend packet
    counters, as last read by the controller (a counter: the switch only adds, except that a
    restarted switch starts from 0, which Prometheus reads as a counter reset)."""

    name = "p4kube_backend_packets"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[str, str], int]] = {}

    def set(self, config: str, counts: Mapping[tuple[str, str], int]) -> None:
        """Replace the config's values with `counts`: (service, node) -> packets."""
        with self._lock:
            self._values[config] = dict(counts)

    def forget(self, config: str) -> None:
        with self._lock:
            self._values.pop(config, None)

    def value(self, config: str, service: str, node: str) -> int | None:
        with self._lock:
            return self._values.get(config, {}).get((service, node))

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            self.name, "Packets the switches sent to each backend (per-backend counters read back over P4Runtime).",
            labels=("config", "service", "node"),
        )
        with self._lock:
            rows = [(c, s, nd, v) for c, vals in sorted(self._values.items()) for (s, nd), v in sorted(vals.items())]
        for config, service, node, value in rows:
            family.add_metric((config, service, node), value)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, "", labels=("config", "service", "node"))


class Metrics:
    """The reconciler's metrics in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, commit: str | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # The standard collectors, on this registry rather than the process-global one (whose
        # default registrations they are): isolation stays, the names stay the usual ones.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Gauge(
            "p4kube_build_info", "Always 1: the version, Git commit and Python of the running reconciler.",
            ("version", "commit", "python"), registry=r,
        )
        self.build_info.labels(__version__, commit or build_commit() or "unknown", platform.python_version()).set(1)
        self.reconcile_duration = Histogram(
            "p4kube_reconcile_duration_seconds",
            "Time from a trigger to the end of its transaction (render, audit commit, apply, probe).",
            ("config",), buckets=RECONCILE_BUCKETS, registry=r,
        )
        self.table_writes = Counter(
            "p4kube_table_writes", "P4Runtime table updates written, per switch, table and kind (INSERT/MODIFY/DELETE).",
            ("config", "switch", "table", "kind"), registry=r,
        )
        self.transactions = Counter(
            "p4kube_transactions", "Transactions by outcome (applied, unchanged, rolled-back, degraded, failed).",
            ("config", "outcome"), registry=r,
        )
        self.rollbacks = Counter(
            "p4kube_rollbacks", "Transactions that restored the switches to the last good snapshot (or tried to).",
            ("config",), registry=r,
        )
        self.fallbacks = Counter(
            "p4kube_fallbacks", "Services fallen back to kube-proxy automatically, by reason.",
            ("config", "reason"), registry=r,
        )
        self.recoveries = Counter(
            "p4kube_fallback_recoveries", "Automatic fallbacks lifted because health returned.",
            ("config",), registry=r,
        )
        self.drift = Counter(
            "p4kube_drift_entries", "Entries found different from what a switch should hold (then repaired).",
            ("config", "switch"), registry=r,
        )
        self.switch_connected = Gauge(
            "p4kube_switch_connected", "1 while the reconciler holds a working P4Runtime session with the switch.",
            ("switch", "role"), registry=r,
        )
        self.snapshot_version = Gauge(
            "p4kube_snapshot_version", "Version of the snapshot the switches hold (last applied).",
            ("config",), registry=r,
        )
        self.render_issues = Gauge(
            "p4kube_render_issues", "Services the last render left out (error) or served with a note (warning).",
            ("config", "severity"), registry=r,
        )
        # 1 while this process is the one that writes to the switches: the Lease holder with
        # --leader-elect, else the only replica once its loop runs. So sum(p4kube_leader) is 1
        # exactly when one process writes, with or without leader election.
        self.leader = Gauge(
            "p4kube_leader",
            "1 while this reconciler is the one writing to the switches (holds the Lease, or runs without leader election).",
            registry=r,
        )
        self.unhealthy_targets = Gauge(
            "p4kube_health_unhealthy_targets", "Probe targets currently unhealthy, by kind (backend, vip, switch).",
            ("config", "kind"), registry=r,
        )
        self.backend_packets = BackendPackets()
        r.register(self.backend_packets)

    # -- recording -----------------------------------------------------------------------------

    def record_apply(self, result: ApplyResult, config: str) -> None:
        """Count one transaction: outcome, writes per switch and table, rollback, drift repaired;
        and mirror what it tells about the switches' connections and the version they hold."""
        self.transactions.labels(config, result.outcome).inc()
        for sw in result.switches:
            for table, kinds in sw.writes.items():
                for kind, count in kinds.items():
                    if count:
                        self.table_writes.labels(config, sw.name, table, kind).inc(count)
            drifted = _drift_count(sw.drift)
            if drifted:
                self.drift.labels(config, sw.name).inc(drifted)
            if sw.state == "unreachable":
                self.switch_connected.labels(sw.name, sw.role).set(0)
            elif sw.state in ("applied", "unchanged", "rolled-back"):
                self.switch_connected.labels(sw.name, sw.role).set(1)
        if result.outcome == "rolled-back" or any(sw.state == "rolled-back" for sw in result.switches) or (
            "rollback failed" in result.reason
        ):
            self.rollbacks.labels(config).inc()
        if result.ok:
            self.snapshot_version.labels(config).set(result.version)

    def observe_reconcile(self, config: str, seconds: float) -> None:
        self.reconcile_duration.labels(config).observe(seconds)

    @contextmanager
    def time_reconcile(self, config: str) -> Iterator[None]:
        """Observe the duration of the `with` block (also when it raises)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe_reconcile(config, time.perf_counter() - t0)

    def record_fallback(self, config: str, reason: str, services: int = 1) -> None:
        """`services` Services fell back to kube-proxy for `reason` (one of FALLBACK_REASONS)."""
        if reason not in FALLBACK_REASONS or reason == "recovered":
            raise ValueError(f"fallback reason {reason!r} is not one of {[r for r in FALLBACK_REASONS if r != 'recovered']}")
        if services < 0:
            raise ValueError(f"services must be >= 0, not {services}")
        if services:
            self.fallbacks.labels(config, reason).inc(services)

    def record_recovery(self, config: str, services: int = 1) -> None:
        if services:
            self.recoveries.labels(config).inc(services)

    # -- state mirrors -------------------------------------------------------------------------

    def set_switch_connected(self, switch: str, role: str, connected: bool) -> None:
        self.switch_connected.labels(switch, role).set(1 if connected else 0)

    def set_snapshot_version(self, config: str, version: int) -> None:
        self.snapshot_version.labels(config).set(version)

    def set_leader(self, leader: bool) -> None:
        self.leader.set(1 if leader else 0)

    def set_render_issues(self, config: str, issues: Iterable[object]) -> None:
        """From RenderResult.issues (anything with a `severity` of "error" or "warning")."""
        counts = {"error": 0, "warning": 0}
        for issue in issues:
            severity = getattr(issue, "severity", "warning")
            counts[severity if severity in counts else "warning"] += 1
        for severity, count in counts.items():
            self.render_issues.labels(config, severity).set(count)

    def set_unhealthy_targets(self, config: str, counts: Mapping[str, int]) -> None:
        """kind -> number of unhealthy targets; kinds not given are set to 0."""
        for kind in ("backend", "vip", "switch"):
            self.unhealthy_targets.labels(config, kind).set(counts.get(kind, 0))
        for kind, count in counts.items():
            if kind not in ("backend", "vip", "switch"):
                self.unhealthy_targets.labels(config, kind).set(count)

    def set_backend_packets(self, config: str, counts: Mapping[tuple[str, str], int]) -> None:
        self.backend_packets.set(config, counts)

    def forget_config(self, config: str) -> None:
        """Drop a removed config's gauge series (counters keep their history, as Prometheus expects)."""
        for gauge, extra in ((self.snapshot_version, ()), (self.render_issues, ("error", "warning")),
                             (self.unhealthy_targets, ("backend", "vip", "switch"))):
            for labels in ([(config,)] if not extra else [(config, e) for e in extra]):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass  # that series was never set
        self.backend_packets.forget(config)

    def forget_switch(self, switch: str, role: str) -> None:
        try:
            self.switch_connected.remove(switch, role)
        except KeyError:
            pass  # never set

    # -- exposition ----------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def _drift_count(drift: Sequence[str]) -> int:
    """compare_entries caps its list with '... and N more': count those too."""
    count = 0
    for line in drift:
        m = re.match(r"^\.\.\. and (\d+) more$", line)
        count += int(m.group(1)) if m else 1
    return count


def backend_packet_counts(snapshot: Snapshot, cells: Iterable[Iterable[CounterCell]]) -> dict[tuple[str, str], int]:
    """(service, node) -> packets, from the backend_packets cells of each switch (summed: a flow
    crosses one switch). Cells of backend ids the snapshot does not use are ignored."""
    owner: dict[int, tuple[str, str]] = {}
    for svc in snapshot.services:
        for b in svc.backends:
            owner[b.backend_id] = (svc.name, b.node)
    counts = {key: 0 for key in owner.values()}
    for per_switch in cells:
        for cell in per_switch:
            key = owner.get(cell.index)
            if key is not None:
                counts[key] += cell.packets
    return counts


async def read_backend_packets(sessions: Iterable[SwitchSession], snapshot: Snapshot) -> dict[tuple[str, str], int]:
    """Read backend_packets from every session's switch (only the cells in use) and count."""
    ids = sorted({b.backend_id for svc in snapshot.services for b in svc.backends})
    if not ids:
        return {}
    # Few cells: read them by index; many: one wildcard read is smaller than thousands of keys.
    indexes: list[int] | None = ids if len(ids) <= 4096 else None
    cells = [await s.read_counters(n.BACKEND_PACKETS, indexes) for s in sessions]
    return backend_packet_counts(snapshot, cells)
