"""`p4kube run`: the reconciler as a long-running process (DESIGN.md 2, 6).

Wires the sources, the loop and the sinks:

    intent   --intent DIR (a Git checkout, followed with watchdog) or --intent-from-cluster (CRs)
    cluster  the Kubernetes API (kubeconfig or in-cluster; list+watch), or --cluster FILE (a
             recording, followed on disk: for trials without a cluster)
    audit    --audit-repo DIR_OR_URL (else --state DIR keeps the last applied snapshot)
    sinks    Service status (VIPs) and kube-proxy fallback through the API, Events, the CR's
             status, Prometheus metrics and /healthz /readyz on --metrics-address
    fencing  --leader-elect: a Lease; the P4Runtime election id's high 64 bits are the Lease's
             transitions + 1 (the low 64 bits count sessions fenced within the term), and losing
             the Lease cancels the loop and closes every P4Runtime stream at once

SIGTERM/SIGINT finish the transaction in flight (it is never cut in half) and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import signal
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from .apply import ApplyResult, TwoSwitchApplier
from .changes import Broadcast
from .controller import ConfigWorker, Controller, TransactionRecord
from .intent.model import IntentSet, LoadBalancerConfig
from .snapshot import Snapshot

log = logging.getLogger("reconciler.run")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "run",
        help="run the reconciler: follow intent and the cluster, apply, probe, fall back",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--intent", metavar="DIR", help="intent directory (a Git checkout), followed for changes")
    src.add_argument("--intent-from-cluster", action="store_true", help="LoadBalancerConfig custom resources (the Argo CD / Flux path)")
    p.add_argument("--cluster", metavar="FILE", help="a kubectl recording, followed on disk, instead of the Kubernetes API")
    p.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: in-cluster, then $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--audit-repo", metavar="DIR_OR_URL", help="audit repository (every snapshot and outcome is committed there)")
    p.add_argument("--audit-workdir", metavar="DIR", help="where to clone a remote audit repository")
    p.add_argument("--state", metavar="DIR", default=".p4kube-state", help="last applied snapshots, without --audit-repo (default: %(default)s)")
    p.add_argument("--metrics-address", metavar="HOST:PORT", help="serve /metrics, /healthz, /readyz here (e.g. 127.0.0.1:9100)")
    p.add_argument("--election-id", type=int, default=1, metavar="N", help="P4Runtime election id without --leader-elect (default: %(default)s)")
    p.add_argument("--leader-elect", action="store_true", help="run as one of several replicas: only the Lease holder writes")
    p.add_argument("--leader-elect-namespace", default="p4kube-system", metavar="NS")
    p.add_argument("--leader-elect-lease-name", default="p4kube-reconciler", metavar="NAME")
    p.add_argument("--leader-elect-identity", metavar="ID", help="this replica's name (default: hostname + pid)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="switch connect and arbitration timeout")
    p.add_argument("--batch-size", type=int, metavar="N", help="updates per WriteRequest (default: the config's batchSize)")
    from .apply_cli import adopt_option, insecure_switches_option, intent_signers_options, rpc_timeout_option, signing_options

    adopt_option(p)
    rpc_timeout_option(p)
    insecure_switches_option(p)
    signing_options(p)
    intent_signers_options(p, follows=True)
    from .apply_cli import switch_options

    switch_options(p)
    p.add_argument(
        "--intent-namespace", action="append", metavar="NS",
        help="with --intent-from-cluster: read LoadBalancerConfigs only in this namespace (repeatable, "
        "comma-separated; * = all namespaces, which needs cluster-wide RBAC); default: $POD_NAMESPACE, else the "
        "kubeconfig context's namespace, else p4kube-system",
    )
    p.set_defaults(func=cmd_run)


class ConfigEvents:
    """Events on the LoadBalancerConfig when its state turns (degraded, refused, rolled back,
    waiting) and when it converges again; one per change of state, not one per pass."""

    def __init__(self, api: Any) -> None:
        from .kube.events import EventRecorder

        self.recorder = EventRecorder(api)
        self._last: dict[str, tuple[str, str]] = {}  # config -> (outcome, reason) last told

    async def note(self, record: TransactionRecord, result: ApplyResult | None = None,
                   config: LoadBalancerConfig | None = None) -> None:
        from .kube.crstatus import plain_unreachable
        from .kube.events import ObjectRef
        from .kube.intent_source import GROUP, VERSION

        # Events are readable by whoever can read the CR: unreachable switches read the same
        # whatever the peer answered (no port-scan oracle); the log keeps the detail.
        addresses = {s.name: s.address for s in config.switch_config.switches} if config is not None else {}
        details = [r.reason for r in result.switches if r.state == "unreachable"] if result is not None else []
        record = dataclasses.replace(record, reason=plain_unreachable(record.reason, addresses, details))
        outcome = record.outcome
        told = self._last.get(record.config)
        if outcome.converged:
            if told is None:
                return
            del self._last[record.config]  # back to normal: say so once
            kind, note = "Normal", f"v{record.version} {outcome.value}" + (f": {record.reason}" if record.reason else "")
        else:
            if told == (outcome.value, record.reason):
                return
            self._last[record.config] = (outcome.value, record.reason)
            kind, note = "Warning", f"v{record.version} {outcome.value}: {record.reason}"
        ns, _, name = record.config.partition("/")
        ref = ObjectRef("LoadBalancerConfig", ns, name, f"{GROUP}/{VERSION}")
        try:
            await self.recorder.emit(ref, kind, outcome.reason, "Reconcile", note)  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - an Event is never worth stopping the loop
            log.warning("%s: could not record an Event: %s", record.config, e)


class ReopeningAudit:
    """The audit repository, opened on first use and again after any failure, so that `p4kube
    run` keeps running while it cannot be reached: every call raises AuditError meanwhile, and
    the loop reports Stalled and retries with backoff, writing nothing to the switches."""

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self._repo: Any = None

    def __getattr__(self, name: str) -> Any:
        from .audit.errors import AuditError

        if self._repo is None:
            self._repo = self._opener()  # AuditError when it cannot be opened
        attr = getattr(self._repo, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except AuditError:
                self._repo = None  # open it afresh next time (deleted, moved, remounted)
                raise

        return call


class IntentRefusals:
    """--verify-intent-signers in `p4kube run`: the gate DirectoryIntent asks before it accepts an
    intent (signed HEAD, no uncommitted changes), and what is done with a refusal: logged (by
    DirectoryIntent), recorded in the audit repository once per refused commit for each config
    with an applied snapshot (against that snapshot, as `reconcile` does), and a Warning Event
    (reason IntentRefused) on the LoadBalancerConfig when there is a Kubernetes API."""

    def __init__(self, root: str, trusted: Any, audit: Any, api: Any) -> None:
        self.root, self.trusted, self.audit, self.api = root, trusted, audit, api
        self._tasks: set[asyncio.Task[None]] = set()
        # Bounded (DESIGN.md 6.1): the newest refusals only.
        self.recorded: deque[tuple[str, str]] = deque(maxlen=64)  # (config, Refused-Intent-Commit) recorded here
        self.reported: deque[tuple[str, str]] = deque(maxlen=64)  # (Refused-Intent-Commit, why), once each
        self._reported = asyncio.Condition()

    def gate(self, intent: IntentSet) -> str:
        from .apply_cli import check_signed_intent
        from .audit.errors import SignatureError

        try:
            return check_signed_intent(intent, self.root, self.trusted)
        except SignatureError as e:  # ssh-keygen or gpg missing or failing: nothing unverified is applied
            return f"intent at {self.root} refused: its signature could not be checked: {e}"

    def refused(self, intent: IntentSet, why: str) -> None:
        task = asyncio.get_running_loop().create_task(self._report(intent, why))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, intent: IntentSet, why: str) -> None:
        from .apply_cli import record_refusal, refused_intent_id

        refused = refused_intent_id(intent)
        for config in intent.configs:
            if self.audit is not None:
                try:
                    held = await asyncio.to_thread(self.audit.last_applied, config.key)
                    if held is not None and await asyncio.to_thread(record_refusal, self.audit, config.key, held, why, refused):
                        self.recorded.append((config.key, refused))
                        log.info("%s: refused intent %s recorded in the audit repository (v%d stays applied)",
                                 config.key, refused[:12], held.version)
                except Exception as e:  # noqa: BLE001 - the refusal stands; the record is best effort
                    log.warning("%s: could not record the refused intent: %s", config.key, e)
            if self.api is not None:
                from .kube.events import EventRecorder, ObjectRef
                from .kube.intent_source import GROUP, VERSION

                try:
                    await EventRecorder(self.api).emit(
                        ObjectRef("LoadBalancerConfig", config.namespace, config.name, f"{GROUP}/{VERSION}"),
                        "Warning", "IntentRefused", "Verify", why[:1000])
                except Exception as e:  # noqa: BLE001 - an Event is never worth stopping the loop
                    log.warning("%s: could not record an Event: %s", config.key, e)
        async with self._reported:
            self.reported.append((refused, why))
            self._reported.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Tests: wait (on each reported refusal) until `predicate()` holds."""
        async with self._reported:
            await asyncio.wait_for(self._reported.wait_for(predicate), timeout)

    async def wait_reported(self) -> None:
        """Until every refusal told so far is recorded (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        await self.wait_reported()


class CRIntentProvider:
    """reconciler.kube.intent_source as an IntentProvider (valid configs only; invalid CRs are
    reported through their status by the source's owner)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self._bus: Broadcast[IntentSet] = Broadcast()

    def current(self) -> IntentSet:
        return self.source.current().intent

    def changes(self) -> AsyncIterator[IntentSet]:
        return self._map()

    async def _map(self) -> AsyncIterator[IntentSet]:
        async for cr in self.source.changes():
            yield cr.intent


# A switch report's state -> the CRD's switch state (outcomes map to phases in reconciler.outcome).
_SWITCH_STATE = {"applied": "InSync", "unchanged": "InSync", "rolled-back": "RolledBack", "unreachable": "Unreachable",
                 "failed": "Degraded", "not-touched": "InSync"}


class CRStatus:
    """Writes LoadBalancerConfig status (kstatus: Ready / Reconciling / Stalled with
    observedGeneration, applied version and digest, each switch's state) for CR intent."""

    def __init__(self, source: Any, writer: Any) -> None:
        self.source, self.writer = source, writer
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self) -> None:
        from .kube.crstatus import Outcome
        from .kube.intent_source import describe

        async def stall_invalid(cr: Any) -> None:
            for res in cr.invalid:  # refused specs: Stalled, naming every field at fault
                await self.writer.report(res.namespace, res.name, res.generation,
                                         Outcome.invalid([describe(d) for d in res.diagnostics]), res.status)

        await stall_invalid(self.source.current())
        async for cr in self.source.changes():
            await stall_invalid(cr)

    async def report(self, record: TransactionRecord, result: ApplyResult | None, held: Snapshot | None) -> None:
        from .kube.crstatus import Outcome, SwitchState, plain_unreachable

        res = self.source.current().resources.get(record.config)
        if res is None or not res.valid:
            return
        # Unreachable switches read the same whatever the peer answered (kube.crstatus.plain_unreachable).
        addresses = {s.name: s.address for s in res.config.switch_config.switches} if res.config is not None else {}
        details = [r.reason for r in result.switches if r.state == "unreachable"] if result is not None else []
        switches = None
        if result is not None:
            switches = tuple(SwitchState(r.name, r.role, _SWITCH_STATE.get(r.state, "Degraded"),
                                         f"unreachable at {addresses.get(r.name, '?')}" if r.state == "unreachable"
                                         else plain_unreachable(r.reason, addresses, details)[:1000]) for r in result.switches)
        reason = plain_unreachable(record.reason, addresses, details)
        message = f"v{record.version} {record.outcome}" + (f": {reason}" if reason else "")
        outcome = Outcome(
            record.outcome.phase, message[:32000], record.outcome.reason,  # type: ignore[arg-type]
            applied_version=held.version if held is not None else None,
            applied_digest=held.digest if held is not None else None,
            switches=switches,
        )
        await self.writer.report(res.namespace, res.name, res.generation, outcome, res.status)


def cmd_run(args: argparse.Namespace) -> int:
    return asyncio.run(run_main(args))


@dataclass
class Runtime:
    """Everything `p4kube run` wires together, apart from the loop itself."""

    intent: Any
    cluster: Any
    make_worker_for: Callable[[int], Callable[[LoadBalancerConfig], ConfigWorker]]
    metrics: Any
    heartbeat: Any
    status: dict[str, bool]
    current: dict[str, Controller]
    api: Any = None
    audit: Any = None
    closers: list[Any] = field(default_factory=list)
    refusals: "IntentRefusals | None" = None  # with --verify-intent-signers

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            r = close()
            if asyncio.iscoroutine(r):
                await r


async def build_runtime(args: argparse.Namespace, api: Any = None) -> Runtime:
    """Sources, sinks and the worker factory from the command line (`api`: a ready ApiClient,
    for tests against a test API server)."""
    from .apply_cli import build_applier
    from .health import make_post_apply_probe
    from .httpserver import Heartbeat
    from .intent.watch import DirectoryIntent
    from .metrics import Metrics
    from .pipeline_io import config_p4info_digest
    from .state import StateDir

    from .apply_cli import audit_keys, build_signer, intent_trust

    signer = build_signer(args)  # a missing key or tool: one clear error before anything starts
    trusted = intent_trust(args)
    keys = audit_keys(args, signer)  # records are used only when signed by these (None: not signed)
    if trusted is not None and not args.intent:
        from .cli import CommandError

        raise CommandError("--verify-intent-signers/--verify-intent-gpg-home verify the commits of an --intent DIR checkout; "
                           "a custom resource carries no signature: with --intent-from-cluster, verify in the GitOps tool "
                           "that applies them (Flux: GitRepository spec.verify; Argo CD: the AppProject's signatureKeys) and "
                           "let only its ServiceAccount write LoadBalancerConfigs (RBAC; docs/audit.md, \"Signed intent\")")
    metrics = Metrics()
    heartbeat = Heartbeat(max_age=300.0)
    status = {"started": False, "leader": not args.leader_elect, "connected": False}
    cr_status: CRStatus | None = None
    if api is None and (not args.cluster or args.intent_from_cluster or args.leader_elect):
        from .kube.client import build_api_client

        api = build_api_client(args.kubeconfig)
    closers: list[Any] = []
    audit = None
    if args.audit_repo:
        from .audit.repo import AuditRepo

        audit = ReopeningAudit(lambda: AuditRepo.open_or_init(args.audit_repo, workdir=args.audit_workdir, signer=signer, trust=keys))
    if args.intent:
        gate = refusals = None
        if trusted is not None:
            refusals = IntentRefusals(args.intent, trusted, audit, api)
            closers.append(refusals.aclose)
            gate = refusals.gate
        intent_provider: Any = DirectoryIntent(
            args.intent, gate=gate, on_refused=refusals.refused if refusals is not None else None)
        if trusted is not None:
            from .intent.committed import CommittedIntent
            from .intent.files import OperatorDirs as _Dirs

            # What was signed, from its blobs.
            intent_provider = CommittedIntent(intent_provider, args.intent, _Dirs.from_args(args))
        intent_provider.start()
        closers.append(intent_provider.stop)
    else:
        from .kube.crstatus import ConfigStatusWriter
        from .kube.intent_source import CRIntentSource

        from .intent.files import OperatorDirs
        from .kube.intent_source import intent_namespaces

        from .switch.allowlist import AllowlistError, parse_allowlist

        try:
            allowed = parse_allowlist(getattr(args, "allowed_switches", None))
        except AllowlistError as e:
            from .cli import CommandError

            raise CommandError(str(e)) from None
        # Files and switches are checked per CR: one that names what the operator did not allow is Stalled.
        cr_source = CRIntentSource(api, namespaces=intent_namespaces(getattr(args, "intent_namespace", None), args.kubeconfig),
                                   dirs=OperatorDirs.from_args(args), allowed=allowed)
        await cr_source.start()
        closers.append(cr_source.aclose)
        await cr_source.wait_synced(timeout=60)
        intent_provider = CRIntentProvider(cr_source)
        cr_status = CRStatus(cr_source, ConfigStatusWriter(api))
        cr_status.start()
        closers.append(cr_status.stop)

    fallback: Any = None
    status_writer: Any = None
    if args.cluster:
        from .cluster.followed import FollowedRecording

        # Re-read only once the file parses as a whole cluster and has stopped changing:
        # `kubectl get ... > FILE` rewrites it in pieces.
        cluster: Any = FollowedRecording(args.cluster)
        cluster.start()
        closers.append(cluster.stop)
        fallback = cluster
    else:
        from .cluster.live import LiveClusterSource
        from .fallback import Fallback
        from .kube.events import EventRecorder
        from .kube.status import ServiceStatusWriter

        cluster = LiveClusterSource(api)
        await cluster.start()
        closers.append(cluster.aclose)
        try:
            await cluster.wait_synced(timeout=120)
        except TimeoutError as e:
            # Not a reason to exit: the loop renders nothing until every kind is listed.
            log.warning("%s; starting anyway, nothing is written until it is", e)
        events = EventRecorder(api)
        fallback = Fallback(api, events)
        status_writer = ServiceStatusWriter(api, events, status_managers=cluster.state.status_managers)

    config_events = ConfigEvents(api) if api is not None else None

    state_dir = StateDir(args.state)
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
        from .metrics import read_backend_packets

        for sw in worker.applier.order:
            state = worker.switch_health.get(sw.name)
            metrics.set_switch_connected(sw.name, sw.role, state is None or state.healthy)

        sessions = [s for sw in worker.applier.order if (s := worker.applier.session_for(sw.name)) is not None]
        if worker.last is not None and sessions:
            try:
                metrics.set_backend_packets(worker.config.key, await read_backend_packets(sessions, worker.last))
            except Exception as e:  # noqa: BLE001 - metrics must never stop the loop
                log.warning("%s: reading backend counters failed: %s", worker.config.key, e)

    warned_plaintext: set[str] = set()  # --allow-insecure-switches: said once per config, not per worker

    def make_worker_for(election_id: int) -> Callable[[LoadBalancerConfig], ConfigWorker]:
        def make_worker(config: LoadBalancerConfig) -> ConfigWorker:
            from .cli import CommandError
            from .controller import WorkerRefused

            try:
                applier: TwoSwitchApplier = build_applier(config, args, election_id)
            except CommandError as e:  # what the operator did not allow: this config only
                raise WorkerRefused(str(e)) from None
            if config.switch_config.tls is None and config.key not in warned_plaintext:
                warned_plaintext.add(config.key)  # only reached with --allow-insecure-switches
                log.warning("%s: plaintext P4Runtime to %s (--allow-insecure-switches): anyone who reaches these "
                            "ports can read the tables or become primary and write them; for labs and tests only",
                            config.key, ", ".join(sw.address for sw in config.switch_config.switches))
            worker = ConfigWorker(
                config, applier, config_p4info_digest(config, getattr(args, "pipeline_dir", None)), audit=audit,
                probe=make_post_apply_probe(config.health_check, vip_probe=config.health_check.vip_probe)
                if config.health_check.enabled else None,
                fallback=fallback, on_result=on_result, on_health=on_health,
                adopt_switches=getattr(args, "adopt_switches", False),
            )
            if audit is None:
                worker.last = state_dir.last_applied(config.key)
            return worker

        return make_worker

    return Runtime(intent_provider, cluster, make_worker_for, metrics, heartbeat, status, current, api, audit, closers,
                   refusals if args.intent else None)


async def run_main(args: argparse.Namespace) -> int:
    from .httpserver import HttpEndpoint, decide_ready, parse_listen_address

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rt = await build_runtime(args)
    endpoint = None
    try:
        if args.metrics_address:
            host, port = parse_listen_address(args.metrics_address)
            endpoint = HttpEndpoint(
                rt.metrics.registry, heartbeat=rt.heartbeat, host=host, port=port,
                readiness=lambda: decide_ready(
                    started=rt.status["started"], leader=rt.status["leader"], switches_connected=rt.status["connected"]
                ),
            )
            await endpoint.start()
        gc.collect()
        gc.freeze()  # the loaded state is long-lived: keep it out of the cyclic collector's scans
        if not args.leader_elect:
            rt.current["controller"] = Controller(rt.intent, rt.cluster, make_worker=rt.make_worker_for(args.election_id))
            rt.status["started"] = True
            await rt.current["controller"].run(stop)
        else:
            await _run_as_leader(args, rt.api, rt.intent, rt.cluster, rt.make_worker_for, stop, rt.status, rt.metrics, rt.current)
    finally:
        await rt.aclose()
        if endpoint is not None:
            await endpoint.stop()
    log.info("stopped")
    return 0


async def _run_as_leader(args, api, intent_provider, cluster, make_worker_for, stop, status, metrics, current) -> None:  # type: ignore[no-untyped-def]
    """Hold the Lease, run the loop while holding it, and stop writing the moment it is lost."""
    from .kube.leader import LeaderElector

    elector = LeaderElector(
        api, namespace=args.leader_elect_namespace, name=args.leader_elect_lease_name, identity=args.leader_elect_identity
    )
    election = asyncio.create_task(elector.run())
    status["started"] = True
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
            log.info("leading as %s (election id %d)", term.identity, term.election_id)
            status["leader"] = True
            metrics.set_leader(True)
            controller = current["controller"] = Controller(intent_provider, cluster, make_worker=make_worker_for(term.election_id))
            run = asyncio.create_task(controller.run(stop))
            lost = asyncio.create_task(term.lost.wait())
            await asyncio.wait({run, lost}, return_when=asyncio.FIRST_COMPLETED)
            if lost.done() and not run.done():
                # Fencing: cancel at once; run()'s finally closes every P4Runtime stream.
                log.error("lost the Lease (%s): stopping all switch writes now", term.lost_reason)
                run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            lost.cancel()
            status["leader"] = False
            metrics.set_leader(False)
    finally:
        elector.stop()
        await elector.release()
        election.cancel()
        await asyncio.gather(election, return_exceptions=True)
