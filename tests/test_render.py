"""render(config, cluster, previous): selection, shares, stickiness, quarantine and issues."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from helpers_render import (
    P4INFO_DIGEST,
    do_render,
    make_cluster,
    make_config,
    make_service,
    pool,
    with_service,
    without_service,
)

from reconciler import p4names as n
from reconciler.cluster.model import ClusterState, Node
from reconciler.intent.model import LoadBalancerConfig
from reconciler.render import Renderer, RenderIssue, RenderResult
from reconciler.snapshot import Snapshot, schema_errors


def issues_of(result: RenderResult, service: str) -> list[RenderIssue]:
    return [i for i in result.issues if i.service == service]


def ids(snap: Snapshot) -> dict[str, tuple[int, str, dict[str, int]]]:
    """name -> (service id, VIP, backend key -> backend id)."""
    return {
        s.name: (s.service_id, s.vip, {b.address if s.backend_mode == "podIP" else b.node: b.backend_id for b in s.backends})
        for s in snap.services
    }


# --- the multi-service example against the recorded cluster ---------------------------------------


def test_example_serves_the_four_opted_in_services(multi_render: RenderResult) -> None:
    snap = multi_render.snapshot
    assert [s.name for s in snap.services] == ["payments/dns-cache", "payments/ledger", "web/api", "web/frontend"]
    assert multi_render.issues == ()
    assert {s.name: s.protocol for s in snap.services}["payments/dns-cache"] == "UDP"
    assert schema_errors(snap.to_document()) == []


def test_example_replicas_match_recording(multi_render: RenderResult, expected_replicas: dict) -> None:
    got = {s.name: {b.node: b.replicas for b in s.backends} for s in multi_render.snapshot.services}
    assert got == expected_replicas


def test_example_backends_are_node_internal_ips_and_node_ports(
    multi_render: RenderResult, recorded_cluster: ClusterState
) -> None:
    for s in multi_render.snapshot.services:
        svc = recorded_cluster.services[s.name]
        (port,) = svc.ports
        for b in s.backends:
            assert b.address == recorded_cluster.nodes[b.node].internal_ip
            assert b.port == port.node_port


def test_example_bucket_shares(multi_render: RenderResult) -> None:
    for s in multi_render.snapshot.services:
        assert s.bucket_count == 64
        assert sum(b.buckets for b in s.backends) == 64
        counted = Counter(s.assignment)
        total = sum(b.replicas for b in s.backends)
        for b in s.backends:
            assert counted[b.node] == b.buckets, (s.name, b.node)
            exact = 64 * b.replicas / total
            assert abs(b.buckets - exact) < 1, f"{s.name} {b.node}: {b.buckets} buckets vs exact share {exact:.2f}"


def test_example_tables(multi_render: RenderResult) -> None:
    snap = multi_render.snapshot
    tables = snap.tables()
    assert len(tables[n.VIP_TABLE]) == 4
    assert len(tables[n.BACKEND_TABLE]) == 4 * 64
    assert len(tables[n.REVERSE_NAT]) == sum(len(s.backends) for s in snap.services)
    assert [e.key for e in tables[n.IPV4_LPM]] == [("172.20.0.0/24",)]
    for s in snap.services:
        (vip,) = s.entries()[n.VIP_TABLE]
        assert vip.key == (s.vip, s.port, n.IP_PROTOCOLS[s.protocol])
        assert vip.args == (s.service_id, 63)


def test_example_vips_come_from_the_pool_in_order(multi_render: RenderResult, multi_config: LoadBalancerConfig) -> None:
    (pool,) = multi_config.vip_pools
    ((lo, _),) = pool.ranges
    snap = multi_render.snapshot
    assert [s.vip for s in snap.services] == [str(lo + i) for i in range(4)]
    assert sorted(s.service_id for s in snap.services) == [1, 2, 3, 4]
    backend_ids = [b.backend_id for s in snap.services for b in s.backends]
    assert len(set(backend_ids)) == len(backend_ids)


def test_render_is_deterministic(multi_config: LoadBalancerConfig, recorded_cluster: ClusterState) -> None:
    a = do_render(multi_config, recorded_cluster).snapshot.to_json_text()
    b = do_render(multi_config, recorded_cluster).snapshot.to_json_text()
    assert a == b
    # Insertion order of the cluster's dicts must not matter either.
    shuffled = dataclasses.replace(
        recorded_cluster,
        services=dict(reversed(list(recorded_cluster.services.items()))),
        endpoints=dict(reversed(list(recorded_cluster.endpoints.items()))),
        nodes=dict(reversed(list(recorded_cluster.nodes.items()))),
    )
    assert do_render(multi_config, shuffled).snapshot.to_json_text() == a


def test_sources_recorded(multi_config: LoadBalancerConfig, recorded_cluster: ClusterState) -> None:
    cluster = dataclasses.replace(recorded_cluster, resource_version="4242")
    snap = do_render(multi_config, cluster, intent_commit="ab" * 20).snapshot
    assert snap.intent_commit == "ab" * 20 and snap.cluster_resource_version == "4242"
    assert snap.p4info_digest == P4INFO_DIGEST and snap.program == "load_balancer.p4"
    assert snap.config == "p4kube-system/p4kube-config" and snap.version == 1


# --- stickiness ---------------------------------------------------------------------------------------


@pytest.fixture
def three() -> tuple[LoadBalancerConfig, ClusterState]:
    svcs = {
        make_service("b-svc", node_port_base=30010): {"node-0": 2, "node-1": 1},
        make_service("c-svc", node_port_base=30020): {"node-1": 1, "node-2": 3},
        make_service("d-svc", node_port_base=30030): {"node-0": 1, "node-3": 1},
    }
    return make_config(), make_cluster(svcs)


def test_previous_keeps_ids_vips_and_backend_ids(three: tuple[LoadBalancerConfig, ClusterState]) -> None:
    config, cluster = three
    first = do_render(config, cluster).snapshot
    # A Service sorting first, and a new node for an existing Service: neither may shift anything.
    grown = with_service(cluster, make_service("a-svc", node_port_base=30040), {"node-2": 1}, ip_base=9000)
    grown = with_service(grown, grown.services["default/c-svc"], {"node-0": 2, "node-1": 1, "node-2": 3}, ip_base=9100)
    second = do_render(config, grown, first).snapshot
    before, after = ids(first), ids(second)
    for name, (sid, vip, bids) in before.items():
        assert after[name][0] == sid and after[name][1] == vip, name
        for key, bid in bids.items():
            assert after[name][2][key] == bid, (name, key)
    new_sid, new_vip, new_bids = after["default/a-svc"]
    assert new_sid == 4 and new_vip == "203.0.113.13"
    used = {bid for _, _, bids in before.values() for bid in bids.values()}
    assert not (set(new_bids.values()) | {after["default/c-svc"][2]["node-0"]}) & used
    assert second.version == first.version + 1
    # Without previous, the same cluster gives a-svc the first address and id instead.
    fresh = ids(do_render(config, grown).snapshot)
    assert fresh["default/a-svc"][:2] == (1, "203.0.113.10")


def test_unchanged_content_keeps_digest_and_version(three: tuple[LoadBalancerConfig, ClusterState]) -> None:
    config, cluster = three
    first = do_render(config, cluster).snapshot.with_version(7)
    again = do_render(config, dataclasses.replace(cluster, resource_version="99"), first)
    assert again.changed is False
    assert again.snapshot.digest == first.digest
    assert again.snapshot.version == 7


def test_changed_content_bumps_version(three: tuple[LoadBalancerConfig, ClusterState]) -> None:
    config, cluster = three
    first = do_render(config, cluster).snapshot.with_version(7)
    scaled = with_service(cluster, cluster.services["default/b-svc"], {"node-0": 2, "node-1": 2}, ip_base=9200)
    result = do_render(config, scaled, first)
    assert result.changed is True
    assert result.snapshot.version == 8
    assert result.snapshot.digest != first.digest


def test_removed_service_values_are_quarantined_for_one_render(three: tuple[LoadBalancerConfig, ClusterState]) -> None:
    config, cluster = three
    v1 = do_render(config, cluster).snapshot
    gone_sid, gone_vip, gone_bids = ids(v1)["default/b-svc"]
    assert (gone_sid, gone_vip) == (1, "203.0.113.10")
    swapped = with_service(
        without_service(cluster, "default/b-svc"), make_service("e-svc", node_port_base=30050), {"node-0": 1, "node-1": 1}, 9300
    )
    v2 = do_render(config, swapped, v1).snapshot
    e_sid, e_vip, e_bids = ids(v2)["default/e-svc"]
    assert e_sid != gone_sid, "a removed Service's id was reused in the same render"
    assert e_vip != gone_vip, "a removed Service's VIP was reused in the same render"
    assert not set(e_bids.values()) & set(gone_bids.values()), "backend ids (counters) reused in the same render"
    # One render later the freed values are the lowest free ones again.
    later = with_service(swapped, make_service("f-svc", node_port_base=30060), {"node-3": 1}, 9400)
    v3 = do_render(config, later, v2).snapshot
    f_sid, f_vip, _ = ids(v3)["default/f-svc"]
    assert (f_sid, f_vip) == (gone_sid, gone_vip)


def test_quarantine_holds_in_the_incremental_renderer(three: tuple[LoadBalancerConfig, ClusterState]) -> None:
    config, cluster = three
    r = Renderer()
    v1 = r.render(config, cluster, None, p4info_digest=P4INFO_DIGEST).snapshot
    gone_sid, gone_vip, _ = ids(v1)["default/b-svc"]
    swapped = with_service(
        without_service(cluster, "default/b-svc"), make_service("e-svc", node_port_base=30050), {"node-0": 1}, 9300
    )
    v2 = r.render(config, swapped, v1, p4info_digest=P4INFO_DIGEST, changed={"default/b-svc", "default/e-svc"}).snapshot
    e_sid, e_vip, _ = ids(v2)["default/e-svc"]
    assert e_sid != gone_sid and e_vip != gone_vip
    later = with_service(swapped, make_service("f-svc", node_port_base=30060), {"node-3": 1}, 9400)
    v3 = r.render(config, later, v2, p4info_digest=P4INFO_DIGEST, changed={"default/f-svc"}).snapshot
    assert ids(v3)["default/f-svc"][:2] == (gone_sid, gone_vip)
    assert v3.to_json_text() == do_render(config, later, v2).snapshot.to_json_text()


# --- requested VIPs ------------------------------------------------------------------------------------


def test_requested_ip_in_pool_is_honoured() -> None:
    svc = make_service("web", load_balancer_ip="203.0.113.20")
    other = make_service("aaa", node_port_base=30100)
    result = do_render(make_config(pool_size=16), make_cluster({svc: {"node-0": 1}, other: {"node-1": 1}}))
    snap = result.snapshot
    assert snap.by_name["default/web"].vip == "203.0.113.20"
    assert snap.by_name["default/aaa"].vip == "203.0.113.10"
    assert result.issues == ()


def test_requested_ip_outside_pool_is_an_error() -> None:
    svc = make_service("web", load_balancer_ip="192.0.2.50")
    result = do_render(make_config(), make_cluster({svc: {"node-0": 1}}))
    assert "default/web" not in result.snapshot.by_name
    (issue,) = issues_of(result, "default/web")
    assert issue.severity == "error"
    assert "192.0.2.50" in issue.message and "outside" in issue.message


def test_requested_ip_taken_is_an_error() -> None:
    config = make_config()
    holder = make_service("holder")
    v1 = do_render(config, make_cluster({holder: {"node-0": 1}})).snapshot
    assert v1.by_name["default/holder"].vip == "203.0.113.10"
    # "aaa" sorts first and asks for the holder's address: the holder keeps it.
    thief = make_service("aaa", load_balancer_ip="203.0.113.10", node_port_base=30100)
    result = do_render(config, make_cluster({holder: {"node-0": 1}, thief: {"node-1": 1}}), v1)
    assert result.snapshot.by_name["default/holder"].vip == "203.0.113.10"
    assert "default/aaa" not in result.snapshot.by_name
    (issue,) = issues_of(result, "default/aaa")
    assert issue.severity == "error"
    assert "203.0.113.10" in issue.message and "default/holder" in issue.message


def test_two_new_services_requesting_one_ip() -> None:
    a = make_service("a", load_balancer_ip="203.0.113.15")
    b = make_service("b", load_balancer_ip="203.0.113.15", node_port_base=30100)
    result = do_render(make_config(), make_cluster({a: {"node-0": 1}, b: {"node-1": 1}}))
    assert result.snapshot.by_name["default/a"].vip == "203.0.113.15"
    assert "default/b" not in result.snapshot.by_name
    assert [i.severity for i in issues_of(result, "default/b")] == ["error"]


@pytest.mark.parametrize("name", ["new", "zzz"])  # rendered before / after the removed "old"
def test_requested_ip_of_service_removed_in_same_render(name: str) -> None:
    config = make_config()
    old = make_service("old")
    v1 = do_render(config, make_cluster({old: {"node-0": 1}})).snapshot
    new = make_service(name, load_balancer_ip=v1.by_name["default/old"].vip)
    result = do_render(config, make_cluster({new: {"node-0": 1}}), v1)
    assert f"default/{name}" not in result.snapshot.by_name
    (issue,) = issues_of(result, f"default/{name}")
    assert issue.severity == "error"
    # default/old is gone from the cluster: the message must not send the user looking for it.
    assert "next version" in issue.message, (
        f"issue names a Service removed in this render as the holder (depends on name order): {issue.message!r}"
    )
    # The next render hands it over.
    v3 = do_render(config, make_cluster({new: {"node-0": 1}}), result.snapshot)
    assert v3.snapshot.by_name[f"default/{name}"].vip == v1.by_name["default/old"].vip
    assert issues_of(v3, f"default/{name}") == []


def test_pool_exhausted_is_an_error() -> None:
    svcs = {make_service(f"s{i}", node_port_base=30000 + 10 * i): {"node-0": 1} for i in range(3)}
    result = do_render(make_config(pool_size=2), make_cluster(svcs))
    assert [s.name for s in result.snapshot.services] == ["default/s0", "default/s1"]
    (issue,) = issues_of(result, "default/s2")
    assert issue.severity == "error" and "no free address" in issue.message


# --- selection --------------------------------------------------------------------------------------------


def test_services_not_selected_are_absent() -> None:
    served = make_service("served", namespace="apps")
    plain = make_service("plain", namespace="apps", opt_in=None, node_port_base=30100)
    disabled = make_service("disabled", namespace="apps", opt_in="disabled", node_port_base=30200)
    elsewhere = make_service("elsewhere", namespace="other", node_port_base=30300)
    cluster = make_cluster({s: {"node-0": 1} for s in (served, plain, disabled, elsewhere)})
    result = do_render(make_config(namespaces=["apps"]), cluster)
    assert [s.name for s in result.snapshot.services] == ["apps/served"]
    assert result.issues == ()
    # Without the namespace selector, "elsewhere" is served too; plain and disabled still are not.
    names = [s.name for s in do_render(make_config(), cluster).snapshot.services]
    assert names == ["apps/served", "other/elsewhere"]


def test_cluster_ip_without_external_ips_is_an_issue() -> None:
    svc = make_service("internal", type="ClusterIP")
    result = do_render(make_config(), make_cluster({svc: {"node-0": 1}}))
    assert result.snapshot.services == ()
    (issue,) = issues_of(result, "default/internal")
    assert "externalIPs" in issue.message and "ClusterIP" in issue.message


def test_cluster_ip_with_external_ip_is_served_there() -> None:
    # A pool address: an externalIP outside the pools is refused (tests/test_security_vips.py).
    svc = make_service("ext", type="ClusterIP", external_ips=["203.0.113.20"])
    result = do_render(make_config(), make_cluster({svc: {"node-0": 1}}))
    assert result.snapshot.by_name["default/ext"].vip == "203.0.113.20"
    assert result.issues == ()


def test_sctp_port_is_an_issue() -> None:
    svc = make_service("mixed", ports=(("data", 9000, "TCP"), ("sig", 3868, "SCTP")))
    result = do_render(make_config(), make_cluster({svc: {"node-0": 1}}))
    assert [s.name for s in result.snapshot.services] == ["default/mixed:data"]
    (issue,) = issues_of(result, "default/mixed:sig")
    assert issue.severity == "error" and "SCTP" in issue.message


def test_multi_port_service_names_and_shared_vip() -> None:
    svc = make_service("web", ports=(("http", 80, "TCP"), ("https", 443, "TCP"), ("quic", 443, "UDP")))
    snap = do_render(make_config(), make_cluster({svc: {"node-0": 2, "node-1": 1}})).snapshot
    assert [s.name for s in snap.services] == ["default/web:http", "default/web:https", "default/web:quic"]
    assert len({s.vip for s in snap.services}) == 1
    assert len({s.service_id for s in snap.services}) == 3
    assert [(s.port, s.protocol) for s in snap.services] == [(80, "TCP"), (443, "TCP"), (443, "UDP")]
    ports = {s.name: {b.port for b in s.backends} for s in snap.services}
    assert ports == {"default/web:http": {30000}, "default/web:https": {30001}, "default/web:quic": {30002}}
    assert len(snap.tables()[n.VIP_TABLE]) == 3


def test_no_ready_endpoints() -> None:
    svc = make_service("idle")
    result = do_render(make_config(), make_cluster({svc: {}}))
    s = result.snapshot.by_name["default/idle"]
    assert s.backends == () and s.entries() == {}
    assert s.vip == "203.0.113.10"  # keeps its address for when replicas become ready
    assert all(not es for es in result.snapshot.tables().values())  # make_config has no routes
    (issue,) = issues_of(result, "default/idle")
    assert "no ready endpoints" in issue.message


def test_node_without_internal_ip_is_left_out() -> None:
    nodes = {"node-0": Node("node-0", "10.1.0.1"), "node-1": Node("node-1", None)}
    svc = make_service("web")
    result = do_render(make_config(), make_cluster({svc: {"node-0": 1, "node-1": 2}}, nodes=nodes))
    s = result.snapshot.by_name["default/web"]
    assert [b.node for b in s.backends] == ["node-0"]
    assert s.backends[0].buckets == 64
    (issue,) = issues_of(result, "default/web")
    assert "node-1" in issue.message and "InternalIP" in issue.message


def test_missing_node_is_left_out() -> None:
    svc = make_service("web")
    cluster = make_cluster({svc: {"node-0": 1, "node-9": 1}}, nodes=2)
    result = do_render(make_config(), cluster)
    assert [b.node for b in result.snapshot.by_name["default/web"].backends] == ["node-0"]
    assert any("node-9" in i.message for i in issues_of(result, "default/web"))


# --- backend modes and algorithms -------------------------------------------------------------------------


def test_pod_ip_mode_backends_per_pod() -> None:
    svc = make_service("api", ports=(("grpc", 9000, "TCP"), ("metrics", 9100, "TCP")))
    cluster = make_cluster({svc: {"node-0": 2, "node-1": 1}}, nodes=2)
    # Endpoint port numbers differ from the Service ports: podIP mode must use the endpoints'.
    eps = tuple(dataclasses.replace(e, ports=(("grpc", 50051), ("metrics", 9464))) for e in cluster.endpoints["default/api"])
    cluster = dataclasses.replace(cluster, endpoints={"default/api": eps})
    result = do_render(make_config(backend_mode="podIP", buckets=32), cluster)
    snap = result.snapshot
    assert result.issues == ()
    for name, port in (("default/api:grpc", 50051), ("default/api:metrics", 9464)):
        s = snap.by_name[name]
        assert s.backend_mode == "podIP"
        assert sorted(b.address for b in s.backends) == sorted(e.address for e in eps)
        assert {b.port for b in s.backends} == {port}
        assert {b.node for b in s.backends} == {"node-0", "node-1"}
        assert all(b.replicas == 1 for b in s.backends)
        assert sorted(b.buckets for b in s.backends) == [10, 11, 11]  # 32 buckets over 3 pods
        assert set(s.assignment) == {b.address for b in s.backends}
        targets = {(e.args[0], e.args[1]) for e in s.entries()[n.BACKEND_TABLE]}
        assert targets == {(b.address, port) for b in s.backends}
        assert {e.key[:2] for e in s.entries()[n.REVERSE_NAT]} == targets
    assert schema_errors(snap.to_document()) == []


def test_pod_ip_mode_endpoint_without_named_port() -> None:
    svc = make_service("api", ports=(("grpc", 9000, "TCP"), ("metrics", 9100, "TCP")))
    svc = dataclasses.replace(svc, ports=tuple(dataclasses.replace(p, target_port="named") for p in svc.ports))
    cluster = make_cluster({svc: {"node-0": 2}}, nodes=1)
    first, second = cluster.endpoints["default/api"]
    eps = (dataclasses.replace(first, ports=(("grpc", 50051), ("metrics", 9464))), dataclasses.replace(second, ports=(("grpc", 50051),)))
    cluster = dataclasses.replace(cluster, endpoints={"default/api": eps})
    result = do_render(make_config(backend_mode="podIP"), cluster)
    metrics = result.snapshot.by_name["default/api:metrics"]
    assert [b.address for b in metrics.backends] == [first.address]
    assert any(second.address in i.message for i in issues_of(result, "default/api:metrics"))
    assert len(result.snapshot.by_name["default/api:grpc"].backends) == 2


def test_least_connections_shifts_buckets_away_from_loaded_node() -> None:
    svc = make_service("web")
    cluster = make_cluster({svc: {"node-0": 2, "node-1": 2}})
    config = make_config(algorithm="least-connections")
    idle = do_render(config, cluster).snapshot.by_name["default/web"]
    assert {b.node: b.buckets for b in idle.backends} == {"node-0": 32, "node-1": 32}
    busy = do_render(config, cluster, connections={"default/web": {"node-0": 30, "node-1": 0}}).snapshot
    s = busy.by_name["default/web"]
    share = {b.node: b.buckets for b in s.backends}
    assert share["node-0"] < 32 < share["node-1"] and sum(share.values()) == 64
    assert {b.node: b.active_connections for b in s.backends} == {"node-0": 30, "node-1": 0}
    assert schema_errors(busy.to_document()) == []
    # Load on the other node shifts the other way.
    other = do_render(config, cluster, connections={"default/web": {"node-1": 30}}).snapshot.by_name["default/web"]
    assert {b.node: b.buckets for b in other.backends} == {"node-0": share["node-1"], "node-1": share["node-0"]}


def test_connections_ignored_by_replica_weighted() -> None:
    svc = make_service("web")
    cluster = make_cluster({svc: {"node-0": 2, "node-1": 2}})
    plain = do_render(make_config(), cluster).snapshot
    loaded = do_render(make_config(), cluster, connections={"default/web": {"node-0": 30}}).snapshot
    assert loaded.to_json_text() == plain.to_json_text()


def test_round_robin_exact_shares_and_striping() -> None:
    svc = make_service("web")
    cluster = make_cluster({svc: {"node-0": 1, "node-1": 2, "node-2": 1}})
    s = do_render(make_config(algorithm="round-robin", buckets=64), cluster).snapshot.by_name["default/web"]
    assert {b.node: b.buckets for b in s.backends} == {"node-0": 16, "node-1": 32, "node-2": 16}
    assert s.algorithm == "round-robin"
    # Striped: every aligned block of 4 buckets holds each node in proportion (1, 2, 1).
    for start in range(0, 64, 4):
        block = Counter(s.assignment[start : start + 4])
        assert block == Counter({"node-0": 1, "node-1": 2, "node-2": 1}), (start, s.assignment[start : start + 4])


def test_bucket_count_from_config() -> None:
    svc = make_service("web")
    cluster = make_cluster({svc: {"node-0": 3, "node-1": 1}})
    s = do_render(make_config(buckets=8), cluster).snapshot.by_name["default/web"]
    assert s.bucket_count == 8 and len(s.assignment) == 8
    assert {b.node: b.buckets for b in s.backends} == {"node-0": 6, "node-1": 2}
    (vip,) = s.entries()[n.VIP_TABLE]
    assert vip.args == (s.service_id, 7)


def test_vips_follow_multiple_pools_in_order() -> None:
    config = make_config(vip_pools=(pool("198.51.100.250", 2, "first"), pool("203.0.113.1", 4, "second")))
    svcs = {make_service(f"s{i}", node_port_base=30000 + 10 * i): {"node-0": 1} for i in range(4)}
    snap = do_render(config, make_cluster(svcs)).snapshot
    assert [s.vip for s in snap.services] == ["198.51.100.250", "198.51.100.251", "203.0.113.1", "203.0.113.2"]


# --- the incremental Renderer retries what a removal blocked ------------------------------------------------


def _incremental_then_full(config: LoadBalancerConfig, c1: ClusterState, c2: ClusterState) -> tuple[Snapshot, Snapshot, Snapshot]:
    """v2 = incremental render of c2 after c1; then render c2 again incrementally and fully from v2."""
    r = Renderer()
    v1 = r.render(config, c1, None, p4info_digest=P4INFO_DIGEST).snapshot
    v2 = r.render(config, c2, v1, p4info_digest=P4INFO_DIGEST).snapshot
    again = r.render(config, c2, v2, p4info_digest=P4INFO_DIGEST).snapshot
    full = do_render(config, c2, v2).snapshot
    return v2, again, full


@pytest.mark.parametrize("name", ["new", "zzz"])
def test_service_refused_a_quarantined_vip_is_served_on_the_next_render(name: str) -> None:
    # "old" is deleted and "<name>" asks for its VIP in the same change: refused now (quarantine),
    # and with nothing else changing, served by the next render, incremental or not.
    config = make_config()
    old = make_service("old")
    c1 = make_cluster({old: {"node-0": 1}})
    new = make_service(name, load_balancer_ip="203.0.113.10")
    c2 = make_cluster({new: {"node-0": 1}})
    v2, again, full = _incremental_then_full(config, c1, c2)
    assert f"default/{name}" not in v2.by_name
    assert full.by_name[f"default/{name}"].vip == "203.0.113.10"
    assert again.to_json_text() == full.to_json_text(), (
        f"incremental Renderer never retries default/{name} (refused while the VIP was quarantined): "
        f"it serves {[s.name for s in again.services]}, a full render from the same previous serves "
        f"{[s.name for s in full.services]}"
    )


@pytest.mark.parametrize("name", ["new", "zzz"])
def test_backend_of_removed_service_is_taken_over_on_the_next_render(name: str) -> None:
    # "<name>" gets the nodePort the deleted "old" had, so the same reverse_nat key (node IP,
    # nodePort, TCP). Whatever happens in the render that removes "old", the next render from
    # the resulting snapshot must serve the backend, incremental or not.
    config = make_config()
    keep = make_service("keep", node_port_base=30600)
    c1 = make_cluster({make_service("old", node_port_base=30500): {"node-0": 1}, keep: {"node-1": 1}})
    c2 = make_cluster({make_service(name, node_port_base=30500): {"node-0": 1}, keep: {"node-1": 1}})
    v2, again, full = _incremental_then_full(config, c1, c2)
    assert [b.node for b in full.by_name[f"default/{name}"].backends] == ["node-0"]
    assert again.to_json_text() == full.to_json_text(), (
        f"incremental Renderer keeps default/{name} without its backend (contested with the removed "
        f"default/old in the previous render): backends {again.by_name[f'default/{name}'].backends}"
    )


def test_a_service_in_automatic_fallback_keeps_its_vip() -> None:
    import dataclasses

    from reconciler.cluster.model import FALLBACK_BY_ANNOTATION, OPT_IN_ANNOTATION

    config = make_config()
    web = make_service("web")
    v1 = do_render(config, make_cluster({web: {"node-0": 1}})).snapshot
    vip = v1.by_name["default/web"].vip
    fallen = dataclasses.replace(
        web, annotations=((FALLBACK_BY_ANNOTATION, "p4kube"), (OPT_IN_ANNOTATION, "disabled")), ingress_ips=(vip,)
    )
    newcomer = make_service("aaa-new", node_port_base=31000)
    cluster2 = make_cluster({fallen: {"node-0": 1}, newcomer: {"node-1": 1}})
    v2 = do_render(config, cluster2, v1).snapshot
    assert "default/web" not in v2.by_name
    assert v2.by_name["default/aaa-new"].vip != vip
    # From scratch too (a restart): the status ingress IP is held for the fallen-back Service.
    assert do_render(config, cluster2).snapshot.by_name["default/aaa-new"].vip != vip
    # Recovered: back on the same address.
    v3 = do_render(config, make_cluster({web: {"node-0": 1}, newcomer: {"node-1": 1}}), v2).snapshot
    assert v3.by_name["default/web"].vip == vip
    # A person's "disabled" (no p4kube marker) releases it, as before.
    person = dataclasses.replace(web, annotations=((OPT_IN_ANNOTATION, "disabled"),), ingress_ips=(vip,))
    late = make_service("late", node_port_base=32000)
    v4 = do_render(config, make_cluster({person: {"node-0": 1}, newcomer: {"node-1": 1}}), v3).snapshot
    v5 = do_render(config, make_cluster({person: {"node-0": 1}, newcomer: {"node-1": 1}, late: {"node-1": 1}}), v4).snapshot
    assert v5.by_name["default/late"].vip == vip


# --- an error is never a removal (DESIGN.md 6.1) -------------------------------------------------------------


def _kept(result: RenderResult, previous: Snapshot, name: str) -> RenderIssue:
    """Asserts `name` is exactly as in `previous` and returns its one error issue."""
    assert result.snapshot.by_name[name] == previous.by_name[name]
    (issue,) = [i for i in result.issues if i.severity == "error" and i.service == name]
    assert issue.message.endswith(f"; kept as in v{previous.version} (last applied) until fixed"), issue.message
    return issue


def _both(config: LoadBalancerConfig, c1: ClusterState, c2: ClusterState) -> tuple[Snapshot, RenderResult]:
    """v1 from c1, then c2 rendered fully from v1; the incremental Renderer must agree."""
    r = Renderer()
    now = 1_765_000_000.0  # explicit: drains depend on the clock, and both renders must agree
    v1 = r.render(config, c1, None, p4info_digest=P4INFO_DIGEST, now=now).snapshot
    full = do_render(config, c2, v1, now=now + 1)
    inc = r.render(config, c2, v1, p4info_digest=P4INFO_DIGEST, now=now + 1)
    assert inc.snapshot.to_json_text() == full.snapshot.to_json_text()
    assert inc.issues == full.issues
    return v1, full


def test_requested_ip_outside_every_pool_keeps_the_last_applied_service() -> None:
    config = make_config()
    web, other = make_service("web"), make_service("other", node_port_base=30100)
    c1 = make_cluster({web: {"node-0": 2}, other: {"node-1": 1}})
    typo = dataclasses.replace(web, load_balancer_ip="192.0.2.50")
    v1, result = _both(config, c1, make_cluster({typo: {"node-0": 2, "node-1": 1}, other: {"node-1": 1}}))
    issue = _kept(result, v1, "default/web")
    assert str(issue) == (
        "default/web: requested IP 192.0.2.50 (spec.loadBalancerIP) is outside every vipPool; "
        "kept as in v1 (last applied) until fixed"
    )
    # Nothing changed for the switches: same digest, same version.
    assert result.snapshot.digest == v1.digest and result.snapshot.version == 1
    # Its VIP stays held: a newcomer does not get it.
    newcomer = make_service("aaa", node_port_base=30200)
    c3 = make_cluster({typo: {"node-0": 2}, other: {"node-1": 1}, newcomer: {"node-2": 1}})
    v3 = do_render(config, c3, result.snapshot).snapshot
    assert v3.by_name["default/aaa"].vip not in {s.vip for s in v1.services}
    # Fixed: served from the current inputs again.
    fixed = do_render(config, make_cluster({web: {"node-0": 2, "node-1": 1}, other: {"node-1": 1}}), v3)
    assert {b.node for b in fixed.snapshot.by_name["default/web"].backends} == {"node-0", "node-1"}
    assert issues_of(fixed, "default/web") == []


def test_requested_ip_taken_keeps_the_last_applied_service_until_it_is_free() -> None:
    config = make_config()
    holder, web = make_service("holder"), make_service("web", node_port_base=30100)
    c1 = make_cluster({holder: {"node-0": 1}, web: {"node-1": 1}})
    wants = dataclasses.replace(web, load_balancer_ip="203.0.113.10")  # the holder's
    v1, v2 = _both(config, c1, make_cluster({holder: {"node-0": 1}, wants: {"node-1": 1}}))
    assert v1.by_name["default/holder"].vip == "203.0.113.10"
    assert "already in use by Service default/holder" in _kept(v2, v1, "default/web").message
    # The holder goes: quarantined for one version, then the Service moves to it.
    r = Renderer()
    r.render(config, make_cluster({holder: {"node-0": 1}, wants: {"node-1": 1}}), v1, p4info_digest=P4INFO_DIGEST)
    v3 = r.render(config, make_cluster({wants: {"node-1": 1}}), v2.snapshot, p4info_digest=P4INFO_DIGEST)
    assert v3.snapshot.by_name["default/web"] == v1.by_name["default/web"]
    assert "a Service removed in this same change" in issues_of(v3, "default/web")[0].message
    v4 = r.render(config, make_cluster({wants: {"node-1": 1}}), v3.snapshot, p4info_digest=P4INFO_DIGEST)
    assert v4.snapshot.by_name["default/web"].vip == "203.0.113.10" and v4.issues == ()


def test_pool_exhausted_keeps_the_last_applied_service() -> None:
    # The pool shrinks under a Service whose address it no longer covers, and is full.
    web, other = make_service("web"), make_service("other", node_port_base=30100)
    c1 = make_cluster({web: {"node-0": 1}, other: {"node-1": 1}})
    v1 = do_render(make_config(pool_size=2), c1).snapshot
    assert v1.by_name["default/web"].vip == "203.0.113.11"
    result = do_render(make_config(pool_size=1), c1, v1)
    issue = _kept(result, v1, "default/web")
    assert "no free address left" in issue.message


def test_port_without_node_port_keeps_that_port_only() -> None:
    config = make_config()
    web = make_service("web", ports=(("http", 80, "TCP"), ("dns", 53, "UDP")))
    v1, result = _both(
        config,
        make_cluster({web: {"node-0": 1}}),
        make_cluster(
            {dataclasses.replace(web, ports=(web.ports[0], dataclasses.replace(web.ports[1], node_port=None))): {"node-0": 1, "node-1": 1}}
        ),
    )
    issue = _kept(result, v1, "default/web:dns")
    assert str(issue) == (
        "default/web:dns: port has no nodePort (nodePort backend mode needs one); kept as in v1 (last applied) until fixed"
    )
    # The other port follows the cluster.
    assert {b.node for b in result.snapshot.by_name["default/web:http"].backends} == {"node-0", "node-1"}


def test_reverse_nat_conflict_keeps_the_last_applied_service() -> None:
    # "b" gains a backend whose reverse_nat key (node IP, nodePort, TCP) "a" holds.
    config = make_config()
    a, b = make_service("a", node_port_base=30000), make_service("b", node_port_base=30000)
    v1, result = _both(
        config, make_cluster({a: {"node-0": 1}, b: {"node-1": 1}}), make_cluster({a: {"node-0": 1}, b: {"node-0": 1, "node-1": 1, "node-2": 1}})
    )
    assert "already serves default/a" in _kept(result, v1, "default/b").message
    # When what is left is what it already was, it is simply served so (nothing is "kept").
    same = do_render(config, make_cluster({a: {"node-0": 1}, b: {"node-0": 1, "node-1": 1}}), v1)
    assert same.snapshot.by_name["default/b"] == v1.by_name["default/b"]
    assert [i.message for i in issues_of(same, "default/b")] == ["backend 10.1.0.1:30000/TCP already serves default/a; left out"]
    # A Service that was not served before is served without the contested backend, as before.
    c = make_service("c", node_port_base=30000)
    fresh = do_render(config, make_cluster({a: {"node-0": 1}, b: {"node-1": 1}, c: {"node-0": 1, "node-2": 1}}), v1)
    assert [x.node for x in fresh.snapshot.by_name["default/c"].backends] == ["node-2"]
    assert not any("kept as" in i.message for i in fresh.issues)


def test_algorithm_error_keeps_the_last_applied_services() -> None:
    web = make_service("web")
    c1 = make_cluster({web: {"node-0": 1}})
    v1 = do_render(make_config(), c1).snapshot
    broken = dataclasses.replace(make_config(), algorithm="no-such-plugin")
    result = do_render(broken, make_cluster({web: {"node-0": 1, "node-1": 1}}), v1)
    assert "unknown bucket algorithm" in _kept(result, v1, "default/web").message


def test_backend_id_space_exhausted_keeps_the_last_applied_service(monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.render import engine

    monkeypatch.setattr(engine, "MAX_BACKEND_ID", 1)  # two backend ids
    config = make_config()
    web = make_service("web")
    v1, result = _both(config, make_cluster({web: {"node-0": 1, "node-1": 1}}), make_cluster({web: {"node-0": 1, "node-1": 1, "node-2": 1}}))
    assert "backend ids" in _kept(result, v1, "default/web").message


def test_new_service_with_an_error_is_not_served() -> None:
    config = make_config()
    web = make_service("web")
    v1 = do_render(config, make_cluster({web: {"node-0": 1}})).snapshot
    bad = make_service("bad", node_port_base=30100, load_balancer_ip="192.0.2.9")
    result = do_render(config, make_cluster({web: {"node-0": 1}, bad: {"node-1": 1}}), v1)
    assert "default/bad" not in result.snapshot.by_name
    (issue,) = issues_of(result, "default/bad")
    assert issue.severity == "error" and "kept" not in issue.message


@pytest.mark.parametrize(
    "change",
    ["deleted", "disabled", "no-annotation", "other-namespace", "auto-fallback", "cluster-ip"],
)
def test_real_removals_stay_removals(change: str) -> None:
    from reconciler.cluster.model import FALLBACK_BY_ANNOTATION, OPT_IN_ANNOTATION

    config = make_config(namespaces=["default"])
    web, other = make_service("web"), make_service("other", node_port_base=30100)
    v1 = do_render(config, make_cluster({web: {"node-0": 1}, other: {"node-1": 1}})).snapshot
    changed = {
        "disabled": dataclasses.replace(web, annotations=((OPT_IN_ANNOTATION, "disabled"),)),
        "no-annotation": dataclasses.replace(web, annotations=()),
        "other-namespace": make_service("web", namespace="elsewhere"),
        "auto-fallback": dataclasses.replace(web, annotations=((FALLBACK_BY_ANNOTATION, "p4kube"), (OPT_IN_ANNOTATION, "disabled"))),
        "cluster-ip": dataclasses.replace(web, type="ClusterIP"),
    }.get(change)
    services = {other: {"node-1": 1}} | ({changed: {"node-0": 1}} if changed is not None else {})
    result = do_render(config, make_cluster(services), v1)
    assert "default/web" not in result.snapshot.by_name
    assert not any("kept as" in i.message for i in result.issues)


@pytest.mark.parametrize("value", ["true", "yes", "Enabled"])
def test_opt_in_value_that_means_nothing_is_a_warning(value: str) -> None:
    from reconciler.cluster.model import OPT_IN_ANNOTATION

    config = make_config()
    web, other = make_service("web"), make_service("other", node_port_base=30100)
    typo = dataclasses.replace(web, annotations=((OPT_IN_ANNOTATION, value),))
    # Never served: not served now either, with a warning naming the value and the accepted ones.
    fresh = do_render(config, make_cluster({typo: {"node-0": 1}, other: {"node-1": 1}}))
    assert "default/web" not in fresh.snapshot.by_name
    (issue,) = issues_of(fresh, "default/web")
    assert issue.severity == "warning"
    assert issue.message == (
        f'annotation loadbalancer.k8s.io/p4kube: {value!r} is not an accepted value ("enabled", "disabled"); not served'
    )
    # Served before: a person's typo keeps it as it was, with the warning.
    v1, kept = _both(config, make_cluster({web: {"node-0": 1}, other: {"node-1": 1}}), make_cluster({typo: {"node-0": 1, "node-1": 1}, other: {"node-1": 1}}))
    assert kept.snapshot.by_name["default/web"] == v1.by_name["default/web"]
    (issue,) = issues_of(kept, "default/web")
    assert issue.severity == "warning"
    assert str(issue) == (
        f'default/web: annotation loadbalancer.k8s.io/p4kube: {value!r} is not an accepted value ("enabled", "disabled"); '
        "kept as in v1 (last applied) until fixed"
    )


def test_kept_issue_names_the_version_it_was_rendered_from() -> None:
    # Kept across versions: the message follows `previous`, incremental or not.
    config = make_config()
    web, other = make_service("web"), make_service("other", node_port_base=30100)
    typo = dataclasses.replace(web, load_balancer_ip="192.0.2.50")
    r = Renderer()
    v1 = r.render(config, make_cluster({web: {"node-0": 1}, other: {"node-1": 1}}), None, p4info_digest=P4INFO_DIGEST).snapshot
    c2 = make_cluster({typo: {"node-0": 1}, other: {"node-1": 1}})
    v2 = r.render(config, c2, v1, p4info_digest=P4INFO_DIGEST)
    c3 = make_cluster({typo: {"node-0": 1}, other: {"node-1": 2}})
    v3 = r.render(config, c3, v2.snapshot, p4info_digest=P4INFO_DIGEST)
    c4 = make_cluster({typo: {"node-0": 1}, other: {"node-1": 3}})
    v4 = r.render(config, c4, v3.snapshot, p4info_digest=P4INFO_DIGEST)
    assert v3.snapshot.version == 2 and v4.snapshot.version == 3
    assert issues_of(v4, "default/web")[0].message.endswith("kept as in v2 (last applied) until fixed")
    assert v4.issues == do_render(config, c4, v3.snapshot).issues


# --- a Service port keeps its identity when its Service's ports change -------------------------------------------


def _entries(s: object) -> dict:
    """A snapshot service's entries as the switch holds them: (table, key) -> (action, args)."""
    return {(e.table, e.key): (e.action, e.args) for es in s.entries().values() for e in es}  # type: ignore[attr-defined]


def test_adding_a_port_keeps_the_first_ports_entries() -> None:
    from reconciler.diff import diff_snapshots
    from reconciler.plan import ConfigPlan, format_text, summary_counts

    config = make_config()
    web = make_service("web", ports=(("http", 80, "TCP"),))
    other = make_service("aaa", node_port_base=30100)
    c1 = make_cluster({web: {"node-0": 2, "node-1": 1}, other: {"node-2": 1}})
    two = make_service("web", ports=(("http", 80, "TCP"), ("metrics", 9100, "TCP")))
    c2 = make_cluster({two: {"node-0": 2, "node-1": 1}, other: {"node-2": 1}})
    v1, result = _both(config, c1, c2)
    v2 = result.snapshot
    before, after = v1.by_name["default/web"], v2.by_name["default/web:http"]
    assert (after.service_id, after.vip, after.assignment, after.backends) == (before.service_id, before.vip, before.assignment, before.backends)
    assert _entries(after) == _entries(before)
    assert v2.by_name["default/web:metrics"].service_id not in {s.service_id for s in v1.services}
    diff = diff_snapshots(v1, v2)
    first = set(_entries(before))
    touched = [u for u in diff.updates() if (u.entry.table, u.entry.key) in first]
    assert touched == [], f"writes for the existing port: {[(u.kind, u.entry.table, u.entry.key) for u in touched]}"
    assert {u.kind for u in diff.updates()} == {"INSERT"}  # the new port only
    assert {(c.name, c.change, c.renamed_from) for c in diff.services} == {
        ("default/web:http", "changed", "default/web"),
        ("default/web:metrics", "added", None),
    }
    plan = ConfigPlan(config.key, v1, v2, diff, result.issues)
    assert summary_counts([plan])["removed"] == 0
    assert "- default/web" not in format_text([plan]) and "to remove" in format_text([plan])
    assert "0 to remove" in format_text([plan])


def _node_ports(svc: object, node_ports: dict[int, int]) -> object:
    """The Service with nodePorts by port number (the API server keeps a port's nodePort)."""
    return dataclasses.replace(svc, ports=tuple(dataclasses.replace(p, node_port=node_ports[p.port]) for p in svc.ports))  # type: ignore


def test_removing_or_renaming_a_port_keeps_the_other_ports() -> None:
    from reconciler.diff import diff_snapshots

    config = make_config()
    node_ports = {80: 30080, 53: 30053, 443: 30443}
    three = _node_ports(make_service("web", ports=(("http", 80, "TCP"), ("dns", 53, "UDP"), ("https", 443, "TCP"))), node_ports)
    v1 = do_render(config, make_cluster({three: {"node-0": 1, "node-1": 2}})).snapshot
    # "https" renamed "tls" (same number and protocol), "dns" removed.
    two = _node_ports(make_service("web", ports=(("http", 80, "TCP"), ("tls", 443, "TCP"))), node_ports)
    v2 = do_render(config, make_cluster({two: {"node-0": 1, "node-1": 2}}), v1).snapshot
    assert _entries(v2.by_name["default/web:http"]) == _entries(v1.by_name["default/web:http"])
    assert _entries(v2.by_name["default/web:tls"]) == _entries(v1.by_name["default/web:https"])
    diff = diff_snapshots(v1, v2)
    assert {u.entry.service for u in diff.updates()} == {"default/web:dns"}
    assert {u.kind for u in diff.updates()} == {"DELETE"}
    # Down to one port: its name becomes "default/web", its entries stay.
    one = _node_ports(make_service("web", ports=(("tls", 443, "TCP"),)), node_ports)
    v3 = do_render(config, make_cluster({one: {"node-0": 1, "node-1": 2}}), v2).snapshot
    assert [s.name for s in v3.services] == ["default/web"]
    assert _entries(v3.by_name["default/web"]) == _entries(v1.by_name["default/web:https"])
    assert {u.entry.service for u in diff_snapshots(v2, v3).updates()} == {"default/web:http"}


def test_ports_swapping_names_keep_their_entries() -> None:
    config = make_config()
    web = make_service("web", ports=(("a", 80, "TCP"), ("b", 81, "TCP")))
    v1 = do_render(config, make_cluster({web: {"node-0": 1}})).snapshot
    swapped = make_service("web", ports=(("b", 80, "TCP"), ("a", 81, "TCP")))  # same nodePorts by number
    v2 = do_render(config, make_cluster({swapped: {"node-0": 1}}), v1).snapshot
    assert _entries(v2.by_name["default/web:b"]) == _entries(v1.by_name["default/web:a"])
    assert _entries(v2.by_name["default/web:a"]) == _entries(v1.by_name["default/web:b"])
    from reconciler.diff import diff_snapshots

    assert diff_snapshots(v1, v2).empty
