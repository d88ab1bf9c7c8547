"""What memo() reuses instead of building anew (issue 13) gives what it would build:
_seeds_after (the seeds of a render's new snapshot, from those of its previous) equals _seeds,
also on snapshots of unusual shapes (reordered, a name or a reverse_nat key listed twice, a
multi-port Service whose ports disagree on the VIP), and a resumed memo's KeyMemo is given back
only while its key's state is still what it was read into.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import orjson

from helpers_render import P4INFO_DIGEST, do_render, make_cluster, make_config, make_service, with_service, without_service
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_render_memo import assert_same_seeds, loaded
from test_render_properties import CLOCK_START

from reconciler.cluster.model import ClusterState, Endpoint, Node
from reconciler.render import Renderer
from reconciler.render.engine import _fingerprint, _holdings, _seeds, _seeds_after, fingerprint_digest
from reconciler.render.memo import Holdings, RenderMemo, _key_memo, _key_memo_checked, sort_key
from reconciler.snapshot import Backend, ServiceSnapshot, Snapshot


def _base() -> Snapshot:
    services = {make_service(f"svc-{i}", node_port_base=30000 + 10 * i): {"node-0": 1, "node-1": 1 + i % 2} for i in range(6)}
    multi = make_service("multi", ports=(("a", 80, "TCP"), ("b", 81, "TCP")), node_port_base=31000)
    services[multi] = {"node-2": 1}
    return do_render(make_config(buckets=4), make_cluster(services, nodes=3), now=CLOCK_START).snapshot


def _other(svc: ServiceSnapshot, **changes: Any) -> ServiceSnapshot:
    return dataclasses.replace(svc, **changes)


def _with(snap: Snapshot, services: list[ServiceSnapshot]) -> Snapshot:
    return dataclasses.replace(snap, services=tuple(services))


def _shapes(a: Snapshot) -> dict[str, list[ServiceSnapshot]]:
    s = list(a.services)
    b0 = s[0].backends[0]
    stolen = dataclasses.replace(s[1].backends[0], address=b0.address, port=b0.port)  # s[0]'s reverse_nat key
    multi = [i for i, x in enumerate(s) if x.name.startswith("default/multi:")]
    return {
        "the same Services": list(s),
        "one Service anew, equal": [_other(s[0])] + s[1:],
        "one Service changed": [_other(s[0], service_id=999)] + s[1:],
        "a backend gone": s[:2] + [_other(s[2], backends=s[2].backends[1:])] + s[3:],
        "a Service gone": s[:3] + s[4:],
        "a Service added": s + [_other(s[0], name="default/zzz", service_id=998, vip="203.0.113.99", backends=())],
        "reordered": list(reversed(s)),
        "two shared Services swapped": [s[1], s[0]] + s[2:],
        "a name listed twice": s + [s[-1]],
        "a name listed twice, anew": s + [_other(s[-1], service_id=997)],
        "a reverse_nat key taken by a changed Service": [s[0], _other(s[1], backends=(stolen,) + s[1].backends[1:])] + s[2:],
        "a multi-port Service's ports on two VIPs": [
            _other(x, vip="203.0.113.77") if i == multi[0] else x for i, x in enumerate(s)
        ],
        "no Services": [],
    }


def test_seeds_after_equals_seeds_for_every_shape() -> None:
    a = _base()
    for before_what, before in _shapes(a).items():
        snap_a = _with(a, before)
        seeds = _seeds(snap_a)
        assert_same_seeds(_seeds_after(seeds, snap_a), seeds)
        for what, services in _shapes(a).items():
            b = _with(a, services)
            assert_same_seeds(_seeds_after(seeds, b), _seeds(b), (before_what, what))


def test_seeds_after_from_seeds_with_a_reverse_key_held_twice() -> None:
    a = _base()
    s = list(a.services)
    b0 = s[0].backends[0]
    # Two Services of the previous snapshot list the same reverse_nat key: the later one holds it.
    twice = _with(a, [s[0], _other(s[1], backends=(dataclasses.replace(s[1].backends[0], address=b0.address, port=b0.port),))] + s[2:])
    seeds = _seeds(twice)
    assert seeds.reverse_listed != len(seeds.reverse_owner)
    for what, services in _shapes(a).items():
        b = _with(twice, services)
        assert_same_seeds(_seeds_after(seeds, b), _seeds(b), what)


def _backend(i: int) -> Backend:
    return Backend(node=f"node-{i}", address=f"10.1.0.{i + 1}", port=30000 + i, replicas=1, buckets=1, backend_id=100 + i)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_seeds_after_equals_seeds_for_random_edits(data: st.DataObject) -> None:
    a = _base()
    before = list(a.services)
    after = list(before)
    for _ in range(data.draw(st.integers(0, 4))):
        op = data.draw(st.sampled_from(["change", "drop", "dup", "swap", "steal", "add"]))
        if not after:
            break
        i = data.draw(st.integers(0, len(after) - 1))
        if op == "change":
            after[i] = _other(after[i], backends=tuple(_backend(j) for j in data.draw(st.lists(st.integers(0, 8), max_size=3))))
        elif op == "drop":
            del after[i]
        elif op == "dup":
            after.insert(data.draw(st.integers(0, len(after))), after[i])
        elif op == "swap":
            j = data.draw(st.integers(0, len(after) - 1))
            after[i], after[j] = after[j], after[i]
        elif op == "steal":
            j = data.draw(st.integers(0, len(after) - 1))
            if after[j].backends:
                after[i] = _other(after[i], backends=after[j].backends[:1])
        else:
            after.insert(i, _other(after[i], name=f"default/new-{i}", vip=f"203.0.113.{50 + i}"))
    b = _with(a, after)
    assert_same_seeds(_seeds_after(_seeds(a), b), _seeds(b))


def test_a_resumed_key_memo_is_given_back_only_while_its_state_is_unchanged() -> None:
    config = make_config(buckets=4)
    services = {make_service(f"svc-{i}", node_port_base=30000 + 10 * i): {"node-0": 1} for i in range(4)}
    cluster = make_cluster(services, nodes=2)
    first = Renderer()
    snap = first.render(config, cluster, None, p4info_digest=P4INFO_DIGEST, now=CLOCK_START).snapshot
    memo = RenderMemo.from_bytes(first.memo().to_bytes())
    resumed = Renderer()
    assert resumed.resume(memo, config, loaded(snap), p4info_digest=P4INFO_DIGEST)
    assert all(a is b for a, b in zip(resumed.memo().keys, memo.keys))
    # One Service scaled, one gone: their KeyMemo are built anew, the others given back.
    svc1 = next(s for s in services if s.name == "svc-1")
    changed = without_service(with_service(cluster, svc1, {"node-0": 1, "node-1": 2}, ip_base=5000), "default/svc-2")
    resumed.render(config, changed, loaded(snap), p4info_digest=P4INFO_DIGEST, now=CLOCK_START + 1)
    live = Renderer()
    live.render(config, cluster, None, p4info_digest=P4INFO_DIGEST, now=CLOCK_START)
    live.render(config, changed, snap, p4info_digest=P4INFO_DIGEST, now=CLOCK_START + 1)
    got, want = resumed.memo(), live.memo()
    assert got.to_bytes() == want.to_bytes()
    by_key = {k.key: k for k in memo.keys}
    reused = {k.key for k in got.keys if by_key.get(k.key) is k}
    assert reused == {"default/svc-0", "default/svc-3"}
    # A state changed in place (a field reassigned) is not given the old KeyMemo.
    assert resumed._state is not None
    ks = resumed._state.keys["default/svc-0"]
    ks.names = ()
    assert next(k for k in resumed.memo().keys if k.key == "default/svc-0").names == ()


def test_a_memo_with_kept_indices_out_of_order_is_written_sorted() -> None:
    config = make_config(buckets=4)
    cluster = make_cluster({make_service("svc-0"): {"node-0": 1}}, nodes=1)
    first = Renderer()
    snap = first.render(config, cluster, None, p4info_digest=P4INFO_DIGEST, now=CLOCK_START).snapshot
    memo = first.memo()
    k = memo.keys[0]
    issues = (("default/svc-0", "a", "error"), ("default/svc-0", "b", "error"))
    odd = dataclasses.replace(memo, keys=(dataclasses.replace(k, issues=issues, kept=(1, 0, 1)),))
    resumed = Renderer()
    assert resumed.resume(RenderMemo.from_bytes(odd.to_bytes()), config, loaded(snap), p4info_digest=P4INFO_DIGEST)
    assert resumed.memo().keys[0].kept == (0, 1)


def _holdings_as_before(actual: dict[Any, Any], seeded: dict[Any, Any]) -> Holdings:
    """The comparison memo() made before its shortcut for equal mappings."""
    missing = object()
    held = [(k, v) for k, v in actual.items() if seeded.get(k, missing) != v]
    dropped = [k for k in seeded if k not in actual]
    return Holdings(tuple(sorted(held, key=sort_key)), tuple(sorted(dropped, key=sort_key)))


_owners = st.sampled_from(["a", "b", "c", "d"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_owners, st.integers(0, 3)), st.dictionaries(_owners, st.integers(0, 3)))
def test_holdings_as_before(actual: dict[str, int], seeded: dict[str, int]) -> None:
    assert _holdings(actual, seeded) == _holdings_as_before(actual, seeded)
    assert _holdings(actual, dict(actual)) == Holdings() == _holdings_as_before(actual, dict(actual))


# --- the fingerprint and its digest, as the memos already written have them ---------------------


def _fingerprint_as_before(cluster: ClusterState, key: str) -> object:
    svc = cluster.services.get(key)
    if svc is None:
        return None
    eps = cluster.endpoints.get(key, ())
    nodes = tuple(sorted({(ep.node, getattr(cluster.nodes.get(ep.node), "internal_ip", None)) for ep in eps}))
    return (svc, eps, nodes, None)


def _digest_as_before(fingerprint: object) -> str:
    return hashlib.blake2b(b"j" + orjson.dumps(fingerprint), digest_size=32).hexdigest()


_node_names = st.sampled_from(["node-0", "node-1", "node-2", "gone"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), _node_names), max_size=8),
    st.dictionaries(_node_names, st.one_of(st.none(), st.sampled_from(["10.1.0.1", "10.1.0.2"])), max_size=4),
)
def test_fingerprint_and_digest_as_before(eps: list[tuple[int, str]], ips: dict[str, str | None]) -> None:
    svc = make_service("web")
    endpoints = tuple(Endpoint(f"100.64.0.{i}", node, (("", 8080),)) for i, node in eps)
    cluster = ClusterState(services={svc.key: svc}, endpoints={svc.key: endpoints} if endpoints else {},
                           nodes={n: Node(n, ip) for n, ip in ips.items()})
    for key in (svc.key, "default/none"):
        fp = _fingerprint(cluster, key, None)
        assert fp == _fingerprint_as_before(cluster, key)
        if fp is not None:
            assert fingerprint_digest(fp) == _digest_as_before(fp)


# --- RenderMemo.from_bytes: a Service's entry without issues checked inline -----------------------


def _outcome(fn: Any, value: object) -> object:
    try:
        return fn(value)
    except ValueError as e:
        return ("ValueError", str(e))


_entry_parts = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 3), st.text(max_size=4), st.just([]), st.just({}),
    st.lists(st.one_of(st.text(max_size=4), st.none(), st.integers(0, 2)), max_size=3),
    st.lists(st.lists(st.one_of(st.text(max_size=3), st.none()), max_size=4), max_size=2),
)


_good_entry = st.tuples(
    st.text(max_size=4), st.one_of(st.none(), st.text(max_size=4)), st.lists(st.text(max_size=4), max_size=3), st.just([]), st.just([])
).map(list)


def _spoilt(entry: list[Any], where: int, part: object) -> list[Any]:
    """`entry` with one part replaced (or, past its end, one part more)."""
    return entry[:where] + [part] + entry[where + 1:]


@settings(max_examples=600, deadline=None)
@given(st.one_of(
    st.lists(_entry_parts, min_size=4, max_size=6),
    _entry_parts,
    _good_entry,
    st.builds(_spoilt, _good_entry, st.integers(0, 5), _entry_parts),
))
@example(["k", None, ["a", 1], [], []])  # a name not a string
@example(["k", None, ["a", None], [], []])
@example(["k", 3, ["a"], [], []])  # the fingerprint
@example(["k", None, "ab", [], []])  # names not a list
@example([1, None, [], [], []])  # the key
@example(["k", None, [], [], [0]])  # a kept index without its issue
@example(["k", None, [], {}, []])
@example(["k", None, [], [], [], []])  # one part too many
def test_key_memo_reads_as_the_checked_reading(value: object) -> None:
    assert _outcome(_key_memo, orjson.loads(orjson.dumps(value))) == _outcome(_key_memo_checked, orjson.loads(orjson.dumps(value)))


def test_key_memo_fast_and_checked_readings_of_a_real_memo() -> None:
    config = make_config(buckets=4, pool_size=2)
    services = {make_service(f"svc-{i}", node_port_base=30000 + 10 * i): {"node-0": 1} for i in range(4)}
    renderer = Renderer()
    renderer.render(config, make_cluster(services, nodes=1), None, p4info_digest=P4INFO_DIGEST, now=CLOCK_START)
    entries = orjson.loads(renderer.memo().to_bytes())["keys"]
    assert any(not e[3] for e in entries) and any(e[3] for e in entries)  # with and without issues
    for e in entries:
        assert _key_memo(e) == _key_memo_checked(e)
