"""The live cluster source: the incrementally maintained state (pure), the backoff, and the
list+watch reflectors against the test API server with the official client."""

from __future__ import annotations

import copy
import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
from helpers import run
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


def test_node_watch_events_take_the_first_ipv4_internal_ip(small: IncrementalState) -> None:
    dual = _node("n2", None)
    dual["status"]["addresses"] = [{"type": "InternalIP", "address": "fd00::2"}, {"type": "InternalIP", "address": "10.0.0.2"}]
    assert small.apply(NODE, MODIFIED, dual) == set()  # the same IPv4 address as before
    assert small.snapshot().nodes["n2"].internal_ip == "10.0.0.2" and small.snapshot().issues == ()
    dual["status"]["addresses"] = dual["status"]["addresses"][:1]  # IPv6 only: no address, reported
    assert small.apply(NODE, MODIFIED, dual) == {"a/web", "a/db"}
    assert small.snapshot().nodes["n2"].internal_ip is None
    (issue,) = small.snapshot().issues
    assert issue.object == "Node n2" and "no IPv4 InternalIP" in issue.message and "fd00::2" in issue.message


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


# --- the reflector's protocol, against a scripted API (no server, no sleeping) -----------------------

import json  # noqa: E402
import threading  # noqa: E402

from kubernetes.client.exceptions import ApiException  # noqa: E402
from urllib3.exceptions import ProtocolError  # noqa: E402

from reconciler.cluster.live import Bookmark, Collection, Problem, Reflector, Relisted, WatchEvent  # noqa: E402


class _Resp:
    """Stands in for the urllib3 response the generated API methods return unread."""

    def __init__(self, body: Any = None, lines: tuple[Any, ...] = (), error: BaseException | None = None, block: threading.Event | None = None) -> None:
        self._body, self._lines, self._error, self._block = body, lines, error, block

    @property
    def data(self) -> bytes:
        return json.dumps(self._body).encode()

    def stream(self, amt: Any = None, decode_content: bool = False) -> Any:
        for line in self._lines:
            yield (json.dumps(line) + "\n").encode()
        if self._block is not None:
            self._block.wait(10)
            raise ProtocolError("connection shut down")
        if self._error is not None:
            raise self._error

    def shutdown(self) -> None:
        if self._block is not None:
            self._block.set()

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def _api_error(code: int, reason: str, message: str) -> ApiException:
    e = ApiException(status=code, reason=reason)
    e.body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code})
    return e


class _Script:
    """Answers list and watch calls from a script; records every call's arguments."""

    def __init__(self, steps: list[Any]) -> None:
        self.steps = steps
        self.calls: list[dict[str, Any]] = []
        self.block = threading.Event()

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if not self.steps:  # the end of the script: a watch that hangs until stopped
            return _Resp(block=self.block)
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def _svc_event(etype: str, name: str, rv: str) -> dict[str, Any]:
    return {"type": etype, "object": _service("a", name, rv=rv)}


def _run_reflector(script: _Script, until: int) -> tuple[list[Any], list[float]]:
    items: list[Any] = []
    waits: list[float] = []
    cond = threading.Condition()

    def deliver(item: Any) -> None:
        with cond:
            items.append(item)
            cond.notify_all()

    r = Reflector(
        Collection(SERVICE, script),
        deliver,
        page_size=2,
        watch_timeout_s=100,
        wait=waits.append,  # records the backoff instead of sleeping
        backoff=Backoff(initial_s=1, maximum_s=4, factor=2, jitter=0.0),
        clock=lambda: 0.0,  # every stream "ends at once": only delivered items count as progress
        rng=lambda: 0.5,
    )
    r.start()
    try:
        with cond:
            assert cond.wait_for(lambda: len(items) >= until, timeout=10), items
    finally:
        r.stop()
        assert r.join(10)
    return items, waits


def test_reflector_pages_watches_from_the_list_rv_and_resumes_after_a_timeout() -> None:
    script = _Script(
        [
            _Resp({"metadata": {"resourceVersion": "10", "continue": "tok"}, "items": [_service("a", "x")]}),
            _Resp({"metadata": {"resourceVersion": "10"}, "items": [_service("a", "y")]}),
            _Resp(lines=(_svc_event("MODIFIED", "x", "11"), {"type": "BOOKMARK", "object": {"kind": "Service", "metadata": {"resourceVersion": "15"}}})),
            _Resp(lines=(_svc_event("DELETED", "y", "16"),)),
        ]
    )
    items, waits = _run_reflector(script, until=4)
    assert isinstance(items[0], Relisted) and [o["metadata"]["name"] for o in items[0].objects] == ["x", "y"]
    assert items[0].resource_version == "10"
    assert isinstance(items[1], WatchEvent) and items[1].type == "MODIFIED"
    assert items[2] == Bookmark(SERVICE, "15")
    assert isinstance(items[3], WatchEvent) and items[3].type == "DELETED"
    assert script.calls[1]["_continue"] == "tok"
    first_watch, second_watch = script.calls[2], script.calls[3]
    assert first_watch["watch"] and first_watch["allow_watch_bookmarks"] and first_watch["resource_version"] == "10"
    assert first_watch["timeout_seconds"] == 150  # 100 * (1 + 0.5): randomized server-side timeout
    assert first_watch["_request_timeout"][1] > first_watch["timeout_seconds"]
    assert second_watch["resource_version"] == "15"  # resumed from the bookmark, not relisted
    assert waits == []


def test_reflector_relists_on_expired_error_event_and_backs_off_on_other_errors() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "too old resource version: 10 (20)", "reason": "Expired", "code": 410}}
    busy = {"type": "ERROR", "object": {"kind": "Status", "status": "Failure", "message": "Timeout: Too large resource version", "reason": "Timeout", "details": {"retryAfterSeconds": 3}, "code": 504}}
    script = _Script(
        [
            _Resp({"metadata": {"resourceVersion": "10"}, "items": []}),
            _Resp(lines=(gone,)),
            _Resp({"metadata": {"resourceVersion": "30"}, "items": [_service("a", "x", rv="25")]}),
            _Resp(lines=(busy,)),
            _Resp(error=ProtocolError("connection reset")),
            _api_error(503, "ServiceUnavailable", "apiserver is shutting down"),
            _Resp(lines=(_svc_event("ADDED", "z", "31"),)),
        ]
    )
    items, waits = _run_reflector(script, until=7)
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["Relisted", "Problem", "Relisted", "Problem", "Problem", "Problem", "WatchEvent"]
    assert "410" in str(items[1].error) and items[1].action == "relist"
    assert items[2].resource_version == "30"
    # After the relist every watch resumes from the new list's RV; never without one.
    watch_rvs = [c["resource_version"] for c in script.calls if c.get("watch")]
    assert watch_rvs[:5] == ["10", "30", "30", "30", "30"]
    # Backoff grows 1, 2, 4 (capped), and the 504's retryAfterSeconds (3) wins over 1.
    assert waits == [3.0, 2.0, 4.0]
    assert isinstance(items[-1], WatchEvent) and items[-1].object["metadata"]["name"] == "z"


def test_reflector_restarts_a_list_whose_continue_token_expired() -> None:
    script = _Script(
        [
            _Resp({"metadata": {"resourceVersion": "10", "continue": "old"}, "items": [_service("a", "x")]}),
            _api_error(410, "Expired", "The provided continue parameter is too old to display a consistent list result."),
            _Resp({"metadata": {"resourceVersion": "12"}, "items": [_service("a", "x"), _service("a", "y")]}),
        ]
    )
    items, _ = _run_reflector(script, until=2)
    assert isinstance(items[0], Problem) and items[0].action == "restart the list"
    assert isinstance(items[1], Relisted) and items[1].resource_version == "12" and len(items[1].objects) == 2
    assert "_continue" not in script.calls[2]  # the fresh list starts over, consistent


# --- against the test API server, with the official client -------------------------------------------

import asyncio  # noqa: E402
from collections.abc import Iterator  # noqa: E402

from kubeapi.server import KubeApiServer  # noqa: E402
from kubernetes import client as k8s  # noqa: E402

from reconciler.cluster.live import LiveClusterSource  # noqa: E402
from reconciler.kube.client import build_api_client  # noqa: E402

MERGE = "application/merge-patch+json"


class Gate:
    """The reflectors' backoff wait, held shut by the test: reconnects happen when the test says
    so, and no test sleeps."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.waiting = 0
        self.delays: list[float] = []
        self.is_open = True

    def wait(self, delay: float) -> None:
        with self.cond:
            self.delays.append(delay)
            self.waiting += 1
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.is_open, timeout=10)
            self.waiting -= 1

    def close(self) -> None:
        with self.cond:
            self.is_open = False

    def open(self) -> None:
        with self.cond:
            self.is_open = True
            self.cond.notify_all()

    def wait_for_waiters(self, n: int, timeout: float = 10) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.waiting >= n, timeout=timeout), f"{self.waiting} of {n} reflectors waiting"


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    with KubeApiServer() as srv:
        srv.load(_recorded_items())
        yield srv


async def _next(changes: Any, timeout: float = 10) -> frozenset[str]:
    return await asyncio.wait_for(changes.__anext__(), timeout)


def _patch_slice_ready(api: k8s.ApiClient, ns: str, name: str, ready: bool) -> dict[str, Any]:
    disc = k8s.DiscoveryV1Api(api)
    sl = disc.read_namespaced_endpoint_slice(name, ns, _preload_content=False)
    body = json.loads(sl.data)
    body["endpoints"][0]["conditions"] = {"ready": ready}
    return json.loads(
        disc.patch_namespaced_endpoint_slice(name, ns, {"endpoints": body["endpoints"]}, _content_type=MERGE, _preload_content=False).data
    )


def _slice_of(server: KubeApiServer, service: str) -> tuple[str, str]:
    ns, name = service.split("/")
    for item in _recorded_items():
        if item["kind"] == "EndpointSlice" and item["metadata"]["namespace"] == ns and item["metadata"]["labels"].get("kubernetes.io/service-name") == name:
            return ns, item["metadata"]["name"]
    raise AssertionError(f"no slice for {service}")


def test_watch_events_update_the_state_and_report_the_changed_service(server: KubeApiServer, api: k8s.ApiClient) -> None:
    ns, name = _slice_of(server, "web/frontend")

    async def go() -> None:
        async with LiveClusterSource(api) as source:
            await source.wait_synced(timeout=10)
            changes = source.changes().__aiter__()
            first = await _next(changes)
            assert first == set(source.snapshot().services)  # everything, once, after the lists
            before = len(source.snapshot().endpoints["web/frontend"])
            await asyncio.to_thread(_patch_slice_ready, api, ns, name, False)
            assert await _next(changes) == {"web/frontend"}
            assert len(source.snapshot().endpoints.get("web/frontend", ())) == before - 1
            # A Service edit, and a deletion.
            core = k8s.CoreV1Api(api)
            await asyncio.to_thread(core.patch_namespaced_service, "api", "web", {"metadata": {"labels": {"tier": "gold"}}}, _content_type=MERGE)
            assert await _next(changes) == {"web/api"}
            assert dict(source.snapshot().services["web/api"].labels)["tier"] == "gold"
            await asyncio.to_thread(core.delete_namespaced_service, "ledger", "payments")
            assert await _next(changes) == {"payments/ledger"}
            assert "payments/ledger" not in source.snapshot().services
            assert source.stats.relists == 0
            assert server.active_watches == 3  # one open watch per kind

    run(go())


def test_expired_error_mid_stream_relists_without_losing_the_change() -> None:
    """A burst of writes overflows the watch cache (4 events per type here) before the open
    watch has sent them: the stream gets ERROR 410 Expired (inside the HTTP 200) instead of the
    events, as kube-apiserver does for a watcher that fell behind; the relist must bring the
    change."""
    with KubeApiServer(watch_cache_size=4) as server:
        server.load(_recorded_items())
        api = build_api_client(configuration=server.client_configuration())
        slice_rt = server.api.lookup("discovery.k8s.io", "v1", "endpointslices")
        assert slice_rt is not None
        ns, name = _slice_of(server, "payments/ledger")
        others = [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in _recorded_items() if i["kind"] == "EndpointSlice"]

        async def go() -> None:
            async with LiveClusterSource(api) as source:
                await source.wait_synced(timeout=10)
                changes = source.changes().__aiter__()
                await _next(changes)
                before = len(source.snapshot().endpoints["payments/ledger"])
                stored = server.api.get(slice_rt, ns, name).body
                stored["endpoints"] = stored["endpoints"][1:]  # one replica gone
                with server.store.lock:  # the whole burst lands before the watcher can send any of it
                    server.load([stored])
                    for i in range(5):
                        o_ns, o_name = others[i % len(others)]
                        other = server.api.get(slice_rt, o_ns, o_name).body
                        other["metadata"].setdefault("labels", {})["burst"] = str(i)  # no endpoint change
                        server.load([other])
                assert await _next(changes) == {"payments/ledger"}  # label-only slices: no change
                assert len(source.snapshot().endpoints["payments/ledger"]) == before - 1
                assert source.stats.relists == 1
                assert any("410" in p and "Expired" in p and "relist" in p for p in source.stats.problems)

        try:
            run(go())
        finally:
            api.close()


def test_reconnect_after_the_history_was_lost_relists(server: KubeApiServer, api: k8s.ApiClient) -> None:
    """The server comes back without the history the reflector would resume from: the new
    watch is answered with ERROR 410 at once, and the relist brings what changed meanwhile,
    including a deletion."""
    gate = Gate()
    ns, name = _slice_of(server, "web/api")
    slice_rt = server.api.lookup("discovery.k8s.io", "v1", "endpointslices")
    svc_rt = server.api.lookup("", "v1", "services")
    assert slice_rt is not None and svc_rt is not None

    async def go() -> None:
        source = LiveClusterSource(api, reflector_options={"wait": gate.wait})
        await source.start()
        try:
            await source.wait_synced(timeout=10)
            changes = source.changes().__aiter__()
            await _next(changes)
            before = len(source.snapshot().endpoints["web/api"])
            gate.close()
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(gate.wait_for_waiters, 3)
            stored = server.api.get(slice_rt, ns, name).body
            stored["endpoints"] = stored["endpoints"][1:]
            server.load([stored])
            server.api.delete(svc_rt, "payments", "dns-cache", b"", {})
            server.expire_watch_cache()
            await asyncio.to_thread(server.start)
            gate.open()
            seen: set[str] = set()
            while not {"web/api", "payments/dns-cache"} <= seen:
                seen |= await _next(changes)
            assert len(source.snapshot().endpoints["web/api"]) == before - 1
            assert "payments/dns-cache" not in source.snapshot().services
            assert source.stats.relists >= 2  # at least Services and EndpointSlices
        finally:
            gate.open()
            await source.aclose()

    run(go())


def test_server_restart_reconnects_and_resumes_from_the_last_resource_version(server: KubeApiServer, api: k8s.ApiClient) -> None:
    gate = Gate()
    ns, name = _slice_of(server, "web/api")
    slice_rt = server.api.lookup("discovery.k8s.io", "v1", "endpointslices")
    assert slice_rt is not None

    async def go() -> None:
        source = LiveClusterSource(api, reflector_options={"wait": gate.wait})
        await source.start()
        try:
            await source.wait_synced(timeout=10)
            changes = source.changes().__aiter__()
            await _next(changes)
            before = len(source.snapshot().endpoints["web/api"])
            gate.close()
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(gate.wait_for_waiters, 3)  # every reflector lost its stream
            stored = server.api.get(slice_rt, ns, name).body
            stored["endpoints"] = stored["endpoints"][1:]
            server.load([stored])  # changed while the server was down
            await asyncio.to_thread(server.start)
            gate.open()
            assert await _next(changes) == {"web/api"}
            assert len(source.snapshot().endpoints["web/api"]) == before - 1
            assert source.stats.relists == 0  # resumed from its resourceVersion: no relist needed
            assert all(d > 0 for d in gate.delays)
        finally:
            gate.open()
            await source.aclose()

    run(go())


def test_close_ends_the_watch_threads_promptly(server: KubeApiServer, api: k8s.ApiClient) -> None:
    async def go() -> None:
        source = LiveClusterSource(api)
        await source.start()
        await source.wait_synced(timeout=10)
        changes = source.changes().__aiter__()
        await _next(changes)
        await source.aclose(timeout_s=5)
        assert all(not r._thread.is_alive() for r in source.reflectors)  # type: ignore[union-attr]
        with pytest.raises(StopAsyncIteration):
            await _next(changes)

    run(go())


def test_snapshot_before_every_kind_was_listed_is_not_ready(server: KubeApiServer, api: k8s.ApiClient) -> None:
    """Services and EndpointSlices are listed, the Node list is late (a slow API server): the
    source has no whole cluster yet, and says so instead of handing out a state without Nodes."""
    from reconciler.cluster.live import ClusterNotReady, Collection, cluster_collections

    release = threading.Event()
    collections = cluster_collections(api)
    node_list = collections[2].call

    def late_nodes(**kw: Any) -> Any:
        if not kw.get("watch"):
            release.wait(10)
        return node_list(**kw)

    collections[2] = Collection(NODE, late_nodes)

    async def go() -> None:
        source = LiveClusterSource(collections=collections)
        with pytest.raises(ClusterNotReady):  # not even started
            source.snapshot()
        await source.start()
        try:
            # Both lists were handed to the loop before their watches opened; they are applied
            # before this coroutine resumes.
            assert await asyncio.to_thread(server.wait_for_watches, 2)
            assert source.state.keys(SERVICE) and not source.synced
            with pytest.raises(ClusterNotReady, match=r"waiting for the first list of Node \(") as e:
                source.snapshot()
            assert "Service" not in str(e.value) and "EndpointSlice" not in str(e.value)
            release.set()
            await source.wait_synced(timeout=10)
            state = source.snapshot()
            assert state.nodes and state.services and state.endpoints
        finally:
            release.set()
            await source.aclose()

    run(go())
