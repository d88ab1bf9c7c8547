"""Service load-balancer status and Events, against the test API server with the official client:
the recorded cluster, rendered for the multi-service intent, its VIPs written through /status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import run
from kubeapi.server import KubeApiServer
from kubernetes import client as k8s
from ruamel.yaml import YAML

from reconciler.cluster.live import LiveClusterSource
from reconciler.kube.fallback import Fallback
from reconciler.intent.loader import load_intent
from reconciler.kube.events import EventRecorder, ObjectRef
from reconciler.kube.status import ServiceStatusWriter, plan_status, status_patch
from reconciler.render import Renderer

REPO = Path(__file__).resolve().parents[1]
MULTI = REPO / "intent-examples" / "multi-service"
DIGEST = "sha256:" + "0" * 64
MERGE = "application/merge-patch+json"
SERVED = {"payments/dns-cache", "payments/ledger", "web/api", "web/frontend"}


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    with KubeApiServer() as srv:
        srv.load(YAML(typ="safe").load((MULTI / "cluster.yaml").read_text())["items"])
        yield srv


def get_service(api: k8s.ApiClient, key: str) -> dict[str, Any]:
    ns, name = key.split("/")
    return json.loads(k8s.CoreV1Api(api).read_namespaced_service(name, ns, _preload_content=False).data)


def ingress(api: k8s.ApiClient, key: str) -> list[dict[str, Any]]:
    return (get_service(api, key).get("status") or {}).get("loadBalancer", {}).get("ingress") or []


def events_about(api: k8s.ApiClient, ns: str, name: str) -> list[dict[str, Any]]:
    raw = k8s.EventsV1Api(api).list_namespaced_event(ns, field_selector=f"regarding.name={name}", _preload_content=False)
    return json.loads(raw.data)["items"]


def status_patches(server: KubeApiServer) -> list[str]:
    return [f"{r.namespace}/{r.name}" for r in server.requests if r.verb == "patch" and r.resource == "services" and r.subresource == "status"]


class Harness:
    """Source, renderer and writer wired as the controller wires them."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.config = load_intent([MULTI / "lbconfig.yaml"]).config()
        self.source = LiveClusterSource(api)
        self.events = EventRecorder(api, instance="test-reconciler")
        self.writer = ServiceStatusWriter(api, self.events, status_managers=self.source.state.status_managers)
        self.renderer = Renderer()
        self.previous = None
        self.changes: Any = None
        self.stale: Any = None  # the cluster the last reconcile saw

    async def __aenter__(self) -> Harness:
        await self.source.start()
        await self.source.wait_synced(timeout=10)
        self.changes = self.source.changes().__aiter__()
        await self.next_change()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.source.aclose()

    async def next_change(self) -> frozenset[str]:
        return await asyncio.wait_for(self.changes.__anext__(), 10)

    async def until(self, keys: set[str]) -> None:
        """Wait until the watch has brought changes of all `keys`."""
        seen: set[str] = set()
        while not keys <= seen:
            seen |= await self.next_change()

    async def reconcile(self) -> Any:
        cluster = self.stale = self.source.snapshot()
        result = self.renderer.render(self.config, cluster, self.previous, p4info_digest=DIGEST)
        self.previous = result.snapshot
        return await self.writer.sync(cluster, result.snapshot, result.issues)


def test_vip_status_is_written_through_status_once(server: KubeApiServer, api: k8s.ApiClient) -> None:
    async def go() -> None:
        async with Harness(api) as h:
            report = await h.reconcile()
            assert {c.service for c in report.written} == SERVED
            vips = {s.service_key: s.vip for s in h.previous.services}
            for key in SERVED:
                assert ingress(api, key) == [{"ip": vips[key], "ipMode": "VIP"}]
                managers = [(m["manager"], m.get("subresource")) for m in get_service(api, key)["metadata"]["managedFields"]]
                assert ("p4kube", "status") in managers
            assert ingress(api, "web/admin") == []  # not opted in: untouched
            # With the cluster as it was before the watch brought our own writes back: the
            # same write is not sent again.
            again = await h.writer.sync(h.stale, h.previous, ())
            assert again.written == [] and again.skipped_in_flight == len(SERVED)
            await h.until(SERVED)
            settled = await h.reconcile()
            assert settled.written == [] and settled.unchanged == len(SERVED)
            assert sorted(status_patches(server)) == sorted(SERVED)
            # The Services' ownership of the status is now known from managedFields.
            assert all(h.source.state.status_managers(k) == {"p4kube"} for k in SERVED)

    run(go())
    for key in SERVED:
        ns, name = key.split("/")
        (event,) = [e for e in events_about(api, ns, name) if e["reason"] == "IPAllocated"]
        assert event["type"] == "Normal" and event["reportingController"] == "p4kube.io/reconciler"
        assert event["reportingInstance"] == "test-reconciler" and event["regarding"]["kind"] == "Service"


def test_a_taken_or_foreign_requested_ip_gets_a_warning_event_and_nothing_else(server: KubeApiServer, api: k8s.ApiClient) -> None:
    core = k8s.CoreV1Api(api)

    def lb_service(name: str, ip: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "web", "annotations": {"loadbalancer.k8s.io/p4kube": "enabled"}},
            # Local: nodePort mode warns of Cluster (another Event); this test is about the IP.
            "spec": {"type": "LoadBalancer", "loadBalancerIP": ip, "externalTrafficPolicy": "Local", "selector": {"app": name},
                     "ports": [{"port": 80, "protocol": "TCP"}]},
        }

    async def go() -> None:
        async with Harness(api) as h:
            await h.reconcile()
            taken = next(s.vip for s in h.previous.services if s.service_key == "web/frontend")
            await asyncio.to_thread(core.create_namespaced_service, "web", lb_service("copycat", taken))
            await asyncio.to_thread(core.create_namespaced_service, "web", lb_service("stranger", "192.0.2.77"))
            await h.until({"web/copycat", "web/stranger"})
            report = await h.reconcile()
            warned = dict(report.warned)
            assert f"requested IP {taken} is already in use by Service web/frontend" in warned["web/copycat"]
            assert "outside every vipPool" in warned["web/stranger"]
            assert {c.service for c in report.written} <= SERVED  # nothing written for the refused ones
            assert ingress(api, "web/copycat") == [] and ingress(api, "web/stranger") == []
            assert ingress(api, "web/frontend") == [{"ip": taken, "ipMode": "VIP"}]
            # The same problem is not announced twice.
            assert (await h.reconcile()).warned == []

    run(go())
    (event,) = events_about(api, "web", "copycat")
    assert event["type"] == "Warning" and event["reason"] == "LoadBalancerIPUnavailable"
    assert "already in use by Service web/frontend" in event["note"]
    assert events_about(api, "web", "stranger")[0]["reason"] == "LoadBalancerIPUnavailable"


def test_status_is_cleared_when_p4kube_stops_serving_but_kept_in_fallback(server: KubeApiServer, api: k8s.ApiClient) -> None:
    core = k8s.CoreV1Api(api)

    async def go() -> None:
        async with Harness(api) as h:
            await h.reconcile()
            vips = {s.service_key: s.vip for s in h.previous.services}
            await h.until(SERVED)
            # A person hands web/api back; the reconciler falls payments/ledger back itself.
            await asyncio.to_thread(
                core.patch_namespaced_service, "api", "web", {"metadata": {"annotations": {"loadbalancer.k8s.io/p4kube": "disabled"}}}, _content_type=MERGE
            )
            await Fallback(api, h.events).fall_back("payments/ledger", "probe failed")
            await h.until({"web/api", "payments/ledger"})
            # As after a restart: ownership is known only from managedFields now.
            h.writer = ServiceStatusWriter(api, h.events, status_managers=h.source.state.status_managers)
            report = await h.reconcile()
            assert [(c.service, c.ingress) for c in report.written] == [("web/api", ())]
            assert ingress(api, "web/api") == []
            assert ingress(api, "payments/ledger") == [{"ip": vips["payments/ledger"], "ipMode": "VIP"}]

    run(go())
    reasons = [e["reason"] for e in events_about(api, "web", "api")]
    assert reasons.count("IPReleased") == 1


def test_another_load_balancers_status_is_never_cleared(server: KubeApiServer, api: k8s.ApiClient) -> None:
    core = k8s.CoreV1Api(api)
    # web/admin does not opt in; MetalLB (say) gave it an address inside p4kube's pool range.
    core.patch_namespaced_service_status(
        "admin", "web", status_patch(("198.51.100.19",)), field_manager="metallb-controller", _content_type=MERGE
    )

    async def go() -> None:
        async with Harness(api) as h:
            report = await h.reconcile()
            assert "web/admin" not in {c.service for c in report.written}

    run(go())
    assert ingress(api, "web/admin") == [{"ip": "198.51.100.19", "ipMode": "VIP"}]


def test_plan_is_pure_and_skips_non_loadbalancer_services(api: k8s.ApiClient) -> None:
    from reconciler.cluster.recorded import load_cluster_file
    from reconciler.render import render

    cluster = load_cluster_file(MULTI / "cluster.yaml")
    config = load_intent([MULTI / "lbconfig.yaml"]).config()
    snap = render(config, cluster, None, p4info_digest=DIGEST).snapshot
    plan = plan_status(cluster, snap, owns_status=lambda key: True)
    assert {c.service for c in plan.writes} == SERVED and plan.unchanged == 0
    assert "default/kubernetes" not in {c.service for c in plan.writes}


def test_event_repeats_fold_into_a_series(server: KubeApiServer, api: k8s.ApiClient) -> None:
    clock = [0.0]
    rec = EventRecorder(api, instance="t", clock=lambda: clock[0], series_window_s=60)
    ref = ObjectRef.service("web/frontend")
    first = rec.emit_blocking(ref, "Warning", "ProbeFailed", "Probe", "VIP unreachable")
    second = rec.emit_blocking(ref, "Warning", "ProbeFailed", "Probe", "VIP unreachable")
    assert first is not None and second is not None and second.name == first.name and second.count == 2
    clock[0] = 120.0  # outside the window: a new Event
    third = rec.emit_blocking(ref, "Warning", "ProbeFailed", "Probe", "VIP unreachable")
    assert third is not None and third.name != first.name and third.count == 1
    events = {e["metadata"]["name"]: e for e in events_about(api, "web", "frontend")}
    assert events[first.name]["series"]["count"] == 2
    assert events[first.name]["eventTime"].endswith("Z") and len(events[first.name]["eventTime"].split(".")[1]) == 7


def test_an_opt_in_value_that_means_nothing_gets_a_warning_event_once(server: KubeApiServer, api: k8s.ApiClient) -> None:
    core = k8s.CoreV1Api(api)
    accepted = 'is not an accepted value ("enabled", "disabled")'

    async def go() -> None:
        async with Harness(api) as h:
            await h.reconcile()
            vip = next(s.vip for s in h.previous.services if s.service_key == "web/api")
            await h.until(SERVED)
            # A person writes "true" on a served Service, and "yes" on one never served.
            await asyncio.to_thread(
                core.patch_namespaced_service, "api", "web", {"metadata": {"annotations": {"loadbalancer.k8s.io/p4kube": "true"}}}, _content_type=MERGE
            )
            await asyncio.to_thread(
                core.patch_namespaced_service, "admin", "web", {"metadata": {"annotations": {"loadbalancer.k8s.io/p4kube": "yes"}}}, _content_type=MERGE
            )
            await h.until({"web/api", "web/admin"})
            report = await h.reconcile()
            warned = dict(report.warned)
            assert warned["web/api"] == (
                f"annotation loadbalancer.k8s.io/p4kube: 'true' {accepted}; kept as in v{h.previous.version} (last applied) until fixed"
            )
            assert warned["web/admin"] == f"annotation loadbalancer.k8s.io/p4kube: 'yes' {accepted}; not served"
            # The typo keeps web/api served as it was: its status stays.
            assert ingress(api, "web/api") == [{"ip": vip, "ipMode": "VIP"}]
            assert "web/api" in {s.service_key for s in h.previous.services}
            assert ingress(api, "web/admin") == []
            assert (await h.reconcile()).warned == []  # once per distinct problem

    run(go())
    for name, value in (("api", "true"), ("admin", "yes")):
        (event,) = [e for e in events_about(api, "web", name) if e["type"] == "Warning"]
        assert event["reason"] == "InvalidOptIn" and f"'{value}' {accepted}" in event["note"]
        assert event["regarding"]["kind"] == "Service"


def test_external_traffic_policy_cluster_gets_a_warning_event_once(server: KubeApiServer, api: k8s.ApiClient) -> None:
    """nodePort mode: a Service switched to externalTrafficPolicy Cluster stays served but its
    replica weights no longer hold (kube-proxy re-balances): a Warning Event says so, once."""
    core = k8s.CoreV1Api(api)

    async def go() -> None:
        async with Harness(api) as h:
            await h.reconcile()
            await h.until(SERVED)
            await asyncio.to_thread(
                core.patch_namespaced_service, "api", "web", {"spec": {"externalTrafficPolicy": "Cluster"}}, _content_type=MERGE
            )
            await h.until({"web/api"})
            report = await h.reconcile()
            assert [k for k, m in report.warned if m.startswith("externalTrafficPolicy Cluster:")] == ["web/api"]
            assert "web/api" in {s.service_key for s in h.previous.services}  # still served
            assert (await h.reconcile()).warned == []  # once per distinct problem

    run(go())
    (event,) = [e for e in events_about(api, "web", "api") if e["type"] == "Warning"]
    assert event["reason"] == "ExternalTrafficPolicyCluster" and "set Local" in event["note"]


def test_a_kept_service_is_announced_once_across_versions() -> None:
    from reconciler.kube.status import event_identity, issue_reason, warns
    from reconciler.render import RenderIssue

    msg = "requested IP 192.0.2.1 (spec.loadBalancerIP) is outside every vipPool; kept as in v{} (last applied) until fixed"
    v7, v8 = (RenderIssue("web/api", msg.format(v), "error") for v in (7, 8))
    assert event_identity(v7) == event_identity(v8)
    assert issue_reason(v7) == "LoadBalancerIPUnavailable" and warns(v7)
    assert not warns(RenderIssue("web/api", "no ready endpoints: VIP left to kube-proxy until replicas are ready"))
