"""Properties of render over random small clusters and random change sequences (hypothesis).

For each step the incremental Renderer (told which Service keys changed, and a second one left
to find out itself) must give byte-identical output to a fresh full render from the same
previous snapshot; the diff between consecutive snapshots must turn one entry set into the
other exactly, never pointing a VIP at missing or foreign buckets between phases; and
replica-weighted assignments must move only the buckets the new shares force to move.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from collections import Counter
from dataclasses import dataclass, field, replace

from helpers_render import (
    P4INFO_DIGEST,
    POOL_FIRST,
    apply_diff,
    do_render,
    endpoints_for,
    make_config,
    make_service,
    node_ip,
    switch_of,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reconciler.cluster.model import OPT_IN_ANNOTATION, ClusterState, Node, Service
from reconciler.diff import diff_snapshots
from reconciler.intent.model import LoadBalancerConfig
from reconciler.render import Renderer, RenderIssue
from reconciler.snapshot import Snapshot, backend_key, from_document, schema_errors

# Examples take milliseconds; no deadline so a loaded CI machine cannot flake them.
# P4KUBE_PROPS_EXAMPLES=1500 for a longer search than every run's.
props = settings(max_examples=int(os.environ.get("P4KUBE_PROPS_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

replicas_st = st.dictionaries(st.integers(0, 5), st.integers(0, 3), max_size=4)  # node index -> replicas
topology_ops = [
    st.tuples(st.just("scale"), st.integers(0, 20), st.integers(0, 20), st.integers(0, 4)),
    st.tuples(st.just("add_service"), replicas_st),
    st.tuples(st.just("remove_service"), st.integers(0, 20)),
    st.tuples(st.just("add_node"), st.integers(0, 20), st.integers(1, 3)),
    st.tuples(st.just("remove_node"), st.integers(0, 20)),
]
# Errors a person or the cluster can cause on one Service, and their fixes: an error must never
# take a Service that the previous snapshot has off the switches (DESIGN.md 6.1).
FAULTS = ("outside", "taken", "optin", "noport", "clash")
error_ops = [
    st.tuples(st.just("break"), st.integers(0, 20), st.sampled_from(FAULTS)),
    st.tuples(st.just("fix"), st.integers(0, 20)),
    st.tuples(st.just("ports"), st.integers(0, 20), st.integers(1, 3)),
]
connections_op = st.tuples(
    st.just("connections"), st.integers(0, 20), st.dictionaries(st.integers(0, 5), st.integers(0, 40), max_size=3)
)


@dataclass
class Model:
    """The cluster as test data: Service name -> replicas per node; turned into a ClusterState."""

    nodes: list[str]
    services: dict[str, dict[str, int]]
    next_node: int = 0
    next_service: int = 0
    connections: dict[str, dict[str, int]] = field(default_factory=dict)
    backend_mode: str = "nodePort"
    faults: dict[str, str] = field(default_factory=dict)  # Service name -> one of FAULTS
    ports: dict[str, int] = field(default_factory=dict)  # Service name -> port count (default 1)

    def add_service(self, per_node: dict[int, int]) -> str:
        name = f"svc-{self.next_service}"
        self.next_service += 1
        self.services[name] = {self.nodes[i % len(self.nodes)]: r for i, r in per_node.items() if r} if self.nodes else {}
        return f"default/{name}"

    def add_node(self) -> str:
        node = f"node-{self.next_node}"
        self.next_node += 1
        self.nodes.append(node)
        return node

    def state(self, rv: int) -> ClusterState:
        services, endpoints = {}, {}
        for name, per_node in self.services.items():
            index = int(name.split("-")[1])
            svc = self.service(name, index)
            services[svc.key] = svc
            eps = endpoints_for(svc, per_node, ip_base=1 + 1000 * index)
            if eps:
                endpoints[svc.key] = eps
        nodes = {n: Node(n, node_ip(int(n.split("-")[1]))) for n in self.nodes}
        return ClusterState(services=services, endpoints=endpoints, nodes=nodes, resource_version=str(rv))

    def service(self, name: str, index: int) -> Service:
        ports = (("", 80, "TCP"),) if self.ports.get(name, 1) == 1 else tuple(
            (f"p{port}", port, proto) for port, proto in ((80, "TCP"), (53, "UDP"), (443, "TCP"))[: self.ports[name]]
        )
        fault = self.faults.get(name)
        svc = make_service(
            name,
            ports=ports,
            node_port_base=30000 + (0 if fault == "clash" else 10 * index),  # "clash": svc-0's nodePorts
            load_balancer_ip={"outside": "192.0.2.1", "taken": POOL_FIRST}.get(fault or ""),
        )
        if fault == "optin":
            svc = replace(svc, annotations=((OPT_IN_ANNOTATION, "Enabled"),))
        if fault == "noport":
            svc = replace(svc, ports=tuple(replace(p, node_port=None) for p in svc.ports))
        return svc

    def apply(self, op: tuple) -> set[str]:
        """Apply one change; returns the Service keys it touched."""
        kind = op[0]
        names = sorted(self.services)
        if kind == "scale" and names and self.nodes:
            name, node = names[op[1] % len(names)], self.nodes[op[2] % len(self.nodes)]
            per_node = dict(self.services[name])
            per_node[node] = op[3]
            self.services[name] = {k: v for k, v in per_node.items() if v}
            return {f"default/{name}"}
        if kind == "add_service":
            return {self.add_service(op[1])}
        if kind == "remove_service" and names:
            name = names[op[1] % len(names)]
            del self.services[name]
            self.connections.pop(f"default/{name}", None)
            self.faults.pop(name, None)
            self.ports.pop(name, None)
            return {f"default/{name}"}
        if kind == "add_node":
            node = self.add_node()
            if not names:
                return set()
            name = names[op[1] % len(names)]
            self.services[name] = {**self.services[name], node: op[2]}
            return {f"default/{name}"}
        if kind == "remove_node" and len(self.nodes) > 1:
            node = self.nodes.pop(op[1] % len(self.nodes))
            touched = set()
            for name, per_node in self.services.items():
                if node in per_node:
                    del per_node[node]
                    touched.add(f"default/{name}")
            for key, conns in self.connections.items():
                if conns.pop(node, None) is not None:
                    touched.add(key)
            return touched
        if kind in ("break", "fix", "ports") and names:
            name = names[op[1] % len(names)]
            if kind == "break":
                self.faults[name] = op[2]
            elif kind == "fix":
                self.faults.pop(name, None)
            else:
                self.ports[name] = op[2]
            return {f"default/{name}"}
        if kind == "connections" and names:
            key = f"default/{names[op[1] % len(names)]}"
            new = {self.nodes[i % len(self.nodes)]: c for i, c in op[2].items()} if self.nodes else {}
            old = self.connections.get(key, {})
            if new:
                self.connections[key] = new
            else:
                self.connections.pop(key, None)
            return {key} if new != old else set()
        return set()


@st.composite
def scenarios(
    draw: st.DrawFn, pool_size: int = 64, connections: bool = False, errors: bool = False
) -> tuple[LoadBalancerConfig, Model, list[tuple]]:
    if connections:
        algorithm, mode = "least-connections", "nodePort"
    else:
        algorithm = draw(st.sampled_from(["replica-weighted", "least-connections", "round-robin"]))
        mode = draw(st.sampled_from(["nodePort", "podIP"]))
    buckets = draw(st.sampled_from([1, 4, 8, 16]))
    config = make_config(algorithm=algorithm, buckets=buckets, backend_mode=mode, pool_size=pool_size)
    model = Model(nodes=[], services={}, backend_mode=mode)
    for _ in range(draw(st.integers(1, 5))):
        model.add_node()
    for per_node in draw(st.lists(replicas_st, max_size=5)):
        model.add_service(per_node)
    op_st = st.one_of(*topology_ops, *([connections_op] * 3 if connections else []), *(error_ops * 2 if errors else []))
    ops = draw(st.lists(op_st, min_size=1, max_size=7))
    return config, model, ops


def _conns(model: Model, mode: str) -> dict[str, dict[str, int]] | None:
    if not model.connections or mode == "podIP":
        return None
    return {k: dict(v) for k, v in model.connections.items()}


def moved_buckets(old: Snapshot, new: Snapshot) -> list[tuple[str, int, int]]:
    """(service, buckets moved, minimum possible) for Services kept with the same bucket count."""
    out = []
    for s in new.services:
        o = old.by_name.get(s.name)
        if o is None or o.bucket_count != s.bucket_count or s.algorithm != "replica-weighted":
            continue
        moved = sum(1 for a, b in zip(o.assignment, s.assignment) if a != b)
        before, after = Counter(o.assignment), Counter(s.assignment)
        minimum = sum(max(0, count - after.get(k, 0)) for k, count in before.items())
        out.append((s.name, moved, minimum))
    return out


def check_snapshot(snap: Snapshot, *, document: bool = False) -> None:
    """Each backend's share is within one bucket of its weight; with `document`, also
    schema-valid and round-tripping (costly, so once per sequence)."""
    if document:
        assert schema_errors(snap.to_document()) == []
        assert from_document(snap.to_document()).digest == snap.digest
    for s in snap.services:
        assert sum(b.buckets for b in s.backends) == (s.bucket_count if s.backends else 0)
        total = sum(b.replicas for b in s.backends)
        if s.algorithm == "least-connections" or not total:
            continue
        for b in s.backends:
            exact = s.bucket_count * b.replicas / total
            assert abs(b.buckets - exact) < 1, f"{s.name} {b.node}: {b.buckets} buckets, exact share {exact:.2f}"


def check_no_error_removes(model: Model, previous: Snapshot, new: Snapshot) -> None:
    """Every Service port of `previous` that still exists (its Service, and a port with its
    number and protocol) is in `new`, whatever errors its Service has now: only a deletion
    removes. (Not checked for a Service that moved to another VIP in this render: a failing
    port cannot stay on an address its Service no longer holds.)"""
    now = {(s.service_key, s.port, s.protocol): s for s in new.services}
    vips = {s.service_key: s.vip for s in new.services}
    for s in previous.services:
        name = s.service_key.split("/", 1)[1]
        if name not in model.services:
            continue
        ports = model.service(name, int(name.split("-")[1])).ports
        if (s.port, s.protocol) not in {(p.port, p.protocol) for p in ports}:
            continue
        if vips.get(s.service_key, s.vip) != s.vip:
            continue
        assert (s.service_key, s.port, s.protocol) in now, f"{s.name} ({s.port}/{s.protocol}) left the switches: {model.faults}"


def check_drains(
    config: LoadBalancerConfig, cluster: ClusterState, previous: Snapshot, new: Snapshot, now: float, issues: Sequence[RenderIssue]
) -> None:
    """Every bucket that moved drains from its previous backend until now + the timeout, unless
    that backend's node is lost (gone, NotReady, or another address: nothing left to keep); no
    drain in `new` has ended (but in a Service kept as in v<N> on an error, which keeps its
    drains unchanged); generations are above every generation of `previous`."""
    floor = previous.max_drain_generation()
    # Kept as in v<N>: an error, or a warning that keeps (an opt-in value that means nothing).
    failing = {i.service for i in issues if i.severity == "error" or "kept as in v" in i.message}
    for svc in new.services:
        old = previous.by_name.get(svc.name)
        kept = svc.name in failing or svc.service_key in failing
        for d in svc.drains:
            assert kept or d.until > now, f"{svc.name}: drain of bucket {d.bucket} ended at {d.until} but is still listed"
        if old is None or svc is old or old.bucket_count != svc.bucket_count or svc.assignment[0] is None:
            continue
        started = {d.bucket: d for d in svc.drains if old.drains == () or d not in old.drains}
        by_key = {backend_key(b, old.backend_mode): b for b in old.backends}
        for bucket, (before, after) in enumerate(zip(old.assignment, svc.assignment)):
            if before is not None and before != after:
                source = by_key[before]
                node = cluster.nodes.get(source.node)
                lost = node is None or not node.ready or (old.backend_mode != "podIP" and node.internal_ip != source.address)
                if lost:
                    assert bucket not in started, f"{svc.name}: bucket {bucket} drains from lost node {source.node}"
                    continue
                begun = started.get(bucket)
                assert begun is not None and begun.source == before, f"{svc.name}: bucket {bucket} moved from {before} without a drain"
                assert begun.until == int(now) + config.connection_drain_timeout_s and begun.generation > floor
                DRAINS_SEEN.append(begun)


DRAINS_SEEN: list[object] = []
CLOCK_START = 1_765_000_000.5
CLOCK_STEP = 25.0


def check_sequence(config: LoadBalancerConfig, model: Model, ops: list[tuple], *, documents: bool = False) -> None:
    model = copy.deepcopy(model)  # explicit @examples are shared objects
    told, guessing = Renderer(), Renderer()
    cluster = model.state(1)
    conns = _conns(model, config.backend_mode)
    # An explicit clock: drains start and end by it, and renders must not differ by a second
    # boundary. It advances 25 s per step, so drains (60 s by default) end a few steps later.
    now = CLOCK_START
    previous = told.render(config, cluster, None, p4info_digest=P4INFO_DIGEST, connections=conns, now=now).snapshot
    assert guessing.render(config, cluster, None, p4info_digest=P4INFO_DIGEST, connections=conns, now=now).snapshot.to_json_text() == previous.to_json_text()
    assert do_render(config, cluster, None, connections=conns, now=now).snapshot.to_json_text() == previous.to_json_text()
    assert apply_diff(None, previous, diff_snapshots(None, previous)) == switch_of(previous)
    for step, op in enumerate(ops, start=2):
        touched = model.apply(op)
        cluster = model.state(step)
        conns = _conns(model, config.backend_mode)
        now += CLOCK_STEP
        full = do_render(config, cluster, previous, connections=conns, now=now)
        inc = told.render(config, cluster, previous, p4info_digest=P4INFO_DIGEST, connections=conns, changed=touched, now=now)
        found = guessing.render(config, cluster, previous, p4info_digest=P4INFO_DIGEST, connections=conns, now=now)
        text = full.snapshot.to_json_text()
        assert inc.snapshot.to_json_text() == text, f"step {step} {op}: Renderer(changed={sorted(touched)}) differs from a full render"
        assert found.snapshot.to_json_text() == text, f"step {step} {op}: Renderer(changed=None) differs from a full render"
        assert sorted(map(str, inc.issues)) == sorted(map(str, full.issues)), f"step {step} {op}: issues differ"
        new = full.snapshot
        assert new.version == previous.version + (1 if new.digest != previous.digest else 0)
        # The diff turns the previous entry set into the new one exactly, phase by phase.
        diff = diff_snapshots(previous, new)
        held = apply_diff(previous, new, diff)
        assert held == switch_of(new), f"step {step} {op}: diff does not reach the new snapshot"
        assert diff.empty == (held == switch_of(previous))
        check_snapshot(new, document=documents and step == len(ops) + 1)
        check_no_error_removes(model, previous, new)
        for name, moved, minimum in moved_buckets(previous, new):
            assert moved == minimum, f"step {step} {op}: {name} moved {moved} buckets, the minimum is {minimum}"
        check_drains(config, cluster, previous, new, now, full.issues)
        previous = inc.snapshot


@props
@given(scenarios())
def test_incremental_render_equals_full_render(scenario: tuple[LoadBalancerConfig, Model, list[tuple]]) -> None:
    check_sequence(*scenario, documents=True)


def _model(services: dict[str, dict[str, int]], nodes: int) -> Model:
    return Model(
        nodes=[f"node-{i}" for i in range(nodes)], services=services, next_node=nodes, next_service=len(services)
    )


@props
@given(scenarios(pool_size=6, errors=True))
# A VIP outside the pools, then a second port added while it is kept.
@example((make_config(buckets=4), _model({"svc-0": {"node-0": 1}}, 1), [("break", 0, "outside"), ("ports", 0, 2), ("fix", 0)]))
# svc-1 asks for svc-0's VIP, which is freed when svc-0 goes.
@example((make_config(buckets=4), _model({"svc-0": {"node-0": 1}, "svc-1": {"node-0": 1}}, 1), [("break", 1, "taken"), ("remove_service", 0), ("scale", 0, 0, 2)]))
def test_incremental_render_equals_full_render_with_errors(scenario: tuple[LoadBalancerConfig, Model, list[tuple]]) -> None:
    # Requested IPs outside the pools or taken, opt-in typos, ports without nodePort, nodePorts
    # of another Service (reverse_nat conflicts), ports added and removed: the Services that
    # have them keep what the previous snapshot has, and incremental stays equal to full.
    check_sequence(*scenario, documents=True)


@props
@given(scenarios(connections=True))
# Connection counts appear for one Service only: the other Service's inputs did not change.
@example((make_config(algorithm="least-connections", buckets=4), _model({"svc-0": {"node-0": 1}, "svc-1": {"node-0": 1}}, 1), [("connections", 0, {0: 5})]))
def test_incremental_render_equals_full_render_with_connection_counts(
    scenario: tuple[LoadBalancerConfig, Model, list[tuple]],
) -> None:
    # least-connections with per-Service connection estimates that come and go.
    check_sequence(*scenario)


@props
@given(scenarios(pool_size=3))
# Four Services for three VIPs; one is removed; the next change touches another Service only.
@example((make_config(pool_size=3, buckets=4), _model({f"svc-{i}": {"node-0": 1} for i in range(4)}, 1), [("remove_service", 0), ("scale", 0, 0, 2)]))
def test_incremental_render_equals_full_render_with_a_scarce_vip_pool(
    scenario: tuple[LoadBalancerConfig, Model, list[tuple]],
) -> None:
    # Three VIPs for up to a dozen Services: exhaustion, and values freed by a removal that
    # stay quarantined for one render, are part of the sequences.
    check_sequence(*scenario)


def test_model_round_trip() -> None:
    # Guards the test data itself: the model's cluster has what the model says.
    model = Model(nodes=[], services={})
    model.add_node(), model.add_node()
    key = model.add_service({0: 2, 1: 1})
    state = model.state(1)
    assert state.ready_replicas_per_node(key) == {"node-0": 2, "node-1": 1}
    assert model.apply(("remove_node", 0)) == {key}
    assert model.state(2).ready_replicas_per_node(key) == {"node-1": 1}
    assert replace(state, resource_version="x").resource_version == "x"


def test_sequences_include_drains() -> None:
    # Guards the property tests above: moves under the default timeout do drain.
    DRAINS_SEEN.clear()
    config, model = make_config(buckets=8), _model({"svc-0": {"node-0": 1, "node-1": 3}}, 3)
    check_sequence(config, model, [("scale", 0, 0, 3), ("scale", 0, 1, 1), ("scale", 0, 0, 1), ("scale", 0, 1, 2), ("scale", 0, 0, 2)])
    assert DRAINS_SEEN
