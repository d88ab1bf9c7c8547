"""The reconcile loop (`p4kube run`): triggers -> render -> guard -> audit -> apply -> probe -> fallback.

Everything the loop talks to is behind a small protocol, so the same loop runs against a live
cluster (reconciler.cluster.live), a recorded file, or the demo's scripted cluster:

    IntentProvider   current IntentSet, and a stream of new ones (watchdog on a checkout, CRs)
    ClusterSource    current ClusterState, and a stream of changed Service keys
    FallbackWriter   fall a Service back to kube-proxy, and recover it (reconciler.fallback)

One asyncio task runs the loop; triggers only record what changed, and the loop coalesces them
for the config's updateInterval before rendering, so a burst of EndpointSlice updates costs one
transaction. Transactions of a config never overlap.

It is level-triggered and conservative (DESIGN.md 6.1):

- "up to date" means every switch was read back and holds the last applied snapshot; a switch
  whose state is not known (new stream, reconnect, pipeline push, failed write, a failed quick
  check, the periodic full read-back) is read back and repaired on its own, whatever the other
  switch does;
- a switch the reconciler cannot reach degrades the config and is reported; it never falls a
  Service back (it keeps forwarding with its tables). Fallback follows data-path evidence only;
- a transaction that would take more than `spec.safety.maxRemovalPercent` of the Services off
  the switches is refused (Stalled) and so is a mass fallback;
- failed transactions are retried with backoff (1 s doubling to 5 min, reset on success or new
  input); an attempt that cannot reach the switches is not recorded in the audit repository;
- time comes from a Clock, so tests run the loop on fake time; the render's wall clock (the
  epoch seconds drains start and end by) from `wall`, which tests derive from that Clock;
- a bucket move is two transactions (DESIGN.md 5.1): the one that starts drains, and, at the
  drains' `until` (a wake-up of the loop, also after a restart: the audit record carries it),
  the one that writes the plain entries. A failed step 2 is retried with backoff; meanwhile the
  switches keep the draining entries, which serve every connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol, overload

from .apply import ApplyResult, TwoSwitchApplier
from .audit.errors import AuditError
from .audit.trust import UntrustedRecord
from .backoff import Backoff
from .drain_progress import buckets_of, finished, reason_parts, started
from .cluster.model import ClusterNotReady, ClusterState, Service
from .fallback import FALLBACK_REASON_ANNOTATION
from .guard import fallback_verdict, removal_verdict, unaccounted_message
from .health import Clock, Endpoint, LoopClock, TargetState, Thresholds, advance, probe_endpoints
from .intent.model import IntentSet, LoadBalancerConfig
from .outcome import Outcome
from .render import Renderer, RenderIssue
from .snapshot import Snapshot, format_time
from .switch import SwitchError

log = logging.getLogger("reconciler.controller")

RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 300.0
HISTORY_LIMIT = 1000


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


@dataclass(frozen=True)
class TransactionRecord:
    """What one pass did, for logs, tests, the demo and status."""

    config: str
    version: int | None
    outcome: Outcome
    reason: str = ""
    writes: int = 0
    fell_back: tuple[str, ...] = ()
    recovered: tuple[str, ...] = ()
    seconds: float = 0.0
    issues: tuple[RenderIssue, ...] = ()
    retry_in: float | None = None  # seconds until the next attempt, when one is scheduled
    switch: str | None = None  # the one switch a health round's record is about
    draining_until: float | None = None  # epoch seconds: the switches hold drains until then

    @property
    def draining(self) -> str:
        """ "draining until 2026-12-06T04:01:00Z" while a drain runs, else "". """
        return f"draining until {format_time(self.draining_until)}" if self.draining_until is not None else ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", Outcome(self.outcome))


class History:
    """The newest `limit` records, indexed by absolute position: len() counts every record
    ever noted, so `history[n:]` taken after `n = len(history)` still means "since then"."""

    def __init__(self, limit: int = HISTORY_LIMIT) -> None:
        self._items: deque[TransactionRecord] = deque(maxlen=limit)
        self._total = 0

    def append(self, record: TransactionRecord) -> None:
        self._items.append(record)
        self._total += 1

    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[TransactionRecord]:
        return iter(self._items)

    @property
    def retained(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> TransactionRecord: ...

    @overload
    def __getitem__(self, i: slice) -> list[TransactionRecord]: ...

    def __getitem__(self, i: int | slice) -> TransactionRecord | list[TransactionRecord]:
        first = self._total - len(self._items)  # absolute index of the oldest retained record
        if isinstance(i, slice):
            start, stop, step = i.indices(self._total)
            return [self._items[k - first] for k in range(max(start, first), stop, step) if k >= first]
        k = i + self._total if i < 0 else i
        if not first <= k < self._total:
            raise IndexError(f"record {i} is not retained (the newest {len(self._items)} of {self._total} are)")
        return self._items[k - first]


def _writes(result: ApplyResult) -> int:
    return sum(sum(k.values()) for k in result.writes().values())


@dataclass
class ConfigWorker:
    """Renders and applies one LoadBalancerConfig; remembers what its switches should hold."""

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
    clock: Clock = field(default_factory=LoopClock)
    # The render's clock: drains start and end by it (epoch seconds); tests derive it from `clock`.
    wall: Callable[[], float] = time.time
    last: Snapshot | None = None  # the last applied snapshot: what both switches must hold
    fallen_back: dict[str, str] = field(default_factory=dict)  # Service key -> reason (ours)
    switch_health: dict[str, TargetState] = field(default_factory=dict)
    service_health: dict[str, TargetState] = field(default_factory=dict)  # backends of served Services
    recovery_health: dict[str, TargetState] = field(default_factory=dict)  # evidence for fallen-back ones
    backoff: Backoff = field(default_factory=lambda: Backoff(RETRY_INITIAL_S, RETRY_MAX_S, jitter=0.0))
    retry_at: float | None = None  # clock time of the next attempt of a failed transaction
    stalled: str | None = None  # why the last pass could not make progress (refusal, audit fault)
    _last_full_read: dict[str, float] = field(default_factory=dict)
    _connections: dict[str, dict[str, int]] | None = None
    _recovered: set[str] = field(default_factory=set)  # lifted fallbacks not yet back on the switches
    _unrecorded: tuple[Snapshot, str, str] | None = None  # an outcome the audit repository refused
    adopted: bool = False  # fallbacks of an earlier run taken over (needs a listed cluster)
    started: bool = False  # start() read the last applied snapshot (or there is no audit repository)
    adopt_switches: bool = False  # no record of the config, switches serving: replace their entries anyway
    # (digest, until) of the last applied snapshot whose drain end a render has already seen:
    # its wake-up is spent (a refused or unchanged pass must not wake the loop again and again).
    _drain_seen: tuple[str, float] | None = None

    # -- state ------------------------------------------------------------------------------------

    @property
    def unhealthy_switches(self) -> set[str]:
        return {name for name, st in self.switch_health.items() if not st.healthy}

    def retry_due(self, now: float) -> bool:
        return self.retry_at is not None and now >= self.retry_at

    def drain_at(self) -> float | None:
        """Loop-clock time at which the first drain of the last applied snapshot ends (step 2 is
        due), or None: nothing drains, a retry is scheduled (it does step 2), or a render has
        already seen this end. `until` is wall time: converted through the two clocks' offset."""
        if self.last is None or self.retry_at is not None:
            return None
        until = self.last.drain_until()
        if until is None or self._drain_seen == (self.last.digest, until):
            return None
        return self.clock.now() + max(0.0, until - self.wall())

    def drain_due(self, now: float) -> bool:
        # Also by the wall clock: once `until` has passed, drain_at() is the loop clock's "now" at
        # the call, later than `now`, so on a real clock `now >= at` alone never holds (a busy loop).
        at = self.drain_at()
        if at is None:
            return False
        until = self.last.drain_until() if self.last is not None else None
        return now >= at or (until is not None and self.wall() >= until)

    def _schedule_retry(self) -> float:
        delay = self.backoff.next()
        self.retry_at = self.clock.now() + delay
        return delay

    def _succeeded(self) -> None:
        self.backoff.reset()
        self.retry_at = None
        self.stalled = None

    def new_input(self) -> None:
        """New intent or cluster state: try at once, and start the backoff from 1 s again."""
        self.backoff.reset()
        self.retry_at = None

    def _thresholds(self) -> Thresholds:
        check = self.config.health_check
        return Thresholds(check.failure_threshold, check.success_threshold)

    def _record(self, outcome: Outcome, version: int | None = None, reason: str = "", **kw: Any) -> TransactionRecord:
        kw.setdefault("draining_until", self.last.drain_until() if self.last is not None else None)
        return TransactionRecord(self.config.key, self.last.version if version is None and self.last else version,
                                 outcome, reason, **kw)

    async def _report(self, record: TransactionRecord, result: ApplyResult | None, snap: Snapshot | None) -> TransactionRecord:
        if self.on_result is not None:
            await self.on_result(record, result, snap)
        return record

    def _audit(self, snapshot: Snapshot, outcome: str, reason: str = "") -> None:
        """Record in the audit repository; an outcome it refuses is kept and recorded later."""
        if self.audit is None:
            return
        if self._unrecorded is not None:
            old, old_outcome, old_reason = self._unrecorded
            self.audit.record(old, old_outcome, reason=old_reason)
            self._unrecorded = None
        self.audit.record(snapshot, outcome, reason=reason)

    # -- start ------------------------------------------------------------------------------------

    async def start(self, intent_commit: str | None) -> TransactionRecord:
        """On (re)start: close a transaction a crash left pending, then read both switches back
        and converge each on the last applied snapshot without rewriting what is already right
        (a restart causes no table writes)."""
        t0 = time.perf_counter()
        untrusted = ""
        if self.audit is not None:
            try:
                close = getattr(self.audit, "close_interrupted", None)
                if close is not None and close(self.config.key) is not None:
                    log.warning("%s: the last transaction was interrupted before its outcome was recorded; "
                                "recorded as interrupted, the switches are read back now", self.config.key, extra={"config": self.config.key})
                self.last = self.audit.last_applied(self.config.key)
            except UntrustedRecord as e:
                # A record whose signature does not verify is not what the switches hold: what
                # they serve is then unaccounted for, as with no record (below).
                self.last, untrusted = None, f"{e}. "
            except AuditError as e:
                delay = self._schedule_retry()
                self.stalled = f"audit repository unavailable: {e}"
                return await self._report(self._record(Outcome.WAITING, None, f"{self.stalled}; nothing is written "
                                                       f"until it can be read; next try in {delay:.0f}s", retry_in=delay),
                                          None, None)
        if self.last is None and not self.adopt_switches:
            # No record of this config: the switches must not be serving Services already, or
            # a fresh render would replace what nothing accounts for (a lost audit history).
            try:
                held = await self.applier.unaccounted()
            except SwitchError as e:
                delay = self._schedule_retry()
                return await self._report(self._record(
                    Outcome.WAITING, None, f"cannot read the switches before a first apply: {e}; next try in {delay:.0f}s",
                    retry_in=delay), None, None)
            if held:
                reason = untrusted + unaccounted_message(self.config, held, "the audit repository" if self.audit else "the state directory")
                if reason != self.stalled:
                    log.error("%s", reason, extra={"config": self.config.key})
                self.stalled = reason
                return await self._report(self._record(Outcome.REFUSED, None, reason), None, None)
        self.started = True
        if self.last is None:
            return await self._report(self._record(Outcome.UP_TO_DATE, None, "nothing applied yet"), None, None)
        return await self._sync("start", t0)

    async def _sync(self, why: str, t0: float) -> TransactionRecord:
        """Read back every switch not known to hold `last`, and repair it (each on its own)."""
        assert self.last is not None
        result = await self.applier.sync(self.last)
        writes = _writes(result)
        if result.outcome in ("applied", "unchanged"):
            outcome, reason = Outcome.RESYNCED, ""
            if writes:
                reason = f"{why}: repaired " + "; ".join(r.describe() for r in result.switches if r.writes)
                self._audit_repair(reason)
        else:
            outcome = Outcome.DEGRADED if result.outcome == "degraded" else Outcome.FAILED
            reason = result.reason or "; ".join(r.describe() for r in result.switches if r.state != "unchanged")
        record = self._record(outcome, reason=reason, writes=writes, seconds=time.perf_counter() - t0)
        return await self._report(record, result, self.last)

    def _audit_repair(self, reason: str) -> None:
        if self.audit is None or self.last is None:
            return
        try:
            self._audit(self.last, "applied", reason[:900])
        except AuditError as e:
            log.error("%s: could not record the repair in the audit repository: %s", self.config.key, e,
                      extra={"config": self.config.key, "version": self.last.version})

    # -- one pass ---------------------------------------------------------------------------------

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
        try:
            syn = {c.index: c.packets for c in await session.read_counters(n.BACKEND_SYN, ids)}
            fin = {c.index: c.packets for c in await session.read_counters(n.BACKEND_FIN, ids)}
        except SwitchError as e:
            log.warning("%s: reading connection counters failed, keeping the last estimate: %s", self.config.key, e, extra={"config": self.config.key})
            return self._connections
        out: dict[str, dict[str, int]] = {}
        for bid, (name, key) in owner.items():
            out.setdefault(name, {})[key] = max(0, syn.get(bid, 0) - fin.get(bid, 0))
        self._connections = out
        return out

    async def reconcile(
        self, cluster: ClusterState, changed: frozenset[str] | None, intent_commit: str | None
    ) -> TransactionRecord:
        if not self.started:
            # The last applied snapshot could not be read at start: rendering without it would
            # allocate ids and VIPs afresh and rewrite the switches. Start again first.
            record = await self.start(intent_commit)
            if not self.started:
                return record
        t0 = time.perf_counter()
        connections = await self.connections()
        if connections is not None:
            changed = None  # the counters move without cluster events: compare every Service's inputs
        now = self.wall()
        rendered = self.renderer.render(
            self.config, cluster, self.last, p4info_digest=self.p4info_digest, intent_commit=intent_commit,
            changed=changed, connections=connections, now=now,
        )
        if self.last is not None:
            until = self.last.drain_until()
            if until is not None and now >= until:
                self._drain_seen = (self.last.digest, until)  # this render ended it: its wake-up is spent
        if not rendered.changed:
            if self.last is not None and not all(self.applier.trusts(sw.name) for sw in self.applier.order):
                return await self._sync("read back before saying up to date", t0)  # level-triggered
            self._succeeded()
            record = self._record(Outcome.UP_TO_DATE, rendered.snapshot.version, issues=rendered.issues,
                                  seconds=time.perf_counter() - t0)
            return await self._report(record, None, rendered.snapshot)
        target = rendered.snapshot

        verdict = removal_verdict(self.last, target, self.config.safety.max_removal_percent)
        if not verdict.allowed:
            reason = verdict.describe()
            if reason != self.stalled:
                log.error("%s: %s", self.config.key, reason, extra={"config": self.config.key, "version": target.version})
            self.stalled = reason
            self.retry_at = None  # only new input (intent raising the limit, Services returning) changes it
            record = self._record(Outcome.REFUSED, target.version, reason, issues=rendered.issues,
                                  seconds=time.perf_counter() - t0)
            return await self._report(record, None, self.last)

        # Reach every switch the transaction needs before anything is recorded or written: an
        # outage is retried with backoff, not recorded as a failed attempt every tick.
        missing = await self.applier.unreachable()
        if missing:
            delay = self._schedule_retry()
            reason = f"{missing}: nothing was written; next try in {delay:.0f}s"
            record = self._record(Outcome.FAILED, target.version, reason, issues=rendered.issues,
                                  seconds=time.perf_counter() - t0, retry_in=delay)
            return await self._report(record, None, self.last)

        why = self._why(cluster, target)
        if self.audit is not None:
            try:
                # Versions stay unique in the audit history, also after rollbacks.
                target = target.with_version(self.audit.next_version(self.config.key))
                self._audit(target, "pending", why)
            except AuditError as e:
                delay = self._schedule_retry()
                self.stalled = f"audit repository unavailable: {e}"
                record = self._record(Outcome.WAITING, target.version, f"{self.stalled}; nothing was written; "
                                      f"next try in {delay:.0f}s", issues=rendered.issues, retry_in=delay,
                                      seconds=time.perf_counter() - t0)
                return await self._report(record, None, self.last)

        result = await self.applier.apply(target, self.last, self.probe)
        writes = _writes(result)
        if self.audit is not None:
            outcome_text, reason_text = result.audit_record()
            reason_text = "; ".join(r for r in (why, reason_text) if r)
            try:
                self._audit(target, outcome_text, reason_text)
            except AuditError as e:
                # The switches moved; the record follows as soon as the repository takes it.
                self._unrecorded = (target, outcome_text, reason_text)
                log.error("%s: v%d %s, but the audit repository refused the record (kept, retried): %s",
                          self.config.key, target.version, result.outcome, e,
                          extra={"config": self.config.key, "version": target.version})
        fell_back: tuple[str, ...] = ()
        retry_in: float | None = None
        if result.ok:
            self._log_drains(self.last, target)
            self.last = target
            self._succeeded()
        else:
            retry_in = self._schedule_retry()
            if self.probe is not None and result.outcome == "rolled-back":
                report = getattr(self.probe, "last_report", None)
                failing = tuple(getattr(report, "failing_services", ()) or ())
                fell_back = await self._fall_back(failing, f"health probe failed after applying v{target.version}: {result.reason}")
        reason = result.reason + (f"; next try in {retry_in:.0f}s" if retry_in is not None else "")
        record = TransactionRecord(
            self.config.key, target.version, Outcome(result.outcome), reason, writes, fell_back,
            seconds=time.perf_counter() - t0, issues=rendered.issues, retry_in=retry_in,
            draining_until=self.last.drain_until() if self.last is not None else None,
        )
        return await self._report(record, result, target)

    def _log_drains(self, before: Snapshot | None, target: Snapshot) -> None:
        """One info line per transaction that starts drains, one per transaction that ends some."""
        if (before is None or before.drain_until() is None) and target.drain_until() is None:
            return  # the usual transaction: no drains either side
        fields = {"config": self.config.key, "version": target.version}
        begun = started(before, target)
        if begun is not None:
            log.info("%s v%d: drain started: %s", self.config.key, target.version, begun.describe(),
                     extra={**fields, "drainUntil": format_time(begun.until), "generation": begun.generation})
        ended = finished(before, target)
        if ended is not None:
            log.info("%s v%d: drain finished: %s now hold their plain entries", self.config.key, target.version,
                     buckets_of(ended), extra=fields)

    def _why(self, cluster: ClusterState, target: Snapshot) -> str:
        """The audit Reason of a version that starts or finishes connection drains, takes Services
        off the switches for a kube-proxy fallback, or puts them back after one (the cluster
        change alone would not say why)."""
        parts = reason_parts(self.last, target)
        if not self.fallen_back and not self._recovered:
            return "; ".join(parts)  # the usual pass: nothing more to explain, no work on the hot path
        before = {s.service_key for s in self.last.services} if self.last is not None else set()
        after = {s.service_key for s in target.services}
        for key in sorted(before - after):
            svc = cluster.services.get(key)
            if svc is not None and svc.auto_fallback:
                parts.append(f"{key} fell back to kube-proxy ({self.fallen_back.get(key) or svc.annotation(FALLBACK_REASON_ANNOTATION) or 'automatic'})")
        for key in sorted(after - before):
            if key in self._recovered:
                parts.append(f"{key} recovered from its kube-proxy fallback")
                self._recovered.discard(key)
        self._recovered &= {k for k in cluster.services}  # Services deleted meanwhile
        return "; ".join(parts)[:900]

    async def _fall_back(self, services: tuple[str, ...], reason: str) -> tuple[str, ...]:
        if self.fallback is None or not services:
            return ()
        verdict = fallback_verdict(self.last, services, self.config.safety.max_removal_percent)
        if not verdict.allowed:
            message = (f"not falling back {len(verdict.removed)} of {verdict.served} Services at once "
                       f"(more than spec.safety.maxRemovalPercent {verdict.limit_percent}%): so many failing "
                       f"together points at the prober's network, not the Services: {', '.join(verdict.removed[:20])}")
            if message != self.stalled:
                log.error("%s: %s", self.config.key, message, extra={"config": self.config.key})
            self.stalled = message
            return ()
        done = []
        for key in services:
            try:
                await self.fallback.fall_back(key, reason[:500])
                self.fallen_back[key] = reason
                done.append(key)
            except Exception as e:  # noqa: BLE001 - one Service's patch failing must not stop the others
                log.error("%s: fallback of %s failed: %s", self.config.key, key, e, extra={"config": self.config.key, "service": key})
        return tuple(done)

    # -- health -----------------------------------------------------------------------------------

    async def health_round(self, cluster: ClusterState) -> list[TransactionRecord]:
        """Periodic health (DESIGN.md 6.1): each switch on its own (reachable? quick check of
        pipeline cookie and entry counts; full read-back every readBackInterval; repair of what
        differs), then the backends of every served Service (all down for failureThreshold
        rounds: that Service falls back). A switch that cannot be reached degrades the config;
        no Service falls back for it. Returns the records of what it changed."""
        records: list[TransactionRecord] = []
        if self.last is None:
            return records
        # The switches are checked whether or not probes are enabled: what they hold is not a probe.
        for sw in self.applier.order:
            record = await self._switch_round(sw.name, sw.role)
            if record is not None:
                records.append(await self._report(record, None, self.last))
        if not self.config.health_check.enabled:
            return records
        record = await self._backend_round()
        if record is not None:
            records.append(await self._report(record, None, self.last))
        return records

    async def _switch_round(self, name: str, role: str) -> TransactionRecord | None:
        assert self.last is not None
        t0 = time.perf_counter()
        now = self.clock.now()
        why = await self.applier.reach(name)  # a switch that came back is seen here
        if not why:
            try:
                quick = await self.applier.quick_check(name, self.last)
                if not quick.ok:
                    log.warning("%s: switch %s: %s; reading it back in full", self.config.key, name, quick.reason,
                                extra={"config": self.config.key, "version": self.last.version, "switch": name})
            except SwitchError as e:
                why = str(e)
        before = self.switch_health.get(name, TargetState())
        after = self.switch_health[name] = advance(before, not why, why, self._thresholds())
        if why:
            if before.healthy and not after.healthy:
                reason = (f"switch {name} ({role}) {why}. It keeps forwarding with the tables it "
                          f"holds; no Service falls back for it; it is read back in full when it returns")
                return self._record(Outcome.DEGRADED, reason=reason, seconds=time.perf_counter() - t0, switch=name)
            return None
        interval = self.config.health_check.read_back_interval_s
        last_full = self._last_full_read.setdefault(name, now)
        if interval > 0 and now - last_full >= interval:
            self.applier.forget(name)  # the periodic full read-back
        if self.applier.trusts(name):
            if not before.healthy:
                return self._record(Outcome.RESYNCED, reason=f"switch {name} ({role}) is back and holds v{self.last.version}",
                                    seconds=time.perf_counter() - t0, switch=name)
            return None
        report = await self.applier.sync_switch(name, self.last)
        self._last_full_read[name] = now
        writes = sum(sum(k.values()) for k in report.writes.values())
        if report.state in ("failed", "unreachable"):
            reason = f"switch {name} ({role}): read-back and repair failed: {report.reason}"
            return self._record(Outcome.FAILED, reason=reason, writes=writes, seconds=time.perf_counter() - t0, switch=name)
        if not writes and before.healthy:
            return None  # the periodic read-back found what it should
        back = "" if before.healthy else "is back: "
        reason = (f"switch {name} ({role}) {back}read back in full"
                  + (f" and repaired to v{self.last.version} with {writes} writes" if writes else f", holds v{self.last.version}"))
        if report.pipeline_pushed:
            reason += " (it had lost its pipeline: pushed again)"
        if report.drift:
            reason += "; first differences: " + "; ".join(report.drift[:3])
        if writes:
            self._audit_repair("drift repaired: " + reason)
        return self._record(Outcome.RESYNCED, reason=reason, writes=writes, seconds=time.perf_counter() - t0, switch=name)

    async def _backend_round(self) -> TransactionRecord | None:
        """Backends of the Services on the switches: all down for failureThreshold rounds -> fall back."""
        assert self.last is not None
        by_service: dict[str, set[Endpoint]] = {}
        for s in self.last.services:
            if s.protocol == "TCP" and s.backends:
                by_service.setdefault(s.service_key, set()).update(Endpoint(b.address, b.port) for b in s.backends if b.buckets)
        for key in list(self.service_health):
            if key not in by_service:
                del self.service_health[key]  # bounded: only Services on the switches
        targets = {ep for eps in by_service.values() for ep in eps}
        if not targets:
            return None
        results = await probe_endpoints(sorted(targets), self.config.health_check.timeout_s)
        dead: list[str] = []
        for key, eps in sorted(by_service.items()):
            if key in self.fallen_back or not eps:
                continue
            failures = [f"{ep}: {results[ep]}" for ep in sorted(eps) if results.get(ep) is not None]
            ok = len(failures) < len(eps)
            before = self.service_health.get(key, TargetState())
            after = self.service_health[key] = advance(before, ok, "; ".join(failures[:3]), self._thresholds())
            if not after.healthy:
                dead.append(key)
        if not dead:
            return None
        done = await self._fall_back(tuple(dead), "every backend failed its TCP probe")
        for key in done:
            self.service_health.pop(key, None)
        if not done:
            return self._record(Outcome.REFUSED, reason=self.stalled or "fallback refused") if self.stalled else None
        return self._record(Outcome.FELL_BACK, reason="backends down: " + ", ".join(done), fell_back=done)

    def adopt_fallbacks(self, cluster: ClusterState) -> None:
        """After a restart: Services this reconciler had fallen back are still ours to recover."""
        from .cluster.scripted import is_auto_fallback

        self.adopted = True
        for key, svc in cluster.services.items():
            if is_auto_fallback(svc) and key not in self.fallen_back:
                self.fallen_back[key] = svc.annotation(FALLBACK_REASON_ANNOTATION) or ""

    async def check_recovery(self, cluster: ClusterState) -> tuple[str, ...]:
        """Lift the fallback of each Service whose evidence holds `successThreshold` rounds in a
        row: its TCP backends answer; for a Service without TCP ports (UDP), its ready endpoints
        are on nodes with an address and those nodes' TCP backends of served Services answer."""
        if self.fallback is None or not self.fallen_back:
            return ()
        if any(sw.role == "primary" and sw.name in self.unhealthy_switches for sw in self.applier.order):
            return ()  # nothing can be served from the switches before the primary is back
        check = self.config.health_check
        recovered = []
        for key in sorted(self.fallen_back):
            svc = cluster.services.get(key)
            if svc is None:  # deleted: nothing to recover
                self.fallen_back.pop(key, None)
                self.recovery_health.pop(key, None)
                continue
            why = await self._recovery_evidence(cluster, svc)
            before = self.recovery_health.get(key, TargetState(healthy=False))
            after = self.recovery_health[key] = advance(before, why is None, why or "", self._thresholds())
            if not after.healthy:
                continue
            try:
                await self.fallback.recover(key)
            except Exception as e:  # noqa: BLE001 - retried next round
                log.error("%s: lifting the fallback of %s failed: %s", self.config.key, key, e,
                          extra={"config": self.config.key, "service": key})
                continue
            del self.fallen_back[key]
            self.recovery_health.pop(key, None)
            self._recovered.add(key)
            recovered.append(key)
            log.info("%s: %s: evidence holds for %d round(s), automatic fallback lifted", self.config.key, key,
                     check.success_threshold, extra={"config": self.config.key, "service": key})
        return tuple(recovered)

    async def _recovery_evidence(self, cluster: ClusterState, svc: Service) -> str | None:
        """None when `svc` may return to the switches, else why not yet."""
        timeout = self.config.health_check.timeout_s
        tcp = _backend_endpoints(cluster, svc, self.config.backend_mode, "TCP")
        if tcp:
            results = await probe_endpoints([Endpoint(a, p) for a, p in tcp], timeout)
            down = [f"{ep}: {why}" for ep, why in results.items() if why is not None]
            return "; ".join(down[:3]) if down else None
        # No TCP port: a connect says nothing about UDP. Use what can be had: ready endpoints on
        # nodes with an address, and the TCP backends the switches already send to on those nodes.
        udp = _backend_endpoints(cluster, svc, self.config.backend_mode, None)
        if not udp:
            return "no ready endpoints on a node with an address"
        addresses = {a for a, _ in udp}
        witnesses = sorted({Endpoint(b.address, b.port) for s in (self.last.services if self.last else ())
                            if s.protocol == "TCP" for b in s.backends if b.address in addresses})
        if not witnesses:
            return None
        results = await probe_endpoints(witnesses, timeout)
        if all(why is not None for why in results.values()):
            return "no TCP backend on its nodes answers: " + "; ".join(f"{ep}: {w}" for ep, w in list(results.items())[:3])
        return None


class WorkerRefused(Exception):
    """make_worker's answer for a config the operator's settings do not allow (a switch outside
    --allowed-switches, plaintext without --allow-insecure-switches, a file outside --pipeline-dir):
    that config gets no new worker, and the others carry on."""


class Controller:
    """Runs the loop over every LoadBalancerConfig of the intent."""

    def __init__(
        self,
        intent: IntentProvider,
        cluster: ClusterSource,
        *,
        make_worker: Callable[[LoadBalancerConfig], ConfigWorker],
        update_interval: Callable[[LoadBalancerConfig], float] = lambda c: c.update_interval_s,
        clock: Clock | None = None,
        wall: Callable[[], float] | None = None,
        history_limit: int = HISTORY_LIMIT,
    ) -> None:
        """`clock`: the loop's (monotonic) time; `wall`: the renders' epoch seconds, which drains
        start and end by (None: the workers' own, time.time)."""
        self.intent = intent
        self.cluster = cluster
        self.make_worker = make_worker
        self.update_interval = update_interval
        self.clock: Clock = clock or LoopClock()
        self.wall = wall
        self.workers: dict[str, ConfigWorker] = {}
        self.refused: dict[str, str] = {}  # config key -> why the operator's settings refuse it
        # The intent commit each worker's config was read at: the newest, unless a change was refused.
        self._commit_of: dict[str, str | None] = {}
        self.history = History(history_limit)
        self.passes = 0
        self.health_rounds = 0
        self._next_health: float | None = None
        self._next_lc: float | None = None
        self._pending_keys: set[str] = set()
        self._full = True  # the next pass renders everything (start, intent change)
        self._wake = asyncio.Event()
        self._pass_done = asyncio.Condition()
        self._intent: IntentSet | None = None
        self._cluster_waiting = False

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

    def _new_worker(self, config: LoadBalancerConfig) -> ConfigWorker:
        w = self.make_worker(config)
        w.clock = self.clock
        if self.wall is not None:
            w.wall = self.wall
        return w

    async def _sync_workers(self, intent: IntentSet) -> list[ConfigWorker]:
        """One worker per config. A changed config gets a new worker (renderer, sessions), but
        only after the old one's streams are closed: the new sessions arbitrate with the same
        election id, which a switch refuses while the old stream still holds it. The new
        worker trusts no switch (an address may have changed): its first pass reads them back."""
        started = []
        wanted = {c.key: c for c in intent.configs}
        for key in list(self.refused):
            if key not in wanted:
                del self.refused[key]
        for key in list(self.workers):
            if key not in wanted or self.workers[key].config != wanted[key]:
                # The new worker is built before the old one's streams close (building connects to
                # nothing): a refused config keeps its running worker, as refused intent does.
                w = self._try_new_worker(wanted[key]) if key in wanted else None
                if key in wanted and w is None:
                    continue
                old = self.workers.pop(key)
                await old.applier.close()
                if w is not None:
                    w.last, w.fallen_back = old.last, old.fallen_back
                    w.started, w.adopted = old.started, old.adopted  # its switches are read back by the next pass
                    self.workers[key] = w
        for key, config in wanted.items():
            if key not in self.workers:
                w = self._try_new_worker(config)
                if w is not None:
                    self.workers[key] = w
                    started.append(w)
        self._commit_of = {key: intent.commit if w.config == wanted.get(key) else self._commit_of.get(key)
                           for key, w in self.workers.items()}
        return started

    def _try_new_worker(self, config: LoadBalancerConfig) -> ConfigWorker | None:
        """A worker for `config`, or None when the operator's settings refuse it: said once per
        reason (a refusal is re-checked at every intent change, not logged at every pass)."""
        try:
            w = self._new_worker(config)
        except WorkerRefused as e:
            why = str(e)
            if self.refused.get(config.key) != why:
                self.refused[config.key] = why
                kept = " (its running worker keeps the previous config)" if config.key in self.workers else ""
                log.error("%s: refused, nothing is connected or written for it%s: %s", config.key, kept, why,
                          extra={"config": config.key})
            return None
        if self.refused.pop(config.key, None) is not None:  # the state change back, said once too
            log.info("%s: accepted, reconciled from now on", config.key, extra={"config": config.key})
        return w

    def _due_times(self) -> list[float]:
        now = self.clock.now()
        # Every config gets health rounds: with probes disabled they still check the switches.
        health = min((w.config.health_check.interval_s for w in self.workers.values()), default=None)
        lc = min((max(w.config.update_interval_s, 0.05) for w in self.workers.values()
                  if w.config.algorithm == "least-connections"), default=None)
        self._next_health = None if health is None else (self._next_health or now + health)
        self._next_lc = None if lc is None else (self._next_lc or now + lc)
        due = [t for t in (self._next_health, self._next_lc) if t is not None]
        due += [w.retry_at for w in self.workers.values() if w.retry_at is not None]
        due += [t for w in self.workers.values() if (t := w.drain_at()) is not None]  # step 2 of a move
        return due

    async def _sleep_until_due(self, stop: asyncio.Event) -> None:
        due = self._due_times()
        if not due:
            await _wait_any(self._wake, stop)
            return
        timeout = max(0.0, min(due) - self.clock.now())
        if timeout > 0:
            await self.clock.sleep(timeout, self._wake)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set; a transaction in flight is finished, never cut in half."""
        self._intent = self.intent.current()
        followers = [asyncio.create_task(self._follow_cluster()), asyncio.create_task(self._follow_intent()),
                     asyncio.create_task(_relay(stop, self._wake))]
        try:
            for w in await self._sync_workers(self._intent):
                first = self._cluster_state()
                if first is not None:
                    w.adopt_fallbacks(first)
                self._note(await w.start(self._commit_of.get(w.config.key)))
            while not stop.is_set():
                self._due_times()
                if not self._full and not self._pending_keys:
                    await self._sleep_until_due(stop)
                    if stop.is_set():
                        break
                # Triggers record their input (pending keys, _full) before setting _wake, so
                # clearing it here loses nothing; what is due is decided from the clock.
                self._wake.clear()
                now = self.clock.now()
                if self._next_lc is not None and now >= self._next_lc:
                    self._next_lc = None
                    self._full = True  # recompute least-connections weights
                if self._next_health is not None and now >= self._next_health:
                    self._next_health = None
                    await self._health_tick()  # also under constant churn
                # A retry, or step 2 of a move (the drains of the last applied snapshot ended).
                retry = {k for k, w in self.workers.items() if w.retry_due(now) or w.drain_due(now)}
                if not self._full and not self._pending_keys and not retry:
                    continue
                # Coalesce: let the burst finish for the shortest updateInterval of the configs.
                if self._full or self._pending_keys:
                    window = min((self.update_interval(w.config) for w in self.workers.values()), default=0.0)
                    if window > 0:
                        await self.clock.sleep(window, stop)
                keys, self._pending_keys = frozenset(self._pending_keys), set()
                full, self._full = self._full, False
                fresh = full or bool(keys)
                assert self._intent is not None
                for w in await self._sync_workers(self._intent):
                    self._note(await w.start(self._commit_of.get(w.config.key)))
                state = self._cluster_state()
                if state is None:
                    self._full = self._full or full  # nothing rendered: keep what was asked for
                    self._pending_keys |= keys
                    await self._wait_for_cluster(stop)
                    continue
                for key, w in list(self.workers.items()):
                    if not w.adopted:
                        w.adopt_fallbacks(state)
                    if fresh:
                        w.new_input()
                    elif key not in retry:
                        continue
                    self._note(await w.reconcile(state, None if full or not fresh else keys, self._commit_of.get(key)))
                async with self._pass_done:
                    self.passes += 1
                    self._pass_done.notify_all()
        finally:
            for t in followers:
                t.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            for w in self.workers.values():
                await w.applier.close()

    def _cluster_state(self) -> ClusterState | None:
        """The cluster, or None while the source has not finished listing (never a partial one)."""
        try:
            state = self.cluster.snapshot()
        except ClusterNotReady as e:
            if not self._cluster_waiting:
                log.warning("waiting for the cluster: %s; nothing is rendered or written meanwhile", e)
            self._cluster_waiting = True
            return None
        if self._cluster_waiting:
            log.info("the cluster is listed: reconciling")
            self._cluster_waiting = False
        return state

    async def _wait_for_cluster(self, stop: asyncio.Event) -> None:
        """Until the next cluster event (its first complete list), or stop."""
        self._wake.clear()
        await _wait_any(self._wake, stop)

    async def _health_tick(self) -> None:
        state = self._cluster_state()
        if state is None:
            return
        for w in list(self.workers.values()):
            try:
                for record in await w.health_round(state):
                    self._note(record)
                recovered = await w.check_recovery(state)
                if recovered:
                    self._pending_keys |= set(recovered)  # their annotations changed: render them
                if w.on_health is not None:
                    await w.on_health(w)
            except Exception as e:  # noqa: BLE001 - a failed health round is reported, the loop goes on
                log.error("%s: health round failed: %s", w.config.key, e, exc_info=True, extra={"config": w.config.key})
        async with self._pass_done:
            self.health_rounds += 1
            self._pass_done.notify_all()

    def _note(self, record: TransactionRecord) -> None:
        """The one log line of a transaction or state change, its context as fields (logsetup)."""
        self.history.append(record)
        if record.outcome == Outcome.UP_TO_DATE:
            return
        quiet = record.outcome in (Outcome.APPLIED, Outcome.UNCHANGED) or (record.outcome == Outcome.RESYNCED and not record.writes)
        failed = record.outcome in (Outcome.FAILED, Outcome.ROLLED_BACK)
        (log.info if quiet else log.error if failed else log.warning)(
            "%s v%s %s (%d writes, %.0f ms)%s", record.config, record.version, record.outcome.value, record.writes,
            record.seconds * 1000, f": {record.reason}" if record.reason else "", extra=self._fields(record),
        )

    def _fields(self, record: TransactionRecord) -> dict[str, Any]:
        worker = self.workers.get(record.config)
        fields: dict[str, Any] = {
            "config": record.config, "version": record.version, "outcome": record.outcome.value,
            "writes": record.writes, "seconds": round(record.seconds, 3),
            "switches": [sw.name for sw in worker.applier.order] if worker is not None else [],
        }
        if record.switch is not None:
            fields["switch"] = record.switch
        services = record.fell_back + record.recovered
        if len(services) == 1:
            fields["service"] = services[0]
        elif services:
            fields["services"] = list(services)
        return fields

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Tests and the demo: wait (on pass and health-round completions) until `predicate()` holds."""
        async with self._pass_done:
            await asyncio.wait_for(self._pass_done.wait_for(predicate), timeout)

    async def wait_passes(self, n: int, timeout: float = 10.0) -> None:
        """Tests and the demo: wait until `n` passes have completed."""
        async with self._pass_done:
            await asyncio.wait_for(self._pass_done.wait_for(lambda: self.passes >= n), timeout)


def _backend_endpoints(cluster: ClusterState, svc: Service, mode: str, protocol: str | None) -> list[tuple[str, int]]:
    """(address, port) of every backend a Service would have for ports of `protocol` (None:
    any): node IP and nodePort per port, or each ready endpoint and its target port."""
    out: list[tuple[str, int]] = []
    eps = cluster.endpoints.get(svc.key, ())
    for port in svc.ports:
        if protocol is not None and port.protocol != protocol:
            continue
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


async def _relay(stop: asyncio.Event, wake: asyncio.Event) -> None:
    """Wake the loop when asked to stop."""
    await stop.wait()
    wake.set()


async def _wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


__all__ = [
    "ClusterSource", "ConfigWorker", "Controller", "FallbackWriter", "History", "IntentProvider", "TransactionRecord",
]
