"""Health probes: backend and VIP TCP probes, switch liveness, read-back drift (DESIGN.md 2, 6).

Three layers, each usable on its own:

- a pure per-target state machine (`TargetState`, `advance`): a target turns unhealthy after
  `failure_threshold` consecutive failed probes and healthy again after `success_threshold`
  consecutive successes, so one lost SYN does not fall a Service back and one lucky connect
  does not lift a fallback;
- probes (asyncio, nothing blocks the loop): `tcp_probe` to a backend (node address and node
  port, or pod address in podIP mode) or to a VIP; `check_switch` (a cheap P4Runtime call on an
  open session); `check_drift` (full read-back compared with the snapshot);
- two users of them: the probe the transaction runs right after an apply
  (`PostApplyProbe`, made by `make_post_apply_probe`), which answers with a structured
  `ProbeReport` naming the Services with no healthy backend (fall back just those) and the
  switches whose data path fails; and `HealthMonitor`, which probes a set of targets every
  `interval` and reports each transition through a callback.

Only TCP Service ports are probed: a TCP connect says nothing about a UDP port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .apply import compare_entries
from .intent.model import HealthCheck
from .snapshot import ServiceSnapshot, Snapshot
from .switch import SwitchError, SwitchSession, cookie_problem
from .switch.wire import EncodedEntries, match_readback

log = logging.getLogger("reconciler.health")

TargetKind = Literal["backend", "vip", "switch", "custom"]
# An async check: None when healthy, else the reason.
Check = Callable[[], Awaitable[str | None]]
# (host, port, timeout seconds) -> None when a TCP connection was made, else why not.
Connector = Callable[[str, int, float], Awaitable[str | None]]

__all__ = [
    "Clock",
    "DriftReport",
    "Endpoint",
    "HealthMonitor",
    "LoopClock",
    "ManualClock",
    "PostApplyProbe",
    "ProbeReport",
    "SwitchLiveness",
    "Target",
    "TargetResult",
    "TargetState",
    "Thresholds",
    "Transition",
    "advance",
    "backend_endpoints",
    "backend_targets",
    "check_drift",
    "check_switch",
    "failing_services",
    "make_post_apply_probe",
    "monitor_for",
    "probe_endpoints",
    "switch_target",
    "tcp_probe",
    "vip_targets",
]


# --- the state machine (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    failure: int = 3  # consecutive failures that make a healthy target unhealthy
    success: int = 1  # consecutive successes that make an unhealthy target healthy again

    def __post_init__(self) -> None:
        if self.failure < 1 or self.success < 1:
            raise ValueError(f"thresholds must be at least 1, not failure={self.failure} success={self.success}")

    @classmethod
    def from_check(cls, check: HealthCheck) -> "Thresholds":
        return cls(check.failure_threshold, check.success_threshold)


@dataclass(frozen=True)
class TargetState:
    healthy: bool = True
    failures: int = 0  # consecutive failed probes (0 after a success)
    successes: int = 0  # consecutive successful probes (0 after a failure)
    reason: str = ""  # the last failure's reason while failing or unhealthy


def advance(state: TargetState, ok: bool, reason: str, thresholds: Thresholds) -> TargetState:
    """The state after one probe result."""
    if ok:
        successes = state.successes + 1
        healthy = state.healthy or successes >= thresholds.success
        return TargetState(healthy, 0, successes, "" if healthy else state.reason)
    failures = state.failures + 1
    healthy = state.healthy and failures < thresholds.failure
    return TargetState(healthy, failures, 0, reason or "probe failed")


# --- TCP probes -------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Endpoint:
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


async def tcp_probe(host: str, port: int, timeout: float) -> str | None:
    """Open (and close at once) a TCP connection; None when it was accepted, else why not."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    transport.close()
    return None


async def probe_endpoints(
    endpoints: Iterable[Endpoint],
    timeout: float,
    *,
    concurrency: int = 64,
    connect: Connector = tcp_probe,
) -> dict[Endpoint, str | None]:
    """One probe of each endpoint, at most `concurrency` at a time; endpoint -> failure or None."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    gate = asyncio.Semaphore(concurrency)

    async def one(ep: Endpoint) -> tuple[Endpoint, str | None]:
        async with gate:
            return ep, await connect(ep.address, ep.port, timeout)

    return dict(await asyncio.gather(*(one(ep) for ep in dict.fromkeys(endpoints))))


def _probed(svc: ServiceSnapshot) -> bool:
    """Services whose traffic a TCP connect can speak for: TCP, with backends on the switches."""
    return svc.protocol == "TCP" and bool(svc.backends) and svc.assignment[:1] != (None,)


def backend_endpoints(snapshot: Snapshot) -> dict[Endpoint, tuple[tuple[str, str], ...]]:
    """Every backend endpoint the snapshot sends TCP traffic to -> (service, node) pairs using it.

    Endpoints shared by several Services are probed once."""
    out: dict[Endpoint, list[tuple[str, str]]] = {}
    for svc in snapshot.services:
        if not _probed(svc):
            continue
        for b in svc.backends:
            if b.buckets > 0:
                out.setdefault(Endpoint(b.address, b.port), []).append((svc.name, b.node))
    return {ep: tuple(users) for ep, users in sorted(out.items())}


def failing_services(snapshot: Snapshot, down: Iterable[Endpoint]) -> tuple[str, ...]:
    """Service ports (snapshot names) none of whose bucket-holding backends is up."""
    dead = set(down)
    out = []
    for svc in snapshot.services:
        if not _probed(svc):
            continue
        eps = [Endpoint(b.address, b.port) for b in svc.backends if b.buckets > 0]
        if eps and all(ep in dead for ep in eps):
            out.append(svc.name)
    return tuple(out)


# --- switch liveness and drift ----------------------------------------------------------------


@dataclass(frozen=True)
class SwitchLiveness:
    switch: str
    alive: bool  # answered the liveness call in time with the expected pipeline
    reason: str = ""
    primary: bool = False  # the session still holds primacy (False: it must be reopened to write)
    seconds: float = 0.0

    def __str__(self) -> str:
        state = "alive" if self.alive else f"NOT alive: {self.reason}"
        return f"switch {self.switch}: {state}" + ("" if self.primary else " (session not primary)")


async def check_switch(session: SwitchSession, *, timeout: float, expected_cookie: int | None = None) -> SwitchLiveness:
    """A cheap P4Runtime call on an open session: GetForwardingPipelineConfig (cookie only).

    It also tells a switch that restarted: it answers, but without our pipeline (and so
    without our tables). A session that lost primacy can still ask, so the answer is about
    the switch; `primary` says whether the session can still write."""
    t0 = time.perf_counter()
    name = session.name
    if not session.is_open:
        return SwitchLiveness(name, False, "no open P4Runtime session", seconds=time.perf_counter() - t0)
    try:
        async with asyncio.timeout(timeout):
            status = await session.get_pipeline()
    except TimeoutError:
        reason = f"no answer to GetForwardingPipelineConfig within {timeout:g}s"
        return SwitchLiveness(name, False, reason, session.is_primary, time.perf_counter() - t0)
    except SwitchError as exc:
        return SwitchLiveness(name, False, str(exc), session.is_primary, time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    if expected_cookie is not None:
        problem = cookie_problem(status, expected_cookie)
        if problem:
            return SwitchLiveness(name, False, problem, session.is_primary, seconds)
    return SwitchLiveness(name, True, "", session.is_primary, seconds)


@dataclass(frozen=True)
class DriftReport:
    switch: str
    differences: tuple[str, ...]  # readable, as compare_entries words them, defaults included
    entries_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.differences


async def check_drift(
    session: SwitchSession,
    snapshot: Snapshot | None,
    *,
    defaults: bool = True,
    limit: int = 50,
) -> DriftReport:
    """Read the switch back in full and compare with `snapshot` (None: empty tables).

    Wildcard reads never return default entries, so with `defaults` each table's default
    entry is read explicitly and compared with the P4Info's initial default action (the
    snapshot sets no defaults). Values come back canonical, as snapshot entries are.
    Raises SwitchError when the switch cannot be read."""
    # Compared as bytes (switch/wire.py): only the entries whose bytes differ are decoded and
    # compared by value. Every matched entry is equal on both sides, so the differences of the
    # unmatched ones are all the differences (keys are unique on a switch and in a snapshot).
    blobs = await session.read_encoded()
    expected = EncodedEntries.of(session.info, snapshot)
    read = match_readback(blobs, expected)
    extra = session.decode_entries(read.extra) if read.extra else []  # default entries dropped
    diffs = compare_entries(extra, expected.at(read.missing), limit=limit)
    if defaults:
        diffs += await _default_drift(session)
    return DriftReport(session.name, tuple(diffs), len(blobs) - len(read.extra) + len(extra))


async def _default_drift(session: SwitchSession) -> list[str]:
    info = session.info
    out: list[str] = []
    for te in await session.read_defaults():
        table = info.table_by_id(te.table_id)
        if table.default_action is None:
            continue
        expected = info.action(table.default_action)
        if te.action.WhichOneof("type") != "action":
            out.append(f"changed default of {table.name}: not a direct action, should be {expected.name}()")
            continue
        got = info.action_by_id(te.action.action.action_id)
        params = tuple(int.from_bytes(p.value, "big") for p in te.action.action.params)
        # P4Info carries the initial default's action, not its arguments: compare arguments
        # only for actions without parameters (all of load_balancer.p4's defaults).
        if got.id != expected.id or (not expected.params and params):
            out.append(f"changed default of {table.name}: {got.name}{params}, should be {expected.name}()")
    return out


# --- the probe after an apply -----------------------------------------------------------------


@dataclass(frozen=True)
class TargetResult:
    """The last probe result of one target after a round of attempts."""

    key: str
    kind: TargetKind
    ok: bool
    reason: str = ""
    attempts: int = 1
    services: tuple[str, ...] = ()  # Service ports (snapshot names) depending on the target


@dataclass(frozen=True)
class ProbeReport:
    """What the probe after an apply found.

    `failing_services` are Kubernetes Service keys (namespace/name): fallback works per
    Service, so one dead port falls back the whole Service. `failing_switches` names the
    switches whose data path fails (every probed VIP down while backends answer)."""

    version: int
    results: tuple[TargetResult, ...] = ()
    failing_services: tuple[str, ...] = ()
    failing_service_ports: tuple[str, ...] = ()  # snapshot Service names behind failing_services
    degraded_services: tuple[str, ...] = ()  # some, not all, backends down: served, noted
    failing_switches: tuple[str, ...] = ()
    reason: str = ""
    skipped: bool = False  # health checks disabled

    @property
    def ok(self) -> bool:
        return not self.failing_services and not self.failing_switches

    @property
    def failing_backends(self) -> tuple[TargetResult, ...]:
        return tuple(r for r in self.results if r.kind == "backend" and not r.ok)


def _join(items: Sequence[str], limit: int = 10) -> str:
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


class PostApplyProbe:
    """The `Probe` the transaction runs right after an apply (reconciler.apply.Probe).

    Probes every backend of the snapshot (and its VIPs when `vip_probe`) up to
    `failure_threshold` times, stopping early for targets that answered. `await probe(snap)`
    returns None when healthy, else the reason; `report(snap)` returns the structured
    ProbeReport, and `last_report` keeps the one behind the last call, so that a controller
    that got a rolled-back ApplyResult can fall back just the Services named there.

    With `changed_only`, only Services that differ from `baseline` (the last snapshot that
    passed, or one the controller sets) are probed: at thousands of Services a probe of every
    backend after each one-Service change would cost more than the change itself."""

    def __init__(
        self,
        check: HealthCheck,
        *,
        vip_probe: bool = False,
        path_switches: Sequence[str] = (),
        concurrency: int = 64,
        retry_delay: float = 0.5,
        connect: Connector = tcp_probe,
        changed_only: bool = False,
    ) -> None:
        if retry_delay < 0:
            raise ValueError(f"retry_delay must be >= 0, not {retry_delay}")
        self.check = check
        self.changed_only = changed_only
        # With changed_only: the last snapshot that passed (or that the controller knows is
        # good, e.g. read from the audit repository at start); only Services that differ
        # from it are probed, the periodic monitor watches the rest.
        self.baseline: Snapshot | None = None
        self.thresholds = Thresholds.from_check(check)
        self.vip_probe = vip_probe
        self.path_switches = tuple(path_switches)
        self.concurrency = concurrency
        self.retry_delay = retry_delay
        self.connect = connect
        self.last_report: ProbeReport | None = None

    async def __call__(self, snapshot: Snapshot) -> str | None:
        report = await self.report(snapshot)
        return None if report.ok else report.reason

    async def report(self, snapshot: Snapshot) -> ProbeReport:
        if not self.check.enabled:
            self.last_report = ProbeReport(snapshot.version, skipped=True)
            return self.last_report
        full = snapshot
        snapshot = self._scope(snapshot)
        backends = backend_endpoints(snapshot)
        vips: dict[Endpoint, tuple[tuple[str, str], ...]] = {}
        if self.vip_probe:
            for svc in snapshot.services:
                if _probed(svc):
                    vips[Endpoint(svc.vip, svc.port)] = ((svc.name, ""),)
        final = await self._attempts(list(backends) + [ep for ep in vips if ep not in backends])
        report = self._judge(snapshot, backends, vips, final)
        self.last_report = report
        if report.ok:
            self.baseline = full
        # Degraded backends are worth a warning; "healthy" is a step of the transaction, whose one
        # line (the controller's) says how it ended.
        (log.warning if report.reason else log.debug)(
            "probe after applying v%d: %s", snapshot.version, report.reason or "healthy",
            extra={"config": snapshot.config, "version": snapshot.version},
        )
        return report

    def _scope(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot restricted to the Services to probe now."""
        base = self.baseline
        if not self.changed_only or base is None or base.config != snapshot.config:
            return snapshot
        old = base.by_name
        changed = tuple(
            svc for svc in snapshot.services
            if (prev := old.get(svc.name)) is None or (prev is not svc and prev.fragment_digest != svc.fragment_digest)
        )
        return dataclasses.replace(snapshot, services=changed)

    async def _attempts(self, endpoints: list[Endpoint]) -> dict[Endpoint, tuple[str | None, int]]:
        """Probe until each endpoint answered once or failed `failure_threshold` times."""
        final: dict[Endpoint, tuple[str | None, int]] = {}
        todo = endpoints
        for attempt in range(1, self.thresholds.failure + 1):
            if not todo:
                break
            if attempt > 1 and self.retry_delay:
                await asyncio.sleep(self.retry_delay)  # spacing between retries, not a wait for an event
            results = await probe_endpoints(todo, self.check.timeout_s, concurrency=self.concurrency, connect=self.connect)
            for ep, why in results.items():
                final[ep] = (why, attempt)
            todo = [ep for ep, why in results.items() if why is not None]
        return final

    def _judge(
        self,
        snapshot: Snapshot,
        backends: Mapping[Endpoint, tuple[tuple[str, str], ...]],
        vips: Mapping[Endpoint, tuple[tuple[str, str], ...]],
        final: Mapping[Endpoint, tuple[str | None, int]],
    ) -> ProbeReport:
        results: list[TargetResult] = []
        down: set[Endpoint] = set()
        backend_lines: list[str] = []
        for ep, users in backends.items():
            why, attempts = final[ep]
            services = tuple(dict.fromkeys(s for s, _ in users))
            results.append(TargetResult(f"backend {ep}", "backend", why is None, why or "", attempts, services))
            if why is not None:
                down.add(ep)
                nodes = ", ".join(sorted({node for _, node in users}))
                backend_lines.append(f"{nodes} ({ep}): {why} after {attempts} attempt(s)")
        dead_ports = set(failing_services(snapshot, down))
        degraded = sorted(
            {
                snapshot.by_name[s].service_key
                for ep in down
                for s, _ in backends[ep]
                if s not in dead_ports
            }
        )
        vip_lines: list[str] = []
        vip_dead_ports: list[str] = []
        vips_failing = 0
        for ep, users in vips.items():
            why, attempts = final[ep]
            (name, _), = users
            results.append(TargetResult(f"vip {ep}", "vip", why is None, why or "", attempts, (name,)))
            if why is not None:
                vips_failing += 1
                if name not in dead_ports:  # its backends answer: the path through the switches fails
                    vip_dead_ports.append(name)
                    vip_lines.append(f"{name} VIP {ep}: {why} while its backends answer")
        failing_switches: tuple[str, ...] = ()
        if vips and vip_dead_ports and vips_failing == len(vips):
            failing_switches = self.path_switches or ("(data path)",)
        ports = sorted(dead_ports | set(vip_dead_ports))
        services = tuple(sorted({snapshot.by_name[p].service_key for p in ports}))
        reasons = []
        if services:
            reasons.append(f"Services failing: {', '.join(services)}")
        if failing_switches:
            reasons.append(f"every VIP fails through switch(es) {', '.join(failing_switches)} while backends answer")
        if backend_lines:
            reasons.append("backends down: " + _join(backend_lines))
        if vip_lines:
            reasons.append("VIPs down: " + _join(vip_lines))
        return ProbeReport(
            version=snapshot.version,
            results=tuple(results),
            failing_services=services,
            failing_service_ports=tuple(ports),
            degraded_services=tuple(s for s in degraded if s not in services),
            failing_switches=failing_switches,
            reason=". ".join(reasons),
        )


def make_post_apply_probe(
    check: HealthCheck,
    *,
    vip_probe: bool = False,
    path_switches: Sequence[str] = (),
    concurrency: int = 64,
    retry_delay: float = 0.5,
    connect: Connector = tcp_probe,
    changed_only: bool = False,
) -> PostApplyProbe:
    """The probe to pass to TwoSwitchApplier.apply(); see PostApplyProbe."""
    return PostApplyProbe(
        check, vip_probe=vip_probe, path_switches=path_switches, concurrency=concurrency,
        retry_delay=retry_delay, connect=connect, changed_only=changed_only,
    )


# --- periodic monitoring ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Something the monitor probes. `key` identifies it across target-set updates (its state
    is kept while the key stays)."""

    key: str
    kind: TargetKind
    check: Check = field(compare=False, repr=False)
    services: tuple[str, ...] = ()  # Service ports (snapshot names) depending on it


@dataclass(frozen=True)
class Transition:
    key: str
    kind: TargetKind
    healthy: bool  # the new state
    reason: str  # why it failed (for healthy -> unhealthy), "" when recovering
    services: tuple[str, ...] = ()
    at: float = 0.0  # the monitor clock's time


def _transition_fields(tr: Transition) -> dict[str, object]:
    """A transition's log fields: the target, and the Service (or Services) behind it."""
    fields: dict[str, object] = {"target": tr.key, "kind": tr.kind}
    if len(tr.services) == 1:
        fields["service"] = tr.services[0]
    elif tr.services:
        fields["services"] = list(tr.services)
    if tr.kind == "switch":
        fields["switch"] = tr.key
    return fields


def backend_targets(snapshot: Snapshot, timeout: float, *, connect: Connector = tcp_probe) -> list[Target]:
    def make(ep: Endpoint) -> Check:
        return lambda: connect(ep.address, ep.port, timeout)

    return [
        Target(f"backend {ep}", "backend", make(ep), tuple(dict.fromkeys(s for s, _ in users)))
        for ep, users in backend_endpoints(snapshot).items()
    ]


def vip_targets(snapshot: Snapshot, timeout: float, *, connect: Connector = tcp_probe) -> list[Target]:
    def make(ep: Endpoint) -> Check:
        return lambda: connect(ep.address, ep.port, timeout)

    return [
        Target(f"vip {svc.vip}:{svc.port}", "vip", make(Endpoint(svc.vip, svc.port)), (svc.name,))
        for svc in snapshot.services
        if _probed(svc)
    ]


def switch_target(
    name: str,
    session: Callable[[], SwitchSession | None],
    timeout: float,
    *,
    expected_cookie: int | None = None,
    services: tuple[str, ...] = (),
) -> Target:
    """Liveness of switch `name` through whatever session `session()` returns at probe time
    (sessions are reopened by the applier; None: not connected)."""

    async def check() -> str | None:
        s = session()
        if s is None:
            return "not connected"
        result = await check_switch(s, timeout=timeout, expected_cookie=expected_cookie)
        return None if result.alive else result.reason

    return Target(f"switch {name}", "switch", check, services)


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        """Return after `seconds`, or earlier once `wake` is set."""


class LoopClock:
    """The event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        try:
            async with asyncio.timeout(seconds):
                await wake.wait()
        except TimeoutError:
            pass  # the interval passed: that is the normal way to wake


class ManualClock:
    """A clock that moves only when told to (`advance`), for tests and simulations."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Event]] = []
        self._changed: asyncio.Condition | None = None

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += seconds
        for deadline, ev in self._sleepers:
            if deadline <= self._now:
                ev.set()

    @property
    def sleepers(self) -> int:
        return len(self._sleepers)

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def wait_sleepers(self, count: int, timeout: float) -> None:
        """Wait until `count` tasks sleep on this clock (so that advance() reaches them)."""
        cond = self._condition()
        async with asyncio.timeout(timeout):
            async with cond:
                await cond.wait_for(lambda: len(self._sleepers) >= count)

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        if seconds <= 0:
            return
        due = asyncio.Event()
        item = (self._now + seconds, due)
        self._sleepers.append(item)
        cond = self._condition()
        async with cond:
            cond.notify_all()
        waits = [asyncio.ensure_future(due.wait()), asyncio.ensure_future(wake.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            self._sleepers.remove(item)


TransitionCallback = Callable[[Transition], "Awaitable[None] | None"]


class HealthMonitor:
    """Probes its targets every `interval`, keeps a TargetState per target, and reports each
    healthy <-> unhealthy transition to `on_transition` (sync or async).

    `trigger()` starts a round now (after an apply, or in tests); `run_round()` runs one round
    directly. New targets start healthy (`initial_healthy`), so a freshly applied backend must
    fail `failure_threshold` times before it is reported."""

    def __init__(
        self,
        *,
        interval: float,
        thresholds: Thresholds,
        on_transition: TransitionCallback | None = None,
        targets: Iterable[Target] = (),
        concurrency: int = 64,
        clock: Clock | None = None,
        initial_healthy: bool = True,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, not {interval}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.interval = interval
        self.thresholds = thresholds
        self.on_transition = on_transition
        self.concurrency = concurrency
        self.clock: Clock = clock or LoopClock()
        self.initial = TargetState(healthy=initial_healthy)
        self._targets: dict[str, Target] = {}
        self._states: dict[str, TargetState] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._rounds = 0
        self._round_done: asyncio.Condition | None = None
        self._round_lock: asyncio.Lock | None = None
        self.set_targets(targets)

    # -- targets and state -------------------------------------------------------------------

    def set_targets(self, targets: Iterable[Target]) -> None:
        """Replace the target set; targets whose key stays keep their state."""
        new = {t.key: t for t in targets}
        self._targets = new
        self._states = {k: self._states.get(k, self.initial) for k in new}

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(self._targets.values())

    def states(self) -> dict[str, TargetState]:
        return dict(self._states)

    def state(self, key: str) -> TargetState:
        return self._states[key]

    def unhealthy(self, kind: TargetKind | None = None) -> tuple[Target, ...]:
        return tuple(
            t for k, t in self._targets.items()
            if not self._states[k].healthy and (kind is None or t.kind == kind)
        )

    @property
    def rounds(self) -> int:
        return self._rounds

    # -- rounds ------------------------------------------------------------------------------

    async def run_round(self) -> tuple[Transition, ...]:
        """Probe every target once (bounded concurrency), advance states, report transitions."""
        if self._round_lock is None:
            self._round_lock = asyncio.Lock()
            self._round_done = asyncio.Condition()
        async with self._round_lock:
            targets = dict(self._targets)
            gate = asyncio.Semaphore(self.concurrency)

            async def one(t: Target) -> tuple[str, str | None]:
                async with gate:
                    try:
                        return t.key, await t.check()
                    except Exception as exc:  # a broken check is a failed probe, with its reason
                        log.warning("health check %s raised %r", t.key, exc)
                        return t.key, f"check raised {type(exc).__name__}: {exc}"

            results = await asyncio.gather(*(one(t) for t in targets.values()))
            now = self.clock.now()
            transitions: list[Transition] = []
            for key, why in results:
                if key not in self._targets:  # removed while probing
                    continue
                before = self._states.get(key, self.initial)
                after = advance(before, why is None, why or "", self.thresholds)
                self._states[key] = after
                if after.healthy != before.healthy:
                    t = targets[key]
                    transitions.append(Transition(key, t.kind, after.healthy, after.reason, t.services, now))
            for tr in transitions:
                (log.info if tr.healthy else log.warning)(
                    "%s is %s%s", tr.key, "healthy again" if tr.healthy else "unhealthy",
                    "" if tr.healthy else f": {tr.reason}", extra=_transition_fields(tr),
                )
                await self._report(tr)
        assert self._round_done is not None
        async with self._round_done:
            self._rounds += 1
            self._round_done.notify_all()
        return tuple(transitions)

    async def _report(self, tr: Transition) -> None:
        if self.on_transition is None:
            return
        try:
            out = self.on_transition(tr)
            if inspect.isawaitable(out):
                await out
        except Exception:
            log.exception("the health transition callback failed for %s", tr.key)

    async def wait_rounds(self, count: int, timeout: float) -> None:
        """Wait until at least `count` rounds have completed (TimeoutError after `timeout`)."""
        if self._round_done is None:
            self._round_lock = asyncio.Lock()
            self._round_done = asyncio.Condition()
        async with asyncio.timeout(timeout):
            async with self._round_done:
                await self._round_done.wait_for(lambda: self._rounds >= count)

    # -- the periodic task -------------------------------------------------------------------

    def start(self) -> None:
        """Start probing: a first round at once, then one every `interval` (or on trigger())."""
        if self._task is not None:
            raise RuntimeError("the health monitor is already running")
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="p4kube-health")

    def trigger(self) -> None:
        """Run a round now (or right after the one in progress)."""
        if self._wake is not None:
            self._wake.set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            try:
                await self.run_round()
            except Exception:  # keep monitoring; the failure is in the log with its traceback
                log.exception("health round failed")
            await self.clock.sleep(self.interval, self._wake)


def monitor_for(
    check: HealthCheck,
    on_transition: TransitionCallback | None = None,
    **kwargs: Any,  # HealthMonitor's other keywords (clock, probes), passed on
) -> HealthMonitor:
    """A HealthMonitor with the interval and thresholds of a LoadBalancerConfig's healthCheck."""
    return HealthMonitor(
        interval=check.interval_s, thresholds=Thresholds.from_check(check), on_transition=on_transition,
        **kwargs,
    )
