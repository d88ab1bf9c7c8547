"""Every API call the Kubernetes side makes is in REQUIRED_PERMISSIONS, and the shipped RBAC
(deploy/base/rbac.yaml) allows it: the whole flow runs as the reconciler's service account against a
test API server that enforces that RBAC, and its request log is checked."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import write_multi_statuses
from kubeapi.server import KubeApiServer
from kubernetes import client as k8s
from ruamel.yaml import YAML

from reconciler.cluster.live import LiveClusterSource
from reconciler.crd import generate_crd
from reconciler.kube.fallback import Fallback
from reconciler.kube.client import REQUIRED_PERMISSIONS, build_api_client
from reconciler.kube.crstatus import ConfigStatusWriter, Outcome
from reconciler.kube.events import EventRecorder, ObjectRef
from reconciler.kube.intent_source import GROUP, PLURAL, VERSION, CRIntentSource
from reconciler.kube.leader import LeaderElector

REPO = Path(__file__).resolve().parents[1]
MULTI = REPO / "intent-examples" / "multi-service"
NS = "p4kube-system"
SA_USER = f"system:serviceaccount:{NS}:p4kube-reconciler"


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    rbac = [d for d in YAML(typ="safe").load_all((REPO / "deploy" / "base" / "rbac.yaml").read_text()) if d]
    tokens = {"admin-token": ("admin", ["system:masters"]), "sa-token": (SA_USER, ["system:serviceaccounts"])}
    with KubeApiServer(tokens=tokens, rbac=rbac) as srv:
        srv.load([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        srv.load(YAML(typ="safe").load((MULTI / "cluster.yaml").read_text())["items"])
        admin = build_api_client(configuration=srv.client_configuration("admin-token"))
        try:
            k8s.ApiextensionsV1Api(admin).create_custom_resource_definition(generate_crd(), _preload_content=False)
            cr = YAML(typ="safe").load((MULTI / "lbconfig.yaml").read_text())
            # deviceConfig is a name in the operator's --pipeline-dir (reconciler.intent.files).
            cr["spec"]["switchConfig"]["deviceConfig"] = "sim-device-config.json"
            k8s.CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, cr, _preload_content=False)
        finally:
            admin.close()
        yield srv


def test_the_whole_flow_needs_exactly_the_declared_permissions(server: KubeApiServer) -> None:
    api = build_api_client(configuration=server.client_configuration("sa-token"))

    async def go() -> None:
        elector = LeaderElector(api, namespace=NS, identity="a")
        assert await elector.try_acquire_or_renew()
        assert await elector.try_acquire_or_renew()  # renew: get + update
        async with LiveClusterSource(api) as source, CRIntentSource(api, namespaces=[NS]) as crs:
            await source.wait_synced(timeout=10)
            intent = await crs.wait_synced(timeout=10)
            events = EventRecorder(api, instance="a")
            await write_multi_statuses(api, events, source)
            fallback = Fallback(api, events)
            assert (await fallback.fall_back("web/api", "probe failed")).changed
            assert (await fallback.fall_back("web/api", "probe failed")).changed is False
            assert (await fallback.recover("web/api")).changed
            assert (await fallback.take_from_kube_proxy("web/frontend")).changed
            res = intent.resources[f"{NS}/p4kube-config"]
            assert await ConfigStatusWriter(api).report(NS, "p4kube-config", res.generation, Outcome("reconciling", "applying"), res.status)
            for _ in range(2):  # the repeat patches the Event's series
                await events.emit(ObjectRef.service("web/frontend"), "Warning", "ProbeFailed", "Probe", "VIP unreachable")
            assert events.failures == 0 and events.recorded[-1].count == 2
        assert await elector.release()

    try:
        asyncio.run(asyncio.wait_for(go(), 30))
    finally:
        api.close()

    mine = [r for r in server.requests if r.user == SA_USER]
    denied = [(r.verb, r.group, r.resource, r.subresource, r.code) for r in mine if not r.allowed or r.code == 403]
    assert denied == []
    used = {(r.group, r.resource + (f"/{r.subresource}" if r.subresource else ""), r.verb) for r in mine}
    declared = {(p.group, p.resource, verb) for p in REQUIRED_PERMISSIONS for verb in p.verbs}
    # Watches are logged when their stream ends; the ones still open at close may be missing.
    assert used - declared == set()
    assert declared - used <= {(g, r, "watch") for g, r, _ in declared}
