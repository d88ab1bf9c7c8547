"""The reconcile loop (`p4kube run`): triggers -> render -> audit -> apply -> probe -> fallback.

Everything the loop talks to is behind a small protocol, so the same loop runs against a live
cluster (reconciler.cluster.live), a recorded file, or the demo's scripted cluster:

    IntentProvider   current IntentSet, and a stream of new ones (watchdog on a checkout, CRs)
    ClusterSource    current ClusterState, and a stream of changed Service keys
    FallbackWriter   fall a Service back to kube-proxy, and recover it (reconciler.fallback)

One asyncio task runs the loop; triggers only record what changed, and the loop coalesces them
for the config's updateInterval before rendering, so a burst of EndpointSlice updates costs one
transaction. Transactions of a config never overlap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

from .apply import ApplyResult, TwoSwitchApplier
from .cluster.model import ClusterState
from .fallback import FALLBACK_REASON_ANNOTATION
from .intent.model import IntentSet, LoadBalancerConfig
from .render import Renderer, RenderIssue
from .snapshot import Snapshot

log = logging.getLogger("reconciler.controller")


class IntentProvider(Protocol):
    def current(self) -> IntentSet: ...

    def changes(self) -> AsyncIterator[IntentSet]: ...


class ClusterSource(Protocol):
    def snapshot(self) -> ClusterState: ...

    def changes(self) -> AsyncIterator[frozenset[str]]: ...


class FallbackWriter(Protocol):
    async def fall_back(self, service: str, reason: str) -> Any: ...

    async def recover(self, service: str) -> Any: ...


class AuditLike(Protocol):
    def last_applied(self, config: str) -> Snapshot | None: ...

    def next_version(self, config: str) -> int: ...

    def record(self, snapshot: Snapshot, outcome: str, reason: str = "", extra_trailers: Any = ()) -> str: ...


# The probe the transaction runs after writing: returns None when healthy, else the reason;
# `failing_services()` then names the Services to fall back.
class PostApplyProbe(Protocol):
    async def __call__(self, snap: Snapshot) -> str | None: ...


ApplierFactory = Callable[[LoadBalancerConfig, int], TwoSwitchApplier]  # (config, election id)
ProbeFactory = Callable[[LoadBalancerConfig], Any]  # -> a health.PostApplyProbe, or None
Digest = Callable[[LoadBalancerConfig], str]



@dataclass
class TransactionRecord:
    """What one pass did, for logs, tests, the demo and status."""

    config: str
    version: int | None
    outcome: str  # applied | unchanged | degraded | rolled-back | failed | up-to-date | resynced
    reason: str = ""
    writes: int = 0
    fell_back: tuple[str, ...] = ()
    recovered: tuple[str, ...] = ()
    seconds: float = 0.0
    issues: tuple[RenderIssue, ...] = ()


@dataclass
class ConfigWorker:
    """Renders and applies one LoadBalancerConfig; remembers what its switches hold."""

    config: LoadBalancerConfig
    applier: TwoSwitchApplier
    p4info_digest: str
    audit: AuditLike | None = None
    probe: Any = None
    fallback: FallbackWriter | None = None
    on_result: Callable[[TransactionRecord, ApplyResult | None, Snapshot | None], Awaitable[None]] | None = None
    # Called after each periodic health round (e.g. to read the switches' counters for metrics).
    on_health: Callable[["ConfigWorker"], Awaitable[None]] | None = None
    renderer: Renderer = field(default_factory=Renderer)
    last: Snapshot | None = None  # what the switches hold (the last applied snapshot)
    fallen_back: dict[str, str] = field(default_factory=dict)  # Service key -> reason (ours)
    drift_every: int = 12  # health rounds between full read-backs of the switches
    _successes: dict[str, int] = field(default_factory=dict)  # recovery probes passed in a row
    _switch_failures: dict[str, int] = field(default_factory=dict)
    _backend_failures: dict[str, int] = field(default_factory=dict)
    unhealthy_switches: set[str] = field(default_factory=set)
    _rounds: int = 0
    _connections: dict[str, dict[str, int]] | None = None
    needs_retry: bool = False  # the last transaction failed before writing: try again on a health tick
    _recovered: set[str] = field(default_factory=set)  # lifted fallbacks not yet back on the switches

    async def start(self, intent_commit: str | None) -> TransactionRecord:
        """On (re)start: read the switches back and converge them on the last applied snapshot
        without rewriting what is already right (a restart causes no table writes)."""
        if self.audit is not None:
            self.last = self.audit.last_applied(self.config.key)
        if self.last is None:
            return TransactionRecord(self.config.key, None, "up-to-date", "nothing applied yet")
        t0 = time.perf_counter()
        result = await self.applier.apply(self.last, self.last)
        writes = sum(sum(k.values()) for k in result.writes().values())
        record = TransactionRecord(
            self.config.key, self.last.version, "resynced" if result.ok else result.outcome, result.reason,
            writes, seconds=time.perf_counter() - t0,
        )
        if self.on_result is not None:
            await self.on_result(record, result, self.last)
        return record

    async def connections(self) -> dict[str, dict[str, int]] | None:
        """least-connections input: per snapshot Service and backend, SYN minus FIN from the
        primary's counters (clamped at 0: retransmitted SYNs and RSTs make the estimate drift)."""
        if self.config.algorithm != "least-connections" or self.last is None:
            return None
        primary = next((sw for sw in self.applier.order if sw.role == "primary"), None)
        session = self.applier.session_for(primary.name) if primary is not None else None
        if session is None:
            return self._connections
        from . import p4names as n
        from .snapshot import backend_key

        owner = {b.backend_id: (s.name, backend_key(b, s.backend_mode)) for s in self.last.services for b in s.backends}
        if not owner:
            return {}
        ids = sorted(owner)
        syn = {c.index: c.packets for c in await session.read_counters(n.BACKEND_SYN, ids)}
        fin = {c.index: c.packets for c in await session.read_counters(n.BACKEND_FIN, ids)}
        out: dict[str, dict[str, int]] = {}
        for bid, (name, key) in owner.items():
            out.setdefault(name, {})[key] = max(0, syn.get(bid, 0) - fin.get(bid, 0))
        self._connections = out
        return out

    async def reconcile(
        self, cluster: ClusterState, changed: frozenset[str] | None, intent_commit: str | None
    ) -> TransactionRecord:
        t0 = time.perf_counter()
        connections = await self.connections()
        if connections is not None:
            changed = None  # the counters move without cluster events: compare every Service's inputs
        rendered = self.renderer.render(
            self.config, cluster, self.last, p4info_digest=self.p4info_digest, intent_commit=intent_commit,
            changed=changed, connections=connections,
        )
        if not rendered.changed:
            record = TransactionRecord(self.config.key, rendered.snapshot.version, "up-to-date", issues=rendered.issues,
                                       seconds=time.perf_counter() - t0)
            if self.on_result is not None:
                await self.on_result(record, None, rendered.snapshot)
            return record
        target = rendered.snapshot
        why = self._why(cluster, target)
        if self.audit is not None:
            # Versions stay unique in the audit history, also after rollbacks.
            target = target.with_version(self.audit.next_version(self.config.key))
            self.audit.record(target, "pending", reason=why)
        result = await self.applier.apply(target, self.last, self.probe)
        writes = sum(sum(k.values()) for k in result.writes().values())
        if self.audit is not None:
            outcome, reason = result.audit_record()
            self.audit.record(target, outcome, reason="; ".join(r for r in (why, reason) if r))
        fell_back: tuple[str, ...] = ()
        self.needs_retry = result.outcome == "failed"
        if result.ok:
            self.last = target
        elif self.probe is not None and result.outcome == "rolled-back":
            report = getattr(self.probe, "last_report", None)
            failing = tuple(getattr(report, "failing_services", ()) or ())
            fell_back = await self._fall_back(failing, f"health probe failed after applying v{target.version}: {result.reason}")
        record = TransactionRecord(
            self.config.key, target.version, result.outcome, result.reason, writes, fell_back,
            seconds=time.perf_counter() - t0, issues=rendered.issues,
        )
        if self.on_result is not None:
            await self.on_result(record, result, target)
        return record

    def _why(self, cluster: ClusterState, target: Snapshot) -> str:
        """The audit Reason of a version that takes Services off the switches for a kube-proxy
        fallback, or puts them back after one (the cluster change alone would not say why)."""
        if not self.fallen_back and not self._recovered:
            return ""  # the usual pass: nothing to explain, no work on the hot path
        before = {s.service_key for s in self.last.services} if self.last is not None else set()
        after = {s.service_key for s in target.services}
        parts = []
        for key in sorted(before - after):
            svc = cluster.services.get(key)
            if svc is not None and svc.auto_fallback:
                parts.append(f"{key} fell back to kube-proxy ({self.fallen_back.get(key) or svc.annotation(FALLBACK_REASON_ANNOTATION) or 'automatic'})")
        for key in sorted(after - before):
            if key in self._recovered:
                parts.append(f"{key} recovered from its kube-proxy fallback")
                self._recovered.discard(key)
        return "; ".join(parts)[:900]

    async def _fall_back(self, services: tuple[str, ...], reason: str) -> tuple[str, ...]:
        if self.fallback is None or not services:
            return ()
        done = []
        for key in services:
            try:
                await self.fallback.fall_back(key, reason[:500])
                self.fallen_back[key] = reason
                done.append(key)
            except Exception as e:  # noqa: BLE001 - one Service's patch failing must not stop the others
                log.error("%s: fallback of %s failed: %s", self.config.key, key, e)
        return tuple(done)

    async def health_round(self, cluster: ClusterState) -> list[TransactionRecord]:
        """Periodic health (DESIGN.md 6): switch liveness, drift read-back and repair, and the
        backends of every served Service. A primary unhealthy `failureThreshold` rounds in a
        row falls back every Service it carries; a Service whose backends are all down as long
        falls back alone. Returns the records of what it changed."""
        from .health import Endpoint, check_drift, check_switch, probe_endpoints

        check = self.config.health_check
        records: list[TransactionRecord] = []
        if not check.enabled or self.last is None:
            return records
        self._rounds += 1
        for sw in self.applier.order:
            session = self.applier.session_for(sw.name)
            if session is None or not session.is_primary:
                session = await self.applier.reconnect(sw.name)  # a switch that came back is seen here
            live = await check_switch(session, timeout=check.timeout_s, expected_cookie=self.applier.cookie) if session else None
            if live is not None and live.alive:
                self._switch_failures[sw.name] = 0
                if sw.name in self.unhealthy_switches:
                    log.warning("%s: switch %s is healthy again; reading it back in full", self.config.key, sw.name)
                    self.unhealthy_switches.discard(sw.name)
                    self.applier.forget(sw.name)
                continue
            n = self._switch_failures[sw.name] = self._switch_failures.get(sw.name, 0) + 1
            if n >= check.failure_threshold and sw.name not in self.unhealthy_switches:
                self.unhealthy_switches.add(sw.name)
                why = live.reason if live is not None else "no open P4Runtime session"
                log.error("%s: switch %s (%s) unhealthy: %s", self.config.key, sw.name, sw.role, why)
                self.applier.forget(sw.name)
                if sw.role == "primary":
                    served = tuple(sorted({s.service_key for s in self.last.services if s.backends}))
                    done = await self._fall_back(served, f"switch {sw.name} unhealthy: {why}")
                    records.append(TransactionRecord(self.config.key, self.last.version, "fell-back", why, fell_back=done))
        if self._rounds % self.drift_every == 0 and not self.unhealthy_switches:
            for sw in self.applier.order:
                session = self.applier.session_for(sw.name)
                if session is None:
                    continue
                report = await check_drift(session, self.last, defaults=False)
                if not report.ok:
                    log.warning("%s: drift on %s: %s", self.config.key, sw.name, "; ".join(report.differences[:5]))
                    self.applier.forget(sw.name)
            if not all(self.applier.trusts(sw.name) for sw in self.applier.order):
                result = await self.applier.apply(self.last, self.last)
                writes = sum(sum(k.values()) for k in result.writes().values())
                reason = "drift repaired: " + "; ".join(d for r in result.switches for d in r.drift[:3])
                if self.audit is not None and writes:
                    self.audit.record(self.last, result.audit_record()[0], reason=reason[:500])
                records.append(TransactionRecord(self.config.key, self.last.version, result.outcome, reason, writes))
        # Backends of the Services on the switches: all down for failureThreshold rounds -> fall back.
        by_service: dict[str, set[tuple[str, int]]] = {}
        for s in self.last.services:
            if s.protocol == "TCP" and s.backends:
                by_service.setdefault(s.service_key, set()).update((b.address, b.port) for b in s.backends if b.buckets)
        targets = {Endpoint(a, p) for eps in by_service.values() for a, p in eps}
        results = await probe_endpoints(sorted(targets, key=str), check.timeout_s) if targets else {}
        dead = []
        for key, eps in by_service.items():
            if key in self.fallen_back:
                continue
            if eps and all(results.get(Endpoint(a, p)) is not None for a, p in eps):
                n = self._backend_failures[key] = self._backend_failures.get(key, 0) + 1
                if n >= check.failure_threshold:
                    dead.append(key)
            else:
                self._backend_failures.pop(key, None)
        if dead:
            done = await self._fall_back(tuple(dead), "every backend failed its TCP probe")
            for key in done:
                self._backend_failures.pop(key, None)
            records.append(TransactionRecord(self.config.key, self.last.version, "fell-back", "backends down", fell_back=done))
        return records

    def adopt_fallbacks(self, cluster: ClusterState) -> None:
        """After a restart: Services this reconciler had fallen back are still ours to recover."""
        from .cluster.scripted import is_auto_fallback

        for key, svc in cluster.services.items():
            if is_auto_fallback(svc) and key not in self.fallen_back:
                self.fallen_back[key] = svc.annotation(FALLBACK_REASON_ANNOTATION) or ""

    async def check_recovery(self, cluster: ClusterState) -> tuple[str, ...]:
        """Probe the backends of the Services we fell back; lift the fallback of each whose
        backends all answer `successThreshold` rounds in a row."""
        from .health import Endpoint, probe_endpoints

        if self.fallback is None or not self.fallen_back:
            return ()
        if any(sw.role == "primary" and sw.name in self.unhealthy_switches for sw in self.applier.order):
            return ()  # nothing can be served from the switches before the primary is back
        check = self.config.health_check
        recovered = []
        for key in sorted(self.fallen_back):
            svc = cluster.services.get(key)
            if svc is None:
                del self.fallen_back[key]
                continue
            targets = _backend_endpoints(cluster, svc, self.config.backend_mode)
            if not targets:
                self._successes[key] = 0
                continue
            results = await probe_endpoints([Endpoint(a, p) for a, p in targets], check.timeout_s)
            if any(r is not None for r in results.values()):
                self._successes[key] = 0
                continue
            self._successes[key] = self._successes.get(key, 0) + 1
            if self._successes[key] >= check.success_threshold:
                await self.fallback.recover(key)
                del self.fallen_back[key]
                self._successes.pop(key, None)
                self._recovered.add(key)
                recovered.append(key)
        return tuple(recovered)


class Controller:
    """Runs the loop over every LoadBalancerConfig of the intent."""

    def __init__(
        self,
        intent: IntentProvider,
        cluster: ClusterSource,
        *,
        make_worker: Callable[[LoadBalancerConfig], ConfigWorker],
        update_interval: Callable[[LoadBalancerConfig], float] = lambda c: c.update_interval_s,
    ) -> None:
        self.intent = intent
        self.cluster = cluster
        self.make_worker = make_worker
        self.update_interval = update_interval
        self.workers: dict[str, ConfigWorker] = {}
        self.history: list[TransactionRecord] = []
        self.passes = 0
        self.health_rounds = 0
        self._last_health = 0.0
        self._pending_keys: set[str] = set()
        self._full = True  # the next pass renders everything (start, intent change)
        self._wake = asyncio.Event()
        self._pass_done = asyncio.Condition()
        self._intent: IntentSet | None = None

    # -- triggers ---------------------------------------------------------------------------------

    def notify_cluster(self, keys: frozenset[str]) -> None:
        self._pending_keys |= keys
        self._wake.set()

    def notify_intent(self, intent: IntentSet) -> None:
        self._intent = intent
        self._full = True
        self._wake.set()

    async def _follow_cluster(self) -> None:
        async for keys in self.cluster.changes():
            self.notify_cluster(keys)

    async def _follow_intent(self) -> None:
        async for intent in self.intent.changes():
            self.notify_intent(intent)

    # -- the loop ---------------------------------------------------------------------------------

    async def _sync_workers(self, intent: IntentSet) -> list[ConfigWorker]:
        """One worker per config. A changed config gets a new worker (renderer, sessions), but
        only after the old one's streams are closed: the new sessions arbitrate with the same
        election id, which a switch refuses while the old stream still holds it."""
        started = []
        wanted = {c.key: c for c in intent.configs}
        for key in list(self.workers):
            if key not in wanted or self.workers[key].config != wanted[key]:
                old = self.workers.pop(key)
                await old.applier.close()
                if key in wanted:
                    w = self.make_worker(wanted[key])
                    w.last, w.fallen_back = old.last, old.fallen_back
                    self.workers[key] = w
        for key, config in wanted.items():
            if key not in self.workers:
                self.workers[key] = self.make_worker(config)
                started.append(self.workers[key])
        return started

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set; a transaction in flight is finished, never cut in half."""
        self._intent = self.intent.current()
        followers = [asyncio.create_task(self._follow_cluster()), asyncio.create_task(self._follow_intent())]
        try:
            for w in await self._sync_workers(self._intent):
                w.adopt_fallbacks(self.cluster.snapshot())
                self._note(await w.start(self._intent.commit))
            while not stop.is_set():
                if not self._full and not self._pending_keys:
                    # Sleep until a trigger; while Services are fallen back, wake every health
                    # interval to see whether their backends are back.
                    health = min(
                        (w.config.health_check.interval_s for w in self.workers.values() if w.config.health_check.enabled),
                        default=None,
                    )
                    # least-connections follows the switch counters: a pass every updateInterval.
                    lc = min(
                        (max(w.config.update_interval_s, 0.05) for w in self.workers.values()
                         if w.config.algorithm == "least-connections"),
                        default=None,
                    )
                    tick = min((t for t in (health, lc) if t is not None), default=None)
                    t0 = time.monotonic()
                    await _wait_any(self._wake, stop, timeout=tick)
                    if stop.is_set():
                        break
                    if not self._wake.is_set():
                        if lc is not None and time.monotonic() - t0 >= lc - 1e-3:
                            self._full = True  # recompute least-connections weights
                        if health is not None and (lc is None or health <= lc or self._health_due(health)):
                            await self._health_tick()
                        if not self._full:
                            continue
                # Coalesce: let the burst finish for the shortest updateInterval of the configs.
                window = min((self.update_interval(w.config) for w in self.workers.values()), default=0.0)
                if window > 0:
                    await _wait_any(stop, timeout=window)
                self._wake.clear()
                keys, self._pending_keys = frozenset(self._pending_keys), set()
                full, self._full = self._full, False
                assert self._intent is not None
                for w in await self._sync_workers(self._intent):
                    self._note(await w.start(self._intent.commit))
                state = self.cluster.snapshot()
                for w in list(self.workers.values()):
                    self._note(await w.reconcile(state, None if full else keys, self._intent.commit))
                async with self._pass_done:
                    self.passes += 1
                    self._pass_done.notify_all()
        finally:
            for t in followers:
                t.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            for w in self.workers.values():
                await w.applier.close()

    def _health_due(self, interval: float) -> bool:
        now = time.monotonic()
        if now - self._last_health >= interval:
            return True
        return False

    async def _health_tick(self) -> None:
        self._last_health = time.monotonic()
        state = self.cluster.snapshot()
        for w in list(self.workers.values()):
            try:
                for record in await w.health_round(state):
                    self._note(record)
                for key in await w.check_recovery(state):
                    log.info("%s: %s: backends answer again, automatic fallback lifted", w.config.key, key)
                if w.on_health is not None:
                    await w.on_health(w)
            except Exception as e:  # noqa: BLE001 - a failed health round is reported, the loop goes on
                log.error("%s: health round failed: %s", w.config.key, e)
        if any(w.needs_retry for w in self.workers.values()):
            self._full = True  # a transaction that could not start (a switch was down) is retried
        async with self._pass_done:
            self.health_rounds += 1
            self._pass_done.notify_all()

    def _note(self, record: TransactionRecord) -> None:
        self.history.append(record)
        if record.outcome not in ("up-to-date",):
            (log.info if record.outcome in ("applied", "resynced", "unchanged") else log.warning)(
                "%s v%s %s (%d writes, %.0f ms)%s", record.config, record.version, record.outcome, record.writes,
                record.seconds * 1000, f": {record.reason}" if record.reason else "",
            )

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Tests and the demo: wait (on pass completions) until `predicate()` holds."""
        async with self._pass_done:
            await asyncio.wait_for(self._pass_done.wait_for(predicate), timeout)

    async def wait_passes(self, n: int, timeout: float = 10.0) -> None:
        """Tests and the demo: wait until `n` passes have completed."""
        async with self._pass_done:
            await asyncio.wait_for(self._pass_done.wait_for(lambda: self.passes >= n), timeout)


def _backend_endpoints(cluster: ClusterState, svc: Any, mode: str) -> list[tuple[str, int]]:
    """(address, port) of every backend a Service would have: node IP and nodePort per port, or
    each ready endpoint and its target port."""
    out: list[tuple[str, int]] = []
    eps = cluster.endpoints.get(svc.key, ())
    for port in svc.ports:
        if port.protocol != "TCP":
            continue  # only TCP can be probed by a connect
        if mode == "nodePort":
            if not port.node_port:
                continue
            for node in sorted({ep.node for ep in eps}):
                n = cluster.nodes.get(node)
                if n is not None and n.internal_ip:
                    out.append((n.internal_ip, port.node_port))
        else:
            for ep in eps:
                number = dict(ep.ports).get(port.name)
                if number:
                    out.append((ep.address, number))
    return out


async def _wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


__all__ = ["ConfigWorker", "Controller", "TransactionRecord", "ClusterSource", "IntentProvider", "FallbackWriter"]

