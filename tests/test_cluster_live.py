"""The live cluster source: the incrementally maintained state (pure), the backoff, and the
list+watch reflectors against the test API server with the official client."""

from __future__ import annotations

import copy
import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from reconciler.cluster.convert import state_from_objects
from reconciler.cluster.incremental import (
    ADDED,
    DELETED,
    ENDPOINT_SLICE,
    MODIFIED,
    NODE,
    SERVICE,
    IncrementalState,
    state_from_lists,
)
from reconciler.cluster.live import Backoff
from reconciler.cluster.synthetic import cluster_to_list, synthetic_cluster

REPO = Path(__file__).resolve().parents[1]
MULTI_CLUSTER = REPO / "intent-examples" / "multi-service" / "cluster.yaml"


def _items(kind: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if i.get("kind") == kind]


def _recorded_items() -> list[dict[str, Any]]:
    return YAML(typ="safe").load(MULTI_CLUSTER.read_text())["items"]


def _assembled(objects: dict[tuple[str, str], dict[str, Any]]) -> Any:
    by_kind: dict[str, list[dict[str, Any]]] = {SERVICE: [], ENDPOINT_SLICE: [], NODE: []}
    for (kind, _), obj in sorted(objects.items()):
        by_kind[kind].append(obj)
    return state_from_objects(by_kind[SERVICE], by_kind[ENDPOINT_SLICE], by_kind[NODE])


def _content(state: Any) -> Any:
    """A snapshot without its resourceVersion (events carry theirs; a batch has none)."""
    return dataclasses.replace(state, resource_version=None)


def _key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"]


def _slice(ns: str, name: str, service: str, endpoints: list[tuple[str, str, bool]]) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [a], "nodeName": n, "conditions": {"ready": r}} for a, n, r in endpoints
        ],
    }


def _service(ns: str, name: str, *, rv: str = "1", ingress: list[str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {
            "namespace": ns,
            "name": name,
            "resourceVersion": rv,
            "annotations": annotations if annotations is not None else {"loadbalancer.k8s.io/p4kube": "enabled"},
        },
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]},
        "status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in ingress or []]}},
    }


def _node(name: str, ip: str | None, ready: bool = True) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["addresses"] = [{"type": "InternalIP", "address": ip}]
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name}, "status": status}


# --- the incremental state equals the batch assembly -------------------------------------------


def test_loaded_state_equals_assemble_state_on_the_recorded_cluster() -> None:
    items = _recorded_items()
    batch = state_from_objects(_items("Service", items), _items("EndpointSlice", items), _items("Node", items), "42")
    inc = state_from_lists(_items("Service", items), _items("EndpointSlice", items), _items("Node", items), "42").snapshot()
    assert inc == batch
    assert inc.endpoints  # the fixture has ready endpoints: the comparison is not vacuous


def test_random_event_sequences_keep_the_state_equal_to_a_batch_assembly() -> None:
    """Adds, updates (readiness, node moves, new addresses), deletes and re-creates of all
    three kinds, in random order; after each event the incremental state must equal what
    assemble_state builds from the objects that exist at that moment, issues included."""
    rng = random.Random(7)
    base = cluster_to_list(synthetic_cluster(services=12, nodes=5, endpoints=60, seed=3))["items"]
    # Extra trouble: a slice of a missing Service and an endpoint on an unknown node.
    base.append(_slice("ns-00", "ghost-0", "ghost", [("100.99.0.1", "node-0", True)]))
    live: dict[tuple[str, str], dict[str, Any]] = {(o["kind"], _key(o)): o for o in base}
    state = IncrementalState()
    for (kind, _), obj in sorted(live.items()):
        state.apply(kind, ADDED, obj)
    assert _content(state.snapshot()) == _assembled(live)
    removed: list[tuple[tuple[str, str], dict[str, Any]]] = []
    for step in range(400):
        roll = rng.random()
        if roll < 0.1 and removed:
            key, obj = removed.pop(rng.randrange(len(removed)))
            live[key] = obj
            state.apply(key[0], ADDED, obj)
        elif roll < 0.2:
            key = rng.choice(sorted(live))
            obj = live.pop(key)
            removed.append((key, obj))
            state.apply(key[0], DELETED, obj)
        else:
            key = rng.choice(sorted(live))
            obj = copy.deepcopy(live[key])
            kind = key[0]
            if kind == ENDPOINT_SLICE and obj["endpoints"]:
                ep = rng.choice(obj["endpoints"])
                what = rng.random()
                if what < 0.4:
                    ep["conditions"] = {"ready": not ep["conditions"].get("ready", True)}
                elif what < 0.7:
                    ep["nodeName"] = f"node-{rng.randrange(7)}"  # node-5, node-6 do not exist
                else:
                    obj["endpoints"].append(
                        {"addresses": [f"100.98.{step // 250}.{step % 250}"], "nodeName": "node-1", "conditions": {}}
                    )
            elif kind == NODE:
                addr = obj["status"].get("addresses")
                if addr:
                    del obj["status"]["addresses"]
                else:
                    obj["status"]["addresses"] = [{"type": "InternalIP", "address": f"10.9.0.{step % 250}"}]
            else:
                obj["metadata"].setdefault("annotations", {})["step"] = str(step)
            live[key] = obj
            state.apply(kind, MODIFIED, obj)
        assert _content(state.snapshot()) == _assembled(live), f"diverged at step {step}"


# --- which Services an event changes ---------------------------------------------------------------


@pytest.fixture
def small() -> IncrementalState:
    state = IncrementalState()
    state.replace(NODE, [_node("n1", "10.0.0.1"), _node("n2", "10.0.0.2")])
    state.replace(SERVICE, [_service("a", "web"), _service("a", "db"), _service("b", "api")])
    state.replace(
        ENDPOINT_SLICE,
        [
            _slice("a", "web-1", "web", [("10.1.0.1", "n1", True), ("10.1.0.2", "n2", True)]),
            _slice("a", "db-1", "db", [("10.1.0.3", "n2", True)]),
            _slice("b", "api-1", "api", [("10.1.0.4", "n1", True)]),
        ],
    )
    return state


def test_label_only_slice_update_changes_nothing(small: IncrementalState) -> None:
    obj = _slice("a", "web-1", "web", [("10.1.0.1", "n1", True), ("10.1.0.2", "n2", True)])
    obj["metadata"]["labels"]["team"] = "x"
    assert small.apply(ENDPOINT_SLICE, MODIFIED, obj) == set()


def test_endpoint_readiness_changes_its_service_only(small: IncrementalState) -> None:
    before = small.snapshot()
    changed = small.apply(ENDPOINT_SLICE, MODIFIED, _slice("a", "web-1", "web", [("10.1.0.1", "n1", True), ("10.1.0.2", "n2", False)]))
    assert changed == {"a/web"}
    after = small.snapshot()
    assert [e.address for e in after.endpoints["a/web"]] == ["10.1.0.1"]
    # Unchanged objects are shared between snapshots, not copied.
    assert after.endpoints["a/db"] is before.endpoints["a/db"]
    assert after.services["b/api"] is before.services["b/api"]


def test_node_change_marks_the_services_with_endpoints_on_it(small: IncrementalState) -> None:
    assert small.apply(NODE, MODIFIED, _node("n2", "10.0.0.22")) == {"a/web", "a/db"}
    assert small.apply(NODE, MODIFIED, _node("n1", "10.0.0.1")) == set()  # equal: no change
    assert small.apply(NODE, DELETED, _node("n1", "10.0.0.1")) == {"a/web", "b/api"}
    assert any("not in the node list" in i.message for i in small.snapshot().issues)


def test_service_rv_only_change_is_not_a_change_but_status_is(small: IncrementalState) -> None:
    assert small.apply(SERVICE, MODIFIED, _service("a", "web", rv="9")) == set()
    assert small.snapshot().services["a/web"].resource_version == "9"
    assert small.apply(SERVICE, MODIFIED, _service("a", "web", rv="10", ingress=["203.0.113.5"])) == {"a/web"}


def test_delete_and_recreate_service(small: IncrementalState) -> None:
    assert small.apply(SERVICE, DELETED, _service("a", "db")) == {"a/db"}
    snap = small.snapshot()
    assert "a/db" not in snap.services and "a/db" not in snap.endpoints
    assert any(i.service == "a/db" and "does not exist" in i.message for i in snap.issues)
    assert small.apply(SERVICE, ADDED, _service("a", "db")) == {"a/db"}
    assert [e.address for e in small.snapshot().endpoints["a/db"]] == ["10.1.0.3"]


def test_relist_reports_exactly_what_differs(small: IncrementalState) -> None:
    fresh = [
        _slice("a", "web-1", "web", [("10.1.0.1", "n1", True), ("10.1.0.2", "n2", True)]),  # same
        _slice("b", "api-1", "api", [("10.1.0.4", "n1", True), ("10.1.0.9", "n2", True)]),  # grew
        # a/db-1 is gone
    ]
    assert small.replace(ENDPOINT_SLICE, fresh, "77") == {"b/api", "a/db"}
    assert small.snapshot().resource_version == "77"
    assert small.replace(ENDPOINT_SLICE, fresh, "78") == set()


def test_snapshot_is_reused_until_something_changes(small: IncrementalState) -> None:
    first = small.snapshot()
    assert small.snapshot() is first
    small.apply(NODE, MODIFIED, _node("n9", "10.0.0.9"))
    assert small.snapshot() is not first


def test_status_managers_come_from_managed_fields() -> None:
    state = IncrementalState()
    svc = _service("a", "web", ingress=["203.0.113.5"])
    svc["metadata"]["managedFields"] = [
        {"manager": "p4kube", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {"f:loadBalancer": {"f:ingress": {}}}}},
        {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {}}},
    ]
    state.apply(SERVICE, ADDED, svc)
    assert state.status_managers("a/web") == frozenset({"p4kube"})
    assert state.status_managers("a/none") == frozenset()


# --- backoff -----------------------------------------------------------------------------------------


def test_backoff_grows_is_capped_jittered_and_resets() -> None:
    values = iter([0.5] * 10)  # mid jitter: exactly the base delay
    b = Backoff(initial_s=1, maximum_s=8, factor=2, jitter=0.25, rng=lambda: next(values))
    assert [b.next() for _ in range(5)] == [1, 2, 4, 8, 8]
    b.reset()
    assert b.next() == 1
    low, high = Backoff(1, 8, 2, 0.25, rng=lambda: 0.0), Backoff(1, 8, 2, 0.25, rng=lambda: 0.999999)
    assert low.next() == pytest.approx(0.75) and high.next() == pytest.approx(1.25, rel=1e-5)
    with pytest.raises(ValueError):
        Backoff(initial_s=0)
