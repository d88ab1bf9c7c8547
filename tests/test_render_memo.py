"""RenderMemo: a Renderer resumed in a new process from the memo of the last render (and that
render's snapshot as `previous`) must behave exactly as the Renderer that made it, and as a full
render from the same previous snapshot: same snapshot bytes and digest, same issues, same
`changed`, while rendering only the Services whose inputs changed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers_render import P4INFO_DIGEST, POOL_FIRST, do_render, make_cluster, make_config, make_service
from hypothesis import example, given
from hypothesis import strategies as st
from test_render_properties import CLOCK_START, CLOCK_STEP, FAULTS, Model, _conns, _model, props, scenarios

from reconciler.cluster.model import FALLBACK_BY_ANNOTATION, OPT_IN_ANNOTATION, ClusterState, Endpoint, Node, Service, ServicePort
from reconciler.intent.model import LoadBalancerConfig
from reconciler.render import Renderer, RenderResult
from reconciler.render.allocate import Exhausted, Pool
from reconciler.render.engine import _ORJSON_EXACT, _digest_of, _fresh_state, _seeds, _seeds_after, _State, fingerprint_digest
from reconciler.render.memo import MEMO_FORMAT, RenderMemo, config_digest
from reconciler.sources import code_digest
from reconciler.snapshot import Snapshot, from_document

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# Beyond test_render_properties' faults: p4kube's automatic fallback (the Service keeps its VIP,
# held without a snapshot entry) and a person's "disabled" (it releases the VIP).
MORE_FAULTS = FAULTS + ("fallback", "fallback", "disabled", "plain")


@dataclasses.dataclass
class StatusModel(Model):
    """Model whose Services carry status.loadBalancer.ingress as p4kube writes it: the VIP of the
    last snapshot, kept while the Service is in fallback."""

    status: dict[str, str] = dataclasses.field(default_factory=dict)  # Service name -> VIP

    def service(self, name: str, index: int) -> Service:
        fault = self.faults.get(name)
        svc = super().service(name, index)
        if fault == "fallback":
            svc = dataclasses.replace(svc, annotations=((FALLBACK_BY_ANNOTATION, "p4kube"), (OPT_IN_ANNOTATION, "disabled")))
        elif fault == "disabled":
            svc = dataclasses.replace(svc, annotations=((OPT_IN_ANNOTATION, "disabled"),))
        elif fault == "plain":  # never opted in (or its annotation removed): not p4kube's
            svc = dataclasses.replace(svc, annotations=())
        if name in self.status:
            svc = dataclasses.replace(svc, ingress_ips=(self.status[name],))
        return svc

    def write_status(self, snap: Snapshot) -> set[str]:
        """Record each served Service's VIP as its status; returns the keys whose status changed
        (a fallen-back Service keeps its status, as p4kube leaves it)."""
        touched = set()
        for s in snap.services:
            name = s.service_key.split("/", 1)[1]
            if name in self.services and self.status.get(name) != s.vip:
                self.status[name] = s.vip
                touched.add(s.service_key)
        for name in list(self.status):
            if name not in self.services:
                del self.status[name]
        return touched


more_error_ops = [
    st.tuples(st.just("break"), st.integers(0, 20), st.sampled_from(MORE_FAULTS)),
    st.tuples(st.just("fix"), st.integers(0, 20)),
]


def loaded(snap: Snapshot) -> Snapshot:
    """`snap` as the audit repository gives it back: parsed from its file form."""
    return from_document(json.loads(snap.to_json_text()))


def issues_of(result: RenderResult) -> list[tuple[str, str]]:
    return [(str(i), i.severity) for i in result.issues]


def first_free(pool: Pool[Any], count: int = 6) -> list[object]:
    """What the pool hands out next (on a copy): equal for pools that allocate alike."""
    pool = copy.deepcopy(pool)
    out: list[object] = []
    for i in range(count):
        try:
            out.append(pool.allocate(("probe", i)))
        except Exhausted:
            break
    return out


def assert_same_state(resumed: _State, live: _State) -> None:
    """Field by field, fingerprints as digests; what a render clears first (blocked,
    reverse_released, now, generation_floor) is left out."""
    assert resumed.config == live.config and resumed.p4info_digest == live.p4info_digest
    assert resumed.base is not None and live.base is not None and resumed.base.digest == live.base.digest
    assert resumed.services == live.services
    assert resumed.order == live.order and resumed.ordered == live.ordered and resumed.position == live.position
    assert resumed.keys.keys() == live.keys.keys()
    for k, ks in live.keys.items():
        rs = resumed.keys[k]
        assert _digest_of(rs.fingerprint) == _digest_of(ks.fingerprint), k
        assert (rs.names, rs.issues, rs.kept) == (ks.names, ks.issues, ks.kept), k
    assert resumed.reverse_owner == live.reverse_owner
    assert resumed.issue_keys == live.issue_keys
    assert resumed.retry_keys == live.retry_keys
    assert resumed.freed == live.freed
    for a, b in ((resumed.vips, live.vips), (resumed.service_ids, live.service_ids), (resumed.backend_ids, live.backend_ids)):
        assert a.value_of == b.value_of and a.owner_of == b.owner_of
        assert first_free(a) == first_free(b)


def assert_seeds_as_a_full_render(config: LoadBalancerConfig, snap: Snapshot, before: Snapshot | None = None) -> None:
    """_seeds (what resume amends and memo() compares) holds what a full render from `snap` seeds;
    so does _seeds_after from the seeds of the snapshot `before` it."""
    full = _fresh_state(config, P4INFO_DIGEST, snap)
    seeds = _seeds(snap)
    if before is not None:
        assert_same_seeds(_seeds_after(_seeds(before), snap), seeds)
    assert seeds.vips == full.vips.value_of
    assert seeds.service_ids == full.service_ids.value_of
    assert seeds.backend_ids == full.backend_ids.value_of
    assert seeds.reverse_owner == full.reverse_owner
    assert seeds.names == {k: ks.names for k, ks in full.keys.items()}
    for s in snap.services:
        assert sorted(s.reverse_nat_keys_unordered()) == sorted(s.reverse_nat_keys()), s.name


def assert_same_seeds(got: Any, want: Any, what: object = "") -> None:
    assert got.base is want.base or got.base.digest == want.base.digest, what
    for f in ("vips", "service_ids", "backend_ids", "reverse_owner", "names", "reverse_listed"):
        assert getattr(got, f) == getattr(want, f), (f, what)


def check_resumed_sequence(config: LoadBalancerConfig, model: Model, ops: list[tuple], *, told: bool = True) -> int:
    """Returns how many steps resumed with fewer Services rendered than the full render."""
    model = StatusModel(**{f.name: copy.deepcopy(getattr(model, f.name)) for f in dataclasses.fields(Model)})
    live = Renderer()
    now = CLOCK_START
    cluster = model.state(1)
    previous = live.render(config, cluster, None, p4info_digest=P4INFO_DIGEST, connections=_conns(model, config.backend_mode), now=now).snapshot
    status_touched = model.write_status(previous)
    memo = live.memo().to_bytes()
    saved = 0
    for step, op in enumerate(ops, start=2):
        touched = model.apply(op) | status_touched
        cluster = model.state(step)
        conns = _conns(model, config.backend_mode)
        now += CLOCK_STEP
        # (b) a new process: the memo's bytes and the snapshot as read back from its file
        prev_file = loaded(previous)
        resumed = Renderer()
        assert resumed.resume(RenderMemo.from_bytes(memo), config, prev_file, p4info_digest=P4INFO_DIGEST), f"step {step}: memo refused"
        assert resumed._state is not None and live._state is not None
        assert_same_state(resumed._state, live._state)
        a = live.render(
            config, cluster, previous, p4info_digest=P4INFO_DIGEST, connections=conns, changed=touched if told else None, now=now
        )
        b = resumed.render(config, cluster, prev_file, p4info_digest=P4INFO_DIGEST, connections=conns, now=now)
        c = do_render(config, cluster, prev_file, connections=conns, now=now)
        text = c.snapshot.to_json_text()
        for name, r in (("in-memory", a), ("resumed", b)):
            assert r.snapshot.digest == c.snapshot.digest, f"step {step} {op}: {name} digest differs from a full render"
            assert r.snapshot.to_json_text() == text, f"step {step} {op}: {name} differs from a full render"
            assert r.snapshot.version == c.snapshot.version
            assert issues_of(r) == issues_of(c), f"step {step} {op}: {name} issues differ"
            assert r.changed == c.changed, f"step {step} {op}: {name} changed differs"
        saved += len(b.rendered) < len(c.rendered)
        assert_seeds_as_a_full_render(config, a.snapshot, previous)
        assert_same_seeds(_seeds_after(_seeds(prev_file), b.snapshot), _seeds(b.snapshot))
        # After the render, both renderers hold the same state: their memos are the same bytes.
        memo = live.memo().to_bytes()
        assert resumed.memo().to_bytes() == memo, f"step {step} {op}: resumed state differs after render"
        previous = a.snapshot
        status_touched = model.write_status(previous)
    return saved


def status_scenarios(pool_size: int) -> st.SearchStrategy[tuple[LoadBalancerConfig, Model, list[tuple]]]:
    return scenarios(pool_size=pool_size, errors=True).flatmap(
        lambda s: st.lists(st.one_of(*more_error_ops), max_size=4).flatmap(
            lambda extra: st.permutations(s[2] + extra).map(lambda ops: (s[0], s[1], ops))
        )
    )


@props
@given(status_scenarios(pool_size=6), st.booleans())
# svc-1 asks for svc-0's VIP, which is freed when svc-0 goes: refused, then retried (two steps).
@example((make_config(buckets=4), _model({"svc-0": {"node-0": 1}, "svc-1": {"node-0": 1}}, 1), [("break", 1, "taken"), ("remove_service", 0), ("scale", 0, 0, 2)]), True)
# svc-0 falls back (its VIP held, no snapshot entry), a newcomer must not get it; then it recovers.
@example((make_config(buckets=4, pool_size=3), _model({"svc-0": {"node-0": 1}}, 1), [("break", 0, "fallback"), ("add_service", {0: 1}), ("fix", 0)]), False)
# A person's "disabled": the VIP is released (quarantined one render, then free).
@example((make_config(buckets=4, pool_size=2), _model({"svc-0": {"node-0": 1}, "svc-1": {"node-0": 1}}, 1), [("break", 0, "disabled"), ("add_service", {0: 1}), ("add_service", {0: 1})]), True)
# svc-0 falls back (its VIP held), comes back into an error (no nodePort: nothing produced), and
# svc-1 arrives: svc-0 keeps its VIP, which its status still shows, in every renderer (found by
# hypothesis in CI: the in-memory renderer had released it, a full render kept it).
@example((make_config(buckets=1, pool_size=6), _model({"svc-0": {}}, 1),
          [("scale", 0, 0, 0), ("add_node", 0, 1), ("break", 0, "fallback"), ("break", 0, "noport"), ("add_service", {})]), False)
def test_resumed_renderer_equals_in_memory_and_full_render(scenario: tuple[LoadBalancerConfig, Model, list[tuple]], told: bool) -> None:
    check_resumed_sequence(*scenario, told=told)


@props
@given(scenarios(connections=True))
# A node's count removed leaves svc-0 an empty count dict, then its counts go: no count both
# times, so no change of its inputs (found by hypothesis: the fingerprint told them apart).
@example((make_config(buckets=1, algorithm="least-connections"), _model({"svc-0": {}}, 1),
          [("add_node", 0, 1), ("connections", 0, {0: 0}), ("remove_node", 0), ("connections", 0, {})]))
def test_resumed_renderer_with_connection_counts(scenario: tuple[LoadBalancerConfig, Model, list[tuple]]) -> None:
    check_resumed_sequence(*scenario)


@props
@given(scenarios(pool_size=3))
def test_resumed_renderer_with_a_scarce_vip_pool(scenario: tuple[LoadBalancerConfig, Model, list[tuple]]) -> None:
    check_resumed_sequence(*scenario, told=False)


def test_resumed_sequences_do_save_renders() -> None:
    # Guards the property tests: a resumed renderer really renders less than a full one.
    config = make_config(buckets=4)
    model = _model({f"svc-{i}": {"node-0": 1, "node-1": 1} for i in range(6)}, 2)
    ops = [("scale", 1, 0, 3), ("break", 2, "taken"), ("remove_service", 0), ("fix", 1), ("add_node", 3, 1)]
    # The first step renders all: p4kube wrote every Service's status after the first render.
    assert check_resumed_sequence(config, model, ops) == len(ops) - 1


# --- one change after a resume ---------------------------------------------------------------------


def _ten(config: LoadBalancerConfig) -> tuple[ClusterState, RenderResult, Renderer]:
    services = {make_service(f"svc-{i}", node_port_base=30000 + 10 * i): {"node-0": 1, "node-1": i % 3} for i in range(10)}
    cluster = make_cluster(services, nodes=3)
    renderer = Renderer()
    return cluster, renderer.render(config, cluster, None, p4info_digest=P4INFO_DIGEST, now=CLOCK_START), renderer


def test_resume_then_one_changed_service_renders_only_that_key() -> None:
    config = make_config(buckets=8)
    cluster, first, renderer = _ten(config)
    data = renderer.memo().to_bytes()
    eps = cluster.endpoints["default/svc-4"]
    changed = dataclasses.replace(cluster, endpoints={**cluster.endpoints, "default/svc-4": eps + (Endpoint("10.9.9.9", "node-2"),)})
    fresh = Renderer()
    previous = loaded(first.snapshot)
    assert fresh.resume(RenderMemo.from_bytes(data), config, previous, p4info_digest=P4INFO_DIGEST)
    result = fresh.render(config, changed, previous, p4info_digest=P4INFO_DIGEST, now=CLOCK_START + 1)
    assert result.rendered == {"default/svc-4"}
    full = do_render(config, changed, previous, now=CLOCK_START + 1)
    assert result.snapshot.to_json_text() == full.snapshot.to_json_text() and result.changed
    assert len(full.rendered) == 10
    # Nothing changed: nothing rendered, the previous snapshot itself comes back.
    again = Renderer()
    assert again.resume(RenderMemo.from_bytes(data), config, previous, p4info_digest=P4INFO_DIGEST)
    same = again.render(config, cluster, previous, p4info_digest=P4INFO_DIGEST, now=CLOCK_START + 1)
    assert same.rendered == frozenset() and not same.changed and same.snapshot is previous


def test_memo_needs_a_render() -> None:
    with pytest.raises(RuntimeError, match="nothing rendered"):
        Renderer().memo()


# --- a memo that does not fit is refused -------------------------------------------------------------


def test_a_mismatched_memo_is_refused_and_the_next_render_is_full() -> None:
    config = make_config(buckets=8)
    cluster, first, renderer = _ten(config)
    memo = renderer.memo()
    previous = first.snapshot
    other_prev = do_render(config, make_cluster({make_service("x"): {"node-0": 1}}, nodes=1)).snapshot
    other_config = make_config(buckets=4)
    named = dataclasses.replace(config, name="other")
    cases = {
        "another version's code": (dataclasses.replace(memo, code_digest="0" * 64), config, previous, P4INFO_DIGEST),
        "config": (memo, other_config, previous, P4INFO_DIGEST),
        "p4info": (memo, config, previous, "sha256:" + "0" * 64),
        "previous": (memo, config, other_prev, P4INFO_DIGEST),
        "no previous": (memo, config, None, P4INFO_DIGEST),
        "previous of another config": (memo, named, previous, P4INFO_DIGEST),
        "names": (dataclasses.replace(memo, keys=tuple(dataclasses.replace(k, names=()) for k in memo.keys)), config, previous, P4INFO_DIGEST),
        "a key missing": (dataclasses.replace(memo, keys=memo.keys[1:]), config, previous, P4INFO_DIGEST),
        "a value held twice": (
            dataclasses.replace(memo, vips=dataclasses.replace(memo.vips, held=(("default/ghost", previous.services[0].vip),))),
            config, previous, P4INFO_DIGEST,
        ),
        "a dropped value not held": (
            dataclasses.replace(memo, service_ids=dataclasses.replace(memo.service_ids, dropped=("default/ghost",))),
            config, previous, P4INFO_DIGEST,
        ),
        "retry of an unknown key": (dataclasses.replace(memo, retry_keys=(("default/ghost", (("vip", None),)),)), config, previous, P4INFO_DIGEST),
    }
    for what, (m, cfg, prev, p4) in cases.items():
        r = Renderer()
        assert r.resume(m, cfg, prev, p4info_digest=p4) is False, what
        assert r._state is None, what
    # A renderer that had a state and is handed a memo that does not fit starts afresh.
    assert renderer.resume(memo, other_config, previous, p4info_digest=P4INFO_DIGEST) is False
    result = renderer.render(config, cluster, previous, p4info_digest=P4INFO_DIGEST, now=CLOCK_START)
    assert len(result.rendered) == 10 and not result.changed


def test_config_digest_ignores_where_the_config_was_read_from() -> None:
    from reconciler.intent.model import SourceRef

    config = make_config()
    assert config_digest(dataclasses.replace(config, source=SourceRef("a.yaml", 3))) == config_digest(config)
    assert config_digest(dataclasses.replace(config, buckets_per_service=32)) != config_digest(config)


# --- malformed bytes -------------------------------------------------------------------------------


def _memo_doc() -> dict[str, Any]:
    config = make_config(buckets=4, pool_size=2)
    services = {make_service(f"svc-{i}", node_port_base=30000 + 10 * i): {"node-0": 1} for i in range(3)}
    renderer = Renderer()
    renderer.render(config, make_cluster(services, nodes=1), None, p4info_digest=P4INFO_DIGEST, now=CLOCK_START)
    doc = orjson.loads(renderer.memo().to_bytes())
    assert doc["retryKeys"] and doc["keys"]  # svc-2 waits for a VIP: marks are part of the cases
    return doc


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    where = doc
    for p in path[:-1]:
        where = where[p]
    where[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    "change",
    [
        ("format", 2),
        ("format", "1"),
        ("format", None),
        ("configDigest", 5),
        ("codeDigest", None),
        ("keys", {}),
        ("keys", [["default/svc-0"]]),
        (("keys", 0, 1), 7),
        (("keys", 0, 2), "default/svc-0"),
        (("keys", 0, 3), [["default/svc-0", "message"]]),
        (("keys", 0, 4), [0]),  # a kept index without its issue
        (("keys", 0, 4), [True]),
        ("retryKeys", [["default/svc-2", [["vip", 3]]]]),
        ("retryKeys", [["default/svc-2", [["service-id", "x"]]]]),
        ("retryKeys", [["default/svc-2"]]),
        ("freed", [["reverse", ["10.0.0.1", 80]]]),
        ("vips", {"held": []}),
        ("serviceIds", {"held": [["default/svc-0:80", "1"]], "dropped": []}),
        ("backendIds", {"held": [["default/svc-0", 1]], "dropped": []}),
        ("reverseOwner", {"held": [[["10.0.0.1", "80", 6], "default/svc-0"]], "dropped": []}),
        ("extra", 1),
    ],
    ids=repr,
)
def test_malformed_memo_is_a_value_error(change: tuple[Any, Any]) -> None:
    path, value = change
    doc = _set(_memo_doc(), path if isinstance(path, tuple) else (path,), value)
    with pytest.raises(ValueError, match="render memo"):
        RenderMemo.from_bytes(orjson.dumps(doc))


def test_malformed_bytes_are_a_value_error() -> None:
    good = orjson.dumps(_memo_doc())
    assert RenderMemo.from_bytes(good).to_bytes() == good
    doc = _memo_doc()
    del doc["freed"]
    for data in (good[: len(good) // 2], good[:-1], b"", b"\xff\xfe", b"[]", b"null", b"1", orjson.dumps(doc)):
        with pytest.raises(ValueError, match="render memo"):
            RenderMemo.from_bytes(data)
    assert MEMO_FORMAT == 1


# --- digests that hold across processes ------------------------------------------------------------

_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_render_memo import memo_of_fixed_sequence
sys.stdout.write(memo_of_fixed_sequence().hex())
"""


def memo_of_fixed_sequence() -> bytes:
    """A memo with every part filled: keys with issues and kept ports, retry marks, freed values,
    a fallen-back Service's VIP (held without a snapshot entry), connection counts."""
    config = make_config(buckets=4, pool_size=4, algorithm="least-connections")
    web = make_service("web", node_port_base=30100)
    services = {make_service(f"svc-{i}", node_port_base=30000 + 10 * i): {"node-0": 1, "node-1": 1} for i in range(3)}
    cluster = make_cluster({**services, web: {"node-1": 2}}, nodes=2)
    renderer = Renderer()
    conns = {"default/svc-0": {"node-0": 3}}
    v1 = renderer.render(config, cluster, None, p4info_digest=P4INFO_DIGEST, connections=conns, now=CLOCK_START).snapshot
    taker = make_service("svc-0", load_balancer_ip=v1.by_name["default/svc-1"].vip)
    fallen = dataclasses.replace(
        web, annotations=((FALLBACK_BY_ANNOTATION, "p4kube"), (OPT_IN_ANNOTATION, "disabled")), ingress_ips=(v1.by_name["default/web"].vip,)
    )
    cluster2 = make_cluster({taker: {"node-0": 1}, fallen: {"node-1": 1}, make_service("svc-2", node_port_base=30020): {"node-0": 2}}, nodes=2)
    renderer.render(config, cluster2, v1, p4info_digest=P4INFO_DIGEST, connections=conns, now=CLOCK_START + 5)
    return renderer.memo().to_bytes()


def test_memo_bytes_are_the_same_in_any_process() -> None:
    mine = memo_of_fixed_sequence()
    memo = RenderMemo.from_bytes(mine)
    assert memo.retry_keys and memo.freed and memo.vips.held and any(k.kept for k in memo.keys)
    script = _SCRIPT.format(tests=str(TESTS))
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120)
        theirs = bytes.fromhex(out.stdout)
        # The code digest aside: a source file edited meanwhile (in a shared work tree) changes it.
        assert dataclasses.replace(RenderMemo.from_bytes(theirs), code_digest=memo.code_digest).to_bytes() == mine, f"PYTHONHASHSEED={seed} gives other memo bytes"


def test_fingerprint_digest_covers_every_field() -> None:
    # orjson leaves out dataclass fields named _x: the digest is exact only while none exist.
    assert _ORJSON_EXACT
    svc = make_service("web")
    port = svc.ports[0]
    ep = Endpoint("10.0.0.1", "node-0", (("", 8080),))
    base = (svc, (ep,), (("node-0", "10.1.0.1"),), None)
    variants: list[object] = [
        (dataclasses.replace(svc, ports=(dataclasses.replace(port, target_port="8080"),)), (ep,), base[2], None),
        (dataclasses.replace(svc, ports=(dataclasses.replace(port, node_port=None),)), (ep,), base[2], None),
        (dataclasses.replace(svc, ingress_ips=("1.2.3.4",)), (ep,), base[2], None),
        (svc, (dataclasses.replace(ep, managed=False),), base[2], None),
        (svc, (dataclasses.replace(ep, pod=""),), base[2], None),
        (svc, (ep,), (("node-0", None),), None),
        (svc, (ep,), base[2], ()),
        (svc, (ep, ep), base[2], None),
    ]
    digests = {fingerprint_digest(v) for v in variants}
    assert len(digests) == len(variants) and fingerprint_digest(base) not in digests
    assert fingerprint_digest(base) == fingerprint_digest(copy.deepcopy(base))
    # A type orjson cannot write still gets an exact digest (repr).
    assert fingerprint_digest((svc, {1, 2})) == fingerprint_digest((svc, {2, 1}))
    for cls in (Service, ServicePort, Endpoint, Node):
        assert all(not f.name.startswith("_") for f in dataclasses.fields(cls))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70000) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@props
@given(st.lists(st.tuples(st.integers(0, 10_000), json_values), min_size=1, max_size=3))
def test_any_damage_is_a_value_error_or_a_memo_resume_takes_safely(damage: list[tuple[int, Any]]) -> None:
    # Each change replaces one node of the memo's JSON tree (picked by index) with any JSON value.
    config = make_config(buckets=4, pool_size=2)
    services = {make_service(f"svc-{i}", node_port_base=30000 + 10 * i): {"node-0": 1} for i in range(3)}
    cluster = make_cluster(services, nodes=1)
    renderer = Renderer()
    previous = renderer.render(config, cluster, None, p4info_digest=P4INFO_DIGEST, now=CLOCK_START).snapshot
    doc = orjson.loads(renderer.memo().to_bytes())
    for index, value in damage:
        nodes: list[tuple[Any, Any]] = []

        def walk(parent: Any) -> None:
            for k in range(len(parent)) if isinstance(parent, list) else list(parent):
                nodes.append((parent, k))
                if isinstance(parent[k], (list, dict)):
                    walk(parent[k])

        walk(doc)
        parent, k = nodes[index % len(nodes)]
        parent[k] = value
    try:
        memo = RenderMemo.from_bytes(orjson.dumps(doc))
    except ValueError:
        return
    r = Renderer()
    taken = r.resume(memo, config, previous, p4info_digest=P4INFO_DIGEST)  # True or False, never a crash
    result = r.render(config, cluster, previous, p4info_digest=P4INFO_DIGEST, now=CLOCK_START)
    if not taken:
        assert r._state is not None and len(result.rendered) == 3


def test_code_digest_is_of_the_package_sources() -> None:
    # The same sources give the same digest in any process; the memo names the writer's.
    assert RenderMemo.from_bytes(memo_of_fixed_sequence()).code_digest == code_digest()
    assert len(code_digest()) == 64
