"""The synthetic cluster generator, the one-Service change, and the kubectl-style writer."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from reconciler.cluster.model import OPT_IN_ANNOTATION, ClusterState
from reconciler.cluster.recorded import load_cluster_file
from reconciler.cluster.synthetic import (
    NODE_PORT_MAX,
    NODE_PORT_MIN,
    cluster_to_list,
    cluster_to_list_yaml,
    synthetic_cluster,
    with_scaled_service,
)

# The recorded fixture lives beside the repository (DESIGN.md 7).
from shared_fixtures import RECORDED_CLUSTER

RECORDED = RECORDED_CLUSTER / "cluster.yaml"


@pytest.fixture(scope="module")
def big() -> ClusterState:
    return synthetic_cluster()


def test_default_size_and_shape(big: ClusterState) -> None:
    assert len(big.services) == 5000
    assert len(big.nodes) == 1000
    assert sum(len(eps) for eps in big.endpoints.values()) == 50000
    assert big.issues == ()
    for key, svc in big.services.items():
        assert svc.key == key
        assert svc.type == "LoadBalancer" and svc.opt_in == "enabled"
        assert svc.annotation(OPT_IN_ANNOTATION) == "enabled"
        (port,) = svc.ports
        assert port.protocol == "TCP"
        assert port.node_port is not None and NODE_PORT_MIN <= port.node_port <= NODE_PORT_MAX
        per_node = big.ready_replicas_per_node(key)
        assert 1 <= len(per_node) <= 8  # endpoints drawn over 3 to 8 nodes
        assert set(per_node) <= set(big.nodes)
        eps = big.endpoints[key]
        assert [e.address for e in eps] == sorted(e.address for e in eps)


def test_addresses_unique_and_node_ips_in_ten_slash_eight(big: ClusterState) -> None:
    pods = [e.address for eps in big.endpoints.values() for e in eps]
    assert len(set(pods)) == len(pods)
    ips = [n.internal_ip for n in big.nodes.values()]
    assert len(set(ips)) == len(ips)
    ten = ipaddress.ip_network("10.0.0.0/8")
    assert all(ip is not None and ipaddress.ip_address(ip) in ten for ip in ips)


def test_node_ports_are_cyclic_over_the_range(big: ClusterState) -> None:
    span = NODE_PORT_MAX - NODE_PORT_MIN + 1
    ports = [s.ports[0].node_port for _, s in sorted(big.services.items(), key=lambda kv: kv[1].name)]
    assert len(set(ports)) == span  # 5000 Services cannot have distinct NodePorts
    assert ports[0] == ports[span] == NODE_PORT_MIN


def test_deterministic_per_seed() -> None:
    a = synthetic_cluster(200, 40, 1500, seed=7)
    assert a == synthetic_cluster(200, 40, 1500, seed=7)
    assert a != synthetic_cluster(200, 40, 1500, seed=8)


def test_uneven_endpoint_split_and_few_nodes() -> None:
    s = synthetic_cluster(services=3, nodes=2, endpoints=7)
    assert sorted(len(v) for v in s.endpoints.values()) == [2, 2, 3]
    assert all(len(s.ready_replicas_per_node(k)) <= 2 for k in s.endpoints)
    assert synthetic_cluster(services=4, nodes=3, endpoints=0).endpoints == {}


def test_scale_up_changes_one_service_and_shares_the_rest(big: ClusterState) -> None:
    key = sorted(big.services)[17]
    node = min(big.nodes)
    before = big.ready_replicas_per_node(key)
    after_state = with_scaled_service(big, key, node, 3)
    after = after_state.ready_replicas_per_node(key)
    assert after.get(node, 0) == before.get(node, 0) + 3
    assert {k: v for k, v in after.items() if k != node} == {k: v for k, v in before.items() if k != node}
    # Every other Service's endpoint tuple, every Service and every Node is the same object.
    assert all(after_state.endpoints[k] is v for k, v in big.endpoints.items() if k != key)
    assert after_state.services is big.services and after_state.nodes is big.nodes
    # The input state is untouched, and the new endpoints are sorted and distinct.
    assert big.ready_replicas_per_node(key) == before
    addresses = [e.address for e in after_state.endpoints[key]]
    assert addresses == sorted(addresses) and len(set(addresses)) == len(addresses)
    assert after_state.resource_version == str(int(big.resource_version or "0") + 1)


def test_scale_down_and_to_zero() -> None:
    s = synthetic_cluster(services=2, nodes=4, endpoints=10)
    key = min(s.endpoints)
    per_node = s.ready_replicas_per_node(key)
    node, count = next(iter(per_node.items()))
    down = with_scaled_service(s, key, node, -1)
    assert down.ready_replicas_per_node(key).get(node, 0) == count - 1
    emptied = s
    for n, c in per_node.items():
        emptied = with_scaled_service(emptied, key, n, -c)
    assert key not in emptied.endpoints
    assert emptied.ready_replicas_per_node(key) == {}
    # Adding back to a Service with no endpoints takes its ports from the Service.
    back = with_scaled_service(emptied, key, node, 2)
    assert [e.ports for e in back.endpoints[key]] == [(("", 8080),)] * 2


def test_scale_rejects_what_it_cannot_do() -> None:
    s = synthetic_cluster(services=2, nodes=4, endpoints=10)
    key = min(s.endpoints)
    node = next(iter(s.ready_replicas_per_node(key)))
    with pytest.raises(ValueError, match="no Service"):
        with_scaled_service(s, "nope/nope", node, 1)
    with pytest.raises(ValueError, match="no node"):
        with_scaled_service(s, key, "node-x", 1)
    with pytest.raises(ValueError, match="cannot remove"):
        with_scaled_service(s, key, node, -100)


def test_yaml_round_trip_through_load_cluster_file(tmp_path: Path) -> None:
    s = synthetic_cluster(services=12, nodes=6, endpoints=340, seed=3)
    s = with_scaled_service(s, min(s.services), "node-0", 2)
    text = cluster_to_list_yaml(s)
    assert text.startswith("apiVersion: v1\nitems:\n") and "\nkind: List\n" in text
    f = tmp_path / "cluster.yaml"
    f.write_text(text)
    assert load_cluster_file(f) == s


def test_json_round_trip_and_slices_of_at_most_100(tmp_path: Path) -> None:
    s = synthetic_cluster(services=2, nodes=5, endpoints=500, seed=4)
    doc = cluster_to_list(s)
    slices = [i for i in doc["items"] if i["kind"] == "EndpointSlice"]
    assert [len(i["endpoints"]) for i in slices] == [100, 100, 50, 100, 100, 50]
    f = tmp_path / "cluster.json"
    f.write_text(json.dumps(doc))
    assert load_cluster_file(f) == s


def test_recorded_fixture_round_trips(tmp_path: Path) -> None:
    state = load_cluster_file(RECORDED)
    f = tmp_path / "again.yaml"
    f.write_text(cluster_to_list_yaml(state))
    assert load_cluster_file(f) == state
