"""Service status.loadBalancer.ingress for the VIPs the switches serve, as MetalLB does.

Argo CD reports a LoadBalancer Service healthy only once status.loadBalancer.ingress is set
(DESIGN.md 6), and kube-proxy serves a load-balancer IP only when it is listed there, which is
what keeps a fallen-back Service reachable on its VIP. So:

- a Service of type LoadBalancer the snapshot serves gets `[{ip: <vip>, ipMode: VIP}]`;
- a Service in automatic fallback keeps its ingress (kube-proxy serves the VIP meanwhile);
- a Service that is no longer p4kube's (not served, not in automatic fallback) loses the
  ingress p4kube wrote; p4kube's ownership is read from managedFields (manager "p4kube" on the
  status subresource), so another load balancer's status is never cleared;
- a Service render refused (its requested IP is outside the pools or taken, ...) or kept from
  the last applied snapshot because of such a problem, and a Service whose opt-in annotation
  value is neither "enabled" nor "disabled", gets a Warning Event with render's message, once
  per distinct problem while it lasts.

Writes go to the status subresource as JSON merge patches under field manager "p4kube" (a status
sent to the main resource is silently dropped: fixture 07), and only when the ingress differs:
equal writes are skipped, including the window in which the watch has not yet brought back the
object p4kube just patched.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kubernetes import client as k8s

from reconciler.cluster.model import ClusterState, Service
from reconciler.fallback import is_auto_fallback
from reconciler.kube.client import FIELD_MANAGER, MERGE_PATCH, KubeError, call_json
from reconciler.kube.events import EventRecorder, ObjectRef
from reconciler.render.engine import RenderIssue
from reconciler.render.select import CLUSTER_TRAFFIC_POLICY, INVALID_OPT_IN
from reconciler.snapshot import Snapshot

log = logging.getLogger(__name__)

Ingress = tuple[str, ...]


@dataclass(frozen=True)
class StatusChange:
    service: str
    ingress: Ingress  # () clears it
    before: Ingress


@dataclass(frozen=True)
class StatusPlan:
    writes: tuple[StatusChange, ...]
    unchanged: int  # served Services whose status already holds their VIP


def served_vips(snapshot: Snapshot) -> dict[str, str]:
    """Service key -> VIP, for every Service the snapshot serves (one VIP per Service)."""
    return {s.service_key: s.vip for s in snapshot.services}


def plan_status(
    cluster: ClusterState,
    snapshot: Snapshot,
    owns_status: Callable[[str], bool],
) -> StatusPlan:
    """Which Services need their ingress written, and to what (pure)."""
    served = served_vips(snapshot)
    writes: list[StatusChange] = []
    unchanged = 0
    for key in sorted(cluster.services):
        svc = cluster.services[key]
        if svc.type != "LoadBalancer":
            continue
        vip = served.get(key)
        if vip is not None:
            if svc.ingress_ips == (vip,):
                unchanged += 1
            else:
                writes.append(StatusChange(key, (vip,), svc.ingress_ips))
        elif svc.ingress_ips and not is_auto_fallback(svc) and owns_status(key):
            writes.append(StatusChange(key, (), svc.ingress_ips))
    return StatusPlan(tuple(writes), unchanged)


def status_patch(ingress: Ingress) -> dict[str, object]:
    """The merge patch for the status subresource (null removes the ingress list)."""
    if not ingress:
        return {"status": {"loadBalancer": {"ingress": None}}}
    return {"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in ingress]}}}


def warns(issue: RenderIssue) -> bool:
    """Whether a render issue is sent as a Warning Event on its Service: every error, an opt-in
    annotation value that means nothing (a typo that would otherwise go unseen), and a
    nodePort-mode Service whose externalTrafficPolicy is Cluster (served, but not as weighted)."""
    return issue.severity == "error" or issue.message.startswith((INVALID_OPT_IN, CLUSTER_TRAFFIC_POLICY))


_KEPT_VERSION = re.compile(r"kept as in v\d+ ")


def event_identity(issue: RenderIssue) -> str:
    """The problem an issue names, for sending it once: "kept as in v7" and "kept as in v8" are
    the same problem seen from two snapshots."""
    return _KEPT_VERSION.sub("kept as in the last applied version ", issue.message)


def issue_service_key(issue: RenderIssue) -> str | None:
    """The Service a render issue is about ("ns/name:port" entries name their Service)."""
    if not issue.service or "/" not in issue.service:
        return None
    return issue.service.split(":", 1)[0]


def issue_reason(issue: RenderIssue) -> str:
    """The Event reason for a refused Service."""
    if issue.message.startswith(INVALID_OPT_IN):
        return "InvalidOptIn"
    if issue.message.startswith(CLUSTER_TRAFFIC_POLICY):
        return "ExternalTrafficPolicyCluster"
    if issue.message.startswith("requested IP"):
        return "LoadBalancerIPUnavailable"
    if "VIP pool" in issue.message or "auto-assign" in issue.message:
        return "AllocationFailed"
    return "NotServed"


@dataclass
class StatusReport:
    written: list[StatusChange] = field(default_factory=list)
    skipped_in_flight: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (service, error)
    warned: list[tuple[str, str]] = field(default_factory=list)  # (service, message) Events sent


class ServiceStatusWriter:
    """Keeps Services' load-balancer status in line with the applied snapshot."""

    def __init__(
        self,
        api: k8s.ApiClient,
        events: EventRecorder,
        *,
        status_managers: Callable[[str], frozenset[str]] | None = None,
    ) -> None:
        self._core = k8s.CoreV1Api(api)
        self._events = events
        self._status_managers = status_managers or (lambda key: frozenset())
        # key -> (ingress written, the Service's resourceVersion when we decided): skips the
        # rewrite while the watch has not delivered our own change yet.
        self._in_flight: dict[str, tuple[Ingress, str]] = {}
        self._written_here: set[str] = set()
        self._warned: dict[str, frozenset[str]] = {}  # key -> messages already sent as Events

    def owns_status(self, key: str) -> bool:
        return key in self._written_here or FIELD_MANAGER in self._status_managers(key)

    async def sync(self, cluster: ClusterState, snapshot: Snapshot, issues: Iterable[RenderIssue] = ()) -> StatusReport:
        """Write what differs; send Warning Events for newly refused Services."""
        report = StatusReport()
        plan = plan_status(cluster, snapshot, self.owns_status)
        report.unchanged = plan.unchanged
        for change in plan.writes:
            svc = cluster.services[change.service]
            flight = self._in_flight.get(change.service)
            if flight is not None and flight == (change.ingress, svc.resource_version):
                report.skipped_in_flight += 1
                continue
            try:
                await self._write(svc, change)
            except KubeError as e:
                if e.code == 404:  # deleted meanwhile: nothing to write
                    continue
                report.failed.append((change.service, str(e)))
                log.warning("could not write the load-balancer status of Service %s: %s", change.service, e)
                continue
            report.written.append(change)
        for key in [k for k in self._in_flight if k not in cluster.services]:
            del self._in_flight[key]
        await self._warn(cluster, issues, report)
        return report

    async def _write(self, svc: Service, change: StatusChange) -> None:
        key = change.service
        updated = await asyncio.to_thread(
            call_json,
            f"patch Service {key} status",
            self._core.patch_namespaced_service_status,
            svc.name,
            svc.namespace,
            status_patch(change.ingress),
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )
        self._in_flight[key] = (change.ingress, svc.resource_version)
        uid = (updated.get("metadata") or {}).get("uid")
        ref = ObjectRef.service(key, uid)
        if change.ingress:
            self._written_here.add(key)
            await self._events.emit(ref, "Normal", "IPAllocated", "AssignVIP", f"load-balancer IP {', '.join(change.ingress)} served by the p4kube switches")
        else:
            self._written_here.discard(key)
            await self._events.emit(ref, "Normal", "IPReleased", "ReleaseVIP", f"load-balancer IP {', '.join(change.before)} released: p4kube no longer serves this Service")

    async def _warn(self, cluster: ClusterState, issues: Iterable[RenderIssue], report: StatusReport) -> None:
        current: dict[str, set[RenderIssue]] = {}
        for issue in issues:
            key = issue_service_key(issue)
            if warns(issue) and key is not None and key in cluster.services:
                current.setdefault(key, set()).add(issue)
        for key in sorted(current):
            sent = self._warned.get(key, frozenset())
            for issue in sorted(current[key], key=lambda i: i.message):
                if event_identity(issue) in sent:
                    continue
                reason = issue_reason(issue)
                action = {"InvalidOptIn": "SelectService", "ExternalTrafficPolicyCluster": "BalanceTraffic"}.get(reason, "AssignVIP")
                await self._events.emit(ObjectRef.service(key), "Warning", reason, action, str(issue))
                report.warned.append((key, issue.message))
        # Problems that went away may warn again if they come back.
        self._warned = {k: frozenset(event_identity(i) for i in v) for k, v in current.items()}
