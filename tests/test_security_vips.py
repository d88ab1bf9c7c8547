"""Security (H2): VIPs come only from the config's pools (per namespace when a pool says so), a
fallen-back Service's VIP stays reserved to it, and podIP mode trusts only EndpointSlices the
EndpointSlice controller wrote. Through `p4kube render`/`plan` on recordings, the Renderer, and
the fallback code against the test API server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Iterator

import pytest
from kubeapi.server import KubeApiServer
from kubernetes import client as k8s

from helpers_render import P4INFO_DIGEST, do_render, make_cluster, make_config, make_service, pool
from reconciler.cli import main
from reconciler.cluster.convert import state_from_objects
from reconciler.cluster.model import FALLBACK_BY_ANNOTATION, OPT_IN_ANNOTATION
from reconciler.cluster.recorded import load_cluster_file
from reconciler.kube.fallback import Fallback
from reconciler.kube.client import build_api_client
from reconciler.kube.events import EventRecorder
from reconciler.kube.status import status_patch
from reconciler.render import Renderer, render
from reconciler.snapshot import Snapshot, load_snapshot
from shared_fixtures import RECORDED_CLUSTER

ROOT = Path(__file__).resolve().parents[1]
OPT_IN = {OPT_IN_ANNOTATION: "enabled"}
API_SERVER_IP = "10.96.0.1"  # the kubernetes Service's ClusterIP on a default cluster
TEAM_A_POOL = "198.51.100.0"


# --- building recordings -----------------------------------------------------------------------


def write_intent(tmp_path: Path, *, backend_mode: str = "nodePort", pod_cidrs: list[str] | None = None, shared: str = "203.0.113.10-203.0.113.19") -> Path:
    extra = f"  podCIDRs: {json.dumps(pod_cidrs)}\n" if pod_cidrs else ""
    path = tmp_path / "lb.yaml"
    path.write_text(
        "apiVersion: networking.p4kube.io/v1alpha1\n"
        "kind: LoadBalancerConfig\n"
        "metadata: {name: lb, namespace: p4kube-system}\n"
        "spec:\n"
        f"  backendMode: {backend_mode}\n"
        f"{extra}"
        "  vipPools:\n"
        f'    - {{name: shared, addresses: ["{shared}"]}}\n'
        f'    - {{name: team-a, addresses: ["{TEAM_A_POOL}/30"], namespaces: [team-a]}}\n'
        "  switchConfig:\n"
        "    pipeline: external\n"
        '    switches: [{name: leaf-1, role: primary, address: "127.0.0.1:9559"}]\n'
    )
    return path


def service(ns: str, name: str, *, type: str = "LoadBalancer", lb_ip: str | None = None, external_ips: list[str] | None = None,
            annotations: dict[str, str] | None = None, ingress: str | None = None, node_port: int = 30080) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type, "ports": [{"port": 443, "protocol": "TCP", "targetPort": 8443, "nodePort": node_port}],
                            "externalTrafficPolicy": "Local"}  # what nodePort mode needs: no policy warning
    if lb_ip:
        spec["loadBalancerIP"] = lb_ip
    if external_ips:
        spec["externalIPs"] = external_ips
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "spec": spec,
                           "metadata": {"name": name, "namespace": ns, "annotations": dict(OPT_IN if annotations is None else annotations)}}
    if ingress:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ingress}]}}
    return obj


def node(name: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def endpoint_slice(ns: str, svc: str, name: str, endpoints: list[tuple[str, str, str | None]], *, managed: bool = True) -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": svc}
    if managed:
        labels["endpointslice.kubernetes.io/managed-by"] = "endpointslice-controller.k8s.io"
    eps = []
    for address, on, pod in endpoints:
        ep: dict[str, Any] = {"addresses": [address], "conditions": {"ready": True}, "nodeName": on}
        if pod:
            ep["targetRef"] = {"kind": "Pod", "name": pod, "namespace": ns}
        eps.append(ep)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "ports": [{"name": "", "port": 8443, "protocol": "TCP"}], "endpoints": eps}


NODES = [node("node-a", "10.0.0.11"), node("node-b", "10.0.0.12")]


def write_cluster(tmp_path: Path, objects: list[dict[str, Any]], name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects + NODES}, indent=1))
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def render_cli(capsys: pytest.CaptureFixture[str], intent: Path, cluster: Path, previous: Path | None = None, out: Path | None = None) -> tuple[dict[str, Any], str]:
    argv = ["render", "--intent", str(intent), "--cluster", str(cluster)]
    if previous is not None:
        argv += ["--previous", str(previous)]
    if out is not None:
        argv += ["--out", str(out)]
    code, stdout, err = cli(capsys, *argv)
    assert code == 0, err
    return json.loads(out.read_text() if out is not None else stdout), err


def vips_in_table(snap: dict[str, Any]) -> set[str]:
    return {json.dumps(e) for e in snap["tables"]["MyIngress.vip_table"]}


def served(snap: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["vip"] for s in snap["services"]}


# --- 1. every request comes from the pools ---------------------------------------------------


def test_an_external_ip_outside_the_pools_is_refused_and_never_reaches_the_switch(capsys, tmp_path) -> None:
    intent = write_intent(tmp_path)
    objs = [service("team-b", "sneaky", type="ClusterIP", external_ips=[API_SERVER_IP]), service("team-b", "ok", node_port=30081)]
    snap, err = render_cli(capsys, intent, write_cluster(tmp_path, objs))
    assert served(snap) == {"team-b/ok": "203.0.113.10"}
    assert API_SERVER_IP not in json.dumps(snap)  # no vip_table, no reverse_nat entry for it
    assert f"team-b/sneaky: requested IP {API_SERVER_IP} (spec.externalIPs[0]) is outside every vipPool" in err


def test_a_refused_request_keeps_the_last_applied_entries_and_plan_changes_nothing(capsys, tmp_path) -> None:
    # An error is never a removal (DESIGN.md 6.1): a Service that had a pool VIP and now asks for
    # an address outside the pools keeps what v1 has; the new address reaches no table.
    intent = write_intent(tmp_path)
    v1 = tmp_path / "v1.json"
    render_cli(capsys, intent, write_cluster(tmp_path, [service("team-b", "ext", type="ClusterIP", external_ips=["203.0.113.15"])], "c1.yaml"), out=v1)
    assert served(json.loads(v1.read_text())) == {"team-b/ext": "203.0.113.15"}
    c2 = write_cluster(tmp_path, [service("team-b", "ext", type="ClusterIP", external_ips=[API_SERVER_IP])], "c2.yaml")
    snap, err = render_cli(capsys, intent, c2, previous=v1)
    assert served(snap) == {"team-b/ext": "203.0.113.15"} and API_SERVER_IP not in json.dumps(snap["tables"])
    assert "(spec.externalIPs[0]) is outside every vipPool; kept as in v1 (last applied) until fixed" in err
    code, out, _ = cli(capsys, "plan", "--intent", str(intent), "--cluster", str(c2), "--previous", str(v1))
    assert code == 0 and "No changes" in out


def test_an_echoed_request_is_cut_short(capsys, tmp_path) -> None:
    intent = write_intent(tmp_path)
    junk = "9" * 5000
    _, err = render_cli(capsys, intent, write_cluster(tmp_path, [service("team-b", "junk", lb_ip=junk)]))
    (line,) = [x for x in err.splitlines() if "team-b/junk" in x]
    assert "is outside every vipPool" in line and len(line) < 250


def test_requests_obey_the_pools_namespaces(capsys, tmp_path) -> None:
    intent = write_intent(tmp_path)
    objs = [
        service("team-b", "squatter", lb_ip="198.51.100.1"),
        service("team-b", "elsewhere", lb_ip="192.0.2.9", node_port=30081),
        service("team-b", "ext", type="ClusterIP", external_ips=["198.51.100.2"], node_port=30082),
        service("team-a", "owner", lb_ip="198.51.100.1", node_port=30083),
    ]
    snap, err = render_cli(capsys, intent, write_cluster(tmp_path, objs))
    assert served(snap) == {"team-a/owner": "198.51.100.1"}
    assert "team-b/squatter: requested IP 198.51.100.1 (spec.loadBalancerIP) is in vipPool team-a, which serves namespaces team-a only" in err
    assert "team-b/ext: requested IP 198.51.100.2 (spec.externalIPs[0]) is in vipPool team-a, which serves namespaces team-a only" in err
    assert "team-b/elsewhere: requested IP 192.0.2.9 (spec.loadBalancerIP) is outside every vipPool" in err


def test_auto_assignment_takes_only_pools_serving_the_namespace(capsys, tmp_path) -> None:
    intent = write_intent(tmp_path, shared="203.0.113.10-203.0.113.11")
    objs = [service("team-b", f"b{i}", node_port=30080 + i) for i in range(3)] + [service("team-a", f"a{i}", node_port=30090 + i) for i in range(2)]
    snap, err = render_cli(capsys, intent, write_cluster(tmp_path, objs))
    # team-a sorts first and takes the shared pool (pool order); team-b may not spill into team-a's pool.
    assert served(snap) == {"team-a/a0": "203.0.113.10", "team-a/a1": "203.0.113.11"}
    for name in ("b0", "b1", "b2"):
        assert f"team-b/{name}: no free address left in the auto-assign VIP pools serving namespace team-b (shared)" in err


def test_a_vip_no_longer_allowed_for_the_namespace_moves_when_it_can(capsys, tmp_path) -> None:
    # v1 from a config where team-a's pool served everyone. Restricting it is a decision: team-b's
    # Service moves to an address its namespace may hold; while none is free that is an error,
    # and an error is never a removal (DESIGN.md 6.1): it keeps v1's entries and says so.
    def intent(where: str, shared: str, restricted: bool) -> Path:
        (tmp_path / where).mkdir()
        text = write_intent(tmp_path, shared=shared).read_text()
        path = tmp_path / where / "lb.yaml"
        path.write_text(text if restricted else text.replace(", namespaces: [team-a]", ""))
        return path

    cluster = write_cluster(tmp_path, [service("team-a", "a", node_port=30081), service("team-b", "b0", node_port=30082), service("team-b", "b1")])
    v1, v2 = tmp_path / "v1.json", tmp_path / "v2.json"
    render_cli(capsys, intent("open", "203.0.113.10-203.0.113.11", False), cluster, out=v1)
    assert served(json.loads(v1.read_text())) == {"team-a/a": "203.0.113.10", "team-b/b0": "203.0.113.11", "team-b/b1": TEAM_A_POOL}
    render_cli(capsys, intent("closed", "203.0.113.10-203.0.113.11", True), cluster, previous=v1, out=v2)
    assert v2.read_text() == v1.read_text()  # nothing changes while it cannot move
    snap, err = render_cli(capsys, intent("closed-again", "203.0.113.10-203.0.113.11", True), cluster, previous=v1)
    assert "team-b/b1: no free address left in the auto-assign VIP pools serving namespace team-b (shared); kept as in v1" in err
    snap, err = render_cli(capsys, intent("wider", "203.0.113.10-203.0.113.12", True), cluster, previous=v1)
    assert served(snap) == {"team-a/a": "203.0.113.10", "team-b/b0": "203.0.113.11", "team-b/b1": "203.0.113.12"}
    assert "no free address" not in err


def test_incremental_render_equals_a_full_render_with_namespace_pools() -> None:
    shared = pool("203.0.113.10", 3, "shared")
    restricted = dataclasses.replace(pool("198.51.100.0", 4, "team-a"), namespaces=("team-a",))
    config = dataclasses.replace(make_config(), vip_pools=(shared, restricted))
    svcs = [make_service(f"s{i}", namespace=("team-a" if i % 2 else "team-b"), node_port_base=30000 + 10 * i) for i in range(8)]
    steps = [svcs[:3], svcs[:6], svcs[1:8], svcs[2:5] + [make_service("late", namespace="team-a", load_balancer_ip="198.51.100.3")], svcs]
    inc, previous = Renderer(), None
    for step in steps:
        cluster = make_cluster({s: {"node-0": 1} for s in step})
        got = inc.render(config, cluster, previous, p4info_digest=P4INFO_DIGEST)
        full = render(config, cluster, previous, p4info_digest=P4INFO_DIGEST)
        assert got.snapshot.to_json_text() == full.snapshot.to_json_text()
        assert [str(i) for i in got.issues] == [str(i) for i in full.issues]
        for s in got.snapshot.services:
            if not s.name.startswith("team-a/"):
                assert not s.vip.startswith("198.51.100."), s
        previous = got.snapshot


# --- 2. a fallen-back Service keeps its VIP --------------------------------------------------


NOW = datetime(2026, 11, 22, 10, 23, 48, tzinfo=UTC)


def _stored(svc: dict[str, Any]) -> dict[str, Any]:
    """A Service as the API server stores it (load() keeps objects as given: no defaults)."""
    svc["spec"].update(sessionAffinity="None", externalTrafficPolicy="Cluster")
    return svc


@pytest.fixture
def kube() -> Iterator[tuple[KubeApiServer, k8s.ApiClient]]:
    with KubeApiServer() as srv:
        srv.load([_stored(service("team-a", "web")), _stored(service("team-a", "thief", node_port=30081))] + NODES
                 + [endpoint_slice("team-a", n, f"{n}-1", [(ip, "node-a", f"{n}-0")]) for n, ip in (("web", "10.244.1.2"), ("thief", "10.244.1.3"))])
        api = build_api_client(configuration=srv.client_configuration())
        try:
            yield srv, api
        finally:
            api.close()


def _listed(api: k8s.ApiClient) -> Any:
    core, disc = k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api)
    items = lambda raw: json.loads(raw.data)["items"]  # noqa: E731
    return state_from_objects(
        items(core.list_service_for_all_namespaces(_preload_content=False)),
        items(disc.list_endpoint_slice_for_all_namespaces(_preload_content=False)),
        items(core.list_node(_preload_content=False)),
    )


def test_a_fallen_back_service_keeps_its_vip_through_fallback_and_recovery(kube) -> None:
    srv, api = kube
    core = k8s.CoreV1Api(api)
    config = make_config()
    v1 = render(config, _listed(api), None, p4info_digest=P4INFO_DIGEST).snapshot
    vip = v1.by_name["team-a/web"].vip
    core.patch_namespaced_service_status("web", "team-a", status_patch((vip,)), field_manager="p4kube", _content_type="application/merge-patch+json")
    fallback = Fallback(api, EventRecorder(api, instance="test"), now=lambda: NOW)
    assert asyncio.run(asyncio.wait_for(fallback.fall_back("team-a/web", "VIP probe failed"), 30)).action == "fell-back"
    # Meanwhile another Service of the namespace asks for that VIP by spec.loadBalancerIP.
    core.patch_namespaced_service("thief", "team-a", {"spec": {"loadBalancerIP": vip}}, field_manager="kubectl-edit", _content_type="application/merge-patch+json")
    expected = f"team-a/thief: requested IP {vip} is already in use by Service team-a/web"

    def refused(result: Any) -> Snapshot:
        # The thief keeps the VIP it had (an error is never a removal) and never gets web's.
        assert vip not in {s.vip for s in result.snapshot.services}
        thief = result.snapshot.by_name.get("team-a/thief")  # None from scratch: nothing to keep
        assert thief is None or thief.vip == v1.by_name["team-a/thief"].vip
        assert any(str(i).startswith(expected) for i in result.issues), result.issues
        return result.snapshot

    v2 = refused(render(config, _listed(api), v1, p4info_digest=P4INFO_DIGEST))
    assert "team-a/web" not in v2.by_name
    # The next render's previous no longer has the Service; a restart has no Renderer state either.
    v3 = refused(render(config, _listed(api), v2, p4info_digest=P4INFO_DIGEST))
    refused(render(config, _listed(api), None, p4info_digest=P4INFO_DIGEST))
    assert asyncio.run(asyncio.wait_for(fallback.recover("team-a/web"), 30)).action == "recovered"
    after = render(config, _listed(api), v3, p4info_digest=P4INFO_DIGEST)
    assert after.snapshot.by_name["team-a/web"].vip == vip
    assert any(str(i).startswith(expected) for i in after.issues)


def _fallen(svc: Any, ingress: tuple[str, ...] = ()) -> Any:
    return dataclasses.replace(svc, annotations=((FALLBACK_BY_ANNOTATION, "p4kube"), (OPT_IN_ANNOTATION, "disabled")), ingress_ips=ingress)


def test_a_fallen_back_external_ip_service_keeps_its_requested_vip_without_status() -> None:
    # A ClusterIP Service with externalIPs has no load-balancer status: its own request, checked
    # against the pools, is what stays reserved.
    config = make_config()
    ext = make_service("ext", type="ClusterIP", external_ips=["203.0.113.12"])
    v1 = do_render(config, make_cluster({ext: {"node-0": 1}})).snapshot
    thief = make_service("aaa-thief", load_balancer_ip="203.0.113.12", node_port_base=31000)
    fallen = make_cluster({_fallen(ext): {"node-0": 1}, thief: {"node-1": 1}})
    for previous in (v1, None):
        result = do_render(config, fallen, previous)
        assert "default/aaa-thief" not in result.snapshot.by_name
        assert "default/aaa-thief: requested IP 203.0.113.12 is already in use by Service default/ext" in [str(i) for i in result.issues]


def test_forged_fallback_annotations_reserve_nothing_outside_the_namespaces_pools() -> None:
    # Anyone who edits a Service can write the fallback annotations; what they reserve is still
    # only an address the Service's own namespace may hold.
    restricted = dataclasses.replace(pool(TEAM_A_POOL, 4, "team-a"), namespaces=("team-a",))
    config = dataclasses.replace(make_config(), vip_pools=(pool(), restricted))
    forger = _fallen(make_service("forger", namespace="team-b", load_balancer_ip="198.51.100.1"), ingress=("198.51.100.1",))
    owner = make_service("owner", namespace="team-a", load_balancer_ip="198.51.100.1", node_port_base=31000)
    result = do_render(config, make_cluster({forger: {"node-0": 1}, owner: {"node-1": 1}}))
    assert result.snapshot.by_name["team-a/owner"].vip == "198.51.100.1"


# --- 3. podIP mode trusts only the EndpointSlice controller's slices ---------------------------


def _pod_ip_cluster(tmp_path: Path) -> Path:
    return write_cluster(tmp_path, [
        service("team-a", "api"),
        endpoint_slice("team-a", "api", "api-x1", [("10.244.1.2", "node-a", "api-0")]),
        # Hand-written: the API server's address, and a copy of the real pod on another node.
        endpoint_slice("team-a", "api", "a-evil", [(API_SERVER_IP, "node-a", None), ("10.244.1.2", "node-b", "api-0")], managed=False),
        # The controller's label, but an endpoint without a Pod targetRef.
        endpoint_slice("team-a", "api", "api-x2", [("10.0.0.99", "node-b", None)]),
    ])


def test_pod_ip_mode_ignores_endpoints_the_endpointslice_controller_did_not_write(capsys, tmp_path) -> None:
    intent = write_intent(tmp_path, backend_mode="podIP")
    snap, err = render_cli(capsys, intent, _pod_ip_cluster(tmp_path))
    (svc,) = snap["services"]
    assert [(b["address"], b["node"]) for b in svc["backends"]] == [("10.244.1.2", "node-a")]
    assert API_SERVER_IP not in json.dumps(snap["tables"]) and "10.0.0.99" not in json.dumps(snap["tables"])
    (line,) = [x for x in err.splitlines() if "team-a/api:" in x]
    assert "2 endpoint(s) 10.0.0.99, 10.96.0.1: not from an EndpointSlice labelled endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io with a Pod targetRef; left out" in line


def test_pod_cidrs_admit_addresses_inside_them_only(capsys, tmp_path) -> None:
    intent = write_intent(tmp_path, backend_mode="podIP", pod_cidrs=["10.0.0.96/28"])
    snap, err = render_cli(capsys, intent, _pod_ip_cluster(tmp_path))
    (svc,) = snap["services"]
    assert sorted(b["address"] for b in svc["backends"]) == ["10.0.0.99", "10.244.1.2"]
    assert API_SERVER_IP not in json.dumps(snap["tables"])
    assert f"1 endpoint(s) {API_SERVER_IP}: not from an EndpointSlice labelled" in err and "nor inside spec.podCIDRs (10.0.0.96/28)" in err


def test_node_port_mode_is_unchanged_by_slice_trust(capsys, tmp_path) -> None:
    # nodePort mode sends traffic to nodes (kube-proxy picks the pod): the hand-written slice's
    # copy of the pod does not move it to node-b, because the controller's copy wins the merge.
    snap, _ = render_cli(capsys, write_intent(tmp_path), _pod_ip_cluster(tmp_path))
    (svc,) = snap["services"]
    assert {b["node"]: b["replicas"] for b in svc["backends"]} == {"node-a": 2, "node-b": 1}


@pytest.mark.parametrize("recording", [RECORDED_CLUSTER / "cluster.yaml", ROOT / "intent-examples" / "multi-service" / "cluster.yaml"])
def test_recorded_clusters_carry_the_controllers_label_and_pod_target_refs(recording: Path) -> None:
    # A real cluster keeps working in podIP mode: every ready endpoint recorded is trusted.
    state = load_cluster_file(recording)
    endpoints = [ep for eps in state.endpoints.values() for ep in eps]
    assert endpoints and all(ep.managed for ep in endpoints), [ep for ep in endpoints if not ep.managed]


# --- 4. the intent fields ------------------------------------------------------------------------


def test_pool_namespaces_and_pod_cidrs_load_and_a_bad_cidr_is_refused_at_its_line(capsys, tmp_path) -> None:
    from reconciler.intent.loader import load_intent

    intent = write_intent(tmp_path, backend_mode="podIP", pod_cidrs=["10.244.0.0/16"])
    (config,) = load_intent([intent]).configs
    assert [p.namespaces for p in config.vip_pools] == [(), ("team-a",)]
    assert [str(n) for n in config.pod_cidrs] == ["10.244.0.0/16"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "lb.yaml").write_text(intent.read_text().replace("10.244.0.0/16", "10.244.0.1/16"))
    code, out, err = cli(capsys, "validate", str(bad / "lb.yaml"))
    assert code == 1
    assert "lb.yaml:6:" in out + err and "host bits set" in out + err
