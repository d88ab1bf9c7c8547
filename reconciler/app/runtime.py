"""The composition root of `p4kube run`: Settings -> the sources (intent, cluster), the sinks
(audit, Service and config status, Events, metrics, kube-proxy fallback) and the worker factory;
then the loop, alone or as the Lease holder.

    intent   a Git checkout, followed with watchdog, or LoadBalancerConfig CRs
    cluster  the Kubernetes API (list+watch), or a recording followed on disk
    audit    an audit repository (else a state directory keeps the last applied snapshot)
    fencing  with leader election the P4Runtime election id's high 64 bits are the Lease's
             transitions + 1, and losing the Lease cancels the loop and closes every stream
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..apply import ApplyResult
from ..audit.repo import AuditRepo
from ..audit.reopening import ReopeningAudit
from ..cluster.model import ClusterNotReady, ClusterState
from ..controller import ClusterSource, ConfigWorker, Controller, FallbackWriter, IntentProvider, TransactionRecord
from ..httpserver import ALL_PATHS, METRICS_PATHS, PROBE_PATHS, Heartbeat, HttpEndpoint, decide_ready, parse_listen_address
from ..intent.model import LoadBalancerConfig
from ..kube.intent_refusals import IntentRefusals
from ..metrics import Metrics, read_backend_packets
from ..snapshot import Snapshot
from ..state import StateDir
from .reports import ConfigEvents, CRStatus
from .settings import Settings, SettingsError
from .signing import audit_keys, build_signer, intent_trust
from .switches import switch_allowlist
from .workers import worker_factory

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from ..cluster.followed import FollowedRecording

    from ..kube.status import ServiceStatusWriter

log = logging.getLogger("reconciler.run")

Closer = Callable[[], object]  # a stop()/aclose(): called at the end, awaited when it returns a coroutine


class LoadingRecording:
    """`--cluster FILE` read in a worker thread while the workers start (audit record, switch
    read-back), which need no cluster: ClusterNotReady until the whole file is loaded, so nothing
    is rendered or written from it before (DESIGN.md 6.1). Then it is the FollowedRecording.

        cluster = LoadingRecording(path)
        cluster.begin()          # in the running loop
        await cluster.wait()     # the FollowedRecording; its InputError when the file is not whole

    The thread only builds the FollowedRecording (reads, parses, converts: no asyncio object is
    touched there); following it (start(): the watchdog observer, the loop's timers) and every
    use happen on the loop."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.loaded: FollowedRecording | None = None
        self._task: asyncio.Task[FollowedRecording] | None = None
        self._ready = asyncio.Event()

    def begin(self) -> None:
        self._task = asyncio.create_task(self._load(), name="load-cluster-recording")

    async def _load(self) -> FollowedRecording:
        from ..cluster.followed import FollowedRecording

        followed = await asyncio.to_thread(FollowedRecording, self.path)  # InputError when not whole
        followed.start()
        self.loaded = followed
        self._ready.set()
        gc.collect()
        gc.freeze()  # the loaded state is long-lived: keep it out of the cyclic collector's scans
        return followed

    async def wait(self) -> FollowedRecording:
        assert self._task is not None, "begin() first"
        return await asyncio.shield(self._task)

    def snapshot(self) -> ClusterState:
        if self.loaded is None:
            raise ClusterNotReady(f"cluster recording {self.path} is still being read")
        return self.loaded.snapshot()

    async def changes(self) -> AsyncIterator[frozenset[str]]:
        await self._ready.wait()
        assert self.loaded is not None
        # Every Service appeared; subscribed to the recording right after (no await in between).
        yield frozenset(self.loaded.snapshot().services)
        async for keys in self.loaded.changes():
            yield keys

    # FallbackWriter: only called from a pass or health round, which need the loaded cluster
    async def fall_back(self, service: str, reason: str) -> bool:
        assert self.loaded is not None
        return await self.loaded.fall_back(service, reason)

    async def recover(self, service: str) -> bool:
        assert self.loaded is not None
        return await self.loaded.recover(service)

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the thread's parse runs to its end; its result is dropped
            await asyncio.gather(self._task, return_exceptions=True)
        if self.loaded is not None:
            self.loaded.stop()


@dataclass
class Runtime:
    """Everything `p4kube run` wires together, apart from the loop itself."""

    intent: IntentProvider
    cluster: ClusterSource
    make_worker_for: Callable[[int], Callable[[LoadBalancerConfig], ConfigWorker]]
    metrics: Metrics
    heartbeat: Heartbeat
    status: dict[str, bool]
    current: dict[str, Controller]
    api: ApiClient | None = None
    audit: ReopeningAudit | None = None
    closers: list[Closer] = field(default_factory=list)
    refusals: IntentRefusals | None = None  # with --verify-intent-signers
    loading: LoadingRecording | None = None  # --cluster FILE, read while the workers start

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            r = close()
            if asyncio.iscoroutine(r):
                await r


async def build_runtime(settings: Settings, api: ApiClient | None = None) -> Runtime:
    """Sources, sinks and the worker factory from `settings` (`api`: a ready ApiClient, for tests
    against a test API server)."""
    from ..intent.watch import DirectoryIntent

    signer = build_signer(settings)  # a missing key or tool: one clear error before anything starts
    trusted = intent_trust(settings)
    keys = audit_keys(settings, signer)  # records are used only when signed by these (None: not signed)
    if trusted is not None and not settings.intent:
        raise SettingsError("--verify-intent-signers/--verify-intent-gpg-home verify the commits of an --intent DIR checkout; "
                            "a custom resource carries no signature: with --intent-from-cluster, verify in the GitOps tool "
                            "that applies them (Flux: GitRepository spec.verify; Argo CD: the AppProject's signatureKeys) and "
                            "let only its ServiceAccount write LoadBalancerConfigs (RBAC; docs/audit.md, \"Signed intent\")")
    metrics = Metrics()
    heartbeat = Heartbeat(max_age=300.0)
    status = {"started": False, "leader": not settings.leader_elect, "connected": False}
    cr_status: CRStatus | None = None
    if api is None and (not settings.cluster or settings.intent_from_cluster or settings.leader_elect):
        from ..kube.client import build_api_client

        api = build_api_client(settings.kubeconfig, context=settings.kube_context)
    closers: list[Closer] = []
    audit = None
    if settings.audit_repo:
        repo = settings.audit_repo
        audit = ReopeningAudit(lambda: AuditRepo.open_or_init(repo, workdir=settings.audit_workdir, signer=signer, trust=keys))
    refusals = None
    if settings.intent:
        gate = None
        if trusted is not None:
            refusals = IntentRefusals(settings.intent, trusted, audit, api)
            closers.append(refusals.aclose)
            gate = refusals.gate
        directory = DirectoryIntent(
            settings.intent, gate=gate, on_refused=refusals.refused if refusals is not None else None)
        directory.start()
        closers.append(directory.stop)
        intent_provider: IntentProvider = directory
        if trusted is not None:
            from ..intent.committed import CommittedIntent

            # What was signed, from its blobs.
            intent_provider = CommittedIntent(directory, settings.intent, settings.dirs)
    else:
        from ..kube.cr_intent import CRIntentProvider
        from ..kube.crstatus import ConfigStatusWriter
        from ..kube.intent_source import CRIntentSource, intent_namespaces

        assert api is not None  # built above whenever custom resources are read
        allowed = switch_allowlist(settings)
        # Files and switches are checked per CR: one that names what the operator did not allow is Stalled.
        cr_source = CRIntentSource(api, namespaces=intent_namespaces(settings.intent_namespace, settings.kubeconfig, settings.kube_context),
                                   dirs=settings.dirs, allowed=allowed)
        await cr_source.start()
        closers.append(cr_source.aclose)
        await cr_source.wait_synced(timeout=60)
        intent_provider = CRIntentProvider(cr_source)
        cr_status = CRStatus(cr_source, ConfigStatusWriter(api))
        cr_status.start()
        closers.append(cr_status.stop)

    fallback: FallbackWriter | None = None
    status_writer: ServiceStatusWriter | None = None
    loading = None
    if settings.cluster:
        # Re-read only once the file parses as a whole cluster and has stopped changing:
        # `kubectl get ... > FILE` rewrites it in pieces. Its first read (seconds of parsing at
        # 5,000 Services) runs while the workers read their switches back (issue 13).
        loading = LoadingRecording(settings.cluster)
        loading.begin()
        closers.append(loading.aclose)
        cluster: ClusterSource = loading
        fallback = loading
    else:
        from ..cluster.live import LiveClusterSource
        from ..kube.events import EventRecorder
        from ..kube.fallback import Fallback
        from ..kube.status import ServiceStatusWriter

        assert api is not None  # built above whenever the cluster is read from the API
        live = LiveClusterSource(api)
        cluster = live
        await live.start()
        closers.append(live.aclose)
        try:
            await live.wait_synced(timeout=120)
        except TimeoutError as e:
            # Not a reason to exit: the loop renders nothing until every kind is listed.
            log.warning("%s; starting anyway, nothing is written until it is", e)
        events = EventRecorder(api)
        fallback = Fallback(api, events)
        status_writer = ServiceStatusWriter(api, events, status_managers=live.state.status_managers)

    config_events = ConfigEvents(api) if api is not None else None

    state_dir = StateDir(settings.state)
    current: dict[str, Controller] = {}  # the running loop (a new one each leadership term)

    async def on_result(record: TransactionRecord, result: ApplyResult | None, snap: Snapshot | None) -> None:
        heartbeat.beat()
        if config_events is not None:
            ctl_now = current.get("controller")
            worker_now = ctl_now.workers.get(record.config) if ctl_now is not None else None
            await config_events.note(record, result, worker_now.config if worker_now is not None else None)
        metrics.observe_reconcile(record.config, record.seconds)
        metrics.set_render_issues(record.config, record.issues)
        if result is not None:
            metrics.record_apply(result, record.config)
            for r in result.switches:
                metrics.set_switch_connected(r.name, r.role, r.state not in ("unreachable", "failed"))
            status["connected"] = all(r.state not in ("unreachable", "failed") for r in result.switches)
            if result.ok and snap is not None:
                metrics.set_snapshot_version(record.config, snap.version)
                if audit is None:
                    state_dir.record_applied(snap)
        if record.fell_back:
            metrics.record_fallback(record.config, "probe-failed", len(record.fell_back))
        ctl = current.get("controller")
        if cr_status is not None:
            worker = ctl.workers.get(record.config) if ctl is not None else None
            await cr_status.report(record, result, worker.last if worker is not None else None)
        if status_writer is not None and ctl is not None:
            worker = ctl.workers.get(record.config)
            if worker is not None and worker.last is not None:
                # VIPs of the Services the switches serve, written to status.loadBalancer.ingress
                await status_writer.sync(cluster.snapshot(), worker.last, record.issues)

    async def on_health(worker: ConfigWorker) -> None:
        """Each switch's health, and per-backend packet counters read from the switches, each round."""
        for sw in worker.applier.order:
            state = worker.switch_health.get(sw.name)
            metrics.set_switch_connected(sw.name, sw.role, state is None or state.healthy)

        sessions = [s for sw in worker.applier.order if (s := worker.applier.session_for(sw.name)) is not None]
        if worker.last is not None and sessions:
            try:
                metrics.set_backend_packets(worker.config.key, await read_backend_packets(sessions, worker.last))
            except Exception as e:  # noqa: BLE001 - metrics must never stop the loop
                log.warning("%s: reading backend counters failed: %s", worker.config.key, e,
                            extra={"config": worker.config.key})

    warned_plaintext: set[str] = set()  # --allow-insecure-switches: said once per config, not per term

    def make_worker_for(election_id: int) -> Callable[[LoadBalancerConfig], ConfigWorker]:
        return worker_factory(settings, election_id=election_id, audit=audit, fallback=fallback, on_result=on_result,
                              on_health=on_health, last_applied=state_dir.last_applied, warned_plaintext=warned_plaintext)

    return Runtime(intent_provider, cluster, make_worker_for, metrics, heartbeat, status, current, api, audit, closers,
                   refusals, loading)


async def run(settings: Settings, stop: asyncio.Event) -> int:
    """`p4kube run` until `stop` is set: the transaction in flight is finished, never cut in half."""
    listen = http_listen(settings)  # a bad address: one clear error before anything starts
    rt = await build_runtime(settings)
    endpoints: list[HttpEndpoint] = []
    # `stop`, or the cluster recording refused at launch: the loop ends the same way (a
    # transaction in flight is finished), then the recording's error is raised as it was before.
    halt = asyncio.Event()
    relay = asyncio.create_task(_relay_stop(stop, halt))
    started = asyncio.create_task(_started_once_loaded(rt, halt))
    try:
        for endpoint in http_endpoints(listen, settings, rt):
            await endpoint.start()
            endpoints.append(endpoint)
        gc.collect()
        gc.freeze()  # the loaded state is long-lived: keep it out of the cyclic collector's scans
        if not settings.leader_elect:
            rt.current["controller"] = Controller(rt.intent, rt.cluster, make_worker=rt.make_worker_for(settings.election_id))
            # The only replica writes from now on: sum(p4kube_leader) == 1 holds without --leader-elect too.
            rt.metrics.set_leader(True)
            try:
                await rt.current["controller"].run(halt)
            finally:
                rt.metrics.set_leader(False)
        else:
            await _run_as_leader(settings, rt, halt)
        refused = started.exception() if started.done() and not started.cancelled() else None
        if refused is not None:
            raise refused  # the recording's InputError, reported as before
    finally:
        for task in (relay, started):
            task.cancel()
        await asyncio.gather(relay, started, return_exceptions=True)
        await rt.aclose()
        for endpoint in reversed(endpoints):
            await endpoint.stop()
    log.info("stopped")
    return 0


async def _relay_stop(stop: asyncio.Event, halt: asyncio.Event) -> None:
    await stop.wait()
    halt.set()


async def _started_once_loaded(rt: Runtime, halt: asyncio.Event) -> None:
    """"started" (what /readyz requires first) once the cluster recording is loaded, as when it
    was read before the loop: ready still means the cluster is in, not only the switches."""
    if rt.loading is not None:
        try:
            await rt.loading.wait()
        except BaseException:
            halt.set()
            raise
    rt.status["started"] = True


def http_listen(settings: Settings) -> list[tuple[str, int, frozenset[str]]]:
    """Where to serve what: /metrics, /healthz and /readyz on --metrics-address, or, with
    --probe-address, the probes there and only /metrics on --metrics-address."""
    wanted: list[tuple[str, frozenset[str]]] = []
    if settings.probe_address:
        wanted.append((settings.probe_address, PROBE_PATHS))
        if settings.metrics_address:
            wanted.append((settings.metrics_address, METRICS_PATHS))
    elif settings.metrics_address:
        wanted.append((settings.metrics_address, ALL_PATHS))
    if settings.metrics_bearer_token_file and not settings.metrics_address:
        raise SettingsError("--metrics-bearer-token-file protects /metrics: it needs --metrics-address")
    out = []
    for address, paths in wanted:
        try:
            host, port = parse_listen_address(address)
        except ValueError as e:
            raise SettingsError(str(e)) from None
        out.append((host, port, paths))
    return out


def http_endpoints(listen: list[tuple[str, int, frozenset[str]]], settings: Settings, rt: Runtime) -> list[HttpEndpoint]:
    """The endpoints of `http_listen`, over the runtime's registry, heartbeat and readiness."""
    def readiness() -> tuple[bool, str]:
        return decide_ready(started=rt.status["started"], leader=rt.status["leader"], switches_connected=rt.status["connected"])

    return [
        HttpEndpoint(rt.metrics.registry, heartbeat=rt.heartbeat, readiness=readiness, host=host, port=port, paths=paths,
                     bearer_token_file=settings.metrics_bearer_token_file if "/metrics" in paths else None)
        for host, port, paths in listen
    ]


async def _run_as_leader(settings: Settings, rt: Runtime, stop: asyncio.Event) -> None:
    """Hold the Lease, run the loop while holding it, and stop writing the moment it is lost."""
    from ..kube.leader import LeaderElector

    assert rt.api is not None  # built whenever --leader-elect is given
    elector = LeaderElector(
        rt.api, namespace=settings.leader_elect_namespace, name=settings.leader_elect_lease_name,
        identity=settings.leader_elect_identity,
    )
    election = asyncio.create_task(elector.run())  # "started": run() sets it once the cluster is loaded
    try:
        while not stop.is_set():
            acquired = asyncio.create_task(elector.acquired())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({acquired, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if stop.is_set():
                acquired.cancel()
                break
            term = acquired.result()
            # The elector's "leads" line is the state change at info; this one adds nothing new.
            log.debug("leading as %s (election id %d)", term.identity, term.election_id,
                      extra={"identity": term.identity, "election_id": term.election_id})
            rt.status["leader"] = True
            rt.metrics.set_leader(True)
            controller = rt.current["controller"] = Controller(rt.intent, rt.cluster, make_worker=rt.make_worker_for(term.election_id))
            loop = asyncio.create_task(controller.run(stop))
            lost = asyncio.create_task(term.lost.wait())
            await asyncio.wait({loop, lost}, return_when=asyncio.FIRST_COMPLETED)
            if lost.done() and not loop.done():
                # Fencing: cancel at once; run()'s finally closes every P4Runtime stream.
                log.error("lost the Lease (%s): stopping all switch writes now", term.lost_reason,
                          extra={"identity": term.identity, "election_id": term.election_id})
                loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
            lost.cancel()
            rt.status["leader"] = False
            rt.metrics.set_leader(False)
    finally:
        elector.stop()
        await elector.release()
        election.cancel()
        await asyncio.gather(election, return_exceptions=True)
