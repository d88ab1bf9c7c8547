"""render(config, cluster, previous) -> Snapshot: pure, deterministic, and incremental.

`Renderer` keeps what the last render produced (allocations, per-Service inputs) so that the
next render redoes only the Services whose inputs changed: the controller tells which ones
(`changed=`), or the renderer compares each Service's inputs itself. Either way the output is
byte-identical to a full render from the same previous snapshot; tests hold it to that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..cluster.model import ClusterState, Service, ServicePort
from ..intent.model import LoadBalancerConfig
from ..p4names import IP_PROTOCOLS, REVERSE_NAT
from ..snapshot import Backend, ServiceSnapshot, Snapshot, backend_key, check_service_schema, route_entries
from . import buckets
from .allocate import Exhausted, IntSpace, Pool, VipSpace
from .select import entry_name, node_backends, selection, target_port

log = logging.getLogger(__name__)

MAX_SERVICE_ID = 0xFFFF
MAX_BACKEND_ID = 0xFFFF


@dataclass(frozen=True)
class RenderIssue:
    """A Service the snapshot leaves out or serves partly, and why."""

    service: str | None
    message: str
    severity: str = "warning"  # "error": the Service is not served; "warning": served, note this

    def __str__(self) -> str:
        return f"{self.service}: {self.message}" if self.service else self.message


@dataclass(frozen=True)
class RenderResult:
    snapshot: Snapshot
    issues: tuple[RenderIssue, ...]
    rendered: frozenset[str] = frozenset()  # Service keys whose part was recomputed
    changed: bool = True  # False when the digest equals the previous snapshot's


Connections = Mapping[str, Mapping[str, int]]  # snapshot service name -> backend key -> count


@dataclass
class _KeyState:
    fingerprint: object
    names: tuple[str, ...]  # snapshot service names produced for this Service key
    issues: tuple[RenderIssue, ...]


@dataclass
class _State:
    config: LoadBalancerConfig
    p4info_digest: str
    base: Snapshot | None
    vips: Pool[str]
    service_ids: Pool[int]
    backend_ids: Pool[int]
    services: dict[str, ServiceSnapshot] = field(default_factory=dict)  # by snapshot name
    keys: dict[str, _KeyState] = field(default_factory=dict)  # by Service key
    reverse_owner: dict[tuple, str] = field(default_factory=dict)  # reverse_nat key -> name
    order: list[str] = field(default_factory=list)  # sorted snapshot names
    ordered: list[ServiceSnapshot] = field(default_factory=list)  # services in `order`
    position: dict[str, int] = field(default_factory=dict)  # name -> index in `order`
    issue_keys: set[str] = field(default_factory=set)  # Service keys that have issues
    # Services refused because a value they need is held (a VIP, a service or backend id, a
    # reverse_nat key), by kind of value. They are retried when a render released values of
    # that kind: what blocked them may be free now, though their own inputs did not change.
    retry_keys: dict[str, frozenset[tuple]] = field(default_factory=dict)  # key -> {(kind, value|None)}
    freed: frozenset[tuple] = frozenset()  # (kind, value) and (kind, None) released by the last render
    # reverse_nat keys released in this render -> their previous owner (quarantine, as for ids)
    reverse_released: dict[tuple, str] = field(default_factory=dict)
    blocked: dict[str, set[tuple]] = field(default_factory=dict)  # this render: key -> {(kind, value)}

    def reorder(self) -> None:
        self.order = sorted(self.services)
        self.position = {name: i for i, name in enumerate(self.order)}
        self.ordered = [self.services[name] for name in self.order]


class Renderer:
    """Holds the state that makes the next render incremental. One per LoadBalancerConfig."""

    def __init__(self) -> None:
        self._state: _State | None = None

    def render(
        self,
        config: LoadBalancerConfig,
        cluster: ClusterState,
        previous: Snapshot | None,
        *,
        p4info_digest: str,
        intent_commit: str | None = None,
        connections: Connections | None = None,
        changed: Iterable[str] | None = None,
    ) -> RenderResult:
        st = self._state
        reuse = (
            st is not None
            and st.config == config
            and st.p4info_digest == p4info_digest
            and (st.base is previous or (st.base is not None and previous is not None and st.base.digest == previous.digest))
        )
        if not reuse:
            st = self._state = _fresh_state(config, p4info_digest, previous)
            todo = set(st.keys) | {k for k, s in cluster.services.items() if s.opt_in is not None}
        elif changed is not None:
            todo = set(changed)
        else:
            todo = {k for k in st.keys.keys() | cluster.services.keys() if _fingerprint(cluster, k, connections) != _cached_fp(st, k)}
        assert st is not None
        if st.freed:
            todo |= {k for k, wants in st.retry_keys.items() if wants & st.freed}
        for pool in (st.vips, st.service_ids, st.backend_ids):
            pool.begin_render()
        st.reverse_released.clear()
        st.blocked.clear()
        count_before = len(st.services)
        touched: list[str] = []
        # Services that left go first, so what they held is quarantined before anyone asks for
        # it: the outcome and its message must not depend on how names sort.
        for key in sorted(todo):
            svc = cluster.services.get(key)
            if svc is None or selection(config, svc) is not None:
                touched.extend(_render_key(st, config, cluster, key, connections))
        for key in sorted(todo):
            svc = cluster.services.get(key)
            if svc is not None and selection(config, svc) is None:
                touched.extend(_render_key(st, config, cluster, key, connections))
        # What this render released: each reverse_nat key and VIP by value (a Service waits for
        # one particular value), and each kind as a whole (a Service waits for a full space).
        freed: set[tuple] = {("reverse", k) for k in st.reverse_released}
        freed |= {("vip", v) for v in st.vips.released_values()}
        for kind, pool in (("vip", st.vips), ("service-id", st.service_ids), ("backend-id", st.backend_ids)):
            if pool.released_this_render:
                freed.add((kind, None))
        st.freed = frozenset(freed)
        for pool in (st.vips, st.service_ids, st.backend_ids):
            pool.end_render()
        if len(st.services) != count_before or any(name not in st.position for name in touched):
            st.reorder()
        else:  # same names: swap the new objects in place instead of re-sorting 5,000 names
            for name in touched:
                st.ordered[st.position[name]] = st.services[name]
        snap = Snapshot(
            config=config.key,
            version=1,
            intent_commit=intent_commit,
            cluster_resource_version=cluster.resource_version,
            program=config.switch_config.p4_program,
            p4info_digest=p4info_digest,
            services=tuple(st.ordered),
            global_entries=route_entries(
                (str(r.prefix), r.port, r.next_hop_mac) for r in config.switch_config.routes
            ),
        )
        is_changed = True
        if previous is not None:
            if snap.digest == previous.digest:
                snap, is_changed = previous, False
            else:
                snap = snap.with_version(previous.version + 1)
        st.base = snap
        issues = tuple(i for k in sorted(st.issue_keys) for i in st.keys[k].issues)
        return RenderResult(snap, issues, frozenset(todo), is_changed)


def render(
    config: LoadBalancerConfig,
    cluster: ClusterState,
    previous: Snapshot | None = None,
    *,
    p4info_digest: str,
    intent_commit: str | None = None,
    connections: Connections | None = None,
) -> RenderResult:
    """The pure function of DESIGN.md 4: a full render from scratch (or from `previous`)."""
    return Renderer().render(
        config, cluster, previous, p4info_digest=p4info_digest, intent_commit=intent_commit, connections=connections
    )


# --- internals --------------------------------------------------------------------------------


def _fresh_state(config: LoadBalancerConfig, p4info_digest: str, previous: Snapshot | None) -> _State:
    st = _State(
        config=config,
        p4info_digest=p4info_digest,
        base=previous,
        vips=Pool(VipSpace(config.vip_pools)),
        service_ids=Pool(IntSpace(1, MAX_SERVICE_ID, "service ids")),
        backend_ids=Pool(IntSpace(0, MAX_BACKEND_ID, "backend ids (counter indices)")),
    )
    if previous is not None and previous.config == config.key:
        for svc in previous.services:
            st.services[svc.name] = svc
            st.vips.seed(svc.service_key, svc.vip)
            st.service_ids.seed(svc.name, svc.service_id)
            for b in svc.backends:
                st.backend_ids.seed((svc.name, backend_key(b, svc.backend_mode)), b.backend_id)
            for e in svc.entries().get(REVERSE_NAT, ()):
                st.reverse_owner[e.key] = svc.name
            ks = st.keys.setdefault(svc.service_key, _KeyState(None, (), ()))
            ks.names = ks.names + (svc.name,)
        st.reorder()
    for pool in (st.vips, st.service_ids, st.backend_ids):
        pool.finish_seed()
    return st


def _fingerprint(cluster: ClusterState, key: str, connections: Connections | None) -> object:
    svc = cluster.services.get(key)
    if svc is None:
        return None
    eps = cluster.endpoints.get(key, ())
    nodes = tuple(sorted({(ep.node, getattr(cluster.nodes.get(ep.node), "internal_ip", None)) for ep in eps}))
    conns = None
    if connections:
        conns = tuple(sorted((n, tuple(sorted(c.items()))) for n, c in connections.items() if n.split(":", 1)[0] == key))
    return (svc, eps, nodes, conns)


def _cached_fp(st: _State, key: str) -> object:
    ks = st.keys.get(key)
    return ks.fingerprint if ks is not None else None


def _reserve_vip(st: _State, svc: Service) -> None:
    """Hold the VIP of a fallen-back Service: the one it holds, else its status ingress IP."""
    if st.vips.holds(svc.key) is not None:
        return
    pools: VipSpace = st.vips.space  # type: ignore[assignment]
    for ip in svc.ingress_ips:
        if pools.in_any_pool(ip) and st.vips.take(svc.key, ip):
            return


def _drop_key(st: _State, key: str, keep: set[str], keep_vip: bool = False) -> None:
    """Forget the snapshot services of `key` not in `keep`, releasing what they held."""
    ks = st.keys.get(key)
    if ks is None:
        return
    for name in ks.names:
        if name in keep:
            continue
        old = st.services.pop(name, None)
        st.service_ids.release(name)
        if old is not None:
            for b in old.backends:
                st.backend_ids.release((name, backend_key(b, old.backend_mode)))
            for e in old.entries().get(REVERSE_NAT, ()):
                _release_reverse(st, e.key, name)
    if not keep and not keep_vip:
        st.vips.release(key)


def _set_key(st: _State, key: str, ks: _KeyState | None) -> None:
    if ks is None:
        st.keys.pop(key, None)
    else:
        st.keys[key] = ks
    if ks is not None and ks.issues:
        st.issue_keys.add(key)
    else:
        st.issue_keys.discard(key)
    kinds = st.blocked.get(key)
    if ks is not None and kinds:
        st.retry_keys[key] = frozenset(kinds)
    else:
        st.retry_keys.pop(key, None)


def _block(st: _State, key: str, kind: str, value: object = None) -> None:
    """Record that Service `key` was refused because `value` (None: every value) of `kind` is held."""
    st.blocked.setdefault(key, set()).add((kind, value))


def _release_reverse(st: _State, rkey: tuple, name: str) -> None:
    if st.reverse_owner.get(rkey) == name:
        del st.reverse_owner[rkey]
        st.reverse_released.setdefault(rkey, name)


def _render_key(
    st: _State, config: LoadBalancerConfig, cluster: ClusterState, key: str, connections: Connections | None
) -> list[str]:
    """Re-render one Service; returns the snapshot names it now produces."""
    svc = cluster.services.get(key)
    if svc is None:
        _drop_key(st, key, keep=set())
        _set_key(st, key, None)
        return []
    issues: list[RenderIssue] = []
    fingerprint = _fingerprint(cluster, key, connections)
    skip = selection(config, svc)
    if skip is not None:
        # A Service in p4kube's automatic fallback keeps its VIP: kube-proxy serves it from the
        # Service's status meanwhile, and it comes back to the switches on the same address.
        _drop_key(st, key, keep=set(), keep_vip=svc.auto_fallback)
        if svc.auto_fallback:
            _reserve_vip(st, svc)
        if skip.severity:
            issues.append(RenderIssue(key, skip.reason, skip.severity))
        _set_key(st, key, _KeyState(fingerprint, (), tuple(issues)))
        return []

    vip = _choose_vip(st, svc, issues)
    produced: dict[str, ServiceSnapshot] = {}
    if vip is not None:
        for port in svc.ports:
            snap_svc = _render_port(st, config, cluster, svc, port, vip, connections, issues)
            if snap_svc is not None:
                produced[snap_svc.name] = snap_svc
    # Release what this Service no longer uses, then record what it produces now.
    _drop_key(st, key, keep=set(produced))
    for name, s in produced.items():
        old = st.services.get(name)
        if s != old:
            check_service_schema(s)
        if old is not None:
            now = {backend_key(b, s.backend_mode) for b in s.backends}
            for b in old.backends:
                k = backend_key(b, old.backend_mode)
                if k not in now or old.backend_mode != s.backend_mode:
                    st.backend_ids.release((name, k))
        st.services[name] = s
    _set_key(st, key, _KeyState(fingerprint, tuple(sorted(produced)), tuple(issues)))
    return list(produced)


def _choose_vip(st: _State, svc: Service, issues: list[RenderIssue]) -> str | None:
    """Requested IP, else the one it holds, else its status ingress IP, else the lowest free one."""
    key = svc.key
    requested = svc.load_balancer_ip or (svc.external_ips[0] if svc.type != "LoadBalancer" and svc.external_ips else None)
    pools: VipSpace = st.vips.space  # type: ignore[assignment]
    if requested:
        if svc.type == "LoadBalancer" and not pools.in_any_pool(requested):
            issues.append(RenderIssue(key, f"requested IP {requested} (spec.loadBalancerIP) is outside every vipPool", "error"))
            st.vips.release(key)
            return None
        if not st.vips.take(key, requested):
            holder = st.vips.owner_of.get(requested)
            who = f"Service {holder}" if holder else "a Service removed in this same change (free from the next version)"
            issues.append(RenderIssue(key, f"requested IP {requested} is already in use by {who}", "error"))
            _block(st, key, "vip", requested)
            st.vips.release(key)
            return None
        return requested
    held = st.vips.holds(key)
    if held is not None and pools.in_any_pool(held):
        return held
    if held is not None:
        st.vips.release(key)  # the pool no longer covers it: move to a pool address
    for ip in svc.ingress_ips:
        if pools.in_any_pool(ip) and st.vips.take(key, ip):
            return ip
    try:
        return st.vips.allocate(key)
    except Exhausted as e:
        issues.append(RenderIssue(key, str(e), "error"))
        _block(st, key, "vip")
        return None


def _render_port(
    st: _State,
    config: LoadBalancerConfig,
    cluster: ClusterState,
    svc: Service,
    port: ServicePort,
    vip: str,
    connections: Connections | None,
    issues: list[RenderIssue],
) -> ServiceSnapshot | None:
    name = entry_name(svc, port)
    mode = config.backend_mode
    if port.protocol not in IP_PROTOCOLS:
        issues.append(
            RenderIssue(name, f"protocol {port.protocol}: load_balancer.p4 balances TCP and UDP only; left to kube-proxy", "error")
        )
        return None
    # Backends: key -> (node, address, port, replicas)
    targets: dict[str, tuple[str, str, int, int]] = {}
    if mode == "nodePort":
        if not port.node_port:
            issues.append(RenderIssue(name, "port has no nodePort (nodePort backend mode needs one)", "error"))
            return None
        counts, unusable = node_backends(cluster, svc)
        for node in unusable:
            issues.append(RenderIssue(name, f"node {node} has ready endpoints but no known InternalIP; left out"))
        for node, count in counts.items():
            targets[node] = (node, cluster.nodes[node].internal_ip or "", port.node_port, count)
    else:
        for ep in cluster.endpoints.get(svc.key, ()):
            tp = target_port(port, ep)
            if tp is None:
                issues.append(RenderIssue(name, f"endpoint {ep.address} has no port named {port.name!r}; left out"))
                continue
            targets[ep.address] = (ep.node, ep.address, tp, 1)
    sid_before = st.service_ids.holds(name)
    try:
        service_id = st.service_ids.allocate(name)
    except Exhausted as e:
        issues.append(RenderIssue(name, str(e), "error"))
        _block(st, svc.key, "service-id")
        return None
    proto = IP_PROTOCOLS[port.protocol]
    # reverse_nat keys are shared by all Services: the first holder keeps a contested key.
    for k, (_, address, tport, _) in list(targets.items()):
        rkey = (address, tport, proto)
        owner = st.reverse_owner.get(rkey)
        if owner is None and st.reverse_released.get(rkey, name) != name:
            owner = f"{st.reverse_released[rkey]} until the next version"
        if owner is not None and owner != name:
            issues.append(RenderIssue(name, f"backend {address}:{tport}/{port.protocol} already serves {owner}; left out", "error"))
            _block(st, svc.key, "reverse", rkey)
            del targets[k]
    old = st.services.get(name)
    bucket_count = config.buckets_per_service
    previous_assignment = old.assignment if old is not None and old.bucket_count == bucket_count else None
    replicas = {k: t[3] for k, t in sorted(targets.items())}
    # least-connections always records its input (0 when the switch reported nothing), so a
    # Service's output never depends on whether other Services had connection counts.
    conns = dict((connections or {}).get(name, {})) if config.algorithm == "least-connections" else None
    try:
        assignment = buckets.assign(config.algorithm, bucket_count, replicas, previous_assignment, conns)
    except ValueError as e:
        if sid_before is None:
            st.service_ids.release(name)
        issues.append(RenderIssue(name, str(e), "error"))
        return None
    counts: dict[str | None, int] = {}
    for k in assignment:
        counts[k] = counts.get(k, 0) + 1
    backends = []
    for k in sorted(targets, key=lambda k: (targets[k][0], targets[k][1])):
        node, address, tport, reps = targets[k]
        try:
            bid = st.backend_ids.allocate((name, k))
        except Exhausted as e:
            issues.append(RenderIssue(name, str(e), "error"))
            _block(st, svc.key, "backend-id")
            return None
        backends.append(
            Backend(
                node=node,
                address=address,
                port=tport,
                replicas=reps,
                buckets=counts.get(k, 0),
                backend_id=bid,
                active_connections=(conns or {}).get(k, 0) if conns is not None else None,
            )
        )
    if not targets:
        issues.append(RenderIssue(name, "no ready endpoints: VIP left to kube-proxy until replicas are ready"))
    now = {(address, tport, proto) for _, address, tport, _ in targets.values()}
    if old is not None:
        for e in old.entries().get(REVERSE_NAT, ()):
            if e.key not in now:
                _release_reverse(st, e.key, name)
    for k in now:
        st.reverse_owner[k] = name
    return ServiceSnapshot(
        name=name,
        service_id=service_id,
        vip=vip,
        port=port.port,
        protocol=port.protocol,
        algorithm=config.algorithm,
        bucket_count=bucket_count,
        backend_mode=mode,
        backends=tuple(backends),
        assignment=assignment if targets else (None,) * bucket_count,
    )


def issues_by_service(issues: Iterable[RenderIssue]) -> dict[str | None, list[RenderIssue]]:
    out: dict[str | None, list[RenderIssue]] = {}
    for i in issues:
        out.setdefault(i.service, []).append(i)
    return out


__all__ = ["Renderer", "RenderResult", "RenderIssue", "render"]
