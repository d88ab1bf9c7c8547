"""Connection draining in the snapshot and the renderer (DESIGN.md 5.1, issue 15): a bucket that
moves is written as dnat_draining (step 1) until its drain ends, then as plain dnat (step 2)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from helpers_render import P4INFO_DIGEST, do_render, make_cluster, make_config, make_service, without_service

from reconciler import p4names as n
from reconciler.cluster.model import DRAIN_TIMEOUT_ANNOTATION, ClusterState
from reconciler.diff import diff_snapshots
from reconciler.intent.model import LoadBalancerConfig, TrafficPolicy
from reconciler.plan import ConfigPlan, format_plan, format_text
from reconciler.render import Renderer, render
from reconciler.snapshot import Drain, ServiceSnapshot, Snapshot, SnapshotError, _fragment_text, canonical_json, from_document

T0 = 1_765_000_000.25  # an explicit clock: never time.time(), which would cross second boundaries
NAME = "default/web"


def config(timeout: float = 60.0, buckets: int = 64, **kw: Any) -> LoadBalancerConfig:
    return dataclasses.replace(make_config(buckets=buckets, **kw), connection_drain_timeout_s=timeout)


def cluster(per_node: dict[str, int], **svc_kw: Any) -> ClusterState:
    return make_cluster({make_service("web", **svc_kw): per_node}, nodes=3)


def scaled(cfg: LoadBalancerConfig, before: dict[str, int], after: dict[str, int], now: float = T0, **svc_kw: Any) -> tuple[Snapshot, Snapshot]:
    v1 = do_render(cfg, cluster(before, **svc_kw), None, now=now - 100).snapshot
    v2 = do_render(cfg, cluster(after, **svc_kw), v1, now=now).snapshot
    return v1, v2


def moved(old: ServiceSnapshot, new: ServiceSnapshot) -> dict[int, tuple[str | None, str | None]]:
    return {b: (x, y) for b, (x, y) in enumerate(zip(old.assignment, new.assignment)) if x != y}


# --- step 1 and step 2 -------------------------------------------------------------------------


def test_scale_drains_exactly_the_moved_buckets_with_draining_entries() -> None:
    v1, v2 = scaled(config(), {"node-0": 1, "node-1": 2, "node-2": 3}, {"node-0": 3, "node-1": 2, "node-2": 1})
    old, new = v1.by_name[NAME], v2.by_name[NAME]
    moves = moved(old, new)
    assert moves, "the scale must move buckets"
    until = float(int(T0) + 60)
    assert new.drains == tuple(Drain(b, str(src), int(until), until) for b, (src, _) in sorted(moves.items()))
    assert v2.drain_until() == until and v1.drain_until() is None
    by_key = {b.node: b for b in new.backends}
    entries = {e.key[1]: e for e in new.entries()[n.BACKEND_TABLE]}
    for bucket, e in entries.items():
        if bucket in moves:
            src, dst = moves[bucket]
            s, d = by_key[src], by_key[dst]  # type: ignore[index]
            assert e.action == n.DNAT_DRAINING
            assert e.args == (d.address, d.port, d.backend_id, s.address, s.port, s.backend_id, int(until))
        else:
            assert e.action == n.DNAT
    # The diff writes only the moved buckets (as draining entries).
    diff = diff_snapshots(v1, v2)
    assert diff.counts()[n.BACKEND_TABLE] == {"MODIFY": len(moves)}


def test_step_two_writes_plain_entries_once_the_drain_ends() -> None:
    cfg = config()
    v1, v2 = scaled(cfg, {"node-0": 1, "node-1": 2, "node-2": 3}, {"node-0": 3, "node-1": 2, "node-2": 1})
    c2 = cluster({"node-0": 3, "node-1": 2, "node-2": 1})
    until = v2.drain_until()
    assert until is not None
    # Before `until`: nothing to do, the same snapshot.
    early = do_render(cfg, c2, v2, now=until - 0.5)
    assert not early.changed and early.snapshot is v2
    # At `until`: step 2, with the assignment of step 1 and plain entries only.
    step2 = do_render(cfg, c2, v2, now=until)
    s1, s2 = v2.by_name[NAME], step2.snapshot.by_name[NAME]
    assert step2.changed and s2.drains == () and s2.assignment == s1.assignment
    assert {e.action for e in s2.entries()[n.BACKEND_TABLE]} == {n.DNAT}
    assert step2.snapshot.drain_until() is None and step2.snapshot.version == v2.version + 1
    assert diff_snapshots(v2, step2.snapshot).counts()[n.BACKEND_TABLE] == {"MODIFY": len(s1.drains)}
    # The incremental renderer re-renders the Service although `changed` does not name it.
    r = Renderer()
    r.render(cfg, c2, v1, p4info_digest=P4INFO_DIGEST, now=T0)
    inc = r.render(cfg, c2, v2, p4info_digest=P4INFO_DIGEST, changed=(), now=until)
    assert inc.snapshot.to_json_text() == step2.snapshot.to_json_text() and NAME in inc.rendered


def test_source_without_replicas_stays_listed_for_the_drain_then_leaves() -> None:
    cfg = config()
    v1, v2 = scaled(cfg, {"node-0": 2, "node-1": 2}, {"node-0": 2})
    old, new = v1.by_name[NAME], v2.by_name[NAME]
    gone = {b.node: b for b in old.backends}["node-1"]
    kept = {b.node: b for b in new.backends}["node-1"]
    # Listed with 0 replicas and 0 buckets, same backend id, reverse_nat entry kept.
    assert (kept.replicas, kept.buckets, kept.backend_id) == (0, 0, gone.backend_id)
    assert {e.key[0] for e in new.entries()[n.REVERSE_NAT]} == {b.address for b in old.backends}
    assert {d.source for d in new.drains} == {"node-1"} and len(new.drains) == gone.buckets
    step2 = do_render(cfg, cluster({"node-0": 2}), v2, now=T0 + 60).snapshot.by_name[NAME]
    assert [b.node for b in step2.backends] == ["node-0"] and step2.drains == ()


@pytest.mark.parametrize("loss", ["deleted", "not-ready", "new-address"])
def test_no_drain_from_a_lost_node(loss: str) -> None:
    """A node that left the cluster, is NotReady, or no longer has the address the entries name
    holds no connections worth keeping: its buckets move at once, and it leaves `backends`."""
    cfg = config()
    v1 = do_render(cfg, cluster({"node-0": 2, "node-1": 2}), None, now=T0 - 100).snapshot
    after = cluster({"node-0": 2})
    nodes = dict(after.nodes)
    if loss == "deleted":
        del nodes["node-1"]
    elif loss == "not-ready":
        nodes["node-1"] = dataclasses.replace(nodes["node-1"], ready=False)
    else:
        nodes["node-1"] = dataclasses.replace(nodes["node-1"], internal_ip="10.99.0.1")
    v2 = do_render(cfg, dataclasses.replace(after, nodes=nodes), v1, now=T0).snapshot.by_name[NAME]
    assert v2.drains == () and [b.node for b in v2.backends] == ["node-0"]
    assert {e.action for e in v2.entries()[n.BACKEND_TABLE]} == {n.DNAT}
    # The same scale-down with node-1 still up drains (the control case).
    kept = do_render(cfg, after, v1, now=T0).snapshot.by_name[NAME]
    assert {d.source for d in kept.drains} == {"node-1"}


def test_timeout_zero_means_no_drains() -> None:
    _, v2 = scaled(config(timeout=0), {"node-0": 1, "node-1": 2, "node-2": 3}, {"node-0": 3, "node-1": 2, "node-2": 1})
    assert v2.by_name[NAME].drains == () and v2.drain_until() is None
    assert {e.action for e in v2.by_name[NAME].entries()[n.BACKEND_TABLE]} == {n.DNAT}


def test_no_previous_service_and_no_backends_mean_no_drains() -> None:
    cfg = config()
    first = do_render(cfg, cluster({"node-0": 1, "node-1": 2}), None, now=T0).snapshot
    assert first.by_name[NAME].drains == ()
    empty = do_render(cfg, cluster({}), first, now=T0 + 1).snapshot
    assert empty.by_name[NAME].drains == () and empty.by_name[NAME].backends == ()
    removed = do_render(cfg, without_service(cluster({"node-0": 1}), NAME), first, now=T0 + 1).snapshot
    assert removed.services == ()


@pytest.mark.parametrize(("annotation", "expected"), [("10s", 10), ("2h", 60), ("0s", None), ("soon", 60)])
def test_annotation_shortens_never_lengthens(annotation: str, expected: int | None) -> None:
    cfg = config()
    kw = {"annotations": ((DRAIN_TIMEOUT_ANNOTATION, annotation),)}
    v1 = do_render(cfg, cluster({"node-0": 1, "node-1": 2}, **kw), None, now=T0 - 100).snapshot
    result = do_render(cfg, cluster({"node-0": 2, "node-1": 1}, **kw), v1, now=T0)
    drains = result.snapshot.by_name[NAME].drains
    if expected is None:
        assert drains == ()
    else:
        assert drains and {d.until for d in drains} == {int(T0) + expected}
    warnings = [i for i in result.issues if DRAIN_TIMEOUT_ANNOTATION in i.message]
    assert [i.severity for i in warnings] == (["warning"] if annotation == "soon" else [])


def test_bucket_moved_again_mid_drain_drains_from_its_current_backend() -> None:
    cfg = config()
    v1, v2 = scaled(cfg, {"node-0": 1, "node-1": 3}, {"node-0": 3, "node-1": 1})
    s1, s2 = v1.by_name[NAME], v2.by_name[NAME]
    first = {d.bucket: d for d in s2.drains}
    # node-2 comes up 10 s later: some buckets move again while they drain.
    v3 = do_render(cfg, cluster({"node-0": 3, "node-1": 1, "node-2": 4}), v2, now=T0 + 10).snapshot
    s3 = v3.by_name[NAME]
    second = {d.bucket: d for d in s3.drains}
    again = [b for b in first if s3.assignment[b] != s2.assignment[b]]
    assert again, "the second scale must move a draining bucket"
    for b in again:  # from the intermediate (step 1's new) backend, with a new generation
        assert second[b].source == s2.assignment[b] != s1.assignment[b]
        assert second[b].until == int(T0 + 10) + 60 and second[b].generation > first[b].generation
    for b in set(first) - set(again):  # unchanged target: kept as is
        assert second[b] == first[b]


def test_a_drain_started_while_another_runs_takes_a_fresh_generation() -> None:
    """Overlapping drains never share a generation: a bucket whose drain in a shared generation
    had ended would, moved again, find its connections marked as new (they would go to the next
    backend), and a generation kept alive by overlapping drains would fill the filter."""
    web, api = make_service("web"), make_service("api", node_port_base=31000)
    cfg = config()
    c1 = make_cluster({web: {"node-0": 1, "node-1": 3}, api: {"node-0": 2, "node-1": 2}}, nodes=3)
    c2 = make_cluster({web: {"node-0": 3, "node-1": 1}, api: {"node-0": 2, "node-1": 2}}, nodes=3)
    c3 = make_cluster({web: {"node-0": 3, "node-1": 1}, api: {"node-0": 1, "node-1": 2, "node-2": 3}}, nodes=3)
    v1 = do_render(cfg, c1, None, now=T0 - 100).snapshot
    v2 = do_render(cfg, c2, v1, now=T0).snapshot
    first = {d.generation for d in v2.by_name[NAME].drains}
    v3 = do_render(cfg, c3, v2, now=T0 + 10).snapshot
    api_drains = v3.by_name["default/api"].drains
    assert api_drains and min(d.generation for d in api_drains) > max(first)
    assert {d.until for d in api_drains} == {int(T0) + 10 + 60}  # its own timeout, from its own start
    assert v3.by_name[NAME].drains == v2.by_name[NAME].drains  # the running drain is untouched


def test_timeout_set_to_zero_mid_drain_keeps_the_running_drains() -> None:
    """0 means no new drains; it does not cut running ones short (that would reset the
    connections they keep)."""
    v1, v2 = scaled(config(), {"node-0": 1, "node-1": 2, "node-2": 3}, {"node-0": 3, "node-1": 2, "node-2": 1})
    running = v2.by_name[NAME].drains
    assert running
    zero = config(timeout=0)
    v3 = do_render(zero, cluster({"node-0": 3, "node-1": 2, "node-2": 1}), v2, now=T0 + 10).snapshot
    assert v3.by_name[NAME].drains == running
    # A move now does not drain; the running drains still end at their own time.
    v4 = do_render(zero, cluster({"node-0": 3, "node-1": 3, "node-2": 1}), v3, now=T0 + 20).snapshot
    assert {d.bucket for d in v4.by_name[NAME].drains} <= {d.bucket for d in running}
    assert do_render(zero, cluster({"node-0": 3, "node-1": 3, "node-2": 1}), v4, now=T0 + 60).snapshot.drain_until() is None


def test_generations_grow_across_drains_even_after_all_ended() -> None:
    cfg = config(timeout=5)
    v1, v2 = scaled(cfg, {"node-0": 1, "node-1": 3}, {"node-0": 3, "node-1": 1})
    g1 = v2.max_drain_generation()
    v3 = do_render(cfg, cluster({"node-0": 3, "node-1": 1}), v2, now=T0 + 5).snapshot
    assert v3.drain_until() is None and v3.max_drain_generation() == 0
    v4 = do_render(cfg, cluster({"node-0": 1, "node-1": 3}), v3, now=T0 + 6).snapshot
    assert v4.by_name[NAME].drains and min(d.generation for d in v4.by_name[NAME].drains) > g1
    # Scaled back while v4's drains run: node-1 frees its own buckets before the ones draining
    # to it (moving those again sends their old connections to the intermediate backend); the
    # new drains take a fresh generation.
    short = dataclasses.replace(cfg, connection_drain_timeout_s=1)
    v5 = do_render(short, cluster({"node-0": 3, "node-1": 1}), v4, now=T0 + 6).snapshot
    s4, s5 = v4.by_name[NAME], v5.by_name[NAME]
    running, g4 = {d.bucket: d for d in s4.drains}, v4.max_drain_generation()
    begun = [d for d in s5.drains if d not in s4.drains]
    assert begun and all(d.generation > g4 for d in begun)
    freed = s4.assignment.count("node-1") - s5.assignment.count("node-1")
    own = sum(1 for b, k in enumerate(s4.assignment) if k == "node-1" and b not in running)
    assert sum(1 for d in begun if d.bucket in running) == max(0, freed - own)
    assert all(s5.assignment[b] != "node-1" for b, k in enumerate(s4.assignment) if k == "node-1" and b not in running)


def test_generation_is_shared_by_a_render_and_never_zero() -> None:
    web, api = make_service("web"), make_service("api", node_port_base=31000)
    cfg = config()
    c1 = make_cluster({web: {"node-0": 1, "node-1": 3}, api: {"node-0": 3, "node-1": 1}}, nodes=2)
    c2 = make_cluster({web: {"node-0": 3, "node-1": 1}, api: {"node-0": 1, "node-1": 3}}, nodes=2)
    v1 = do_render(cfg, c1, None, now=T0).snapshot
    v2 = do_render(cfg, c2, v1, now=T0 + 1).snapshot
    gens = {d.generation for s in v2.services for d in s.drains}
    assert len(gens) == 1 and 0 not in gens
    # An epoch near 0 still gives generations from 1.
    w1 = do_render(cfg, c1, None, now=0.5).snapshot
    w2 = do_render(config(timeout=0.001), c2, w1, now=0.5).snapshot
    assert {d.generation for s in w2.services for d in s.drains} == {1}


# --- the snapshot format -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def draining() -> Snapshot:
    return scaled(config(buckets=16), {"node-0": 1, "node-1": 2, "node-2": 3}, {"node-0": 3, "node-1": 2, "node-2": 1})[1]


def test_round_trip_through_document_and_file(draining: Snapshot) -> None:
    doc = draining.to_document()
    drains = doc["services"][0]["drains"]
    assert drains[0] == {
        "bucket": draining.services[0].drains[0].bucket,
        "from": draining.services[0].drains[0].source,
        "generation": int(T0) + 60,
        "until": "2025-12-06T05:47:40Z",
    }
    back = from_document(json.loads(json.dumps(doc)))
    assert back == draining and back.digest == draining.digest and back.services[0].drains == draining.services[0].drains
    again = from_document(json.loads(draining.to_json_text()))
    assert again.to_json_text() == draining.to_json_text()


def test_fragment_text_with_drains_equals_generic_form(draining: Snapshot) -> None:
    svc = draining.services[0]
    assert svc.fragment_text() == _fragment_text(svc.to_json(), svc.entries())
    generic = {"entries": {t: [e.to_json() for e in es] for t, es in svc.entries().items() if es}, "service": svc.to_json()}
    assert svc.fragment_text() == canonical_json(generic).decode()


def test_digest_covers_drains(draining: Snapshot) -> None:
    svc = draining.services[0]
    d = svc.drains[0]
    for other in (dataclasses.replace(d, until=d.until + 1), dataclasses.replace(d, generation=d.generation + 1)):
        changed = dataclasses.replace(draining, services=(dataclasses.replace(svc, drains=(other,) + svc.drains[1:]),))
        assert changed.digest != draining.digest


def _mutated(snap: Snapshot, fn: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(snap.to_document()))
    fn(doc)
    return doc


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d["services"][0]["drains"].pop(0), "drains do not list it"),
        (lambda d: d["services"][0]["drains"][0].update({"from": "node-9"}), "is not a listed backend"),
        (lambda d: d["services"][0]["drains"].reverse(), "unique and sorted"),
        (lambda d: d["services"][0]["drains"][0].update({"until": "tomorrow"}), "until"),
        (lambda d: d["services"][0]["drains"][0].update({"generation": 0}), "generation"),
        (lambda d: d["services"][0]["drains"][0].update({"bucket": 99}), "outside bucketCount"),
    ],
    ids=["entry-without-drain", "unlisted-source", "unsorted", "bad-until", "generation-0", "bucket-outside"],
)
def test_from_document_checks_drains(draining: Snapshot, mutate: Any, fragment: str) -> None:
    with pytest.raises(SnapshotError, match=fragment):
        from_document(_mutated(draining, mutate))


def test_drain_without_draining_entry_is_refused(draining: Snapshot) -> None:
    def plain(doc: dict[str, Any]) -> None:
        for e in doc["tables"][n.BACKEND_TABLE]:
            if e["action"] == n.DNAT_DRAINING:
                e["action"] = n.DNAT
                e["params"] = {k: e["params"][k] for k in ("node_ip", "node_port", "backend_id")}
                return

    with pytest.raises(SnapshotError, match="lists? it"):
        from_document(_mutated(draining, plain))


def test_snapshot_without_drains_keeps_its_digest_from_before_drains() -> None:
    # Pinned before drains existed (commit 0a143b1): stored audit histories must still verify.
    web = make_service("web", ports=(("http", 80, "TCP"), ("dns", 53, "UDP")))
    idle = make_service("idle", node_port_base=30100)
    c = make_cluster({web: {"node-0": 2, "node-1": 1}, idle: {}}, nodes=3)
    snap = render(make_config(buckets=16), c, None, p4info_digest="sha256:" + "ab" * 32, now=T0).snapshot
    assert snap.digest == "sha256:46669e9af35332a155da3dddb9120f64df56a7a3a114b75e2461746239a63ee7"
    assert all("drains" not in s for s in snap.to_document()["services"])


# --- safety ------------------------------------------------------------------------------------


def test_service_kept_on_error_keeps_its_drains() -> None:
    cfg = config()
    v1, v2 = scaled(cfg, {"node-0": 1, "node-1": 3}, {"node-0": 3, "node-1": 1})
    # Its requested IP is now outside the pools: an error, so it is kept as in v2, drains and all.
    broken = cluster({"node-0": 2, "node-1": 2}, load_balancer_ip="198.51.100.1")
    result = do_render(cfg, broken, v2, now=T0 + 1)
    assert result.snapshot.by_name[NAME] == v2.by_name[NAME]
    assert any("kept as in v2" in i.message for i in result.issues)


def test_require_local_refuses_cluster_policy_and_keeps_a_served_service() -> None:
    strict = dataclasses.replace(config(), traffic_policy=TrafficPolicy(require_local=True))
    local = cluster({"node-0": 1})
    v1 = do_render(strict, local, None, now=T0).snapshot
    cluster_policy = cluster({"node-0": 1}, external_traffic_policy="Cluster")
    kept = do_render(strict, cluster_policy, v1, now=T0 + 1)
    assert kept.snapshot.by_name[NAME] == v1.by_name[NAME]
    (issue,) = [i for i in kept.issues if "externalTrafficPolicy" in i.message]
    assert issue.severity == "error" and "kept as in v1" in issue.message
    fresh = do_render(strict, cluster_policy, None, now=T0)
    assert fresh.snapshot.services == () and [i.severity for i in fresh.issues] == ["error"]
    # Without requireLocal: served, with a warning; podIP mode: no warning (no kube-proxy hop).
    lenient = do_render(config(), cluster_policy, None, now=T0)
    assert lenient.snapshot.services and [(i.severity, "set Local" in i.message) for i in lenient.issues] == [("warning", True)]
    pods = do_render(config(backend_mode="podIP"), cluster_policy, None, now=T0)
    assert not [i for i in pods.issues if "externalTrafficPolicy" in i.message]


def test_plan_shows_drain_start_and_end() -> None:
    cfg = config(buckets=16)
    c2 = cluster({"node-0": 3, "node-1": 2, "node-2": 1})
    v1, v2 = scaled(cfg, {"node-0": 1, "node-1": 2, "node-2": 3}, {"node-0": 3, "node-1": 2, "node-2": 1})
    step1 = ConfigPlan(cfg.key, v1, v2, diff_snapshots(v1, v2), ())
    text = format_text([step1])
    assert "drain from node-2 to node-0 until 2025-12-06T05:47:40Z (established connections kept)" in text
    assert "buckets start draining" in text
    v3 = do_render(cfg, c2, v2, now=T0 + 60).snapshot
    step2 = ConfigPlan(cfg.key, v2, v3, diff_snapshots(v2, v3), ())
    assert f"drain of {len(v2.services[0].drains)} buckets finished" in format_text([step2])
    from reconciler.plan_summary import format_summary

    assert "**Connection draining:** 0 bucket(s) start draining" in format_summary([step2])
    assert "start draining (established connections kept on their old backend until the drain ends), 0 finish" in format_summary([step1])
    doc = json.loads(format_plan([step2], "json"))
    assert doc["summary"]["drainsFinished"] == len(v2.services[0].drains) and doc["summary"]["drainsStarted"] == 0


def test_pod_ip_mode_drains_from_the_pod_address() -> None:
    cfg = config(buckets=16, backend_mode="podIP")
    v1, v2 = scaled(cfg, {"node-0": 2, "node-1": 1}, {"node-0": 1, "node-1": 1})
    old, new = v1.by_name[NAME], v2.by_name[NAME]
    gone = {b.address for b in old.backends} - {a for a in new.assignment}
    assert len(gone) == 1 and {d.source for d in new.drains} == gone
    (source,) = [b for b in new.backends if b.address in gone]
    assert (source.replicas, source.buckets) == (0, 0)
    assert from_document(json.loads(v2.to_json_text())).digest == v2.digest


@pytest.mark.parametrize(("value", "expected"), [(None, "Cluster"), ("Cluster", "Cluster"), ("Local", "Local")])
def test_external_traffic_policy_is_read_from_the_service(value: str | None, expected: str) -> None:
    from reconciler.cluster.convert import service_from_dict
    from reconciler.cluster.synthetic import _service_dict

    spec: dict[str, Any] = {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30000}]}
    if value is not None:
        spec["externalTrafficPolicy"] = value
    svc = service_from_dict({"metadata": {"namespace": "default", "name": "web"}, "spec": spec})
    assert svc.external_traffic_policy == expected
    assert service_from_dict(_service_dict(svc)).external_traffic_policy == expected
