"""Builders for small LoadBalancerConfigs, cluster states and table simulations used by the
snapshot, render, diff and plan tests. Everything here builds model objects directly (no I/O)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Mapping, Sequence

from reconciler import p4names as n
from reconciler.cluster.model import OPT_IN_ANNOTATION, ClusterState, Endpoint, Node, Service, ServicePort
from reconciler.diff import PHASE_NAMES, SnapshotDiff
from reconciler.intent.model import LoadBalancerConfig, ServiceSelector, VipPool
from reconciler.p4info import load_p4info, p4info_digest
from reconciler.render import RenderResult, render
from reconciler.snapshot import Snapshot

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
    external_traffic_policy: str = "Local",
    annotations: Sequence[tuple[str, str]] = (),
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
        annotations=tuple(sorted((((OPT_IN_ANNOTATION, opt_in),) if opt_in is not None else ()) + tuple(annotations))),
        load_balancer_ip=load_balancer_ip,
        external_ips=tuple(external_ips),
        external_traffic_policy=external_traffic_policy,
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


Content = tuple  # (action, args): what a switch holds at a key; `service` is snapshot metadata


def switch_of(snap: Snapshot | None) -> dict[tuple, Content]:
    """What a switch holding `snap` holds: (table, key) -> (action, args)."""
    if snap is None:
        return {}
    return {(e.table, e.key): (e.action, e.args) for es in snap.tables().values() for e in es}


def apply_diff(old: Snapshot | None, new: Snapshot, diff: SnapshotDiff) -> dict[tuple, Content]:
    """Apply `diff` phase by phase to a simulated switch that holds `old`; returns what it holds.

    Fails on an INSERT of a key the switch holds, a MODIFY or DELETE of one it does not, a DELETE
    of other content, a key written twice in one phase, and on any VIP that, in any state a phase
    can pass through (P4Runtime applies a phase's updates in any order), points at a missing
    bucket or at buckets of two Services (see `vip_problems`).
    """
    assert len(diff.phases) == len(PHASE_NAMES)
    switch = switch_of(old)
    owners = _Owners(old, new)
    for phase_no, phase in enumerate(diff.phases):
        where = f"phase {phase_no} ({PHASE_NAMES[phase_no]})"
        keys = [(u.entry.table, u.entry.key) for u in phase]
        assert len(keys) == len(set(keys)), f"{where} writes one key twice"
        before = dict(switch)
        for u in phase:
            k = (u.entry.table, u.entry.key)
            content = (u.entry.action, u.entry.args)
            if u.kind == "INSERT":
                assert k not in switch, f"{where}: INSERT of {k}, which the switch holds"
                switch[k] = content
            elif u.kind == "MODIFY":
                assert k in switch, f"{where}: MODIFY of {k}, which the switch does not hold"
                switch[k] = content
            else:
                assert switch.get(k) == content, f"{where}: DELETE of {k}: switch holds {switch.get(k)}, diff says {content}"
                del switch[k]
        problems = vip_problems(before, switch, set(keys), owners)
        assert not problems, f"{where}: " + "; ".join(problems[:4])
    return switch


class _Owners:
    """Which Service an entry's content belongs to, in the old or the new snapshot."""

    def __init__(self, old: Snapshot | None, new: Snapshot) -> None:
        self.by_content: dict[tuple, set[str]] = {}
        self.allowed: dict[tuple[str, tuple], set[Content]] = {}  # (service, key) -> contents
        # A Service port renamed between old and new (ns/web -> ns/web:http when a port is
        # added) is one owner: its old entries count as the new name's.
        alias: dict[str, str] = {}
        if old is not None:
            new_names = {(s.service_key, s.port, s.protocol): s.name for s in new.services}
            for s in old.services:
                alias[s.name] = new_names.get((s.service_key, s.port, s.protocol), s.name)
        for snap in (old, new):
            if snap is None:
                continue
            for es in snap.tables().values():
                for e in es:
                    k = (e.table, e.key)
                    if e.service is None:
                        continue
                    owner = alias.get(e.service, e.service) if snap is old else e.service
                    self.by_content.setdefault((k, (e.action, e.args)), set()).add(owner)
                    self.allowed.setdefault((owner, k), set()).add((e.action, e.args))

    def of(self, key: tuple, content: Content) -> set[str]:
        return self.by_content.get((key, content), set())

    def belongs(self, service: str, key: tuple, content: Content) -> bool:
        return content in self.allowed.get((service, key), set())


def vip_problems(
    before: Mapping[tuple, Content], after: Mapping[tuple, Content], written: set[tuple], owners: _Owners
) -> list[str]:
    """Problems with the VIPs during one phase that took the switch from `before` to `after`.

    A VIP written in the phase may take effect before any other write of the phase, so the
    buckets it points at must not be written in the same phase. A VIP live during the phase
    must, in every state it is live in, see all its buckets, each holding content of one and
    the same Service (that Service's old or new content: a changing Service may mix the two).
    """
    problems = []
    vip_keys = {k for k in before.keys() | after.keys() if k[0] == n.VIP_TABLE}
    for k in sorted(vip_keys, key=str):
        states = [(name, st[k]) for name, st in (("before", before), ("after", after)) if k in st]
        vip_written = k in written
        for content in {c for _, c in states}:
            live_in = [st for name, st in (("before", before), ("after", after)) if st.get(k) == content]
            sid, mask = content[1]
            candidates = owners.of(k, content)
            bucket_contents: dict[tuple, set[Content | None]] = {}
            for bucket in range(int(mask) + 1):
                bk = (n.BACKEND_TABLE, (sid, bucket))
                seen = {st.get(bk) for st in live_in}
                if vip_written and bk in written:
                    problems.append(f"VIP {k[1]} is written in the same phase as its bucket {bk[1]}")
                    break
                bucket_contents[bk] = seen
            if any(None in seen for seen in bucket_contents.values()):
                missing = next(bk for bk, seen in bucket_contents.items() if None in seen)
                problems.append(f"VIP {k[1]} -> service id {sid}: bucket {missing[1][1]} missing")
                continue
            if not any(
                all(owners.belongs(x, bk, c) for bk, seen in bucket_contents.items() for c in seen) for x in candidates
            ):
                held = sorted({x for bk, seen in bucket_contents.items() for c in seen for x in owners.of(bk, c)})
                problems.append(
                    f"VIP {k[1]} (owned by {sorted(candidates)} in old/new) -> service id {sid}: in this phase its "
                    f"buckets hold a mix of {held}'s content"
                )
    return problems
