"""diff_snapshots: minimal writes in dependency order (DESIGN.md 5), checked on a simulated switch."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers_render import (
    apply_diff,
    do_render,
    make_cluster,
    make_config,
    make_service,
    switch_of,
    with_service,
    without_service,
)

from reconciler import p4names as n
from reconciler.cluster.model import ClusterState
from reconciler.diff import PHASE_NAMES, SnapshotDiff, diff_snapshots
from reconciler.intent.model import LoadBalancerConfig, Route, SwitchConfig
from reconciler.render import RenderResult
from reconciler.snapshot import Snapshot

WITHDRAW, PREPARE, PUBLISH, RETRACT, CLEANUP = range(5)


def phase_of(diff: SnapshotDiff) -> dict[tuple[str, str], set[int]]:
    """(table, kind) -> the phases it appears in."""
    out: dict[tuple[str, str], set[int]] = {}
    for i, phase in enumerate(diff.phases):
        for u in phase:
            out.setdefault((u.entry.table, u.kind), set()).add(i)
    return out


def reaches(old: Snapshot | None, new: Snapshot) -> SnapshotDiff:
    """The diff, after checking that it turns old's tables into new's with every phase consistent."""
    diff = diff_snapshots(old, new)
    assert apply_diff(old, new, diff) == switch_of(new)
    return diff


@pytest.fixture(scope="module")
def base() -> tuple[LoadBalancerConfig, ClusterState, Snapshot]:
    svcs = {
        make_service("alpha", node_port_base=30010): {"node-0": 2, "node-1": 1},
        make_service("beta", node_port_base=30020): {"node-1": 1, "node-2": 3},
        make_service("gamma", node_port_base=30030): {"node-0": 1, "node-3": 1},
    }
    config, cluster = make_config(), make_cluster(svcs)
    return config, cluster, do_render(config, cluster).snapshot


def test_phase_names() -> None:
    assert PHASE_NAMES == ("withdraw", "prepare", "publish", "retract", "cleanup")


def test_fresh_install_is_all_inserts_vips_last(multi_render: RenderResult) -> None:
    snap = multi_render.snapshot
    diff = reaches(None, snap)
    assert {u.kind for u in diff.updates()} == {"INSERT"}
    assert len(diff) == snap.entry_count()
    assert phase_of(diff) == {
        (n.BACKEND_TABLE, "INSERT"): {PREPARE},
        (n.REVERSE_NAT, "INSERT"): {PREPARE},
        (n.IPV4_LPM, "INSERT"): {PREPARE},
        (n.VIP_TABLE, "INSERT"): {PUBLISH},
    }
    assert diff.counts() == {t: {"INSERT": len(es)} for t, es in sorted(snap.tables().items()) if es}
    assert [(c.name, c.change) for c in diff.services] == [(s.name, "added") for s in snap.services]


def test_unchanged_is_empty(base: tuple[LoadBalancerConfig, ClusterState, Snapshot]) -> None:
    config, cluster, v1 = base
    again = do_render(config, cluster, v1).snapshot
    diff = diff_snapshots(v1, again)
    assert diff.empty and len(diff) == 0 and diff.services == () and diff.counts() == {}


def test_removal_retracts_vip_before_cleanup(base: tuple[LoadBalancerConfig, ClusterState, Snapshot]) -> None:
    config, cluster, v1 = base
    v2 = do_render(config, without_service(cluster, "default/beta"), v1).snapshot
    diff = reaches(v1, v2)
    assert {u.kind for u in diff.updates()} == {"DELETE"}
    assert phase_of(diff) == {
        (n.VIP_TABLE, "DELETE"): {RETRACT},
        (n.BACKEND_TABLE, "DELETE"): {CLEANUP},
        (n.REVERSE_NAT, "DELETE"): {CLEANUP},
    }
    beta = v1.by_name["default/beta"]
    assert {u.entry.service for u in diff.updates()} == {"default/beta"}
    assert diff.counts() == {
        n.BACKEND_TABLE: {"DELETE": 64},
        n.REVERSE_NAT: {"DELETE": len(beta.backends)},
        n.VIP_TABLE: {"DELETE": 1},
    }
    assert [(c.name, c.change) for c in diff.services] == [("default/beta", "removed")]


def test_scaled_service_rewrites_only_its_moved_buckets(base: tuple[LoadBalancerConfig, ClusterState, Snapshot]) -> None:
    config, cluster, v1 = base
    alpha = cluster.services["default/alpha"]
    scaled = with_service(cluster, alpha, {"node-0": 2, "node-1": 3}, ip_base=5000)  # 2:1 -> 2:3
    v2 = do_render(config, scaled, v1).snapshot
    diff = reaches(v1, v2)
    old, new = v1.by_name["default/alpha"], v2.by_name["default/alpha"]
    changed_buckets = [b for b in range(64) if old.assignment[b] != new.assignment[b]]
    assert changed_buckets, "the scale-up must move some buckets"
    assert {u.kind for u in diff.updates()} == {"MODIFY"}
    assert all(u.entry.table == n.BACKEND_TABLE for u in diff.updates())
    assert sorted(u.entry.key[1] for u in diff.updates()) == changed_buckets
    assert {u.entry.key[0] for u in diff.updates()} == {new.service_id}
    assert all(i == PREPARE or not p for i, p in enumerate(diff.phases))
    # Exactly the moves the new shares force: node-1 goes from 1/3 to 3/5 of the buckets.
    before, after = Counter(old.assignment), Counter(new.assignment)
    assert len(changed_buckets) == after["node-1"] - before["node-1"] == before["node-0"] - after["node-0"]
    for u in diff.updates():
        assert u.old is not None and u.old.args != u.entry.args
    assert [(c.name, c.change) for c in diff.services] == [("default/alpha", "changed")]


def test_scale_onto_a_new_node_prepares_its_reverse_nat(base: tuple[LoadBalancerConfig, ClusterState, Snapshot]) -> None:
    config, cluster, v1 = base
    gamma = cluster.services["default/gamma"]
    v2 = do_render(config, with_service(cluster, gamma, {"node-0": 1, "node-3": 1, "node-2": 2}, ip_base=6000), v1).snapshot
    diff = reaches(v1, v2)
    assert phase_of(diff) == {(n.BACKEND_TABLE, "MODIFY"): {PREPARE}, (n.REVERSE_NAT, "INSERT"): {PREPARE}}
    (rev,) = [u for u in diff.updates() if u.entry.table == n.REVERSE_NAT]
    assert rev.entry.key == ("10.1.0.3", 30030, 6)
    assert diff.counts()[n.BACKEND_TABLE]["MODIFY"] == 32  # node-2 takes half of the buckets


def test_bucket_count_shrink(base: tuple[LoadBalancerConfig, ClusterState, Snapshot]) -> None:
    config, cluster, v1 = base
    v2 = do_render(dataclasses.replace(config, buckets_per_service=32), cluster, v1).snapshot
    assert {s.bucket_count for s in v2.services} == {32}
    assert [s.service_id for s in v2.services] == [s.service_id for s in v1.services]
    diff = reaches(v1, v2)
    phases = phase_of(diff)
    assert phases[(n.VIP_TABLE, "MODIFY")] == {PUBLISH}
    assert phases[(n.BACKEND_TABLE, "DELETE")] == {CLEANUP}
    assert set(phases) <= {(n.VIP_TABLE, "MODIFY"), (n.BACKEND_TABLE, "DELETE"), (n.BACKEND_TABLE, "MODIFY")}
    vips = [u for u in diff.updates() if u.entry.table == n.VIP_TABLE]
    assert sorted((u.old.args[1], u.entry.args[1]) for u in vips) == [(63, 31)] * 3  # type: ignore[union-attr]
    deleted = sorted(u.entry.key for u in diff.updates() if u.kind == "DELETE")
    assert deleted == sorted((s.service_id, b) for s in v1.services for b in range(32, 64))
    assert all(u.entry.key[1] < 32 for u in diff.updates() if u.kind == "MODIFY" and u.entry.table == n.BACKEND_TABLE)
    counts = diff.counts()
    assert counts[n.VIP_TABLE] == {"MODIFY": 3} and counts[n.BACKEND_TABLE]["DELETE"] == 96


def test_bucket_count_grow(base: tuple[LoadBalancerConfig, ClusterState, Snapshot]) -> None:
    config, cluster, v1 = base
    v2 = do_render(dataclasses.replace(config, buckets_per_service=128), cluster, v1).snapshot
    diff = reaches(v1, v2)
    phases = phase_of(diff)
    assert phases[(n.BACKEND_TABLE, "INSERT")] == {PREPARE}
    assert phases[(n.VIP_TABLE, "MODIFY")] == {PUBLISH}
    assert diff.counts()[n.BACKEND_TABLE]["INSERT"] == 3 * 64


def _only(name: str, port: int = 80, node_port_base: int = 30000, **kw: object) -> Snapshot:
    config = make_config()
    svc = make_service(name, ports=(("", port, "TCP"),), node_port_base=node_port_base, **kw)  # type: ignore[arg-type]
    return do_render(config, make_cluster({svc: {"node-0": 1, "node-1": 1}})).snapshot


def _withdrawn_first(diff: SnapshotDiff, old_name: str, new_name: str) -> None:
    assert diff.phases[WITHDRAW], "the old owner's VIP must be withdrawn in phase 0"
    assert all(u.entry.table == n.VIP_TABLE and u.kind == "DELETE" for u in diff.phases[WITHDRAW]), (
        f"phase 0 may only withdraw VIPs; it holds {[(u.kind, u.entry.key, u.entry.args) for u in diff.phases[WITHDRAW]]}"
    )
    assert {u.entry.service for u in diff.phases[WITHDRAW]} == {old_name}
    published = [u for u in diff.updates() if u.entry.table == n.VIP_TABLE and u.entry.service == new_name and u.kind != "DELETE"]
    assert published and all(u in diff.phases[PUBLISH] for u in published), "new VIP published before its buckets"


@pytest.mark.parametrize("port", [80, 8080], ids=["same-vip-key", "other-vip-key"])
def test_service_id_takeover_withdraws_old_vip_first(port: int) -> None:
    # Two unrelated snapshots (e.g. a rollback target from other history): both give their
    # only Service id 1 and the first VIP, with different backends behind it.
    old = _only("old-svc")
    new = _only("new-svc", port, node_port_base=31000)
    (o,), (nw,) = old.services, new.services
    assert o.service_id == nw.service_id == 1 and o.vip == nw.vip
    diff = reaches(old, new)  # no VIP may see another Service's buckets between phases
    _withdrawn_first(diff, "default/old-svc", "default/new-svc")


def test_takeover_of_a_vip_key_by_another_service_id() -> None:
    # Old: "old-svc" id 1 on 203.0.113.10:80. New, unrelated: "a-first" takes id 1 and
    # "new-svc" (id 2) asks for 203.0.113.10: the VIP key stays, its service id changes.
    config = make_config()
    old = _only("old-svc")
    first = make_service("a-first", node_port_base=32000, load_balancer_ip="203.0.113.12")
    wanted = make_service("new-svc", node_port_base=31000, load_balancer_ip="203.0.113.10")
    new = do_render(config, make_cluster({first: {"node-2": 1}, wanted: {"node-0": 1}})).snapshot
    assert new.by_name["default/new-svc"].service_id == 2 and new.by_name["default/a-first"].service_id == 1
    diff = reaches(old, new)
    _withdrawn_first(diff, "default/old-svc", "default/new-svc")


def test_takeover_between_multi_service_snapshots() -> None:
    # Old: a=1 (.10), b=2 (.11). New (unrelated): b=1 (.10), c=2 (.11): each VIP key and service
    # id changes owner, so each old VIP is withdrawn before its buckets are rewritten.
    config = make_config()
    a, b, c = (make_service(x, node_port_base=30000 + 10 * i) for i, x in enumerate("abc"))
    old = do_render(config, make_cluster({a: {"node-0": 1}, b: {"node-1": 1}})).snapshot
    new = do_render(config, make_cluster({b: {"node-1": 2}, c: {"node-2": 1}})).snapshot
    assert {s.name: (s.service_id, s.vip) for s in old.services} == {"default/a": (1, "203.0.113.10"), "default/b": (2, "203.0.113.11")}
    assert {s.name: (s.service_id, s.vip) for s in new.services} == {"default/b": (1, "203.0.113.10"), "default/c": (2, "203.0.113.11")}
    diff = reaches(old, new)
    assert {(u.kind, u.entry.service) for u in diff.phases[WITHDRAW]} == {("DELETE", "default/a"), ("DELETE", "default/b")}


def test_identical_content_under_another_name_needs_no_writes() -> None:
    # Same VIP, id, nodes and nodePort under another name: the switch already holds the bytes.
    old, new = _only("old-svc"), _only("new-svc")
    diff = reaches(old, new)
    assert diff.empty
    assert {(c.name, c.change) for c in diff.services} == {("default/old-svc", "removed"), ("default/new-svc", "added")}


def test_route_change(base: tuple[LoadBalancerConfig, ClusterState, Snapshot]) -> None:
    config, cluster, _ = base

    def with_routes(*routes: tuple[str, int, str]) -> LoadBalancerConfig:
        rs = tuple(Route(ipaddress.IPv4Network(p), port, mac) for p, port, mac in routes)
        return dataclasses.replace(config, switch_config=SwitchConfig(routes=rs))

    v1 = do_render(with_routes(("10.1.0.0/24", 1, "02:00:00:00:00:01"), ("10.2.0.0/16", 2, "02:00:00:00:00:02")), cluster).snapshot
    cfg2 = with_routes(("10.1.0.0/24", 3, "02:00:00:00:00:01"), ("10.3.0.0/16", 2, "02:00:00:00:00:03"))
    v2 = do_render(cfg2, cluster, v1).snapshot
    diff = reaches(v1, v2)
    assert diff.counts() == {n.IPV4_LPM: {"DELETE": 1, "INSERT": 1, "MODIFY": 1}}
    assert phase_of(diff) == {
        (n.IPV4_LPM, "MODIFY"): {PREPARE},
        (n.IPV4_LPM, "INSERT"): {PREPARE},
        (n.IPV4_LPM, "DELETE"): {CLEANUP},
    }
    assert diff.services == ()


def test_counts_per_table_and_kind(base: tuple[LoadBalancerConfig, ClusterState, Snapshot]) -> None:
    config, cluster, v1 = base
    changed = with_service(
        without_service(cluster, "default/beta"), make_service("delta", node_port_base=30040), {"node-2": 1}, ip_base=7000
    )
    changed = with_service(changed, changed.services["default/alpha"], {"node-0": 1, "node-1": 1}, ip_base=7100)
    v2 = do_render(config, changed, v1).snapshot
    diff = reaches(v1, v2)
    expected: dict[str, dict[str, int]] = {}
    for u in diff.updates():
        expected.setdefault(u.entry.table, Counter())[u.kind] += 1  # type: ignore[index]
    assert diff.counts() == {t: dict(c) for t, c in sorted(expected.items())}
    assert list(diff.counts()) == sorted(diff.counts())
    assert {(c.name, c.change) for c in diff.services} == {
        ("default/alpha", "changed"),
        ("default/beta", "removed"),
        ("default/delta", "added"),
    }
    counts = diff.counts()
    assert counts[n.VIP_TABLE] == {"DELETE": 1, "INSERT": 1}
    assert counts[n.BACKEND_TABLE]["INSERT"] == 64 and counts[n.BACKEND_TABLE]["DELETE"] == 64
    # Within a phase, updates come in table order, then key order.
    for phase in diff.phases:
        keys = [(n.TABLE_ORDER.index(u.entry.table), u.entry.sort_key()) for u in phase]
        assert keys == sorted(keys)


# --- unrelated snapshots (rollback to a last good snapshot from other history) -----------------------

_cluster_st = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d", "e"]),
    st.tuples(
        st.sampled_from([80, 443]),  # service port
        st.integers(0, 2),  # nodePort variant
        st.dictionaries(st.sampled_from(["node-0", "node-1", "node-2"]), st.integers(1, 3), max_size=3),
    ),
    max_size=4,
)


def _snapshot_of(spec: dict, buckets: int) -> Snapshot:
    services = {
        make_service(name, ports=(("", port, "TCP"),), node_port_base=30000 + 10 * variant): per_node
        for name, (port, variant, per_node) in spec.items()
    }
    return do_render(make_config(buckets=buckets), make_cluster(services, nodes=3)).snapshot


@settings(max_examples=80, deadline=None)
@given(_cluster_st, _cluster_st, st.sampled_from([4, 8]), st.sampled_from([4, 8]))
def test_diff_between_unrelated_snapshots_is_consistent(old_spec: dict, new_spec: dict, b_old: int, b_new: int) -> None:
    # Each snapshot rendered from scratch, so ids and VIPs change owners freely between them.
    old, new = _snapshot_of(old_spec, b_old), _snapshot_of(new_spec, b_new)
    reaches(old, new)


def test_a_renamed_service_port_is_changed_not_removed() -> None:
    # "web" gains a second port in the same change as a scale-up: its first port is renamed
    # default/web -> default/web:http and its buckets move. Same owner: no withdrawal, no removal.
    config = make_config()
    one = make_service("web", ports=(("http", 80, "TCP"),))
    v1 = do_render(config, make_cluster({one: {"node-0": 1}})).snapshot
    two = make_service("web", ports=(("http", 80, "TCP"), ("admin", 8080, "TCP")))
    v2 = do_render(config, make_cluster({two: {"node-0": 1, "node-1": 1}}), v1).snapshot
    assert v2.by_name["default/web:http"].service_id == v1.by_name["default/web"].service_id
    diff = reaches(v1, v2)
    assert diff.phases[WITHDRAW] == ()
    assert not [u for u in diff.updates() if u.kind == "DELETE"]
    vip = v1.by_name["default/web"].entries()[n.VIP_TABLE][0]
    assert not [u for u in diff.updates() if (u.entry.table, u.entry.key) == (vip.table, vip.key)], "the live VIP is rewritten"
    changes = {c.name: (c.change, c.renamed_from) for c in diff.services}
    assert changes == {"default/web:http": ("changed", "default/web"), "default/web:admin": ("added", None)}
    # And back to one port: default/web:http -> default/web, the other port removed.
    back = diff_snapshots(v2, do_render(config, make_cluster({one: {"node-0": 1, "node-1": 1}}), v2).snapshot)
    assert {c.name: (c.change, c.renamed_from) for c in back.services} == {
        "default/web": ("changed", "default/web:http"),
        "default/web:admin": ("removed", None),
    }
    assert {u.entry.service for u in back.updates()} == {"default/web:admin"}
