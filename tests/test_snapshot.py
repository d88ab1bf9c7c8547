"""The snapshot format: schema, canonical JSON, digest, parsing and its checks (DESIGN.md 4)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from entry_checks import check_table_entry
from helpers_render import do_render, make_cluster, make_config, make_service

from reconciler import p4names as n
from reconciler.p4info import pipeline_info
from reconciler.render import RenderResult
from reconciler.snapshot import (
    Backend,
    SnapshotError,
    Snapshot,
    canonical_json,
    from_document,
    load_snapshot,
    schema_errors,
)


@pytest.fixture(scope="module")
def varied() -> Snapshot:
    """A snapshot with a multi-port Service, a UDP port and a Service without endpoints."""
    web = make_service("web", ports=(("http", 80, "TCP"), ("dns", 53, "UDP")))
    idle = make_service("idle", node_port_base=30100)
    cluster = make_cluster({web: {"node-0": 2, "node-1": 1}, idle: {}}, nodes=3)
    return do_render(make_config(buckets=16), cluster).snapshot


@pytest.fixture(scope="module")
def podip() -> Snapshot:
    svc = make_service("pods")
    cluster = make_cluster({svc: {"node-0": 2, "node-2": 1}}, nodes=3)
    return do_render(make_config(buckets=8, backend_mode="podIP"), cluster).snapshot


@pytest.fixture(params=["multi", "varied", "podip"])
def snap(request: pytest.FixtureRequest, multi_render: RenderResult, varied: Snapshot, podip: Snapshot) -> Snapshot:
    return {"multi": multi_render.snapshot, "varied": varied, "podip": podip}[request.param]


def test_document_validates_against_schema(snap: Snapshot) -> None:
    doc = snap.to_document()
    assert schema_errors(doc) == []
    assert doc["digest"] == snap.digest and doc["digest"].startswith("sha256:")
    assert [s["name"] for s in doc["services"]] == sorted(s["name"] for s in doc["services"])
    for s in doc["services"]:
        assert [b["node"] for b in s["backends"]] == sorted(b["node"] for b in s["backends"])


def test_round_trip_keeps_digest_and_services(snap: Snapshot) -> None:
    back = from_document(snap.to_document())
    assert back.digest == snap.digest
    assert back.services == snap.services
    assert back.global_entries == snap.global_entries
    assert back.to_json_text() == snap.to_json_text()
    # Through the file form, too.
    assert from_document(json.loads(snap.to_json_text())).digest == snap.digest


def test_entry_canonical_equals_generic_canonical_json(snap: Snapshot) -> None:
    count = 0
    for es in snap.tables().values():
        for e in es:
            assert e.canonical() == canonical_json(e.to_json()).decode(), e
            count += 1
    assert count == snap.entry_count() > 0


def test_fragment_text_equals_generic_form(snap: Snapshot) -> None:
    for s in snap.services:
        generic = {
            "entries": {t: [e.to_json() for e in es] for t, es in s.entries().items() if es},
            "service": s.to_json(),
        }
        assert s.fragment_text() == canonical_json(generic).decode(), s.name


def test_service_without_endpoints_has_no_entries(varied: Snapshot) -> None:
    idle = varied.by_name["default/idle"]
    assert idle.backends == () and idle.entries() == {}
    assert json.loads(idle.fragment_text()) == {"entries": {}, "service": idle.to_json()}


def test_json_text_parses_to_document(snap: Snapshot) -> None:
    text = snap.to_json_text()
    assert text.endswith("\n")
    assert json.loads(text) == snap.to_document()
    # One table entry per line, so a one-bucket change is a one-line diff in review.
    lines = text.splitlines()
    assert sum(1 for line in lines if line.lstrip().startswith('{"action"')) == snap.entry_count()


def test_every_entry_fits_the_p4info(snap: Snapshot) -> None:
    info = pipeline_info()
    doc = snap.to_document()
    checked = 0
    for table, entries in doc["tables"].items():
        for e in entries:
            assert check_table_entry(info, table, e) == [], (table, e)
            checked += 1
    assert checked == snap.entry_count()


def test_check_table_entry_is_not_vacuous(multi_render: RenderResult) -> None:
    # The P4Info check does catch a value that does not fit: guards the test above.
    info = pipeline_info()
    e = copy.deepcopy(multi_render.snapshot.to_document()["tables"][n.BACKEND_TABLE][0])
    e["params"]["node_port"] = 70000
    assert any("node_port" in p for p in check_table_entry(info, n.BACKEND_TABLE, e))


# --- digest ---------------------------------------------------------------------------------------


def test_digest_ignores_version_and_sources(multi_render: RenderResult) -> None:
    s = multi_render.snapshot
    assert s.with_version(s.version + 41).digest == s.digest
    other = dataclasses.replace(s, intent_commit="a" * 40, cluster_resource_version="12345")
    assert other.digest == s.digest
    assert other.to_document()["sources"] == {"intentCommit": "a" * 40, "clusterResourceVersion": "12345"}


def _mutations(s: Snapshot) -> dict[str, Snapshot]:
    svc = s.services[0]
    b0 = svc.backends[0]
    moved = list(svc.assignment)
    other = next(k for k in moved if k != moved[0])
    moved[0] = other
    counts = {k: moved.count(k) for k in set(moved)}
    reassigned = dataclasses.replace(
        svc,
        assignment=tuple(moved),
        backends=tuple(dataclasses.replace(b, buckets=counts.get(b.node, 0)) for b in svc.backends),
    )

    def with_svc(new: object) -> Snapshot:
        return dataclasses.replace(s, services=(new,) + s.services[1:])

    def with_backend(**kw: object) -> Snapshot:
        return with_svc(dataclasses.replace(svc, backends=(dataclasses.replace(b0, **kw),) + svc.backends[1:]))

    return {
        "vip": with_svc(dataclasses.replace(svc, vip="198.51.100.99")),
        "port": with_svc(dataclasses.replace(svc, port=svc.port + 1)),
        "serviceId": with_svc(dataclasses.replace(svc, service_id=999)),
        "protocol": with_svc(dataclasses.replace(svc, protocol="TCP" if svc.protocol == "UDP" else "UDP")),
        "algorithm": with_svc(dataclasses.replace(svc, algorithm="round-robin")),
        "replicas": with_backend(replicas=b0.replicas + 1),
        "backendId": with_backend(backend_id=b0.backend_id + 100),
        "backend port": with_backend(port=b0.port + 1),
        "one bucket": with_svc(reassigned),
        "service dropped": dataclasses.replace(s, services=s.services[1:]),
        "routes": dataclasses.replace(s, global_entries=()),
        "config": dataclasses.replace(s, config="other/config"),
        "p4info": dataclasses.replace(s, p4info_digest="sha256:" + "1" * 64),
        "program": dataclasses.replace(s, program="other.p4"),
    }


def test_digest_changes_with_any_content(multi_render: RenderResult) -> None:
    s = multi_render.snapshot
    assert s.global_entries, "the example has a route; the 'routes' mutation needs one"
    digests = {name: m.digest for name, m in _mutations(s).items()}
    for name, d in digests.items():
        assert d != s.digest, f"digest did not change when {name} changed"
    assert len(set(digests.values())) == len(digests), "two different contents share a digest"


def test_digest_is_deterministic_across_instances(multi_render: RenderResult) -> None:
    s = multi_render.snapshot
    rebuilt = Snapshot(
        s.config, 7, None, None, s.program, s.p4info_digest,
        tuple(dataclasses.replace(x) for x in s.services), s.global_entries,
    )
    assert rebuilt.digest == s.digest


# --- from_document rejects --------------------------------------------------------------------------


def _doc(multi_render: RenderResult) -> dict:
    return copy.deepcopy(multi_render.snapshot.to_document())


def _rejects(doc: dict, *fragments: str) -> str:
    with pytest.raises(SnapshotError) as info:
        from_document(doc, source="snap.json")
    msg = str(info.value)
    assert msg.startswith("snap.json"), msg
    for f in fragments:
        assert f in msg, f"{f!r} not in error message: {msg}"
    return msg


def test_rejects_wrong_digest(multi_render: RenderResult) -> None:
    doc = _doc(multi_render)
    doc["digest"] = "sha256:" + "0" * 64
    _rejects(doc, "digest mismatch", "0" * 64, multi_render.snapshot.digest)


def test_rejects_content_changed_under_same_digest(multi_render: RenderResult) -> None:
    doc = _doc(multi_render)
    doc["services"][0]["backends"][0]["replicas"] += 1
    _rejects(doc, "digest mismatch")


def test_rejects_missing_backend_entry(multi_render: RenderResult) -> None:
    doc = _doc(multi_render)
    removed = doc["tables"][n.BACKEND_TABLE].pop(5)
    bucket = removed["match"]["meta.bucket"]
    i = [s["name"] for s in doc["services"]].index(removed["service"])
    _rejects(doc, f"services[{i}]", f"bucket {bucket} has no backend_table entry")


@pytest.mark.parametrize("table", [n.VIP_TABLE, n.REVERSE_NAT])
def test_rejects_missing_entry(multi_render: RenderResult, table: str) -> None:
    doc = _doc(multi_render)
    removed = doc["tables"][table].pop(0)
    key = list(removed["match"].values())[0]
    _rejects(doc, "tables disagree with services", "implied but missing", str(key))


def test_rejects_missing_route(multi_render: RenderResult) -> None:
    # Routes belong to the config, not to a Service: nothing implies them, the digest covers them.
    doc = _doc(multi_render)
    doc["tables"][n.IPV4_LPM].pop(0)
    _rejects(doc, "digest mismatch")


def test_rejects_extra_entry(multi_render: RenderResult) -> None:
    doc = _doc(multi_render)
    extra = copy.deepcopy(doc["tables"][n.REVERSE_NAT][0])
    extra["match"]["hdr.ipv4.srcAddr"] = "10.250.0.1"
    doc["tables"][n.REVERSE_NAT].append(extra)
    _rejects(doc, "tables disagree with services", "entries not implied by services", "10.250.0.1")


def test_rejects_extra_route(multi_render: RenderResult) -> None:
    doc = _doc(multi_render)
    doc["tables"][n.IPV4_LPM].append(
        {"action": n.FWD, "match": {"hdr.ipv4.dstAddr": "10.9.0.0/16"}, "params": {"port": 2, "dst_mac": "02:00:00:00:00:09"}}
    )
    _rejects(doc, "digest mismatch")  # a global entry is content: it changes the digest


def test_rejects_entry_of_unlisted_service(multi_render: RenderResult) -> None:
    doc = _doc(multi_render)
    extra = copy.deepcopy(doc["tables"][n.VIP_TABLE][0])
    extra["service"] = "ghost/svc"
    extra["match"]["hdr.ipv4.dstAddr"] = "198.51.100.19"
    doc["tables"][n.VIP_TABLE].append(extra)
    _rejects(doc, "not listed", "ghost/svc")


def test_rejects_bucket_pointing_at_unlisted_backend(multi_render: RenderResult) -> None:
    doc = _doc(multi_render)
    entry = doc["tables"][n.BACKEND_TABLE][3]
    entry["params"]["node_ip"] = "172.20.0.99"
    _rejects(doc, f"bucket {entry['match']['meta.bucket']}", "not a listed backend", "172.20.0.99")


def test_rejects_bucket_outside_bucket_count(multi_render: RenderResult) -> None:
    doc = _doc(multi_render)
    entry = copy.deepcopy(doc["tables"][n.BACKEND_TABLE][0])
    entry["match"]["meta.bucket"] = 64
    doc["tables"][n.BACKEND_TABLE].append(entry)
    _rejects(doc, "bucket 64 outside bucketCount 64")


def test_rejects_unsorted_services(multi_render: RenderResult) -> None:
    doc = _doc(multi_render)
    doc["services"][0], doc["services"][1] = doc["services"][1], doc["services"][0]
    _rejects(doc, "sorted by name")


def test_rejects_duplicate_services(multi_render: RenderResult) -> None:
    doc = _doc(multi_render)
    doc["services"].insert(1, copy.deepcopy(doc["services"][0]))
    _rejects(doc, "unique")


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.pop("digest"), "'digest' is a required property"),
        (lambda d: d["services"][1].__setitem__("protocol", "SCTP"), "services[1].protocol"),
        (lambda d: d["services"][0].__setitem__("vip", "300.1.2.3"), "services[0].vip"),
        (lambda d: d["services"][0].__setitem__("bucketCount", 48), "services[0].bucketCount"),
        (lambda d: d.__setitem__("version", 0), "version"),
        (lambda d: d.__setitem__("surprise", True), "surprise"),
        (lambda d: d["tables"][n.VIP_TABLE][0].pop("params"), "'params' is a required property"),
        (lambda d: d["sources"].__setitem__("intentCommit", "HEAD"), "sources.intentCommit"),
    ],
    ids=["no-digest", "sctp", "bad-vip", "bucket-count", "version-0", "unknown-field", "no-params", "bad-commit"],
)
def test_rejects_schema_violations(multi_render: RenderResult, mutate, fragment: str) -> None:  # type: ignore[no-untyped-def]
    doc = _doc(multi_render)
    mutate(doc)
    _rejects(doc, "not a valid snapshot", fragment)


def test_rejects_unknown_table_and_action(multi_render: RenderResult) -> None:
    doc = _doc(multi_render)
    doc["tables"]["MyIngress.nope"] = [copy.deepcopy(doc["tables"][n.VIP_TABLE][0])]
    _rejects(doc, "MyIngress.nope", "not in the load_balancer.p4 pipeline")
    doc = _doc(multi_render)
    doc["tables"][n.VIP_TABLE][0]["action"] = "MyIngress.teleport"
    _rejects(doc, "unknown action", "MyIngress.teleport")


def test_load_snapshot_names_file_and_position(tmp_path, multi_render: RenderResult) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "good.json"
    good.write_text(multi_render.snapshot.to_json_text())
    assert load_snapshot(good).digest == multi_render.snapshot.digest
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "version": 1,\n  oops\n}\n')
    with pytest.raises(SnapshotError, match=r"bad\.json:3:3: not JSON"):
        load_snapshot(bad)
    with pytest.raises(SnapshotError, match="cannot read snapshot"):
        load_snapshot(tmp_path / "absent.json")


def test_backend_json_has_active_connections_only_when_known() -> None:
    b = Backend("node-a", "10.0.0.1", 30000, 2, 8, 0)
    assert "activeConnections" not in b.to_json()
    assert dataclasses.replace(b, active_connections=3).to_json()["activeConnections"] == 3
