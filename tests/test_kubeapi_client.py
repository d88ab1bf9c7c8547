"""The test API server driven by the official `kubernetes` client, as the product will drive it.

Covers: list/watch with kubernetes.watch.Watch, 410 and relist, bookmarks and WatchList, paging
and expired continue tokens, Service status patches, server-side apply, Events through both APIs,
Lease leader election, CRD + custom resource + status, RBAC with the request log, TLS, restart,
loading a recorded cluster, and that stopping the server ends watches and threads.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubeapi import KubeApiServer, WatchOptions
from kubeapi.fixtures import kube_api, load_list_yaml  # noqa: F401 - the fixture
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[1]
MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"


@pytest.fixture
def api(kube_api: KubeApiServer) -> Iterator[client.ApiClient]:  # noqa: F811
    with client.ApiClient(kube_api.client_configuration()) as c:
        c.user_agent = "p4kube/test"
        yield c


def _ns(api: client.ApiClient, name: str = "tx") -> None:
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))


def _service(name: str, *, lb: bool = False, port: int = 80) -> client.V1Service:
    return client.V1Service(
        metadata=client.V1ObjectMeta(
            name=name, labels={"app": name}, annotations={"loadbalancer.k8s.io/p4kube": "enabled"}
        ),
        spec=client.V1ServiceSpec(
            type="LoadBalancer" if lb else None,
            selector={"app": name},
            ports=[client.V1ServicePort(name="http", port=port, target_port=8080)],
        ),
    )


def _error(e: ApiException) -> dict[str, Any]:
    return json.loads(e.body)


# ---- list and watch -------------------------------------------------------------------------


def test_list_then_watch_replays_changes_in_order(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    _ns(api)
    v1.create_namespaced_service("tx", _service("web"))
    listed = v1.list_namespaced_service("tx")
    rv = listed.metadata.resource_version
    assert [s.metadata.name for s in listed.items] == ["web"]
    assert int(rv) >= int(listed.items[0].metadata.resource_version)
    v1.create_namespaced_service("tx", _service("api", port=81))
    v1.patch_namespaced_service("web", "tx", {"metadata": {"labels": {"rev": "2"}}})
    v1.delete_namespaced_service("api", "tx")

    w = watch.Watch()
    seen = []
    for ev in w.stream(v1.list_namespaced_service, "tx", resource_version=rv, timeout_seconds=5):
        seen.append((ev["type"], ev["object"].metadata.name, int(ev["object"].metadata.resource_version)))
        if len(seen) == 3:
            w.stop()
    assert [(t, n) for t, n, _ in seen] == [("ADDED", "api"), ("MODIFIED", "web"), ("DELETED", "api")]
    rvs = [r for _, _, r in seen]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    assert w.resource_version == str(rvs[-1])  # the helper resumes from the last event


def test_watch_sees_live_changes_with_label_selector(kube_api: KubeApiServer, api: client.ApiClient) -> None:  # noqa: F811
    v1 = client.CoreV1Api(api)
    _ns(api)
    rv = v1.list_namespaced_service("tx").metadata.resource_version
    events: queue.Queue[tuple[str, str]] = queue.Queue()

    def consume() -> None:
        w = watch.Watch()
        for ev in w.stream(
            v1.list_namespaced_service, "tx", resource_version=rv, label_selector="tier=edge", timeout_seconds=10
        ):
            events.put((ev["type"], ev["object"].metadata.name))
            if ev["type"] == "DELETED":
                w.stop()

    t = threading.Thread(target=consume)
    t.start()
    assert kube_api.wait_for_watches(1)
    v1.create_namespaced_service("tx", _service("other"))  # never matches
    v1.create_namespaced_service("tx", _service("web"))
    v1.patch_namespaced_service("web", "tx", {"metadata": {"labels": {"tier": "edge"}}})  # enters the selector
    v1.patch_namespaced_service("web", "tx", {"metadata": {"labels": {"tier": None}}})  # leaves it
    t.join(10)
    assert not t.is_alive()
    assert [events.get_nowait() for _ in range(events.qsize())] == [("ADDED", "web"), ("DELETED", "web")]


def test_watch_from_expired_rv_raises_410_and_relist_recovers(kube_api: KubeApiServer, api: client.ApiClient) -> None:  # noqa: F811
    v1 = client.CoreV1Api(api)
    _ns(api)
    old_rv = v1.list_namespaced_service("tx").metadata.resource_version
    v1.create_namespaced_service("tx", _service("web"))
    kube_api.expire_watch_cache(["services"])
    kube_api.clear_requests()
    with pytest.raises(ApiException) as exc:
        for _ in watch.Watch().stream(v1.list_namespaced_service, "tx", resource_version=old_rv):
            pass
    assert exc.value.status == 410 and "too old resource version" in exc.value.reason
    # without timeout_seconds the helper retries once from the same RV before giving up
    assert [r.verb for r in kube_api.requests] == ["watch", "watch"]
    listed = v1.list_namespaced_service("tx")  # relist, then watch from the fresh RV
    assert [s.metadata.name for s in listed.items] == ["web"]
    v1.delete_namespaced_service("web", "tx")
    w = watch.Watch()
    for ev in w.stream(
        v1.list_namespaced_service, "tx", resource_version=listed.metadata.resource_version, timeout_seconds=5
    ):
        assert (ev["type"], ev["object"].metadata.name) == ("DELETED", "web")
        w.stop()


def _raw_watch(server: KubeApiServer, path: str) -> list[dict[str, Any]]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": "Bearer test-token"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
        events = []
        while line := resp.readline():
            events.append(json.loads(line))
        return events
    finally:
        conn.close()


def _raw_watches(server: KubeApiServer, paths: list[str]) -> list[list[dict[str, Any]]]:
    """Several watches at once (each waits for its timeout)."""
    results: dict[int, Any] = {}

    def run(i: int, path: str) -> None:
        try:
            results[i] = _raw_watch(server, path)
        except Exception as e:  # noqa: BLE001 - re-raised below
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(paths)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for r in results.values():
        if isinstance(r, Exception):
            raise r
    return [results[i] for i in range(len(paths))]


def test_bookmarks_only_when_asked_and_newer_than_start() -> None:
    with KubeApiServer(watch_options=WatchOptions(bookmark_lead=0.7)) as server:
        with client.ApiClient(server.client_configuration()) as c:
            v1 = client.CoreV1Api(c)
            _ns(c)
            rv = v1.list_namespaced_service("tx").metadata.resource_version
            v1.create_namespaced_service("tx", _service("web"))
        base = "/api/v1/namespaces/tx/services?watch=1&timeoutSeconds=1&resourceVersion="
        fresh = str(server.resource_version)
        with_bm, without, idle = _raw_watches(
            server,
            [
                base + rv + "&allowWatchBookmarks=true",
                base + rv,  # bookmarks never come unasked
                base + fresh + "&allowWatchBookmarks=true",  # nothing newer than the start: no bookmark at all
            ],
        )
        assert [e["type"] for e in with_bm] == ["ADDED", "BOOKMARK"]
        bookmark = with_bm[1]["object"]
        assert bookmark == {
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": with_bm[0]["object"]["metadata"]["resourceVersion"]},
            "spec": {},
            "status": {"loadBalancer": {}},
        }
        assert [e["type"] for e in without] == ["ADDED"]
        assert idle == []


def test_watchlist_initial_events_end_with_annotated_bookmark(kube_api: KubeApiServer, api: client.ApiClient) -> None:  # noqa: F811
    _ns(api)
    v1 = client.CoreV1Api(api)
    for name in ("a", "b"):
        v1.create_namespaced_service("tx", _service(name))
    events, legacy = _raw_watches(
        kube_api,
        [
            (
                "/api/v1/namespaces/tx/services?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
                "&allowWatchBookmarks=true&timeoutSeconds=1"
            ),
            # a legacy watch without resourceVersion is served the same way (kube-apiserver >= 1.32), minus the bookmark
            "/api/v1/namespaces/tx/services?watch=1&timeoutSeconds=1",
        ],
    )
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("BOOKMARK", None),
    ]
    assert events[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert [e["type"] for e in legacy] == ["ADDED", "ADDED"]
    with pytest.raises(ApiException) as exc:  # sendInitialEvents needs resourceVersionMatch=NotOlderThan
        v1.list_namespaced_service("tx", watch=True, send_initial_events=True, timeout_seconds=1)
    assert exc.value.status == 422


def test_paging_and_expired_continue_token(kube_api: KubeApiServer, api: client.ApiClient) -> None:  # noqa: F811
    v1 = client.CoreV1Api(api)
    _ns(api)
    for i in range(5):
        v1.create_namespaced_service("tx", _service(f"s{i}", port=80 + i))
    first = v1.list_namespaced_service("tx", limit=2)
    assert [s.metadata.name for s in first.items] == ["s0", "s1"]
    assert first.metadata.remaining_item_count == 3
    second = v1.list_namespaced_service("tx", limit=2, _continue=first.metadata._continue)
    assert [s.metadata.name for s in second.items] == ["s2", "s3"]
    assert second.metadata.resource_version == first.metadata.resource_version  # one consistent snapshot
    v1.create_namespaced_service("tx", _service("s5", port=90))  # not in the snapshot
    third = v1.list_namespaced_service("tx", limit=2, _continue=second.metadata._continue)
    assert [s.metadata.name for s in third.items] == ["s4"] and not third.metadata._continue
    kube_api.compact()
    with pytest.raises(ApiException) as exc:
        v1.list_namespaced_service("tx", limit=2, _continue=second.metadata._continue)
    status = _error(exc.value)
    assert (exc.value.status, status["reason"]) == (410, "Expired")
    rest = v1.list_namespaced_service("tx", limit=10, _continue=status["metadata"]["continue"])
    assert [s.metadata.name for s in rest.items] == ["s4", "s5"]  # an inconsistent but complete remainder
    with pytest.raises(ApiException) as exc:
        v1.list_namespaced_service(
            "tx", resource_version=first.metadata.resource_version, resource_version_match="Exact"
        )
    assert exc.value.status == 410


# ---- writes -----------------------------------------------------------------------------------


def test_service_status_patch_and_no_op_writes(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    _ns(api)
    created = v1.create_namespaced_service("tx", _service("web", lb=True))
    assert created.spec.cluster_ip and all(30000 <= p.node_port <= 32767 for p in created.spec.ports)
    status = {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10", "ipMode": "VIP"}]}}}
    patched = v1.patch_namespaced_service_status("web", "tx", status, field_manager="p4kube")  # dict: strategic merge
    assert patched.status.load_balancer.ingress[0].ip == "203.0.113.10"
    entries = {(m.manager, m.operation, m.subresource) for m in patched.metadata.managed_fields}
    assert entries == {("p4kube", "Update", None), ("p4kube", "Update", "status")}  # create (User-Agent) and status
    again = v1.patch_namespaced_service_status("web", "tx", status, field_manager="p4kube", _content_type=MERGE)
    assert again.metadata.resource_version == patched.metadata.resource_version  # no-op: same RV
    ignored = v1.patch_namespaced_service("web", "tx", {"status": {"loadBalancer": {}}}, _content_type=MERGE)
    assert ignored.status.load_balancer.ingress[0].ip == "203.0.113.10"  # status via the main resource: dropped
    assert ignored.metadata.resource_version == patched.metadata.resource_version
    with pytest.raises(ApiException) as exc:
        v1.patch_namespaced_service_status(
            "web", "tx", {"status": {"loadBalancer": {"ingress": [{"hostname": "x.example", "ipMode": "VIP"}]}}}
        )
    assert exc.value.status == 422
    assert _error(exc.value)["details"]["causes"][0]["field"] == "status.loadBalancer.ingress[0].ipMode"


def test_server_side_apply_conflict_force_and_removal(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    _ns(api)
    v1.create_namespaced_service("tx", _service("web"))
    v1.patch_namespaced_service(
        "web", "tx", {"metadata": {"annotations": {"p4kube.io/vip": "a"}}}, field_manager="other", _content_type=MERGE
    )
    config = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "annotations": {"p4kube.io/vip": "b"}}}
    with pytest.raises(ApiException) as exc:
        v1.patch_namespaced_service("web", "tx", config, field_manager="p4kube", _content_type=APPLY)
    status = _error(exc.value)
    assert exc.value.status == 409 and status["details"]["causes"][0]["reason"] == "FieldManagerConflict"
    assert (
        status["message"]
        == 'Apply failed with 1 conflict: conflict with "other" using v1: .metadata.annotations.p4kube.io/vip'
    )
    applied = v1.patch_namespaced_service("web", "tx", config, field_manager="p4kube", force=True, _content_type=APPLY)
    assert applied.metadata.annotations["p4kube.io/vip"] == "b"
    assert {(m.manager, m.operation) for m in applied.metadata.managed_fields} >= {("p4kube", "Apply")}
    assert not any(m.manager == "other" for m in applied.metadata.managed_fields)  # it owned nothing else
    config["metadata"]["annotations"] = {"p4kube.io/algorithm": "round-robin"}
    removed = v1.patch_namespaced_service("web", "tx", config, field_manager="p4kube", _content_type=APPLY)
    assert "p4kube.io/vip" not in removed.metadata.annotations  # omitted by its only owner: deleted


def test_events_through_both_apis_and_microtime(api: client.ApiClient) -> None:
    _ns(api)
    core, events = client.CoreV1Api(api), client.EventsV1Api(api)
    core.create_namespaced_event(
        "tx",
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(name="web.legacy"),
            involved_object=client.V1ObjectReference(kind="Service", namespace="tx", name="web"),
        ),
    )
    when = dt.datetime(2026, 11, 22, 10, 23, 48, 980934, tzinfo=dt.UTC)
    new = events.create_namespaced_event(
        "tx",
        client.EventsV1Event(
            metadata=client.V1ObjectMeta(name="web.new"),
            event_time=when,
            type="Normal",
            reason="Programmed",
            action="ProgramVIP",
            note="VIP programmed",
            reporting_controller="p4kube.io/controller",
            reporting_instance="p4kube-0",
            regarding=client.V1ObjectReference(kind="Service", namespace="tx", name="web"),
        ),
    )
    assert new.event_time == when
    as_core = core.read_namespaced_event("web.new", "tx")
    assert (as_core.message, as_core.reporting_component, as_core.involved_object.name) == (
        "VIP programmed",
        "p4kube.io/controller",
        "web",
    )
    patched = events.patch_namespaced_event(
        "web.new",
        "tx",
        {"series": {"count": 2, "lastObservedTime": "2026-11-22T10:23:49.000001Z"}},
        _content_type=MERGE,
    )
    assert patched.series.count == 2
    with pytest.raises(ApiException) as exc:
        events.patch_namespaced_event("web.new", "tx", {"note": "changed"}, _content_type=MERGE)
    assert exc.value.status == 422 and _error(exc.value)["details"]["causes"][0]["field"] == "message"
    whole_second = when.replace(microsecond=0)  # datetime.isoformat() drops the fraction: the server refuses it
    with pytest.raises(ApiException) as exc:
        events.create_namespaced_event(
            "tx",
            client.EventsV1Event(
                metadata=client.V1ObjectMeta(name="web.bad"),
                event_time=whole_second,
                type="Normal",
                reason="R",
                action="A",
                reporting_controller="p4kube.io/c",
                reporting_instance="i",
                regarding=client.V1ObjectReference(kind="Service", namespace="tx", name="web"),
            ),
        )
    assert exc.value.status == 400 and 'cannot parse "+00:00" as ".000000"' in _error(exc.value)["message"]
    listed = core.list_namespaced_event("tx", field_selector="involvedObject.name=web")
    assert sorted(e.metadata.name for e in listed.items) == ["web.legacy", "web.new"]


def test_lease_create_renew_takeover_and_stale_update(api: client.ApiClient) -> None:
    _ns(api)
    coord = client.CoordinationV1Api(api)
    t0 = dt.datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=dt.UTC)
    lease = coord.create_namespaced_lease(
        "tx",
        client.V1Lease(
            metadata=client.V1ObjectMeta(name="p4kube-leader"),
            spec=client.V1LeaseSpec(
                holder_identity="a", lease_duration_seconds=15, acquire_time=t0, renew_time=t0, lease_transitions=0
            ),
        ),
    )
    assert lease.metadata.generation is None and lease.spec.renew_time == t0
    lease.spec.renew_time = t0 + dt.timedelta(seconds=5)
    renewed = coord.replace_namespaced_lease("p4kube-leader", "tx", lease)
    assert int(renewed.metadata.resource_version) > int(lease.metadata.resource_version)
    taken = client.V1Lease(
        metadata=renewed.metadata,
        spec=client.V1LeaseSpec(
            holder_identity="b",
            lease_duration_seconds=15,
            acquire_time=t0 + dt.timedelta(seconds=20),
            renew_time=t0 + dt.timedelta(seconds=20),
            lease_transitions=1,
        ),
    )
    taken = coord.replace_namespaced_lease("p4kube-leader", "tx", taken)
    assert (taken.spec.holder_identity, taken.spec.lease_transitions) == ("b", 1)
    renewed.spec.renew_time = t0 + dt.timedelta(seconds=21)  # the deposed leader still holds the old RV
    with pytest.raises(ApiException) as exc:
        coord.replace_namespaced_lease("p4kube-leader", "tx", renewed)
    assert exc.value.status == 409 and _error(exc.value)["reason"] == "Conflict"
    with pytest.raises(ApiException) as exc:
        coord.patch_namespaced_lease(
            "p4kube-leader", "tx", {"spec": {"renewTime": "2026-11-22T10:30:00Z"}}, _content_type=MERGE
        )
    assert exc.value.status == 422 and 'cannot parse "Z" as ".000000"' in _error(exc.value)["message"]


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "loadbalancerconfigs.networking.p4kube.io"},
    "spec": {
        "group": "networking.p4kube.io",
        "scope": "Namespaced",
        "names": {
            "kind": "LoadBalancerConfig",
            "plural": "loadbalancerconfigs",
            "singular": "loadbalancerconfig",
            "shortNames": ["lbc"],
        },
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["algorithm"],
                                "properties": {
                                    "algorithm": {
                                        "type": "string",
                                        "enum": ["replica-weighted", "least-connections", "round-robin"],
                                    },
                                    "updateInterval": {"type": "string", "default": "1s"},
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "observedGeneration": {"type": "integer"},
                                    "conditions": {
                                        "type": "array",
                                        "x-kubernetes-list-type": "map",
                                        "x-kubernetes-list-map-keys": ["type"],
                                        "items": {
                                            "type": "object",
                                            "required": ["type", "status"],
                                            "properties": {
                                                "type": {"type": "string"},
                                                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_custom_resource_and_status(kube_api: KubeApiServer, api: client.ApiClient) -> None:  # noqa: F811
    _ns(api)
    ext, co = client.ApiextensionsV1Api(api), client.CustomObjectsApi(api)
    ext.create_custom_resource_definition(CRD)
    crd = ext.read_custom_resource_definition(CRD["metadata"]["name"])
    assert {c.type: c.status for c in crd.status.conditions}["Established"] == "True"
    args = ("networking.p4kube.io", "v1alpha1", "tx", "loadbalancerconfigs")
    body = {
        "apiVersion": "networking.p4kube.io/v1alpha1",
        "kind": "LoadBalancerConfig",
        "metadata": {"name": "lbc"},
        "spec": {"algorithm": "replica-weighted", "bogus": 1},
        "status": {"observedGeneration": 9},
    }
    created = co.create_namespaced_custom_object(*args, body)
    assert created["spec"] == {"algorithm": "replica-weighted", "updateInterval": "1s"}  # pruned and defaulted
    assert "status" not in created and created["metadata"]["generation"] == 1
    with pytest.raises(ApiException) as exc:
        co.create_namespaced_custom_object(
            *args, {**body, "metadata": {"name": "bad"}, "spec": {"algorithm": "maglev"}}
        )
    assert exc.value.status == 422
    assert _error(exc.value)["details"]["causes"][0]["reason"] == "FieldValueNotSupported"
    status = {
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "Stalled", "status": "False"}],
        }
    }
    with_status = co.patch_namespaced_custom_object_status(*args[:3], args[3], "lbc", status)
    assert with_status["metadata"]["generation"] == 1 and with_status["status"]["conditions"][0]["type"] == "Ready"
    spec_change = co.patch_namespaced_custom_object(*args[:3], args[3], "lbc", {"spec": {"algorithm": "round-robin"}})
    assert spec_change["metadata"]["generation"] == 2 and spec_change["status"]["observedGeneration"] == 1
    applied = co.patch_namespaced_custom_object_status(
        *args[:3],
        args[3],
        "lbc",
        {
            "apiVersion": "networking.p4kube.io/v1alpha1",
            "kind": "LoadBalancerConfig",
            "metadata": {"name": "lbc"},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        },
        field_manager="p4kube",
        force=True,
        _content_type=APPLY,
    )
    assert [(c["type"], c["status"]) for c in applied["status"]["conditions"]] == [
        ("Ready", "False"),
        ("Stalled", "False"),
    ]
    items = co.list_namespaced_custom_object(*args)["items"]
    assert [(i["kind"], i["metadata"]["name"]) for i in items] == [("LoadBalancerConfig", "lbc")]
    conn = http.client.HTTPConnection(kube_api.host, kube_api.port, timeout=5)
    conn.request(
        "PATCH",
        "/apis/networking.p4kube.io/v1alpha1/namespaces/tx/loadbalancerconfigs/lbc",
        b"{}",
        {"Authorization": "Bearer test-token", "Content-Type": "application/strategic-merge-patch+json"},
    )
    assert conn.getresponse().status == 415
    conn.close()
    ext.delete_custom_resource_definition(CRD["metadata"]["name"])
    with pytest.raises(ApiException) as exc:
        co.list_namespaced_custom_object(*args)
    assert exc.value.status == 404


# ---- access control, transport, lifecycle -------------------------------------------------------

RBAC = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "p4kube"},
        "rules": [
            {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": [""], "resources": ["services/status"], "verbs": ["patch"]},
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "p4kube"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "p4kube"},
        "subjects": [{"kind": "ServiceAccount", "name": "p4kube", "namespace": "p4kube-system"}],
    },
]


def test_rbac_denies_what_roles_do_not_grant_and_logs_every_request(tmp_path: Path) -> None:
    tokens = {"admin-token": ("admin", ["system:masters"]), "sa-token": "system:serviceaccount:p4kube-system:p4kube"}
    rbac_file = tmp_path / "rbac.yaml"  # RBAC can come from the manifests as shipped
    rbac_file.write_text("\n---\n".join(json.dumps(o) for o in RBAC))
    with KubeApiServer(tokens=tokens, rbac=[rbac_file]) as server:
        sa_user = "system:serviceaccount:p4kube-system:p4kube"
        assert server.can(sa_user, "patch", "services/status", namespace="tx")
        assert not server.can(sa_user, "update", "services/status", namespace="tx")
        assert not server.can("someone-else", "list", "services")
        with client.ApiClient(server.client_configuration("admin-token")) as admin:
            _ns(admin)
            client.CoreV1Api(admin).create_namespaced_service("tx", _service("web"))
        server.clear_requests()
        with client.ApiClient(server.client_configuration("sa-token")) as sa:
            v1 = client.CoreV1Api(sa)
            assert [s.metadata.name for s in v1.list_service_for_all_namespaces().items] == ["kubernetes", "web"]
            v1.patch_namespaced_service_status(
                "web", "tx", {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}}}
            )
            with pytest.raises(ApiException) as exc:
                v1.delete_namespaced_service("web", "tx")
            assert exc.value.status == 403
            assert _error(exc.value)["message"] == (
                'services "web" is forbidden: User "system:serviceaccount:p4kube-system:p4kube" cannot delete resource '
                '"services" in API group "" in the namespace "tx"'
            )
            with pytest.raises(ApiException) as exc:
                client.CoreV1Api(sa).list_node()
            assert exc.value.status == 403
        log = [(r.verb, r.group, r.resource, r.subresource, r.namespace, r.name, r.allowed) for r in server.requests]
        assert log == [
            ("list", "", "services", "", "", "", True),
            ("patch", "", "services", "status", "tx", "web", True),
            ("delete", "", "services", "", "tx", "web", False),
            ("list", "", "nodes", "", "", "", False),
        ]
        assert {r.user for r in server.requests} == {"system:serviceaccount:p4kube-system:p4kube"}
        assert server.requests[1].permission == ("", "services/status", "patch")


def test_unknown_token_is_401(kube_api: KubeApiServer) -> None:  # noqa: F811
    with client.ApiClient(kube_api.client_configuration("wrong")) as c, pytest.raises(ApiException) as exc:
        client.CoreV1Api(c).list_namespace()
    assert exc.value.status == 401 and _error(exc.value)["message"] == "Unauthorized"


def test_tls(tmp_path: Path) -> None:
    with KubeApiServer(tls=True, tls_dir=tmp_path) as server, client.ApiClient(server.client_configuration()) as c:
        assert server.url.startswith("https://127.0.0.1:")
        assert "default" in [n.metadata.name for n in client.CoreV1Api(c).list_namespace().items]


def test_restart_keeps_state_and_ends_open_watches() -> None:
    server = KubeApiServer().start()
    try:
        with client.ApiClient(server.client_configuration()) as c:
            v1 = client.CoreV1Api(c)
            _ns(c)
            v1.create_namespaced_service("tx", _service("web"))
            rv = v1.list_namespaced_service("tx").metadata.resource_version
            ended = threading.Event()
            outcome: list[BaseException | None] = []

            def long_watch() -> None:
                try:
                    for _ in watch.Watch().stream(
                        v1.list_namespaced_service, "tx", resource_version=rv, timeout_seconds=60
                    ):
                        pass
                    outcome.append(None)
                except Exception as e:  # noqa: BLE001 - the dropped stream is what we look at
                    outcome.append(e)
                finally:
                    ended.set()

            t = threading.Thread(target=long_watch)
            t.start()
            assert server.wait_for_watches(1)
            port = server.port
            server.restart()
            assert ended.wait(5), "the open watch was not ended by the restart"
            t.join(5)
            assert server.port == port and server.active_watches == 0
            after = v1.list_namespaced_service("tx")  # same port, same objects, RVs continue
            assert [s.metadata.name for s in after.items] == ["web"]
            assert after.metadata.resource_version == rv
            created = v1.create_namespaced_service("tx", _service("api", port=81))
            assert int(created.metadata.resource_version) > int(rv)
    finally:
        server.stop()


def test_stop_ends_watches_and_joins_threads() -> None:
    before = {t.ident for t in threading.enumerate()}
    server = KubeApiServer().start()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("GET", "/api/v1/services?watch=1&timeoutSeconds=300", headers={"Authorization": "Bearer test-token"})
    resp = conn.getresponse()
    assert resp.status == 200 and server.wait_for_watches(1)
    abandoned = http.client.HTTPConnection(server.host, server.port, timeout=10)
    abandoned.request("GET", "/api/v1/nodes?watch=1&timeoutSeconds=300", headers={"Authorization": "Bearer test-token"})
    assert abandoned.getresponse().status == 200 and server.wait_for_watches(2)
    abandoned.close()  # the server notices the client went away and ends that stream
    assert server.wait_for_watches(1)
    idle = http.client.HTTPConnection(server.host, server.port, timeout=10)  # an idle keep-alive connection
    idle.request("GET", "/healthz", headers={"Authorization": "Bearer test-token"})
    assert idle.getresponse().read() == b"ok"
    server.stop()
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        while resp.read(1024):
            pass
    conn.close()
    idle.close()
    leftover = [t for t in threading.enumerate() if t.ident not in before]
    assert leftover == []


def test_load_recorded_cluster_list(kube_api: KubeApiServer, api: client.ApiClient) -> None:  # noqa: F811
    loaded = load_list_yaml(kube_api, REPO / "intent-examples" / "multi-service" / "cluster.yaml")
    kinds = sorted({o["kind"] for o in loaded})
    assert kinds == ["EndpointSlice", "Node", "Service"]
    v1, disc = client.CoreV1Api(api), client.DiscoveryV1Api(api)
    services = {f"{s.metadata.namespace}/{s.metadata.name}": s for s in v1.list_service_for_all_namespaces().items}
    assert len(services) == sum(1 for o in loaded if o["kind"] == "Service")
    dns = services["payments/dns-cache"]
    assert (dns.spec.cluster_ip, dns.spec.ports[0].node_port, dns.spec.health_check_node_port) == (
        "10.108.25.40",
        31003,
        30549,
    )
    assert len(disc.list_endpoint_slice_for_all_namespaces().items) == sum(
        1 for o in loaded if o["kind"] == "EndpointSlice"
    )
    nodes = v1.list_node().items
    assert len(nodes) == sum(1 for o in loaded if o["kind"] == "Node") and all(n.status.addresses for n in nodes)
