"""Builders for small LoadBalancerConfigs, cluster states and table simulations used by the
snapshot, render, diff and plan tests. Everything here builds model objects directly (no I/O)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Iterable, Mapping, Sequence

from reconciler import p4names as n
from reconciler.cluster.model import OPT_IN_ANNOTATION, ClusterState, Endpoint, Node, Service, ServicePort
from reconciler.diff import PHASE_NAMES, SnapshotDiff
from reconciler.intent.model import LoadBalancerConfig, ServiceSelector, VipPool
from reconciler.p4info import load_p4info, p4info_digest
from reconciler.render import RenderResult, render
from reconciler.snapshot import Entry, Snapshot

P4INFO_DIGEST = p4info_digest(load_p4info())
POOL_FIRST = "203.0.113.10"


def pool(first: str = POOL_FIRST, size: int = 16, name: str = "test") -> VipPool:
    lo = ipaddress.IPv4Address(first)
    return VipPool(name=name, ranges=((lo, lo + (size - 1)),))


def make_config(
    *,
    algorithm: str = "replica-weighted",
    buckets: int = 64,
    backend_mode: str = "nodePort",
    pool_size: int = 16,
    namespaces: Sequence[str] = (),
    vip_pools: tuple[VipPool, ...] | None = None,
) -> LoadBalancerConfig:
    return LoadBalancerConfig(
        namespace="p4kube-system",
        name="test-config",
        algorithm=algorithm,
        buckets_per_service=buckets,
        backend_mode=backend_mode,  # type: ignore[arg-type]
        vip_pools=vip_pools if vip_pools is not None else (pool(size=pool_size),),
        service_selector=ServiceSelector(namespaces=tuple(namespaces)),
    )


def node_ip(i: int) -> str:
    return f"10.1.0.{i + 1}"


def make_nodes(count: int) -> dict[str, Node]:
    return {f"node-{i}": Node(f"node-{i}", node_ip(i)) for i in range(count)}


def make_service(
    name: str,
    *,
    namespace: str = "default",
    opt_in: str | None = "enabled",
    type: str = "LoadBalancer",
    ports: Sequence[tuple[str, int, str]] = (("", 80, "TCP"),),
    node_port_base: int = 30000,
    load_balancer_ip: str | None = None,
    external_ips: Sequence[str] = (),
    target_port: int = 8080,
) -> Service:
    """ports: (name, port, protocol); nodePorts are node_port_base + index."""
    return Service(
        namespace=namespace,
        name=name,
        type=type,
        ports=tuple(
            ServicePort(pname, port, proto, target_port=target_port, node_port=node_port_base + i)
            for i, (pname, port, proto) in enumerate(ports)
        ),
        annotations=((OPT_IN_ANNOTATION, opt_in),) if opt_in is not None else (),
        load_balancer_ip=load_balancer_ip,
        external_ips=tuple(external_ips),
    )


def endpoints_for(
    svc: Service, per_node: Mapping[str, int], *, ip_base: int, port_numbers: Mapping[str, int] | None = None
) -> tuple[Endpoint, ...]:
    """`per_node` ready endpoints with unique pod addresses 100.64.x.y starting at ip_base."""
    ports = tuple(sorted((port_numbers or {p.name: 8080 for p in svc.ports}).items()))
    eps = []
    i = ip_base
    for node, count in sorted(per_node.items()):
        for _ in range(count):
            eps.append(Endpoint(str(ipaddress.IPv4Address("100.64.0.0") + i), node, ports, f"{svc.name}-{i}"))
            i += 1
    return tuple(sorted(eps, key=lambda e: ipaddress.IPv4Address(e.address)))


def make_cluster(
    services: Mapping[Service, Mapping[str, int]], nodes: int | Mapping[str, Node] = 4, resource_version: str = "1"
) -> ClusterState:
    """Services with their ready replicas per node; pod addresses are unique cluster-wide."""
    node_map = make_nodes(nodes) if isinstance(nodes, int) else dict(nodes)
    svc_map: dict[str, Service] = {}
    ep_map: dict[str, tuple[Endpoint, ...]] = {}
    for i, (svc, per_node) in enumerate(services.items()):
        svc_map[svc.key] = svc
        eps = endpoints_for(svc, per_node, ip_base=1 + 1000 * i)
        if eps:
            ep_map[svc.key] = eps
    return ClusterState(services=svc_map, endpoints=ep_map, nodes=node_map, resource_version=resource_version)


def with_service(state: ClusterState, svc: Service, per_node: Mapping[str, int], ip_base: int) -> ClusterState:
    services = dict(state.services)
    services[svc.key] = svc
    endpoints = dict(state.endpoints)
    eps = endpoints_for(svc, per_node, ip_base=ip_base)
    if eps:
        endpoints[svc.key] = eps
    else:
        endpoints.pop(svc.key, None)
    return replace(state, services=services, endpoints=endpoints)


def without_service(state: ClusterState, key: str) -> ClusterState:
    services = {k: v for k, v in state.services.items() if k != key}
    endpoints = {k: v for k, v in state.endpoints.items() if k != key}
    return replace(state, services=services, endpoints=endpoints)


def without_node(state: ClusterState, node: str) -> tuple[ClusterState, set[str]]:
    """The node and its endpoints gone; also returns the Service keys that lost endpoints."""
    touched = set()
    endpoints = {}
    for key, eps in state.endpoints.items():
        kept = tuple(e for e in eps if e.node != node)
        if len(kept) != len(eps):
            touched.add(key)
        if kept:
            endpoints[key] = kept
    nodes = {k: v for k, v in state.nodes.items() if k != node}
    return replace(state, endpoints=endpoints, nodes=nodes), touched


def do_render(
    config: LoadBalancerConfig, cluster: ClusterState, previous: Snapshot | None = None, **kw: object
) -> RenderResult:
    return render(config, cluster, previous, p4info_digest=P4INFO_DIGEST, **kw)  # type: ignore[arg-type]


def entry_set(snap: Snapshot | None) -> set[tuple]:
    if snap is None:
        return set()
    return {(e.table, e.key, e.action, e.args) for es in snap.tables().values() for e in es}


def entries_by_key(snap: Snapshot | None) -> dict[tuple, Entry]:
    if snap is None:
        return {}
    return {(e.table, e.key): e for es in snap.tables().values() for e in es}


def apply_diff(start: Mapping[tuple, Entry], diff: SnapshotDiff, *, check_consistency: bool = True) -> dict[tuple, Entry]:
    """Apply a diff phase by phase to a simulated switch keyed by (table, key), as P4Runtime would.

    Raises AssertionError on an INSERT of an existing key, a MODIFY/DELETE of a missing one, a
    DELETE whose entry differs from what the switch holds, or (check_consistency) when after any
    phase a vip_table entry points at buckets that are missing or belong to another Service.
    """
    assert len(diff.phases) == len(PHASE_NAMES)
    switch = dict(start)
    for phase_no, phase in enumerate(diff.phases):
        keys = [(u.entry.table, u.entry.key) for u in phase]
        assert len(keys) == len(set(keys)), f"phase {PHASE_NAMES[phase_no]} writes one key twice"
        for u in phase:
            k = (u.entry.table, u.entry.key)
            if u.kind == "INSERT":
                assert k not in switch, f"INSERT of existing {k} in phase {PHASE_NAMES[phase_no]}"
                switch[k] = u.entry
            elif u.kind == "MODIFY":
                assert k in switch, f"MODIFY of missing {k} in phase {PHASE_NAMES[phase_no]}"
                switch[k] = u.entry
            else:
                assert switch.get(k) == u.entry, f"DELETE of {k}: switch holds {switch.get(k)}, diff says {u.entry}"
                del switch[k]
        if check_consistency:
            problems = vip_consistency(switch)
            assert not problems, f"after phase {phase_no} ({PHASE_NAMES[phase_no]}): " + "; ".join(problems[:5])
    return switch


def vip_consistency(switch: Mapping[tuple, Entry]) -> list[str]:
    """Every vip_table entry's buckets (0..mask) exist and belong to the same Service."""
    problems = []
    for (table, key), e in switch.items():
        if table != n.VIP_TABLE:
            continue
        sid, mask = e.args
        for bucket in range(int(mask) + 1):
            b = switch.get((n.BACKEND_TABLE, (sid, bucket)))
            if b is None:
                problems.append(f"VIP {key} of {e.service} -> service id {sid} bucket {bucket}: no backend entry")
                break
            if b.service != e.service:
                problems.append(
                    f"VIP {key} of {e.service} -> service id {sid} bucket {bucket} holds {b.service}'s backend"
                )
                break
    return problems


def as_switch(entries: Iterable[Entry]) -> dict[tuple, Entry]:
    return {(e.table, e.key): e for e in entries}
