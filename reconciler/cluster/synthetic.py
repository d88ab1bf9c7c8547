"""Synthetic cluster states for benchmarks and tests, built directly as model objects.

`synthetic_cluster` is deterministic for a seed: same arguments, equal states. Every Service
opts in, is of type LoadBalancer and has one TCP port. NodePorts are taken cyclically from the
default 30000-32767 range, which holds only 2768 ports, so with more Services than that they
repeat; the benchmarks do not need them unique (a real cluster could not have that many
NodePort Services, which is one reason podIP mode exists).
"""

from __future__ import annotations

import io
import random
from dataclasses import replace
from operator import attrgetter
from typing import Any

from ruamel.yaml import YAML

from reconciler.cluster.model import (
    ENDPOINTSLICE_CONTROLLER,
    MANAGED_BY_LABEL,
    OPT_IN_ANNOTATION,
    SERVICE_NAME_LABEL,
    ClusterState,
    Endpoint,
    Node,
    Service,
    ServicePort,
)

NODE_PORT_MIN, NODE_PORT_MAX = 30000, 32767
SERVICE_PORT, TARGET_PORT = 80, 8080
NAMESPACES = 50
NODES_PER_SERVICE = (3, 8)
MAX_ENDPOINTS_PER_SLICE = 100  # the EndpointSlice controller's default
_POD_NET = 100 << 24 | 64 << 16  # 100.64.0.0/10 for pod IPs: 4M addresses
_SCALED_NET = 198 << 24 | 18 << 16  # 198.18.0.0/15 for endpoints added by with_scaled_service


def _ip(n: int) -> str:
    return f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def _node_ip(i: int) -> str:
    # 10.a.b.c with c in 1..254, so no node gets a network or broadcast-looking address.
    return f"10.{i // (254 * 256) % 256}.{i // 254 % 256}.{i % 254 + 1}"


def synthetic_cluster(
    services: int = 5000, nodes: int = 1000, endpoints: int = 50000, seed: int = 1
) -> ClusterState:
    """A cluster of opted-in LoadBalancer Services whose endpoints sit on 3 to 8 nodes each."""
    if services < 0 or nodes < 1 or endpoints < 0:
        raise ValueError("need services >= 0, nodes >= 1 and endpoints >= 0")
    if endpoints >= 1 << 22:
        raise ValueError("at most 4,194,303 endpoints (pod IPs come from 100.64.0.0/10)")
    rng = random.Random(seed)
    nwidth, swidth = len(str(nodes - 1)), len(str(max(services - 1, 0)))
    node_names = [f"node-{i:0{nwidth}d}" for i in range(nodes)]
    node_map = {name: Node(name=name, internal_ip=_node_ip(i)) for i, name in enumerate(node_names)}
    annotations = ((OPT_IN_ANNOTATION, "enabled"),)
    node_port_span = NODE_PORT_MAX - NODE_PORT_MIN + 1
    ep_ports = (("", TARGET_PORT),)

    svc_map: dict[str, Service] = {}
    ep_map: dict[str, tuple[Endpoint, ...]] = {}
    base, extra = divmod(endpoints, services) if services else (0, 0)
    next_pod = 1
    for i in range(services):
        svc = Service(
            namespace=f"ns-{i % NAMESPACES:02d}",
            name=f"svc-{i:0{swidth}d}",
            type="LoadBalancer",
            ports=(
                ServicePort(
                    name="",
                    port=SERVICE_PORT,
                    protocol="TCP",
                    target_port=TARGET_PORT,
                    node_port=NODE_PORT_MIN + i % node_port_span,
                ),
            ),
            annotations=annotations,
            resource_version=str(i + 1),
            external_traffic_policy="Local",  # what nodePort mode needs: benchmarks carry no warnings
        )
        svc_map[svc.key] = svc
        count = base + (1 if i < extra else 0)
        if count == 0:
            continue
        k = min(rng.randint(*NODES_PER_SERVICE), nodes)
        chosen = [node_names[j] for j in rng.sample(range(nodes), k)]
        placed = rng.choices(chosen, k=count)
        eps = [
            Endpoint(
                address=_ip(_POD_NET + next_pod + n),
                node=node,
                ports=ep_ports,
                pod=f"{svc.name}-{n}",
            )
            for n, node in enumerate(placed)
        ]
        next_pod += count
        ep_map[svc.key] = tuple(sorted(eps, key=attrgetter("address")))
    return ClusterState(services=svc_map, endpoints=ep_map, nodes=node_map, resource_version="1")


def with_scaled_service(state: ClusterState, service_key: str, node: str, delta: int) -> ClusterState:
    """A new state in which one Service has `delta` more (or fewer) ready endpoints on `node`.

    Every other Service, Endpoint and Node object is shared with `state`; the cost is the
    Service's own endpoints plus a shallow copy of the endpoints dict (pointers only). Added
    endpoints get addresses from 198.18.0.0/15, unique within the Service; removal takes the
    node's endpoints with the highest addresses. A numeric resource_version is incremented.
    """
    if service_key not in state.services:
        raise ValueError(f"no Service {service_key} in the cluster state")
    if node not in state.nodes:
        raise ValueError(f"no node {node} in the cluster state")
    current = state.endpoints.get(service_key, ())
    if delta >= 0:
        used = {ep.address for ep in current}
        ports = current[0].ports if current else _endpoint_ports(state.services[service_key])
        added: list[Endpoint] = []
        n = 1
        while len(added) < delta:
            address = _ip(_SCALED_NET + n)
            if address not in used:
                added.append(Endpoint(address, node, ports, f"{state.services[service_key].name}-scaled-{n}"))
            n += 1
        new = tuple(sorted(current + tuple(added), key=attrgetter("address")))
    else:
        on_node = [ep for ep in current if ep.node == node]
        if len(on_node) < -delta:
            raise ValueError(
                f"Service {service_key} has {len(on_node)} endpoint(s) on node {node}; cannot remove {-delta}"
            )
        drop = {id(ep) for ep in on_node[delta:]}
        new = tuple(ep for ep in current if id(ep) not in drop)
    endpoints = dict(state.endpoints)
    if new:
        endpoints[service_key] = new
    else:
        endpoints.pop(service_key, None)
    rv = state.resource_version
    return replace(
        state,
        endpoints=endpoints,
        resource_version=str(int(rv) + 1) if rv is not None and rv.isdigit() else rv,
    )


def _endpoint_ports(svc: Service) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((p.name, p.target_port) for p in svc.ports if isinstance(p.target_port, int)))


# --- writing a kubectl-style List -----------------------------------------------------------------


def cluster_to_list(state: ClusterState) -> dict[str, Any]:
    """The state as `kubectl get services,endpointslices,nodes -A -o json` would print it.

    Only the fields the model keeps are written. load_cluster_file reads it back to an equal
    state when the state has no issues (issues are findings about objects, not objects) and its
    endpoints' ports are sorted, as the reader makes them. Endpoints are written in slices of at
    most 100, grouped by their ports, as the EndpointSlice controller does.
    """
    items: list[dict[str, Any]] = [_service_dict(s) for _, s in sorted(state.services.items())]
    for key in sorted(state.endpoints):
        svc = state.services.get(key)
        if svc is not None:
            items.extend(_slice_dicts(svc, state.endpoints[key]))
    items.extend(_node_dict(n) for _, n in sorted(state.nodes.items()))
    return {
        "apiVersion": "v1",
        "items": items,
        "kind": "List",
        "metadata": {"resourceVersion": state.resource_version or ""},
    }


def cluster_to_list_yaml(state: ClusterState) -> str:
    """cluster_to_list as YAML; meant for small clusters (tests, the demo): the emitter is slow."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(cluster_to_list(state), out)
    return out.getvalue()


def _service_dict(svc: Service) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": svc.name, "namespace": svc.namespace}
    if svc.annotations:
        meta["annotations"] = dict(svc.annotations)
    if svc.labels:
        meta["labels"] = dict(svc.labels)
    if svc.resource_version:
        meta["resourceVersion"] = svc.resource_version
    ports = []
    for p in svc.ports:
        port: dict[str, Any] = {"port": p.port, "protocol": p.protocol}
        if p.name:
            port["name"] = p.name
        if p.target_port is not None:
            port["targetPort"] = p.target_port
        if p.node_port is not None:
            port["nodePort"] = p.node_port
        ports.append(port)
    spec: dict[str, Any] = {"ports": ports, "type": svc.type}
    if svc.load_balancer_ip:
        spec["loadBalancerIP"] = svc.load_balancer_ip
    if svc.load_balancer_class:
        spec["loadBalancerClass"] = svc.load_balancer_class
    if svc.external_ips:
        spec["externalIPs"] = list(svc.external_ips)
    if svc.external_traffic_policy != "Cluster":
        spec["externalTrafficPolicy"] = svc.external_traffic_policy
    lb: dict[str, Any] = {"ingress": [{"ip": ip} for ip in svc.ingress_ips]} if svc.ingress_ips else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": spec,
        "status": {"loadBalancer": lb},
    }


def _slice_dicts(svc: Service, endpoints: tuple[Endpoint, ...]) -> list[dict[str, Any]]:
    protocols = {p.name: p.protocol for p in svc.ports}
    groups: dict[tuple[tuple[str, int], ...], list[Endpoint]] = {}
    for ep in endpoints:
        groups.setdefault(ep.ports, []).append(ep)
    out: list[dict[str, Any]] = []
    for ports, eps in sorted(groups.items()):
        for start in range(0, len(eps), MAX_ENDPOINTS_PER_SLICE):
            out.append(
                {
                    "addressType": "IPv4",
                    "apiVersion": "discovery.k8s.io/v1",
                    "endpoints": [
                        _endpoint_dict(svc, ep) for ep in eps[start : start + MAX_ENDPOINTS_PER_SLICE]
                    ],
                    "kind": "EndpointSlice",
                    "metadata": {
                        # as the EndpointSlice controller labels its own (podIP mode trusts only those)
                        "labels": {SERVICE_NAME_LABEL: svc.name, MANAGED_BY_LABEL: ENDPOINTSLICE_CONTROLLER},
                        "name": f"{svc.name}-{len(out)}",
                        "namespace": svc.namespace,
                    },
                    "ports": [
                        {"name": name, "port": port, "protocol": protocols.get(name, "TCP")}
                        for name, port in ports
                    ],
                }
            )
    return out


def _endpoint_dict(svc: Service, ep: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {
        "addresses": [ep.address],
        "conditions": {"ready": True, "serving": True, "terminating": False},
        "nodeName": ep.node,
    }
    if ep.pod is not None:
        out["targetRef"] = {"kind": "Pod", "name": ep.pod, "namespace": svc.namespace}
    return out


def _node_dict(node: Node) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [{"status": "True" if node.ready else "False", "type": "Ready"}],
    }
    if node.internal_ip is not None:
        status["addresses"] = [{"address": node.internal_ip, "type": "InternalIP"}]
    out: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name},
        "status": status,
    }
    if node.unschedulable:
        out["spec"] = {"unschedulable": True}
    return out
