"""The file form (`Snapshot.to_json_text`) and the fragment text, written from per-Service entry
texts: byte-identical to the form built from Entry objects (snapshot.tables()), including the
orders a sort decides (shared reverse_nat keys, routes, drains) and the fallbacks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import pytest
from helpers_render import do_render, make_cluster, make_config, make_service

from reconciler import p4names as n
from reconciler.render import RenderResult
from reconciler.snapshot import (
    API_VERSION,
    KIND,
    Drain,
    Entry,
    Snapshot,
    SnapshotError,
    canonical_json,
    route_entries,
)


def reference_text(snap: Snapshot) -> str:
    """The file form as it was built before entry texts: every entry an Entry, from tables()."""
    head = {
        "apiVersion": API_VERSION,
        "config": snap.config,
        "digest": snap.digest,
        "kind": KIND,
        "pipeline": {"program": snap.program, "p4infoDigest": snap.p4info_digest},
        "sources": {"intentCommit": snap.intent_commit, "clusterResourceVersion": snap.cluster_resource_version},
        "version": snap.version,
    }
    head.update(snap.extra)
    items = [(k, json.dumps(v, sort_keys=True, ensure_ascii=False)) for k, v in head.items()]
    services = ",\n".join("    " + canonical_json(s.to_json()).decode() for s in snap.services)
    items.append(("services", f"[\n{services}\n  ]" if snap.services else "[]"))
    tables = []
    for t, es in sorted(snap.tables().items()):
        body = ",\n".join("      " + e.canonical() for e in es)
        tables.append(f"    {json.dumps(t)}: [\n{body}\n    ]" if es else f"    {json.dumps(t)}: []")
    items.append(("tables", "{\n" + ",\n".join(tables) + "\n  }"))
    items.sort()
    return "\n".join(["{", ",\n".join(f"  {json.dumps(k)}: {v}" for k, v in items), "}\n"])


def rendered(buckets: int = 16, backend_mode: str = "nodePort") -> Snapshot:
    web = make_service("web", ports=(("http", 80, "TCP"), ("dns", 53, "UDP")))
    api = make_service("api", node_port_base=30200)
    idle = make_service("idle", node_port_base=30100)
    cluster = make_cluster({web: {"node-0": 2, "node-1": 1}, api: {"node-2": 1, "node-1": 3}, idle: {}}, nodes=3)
    return do_render(make_config(buckets=buckets, backend_mode=backend_mode), cluster).snapshot


def with_drain(snap: Snapshot) -> Snapshot:
    """The first Service with two backends drains bucket 1 from the backend it does not point at."""
    svc = next(s for s in snap.services if len({b.node for b in s.backends}) > 1)
    target = svc.assignment[1]
    source = next(b.node for b in svc.backends if b.node != target)
    drained = dataclasses.replace(svc, drains=(Drain(1, source, 7, 1_800_000_000.0),))
    return dataclasses.replace(snap, services=tuple(drained if s is svc else s for s in snap.services))


def shared_pods(snap: Snapshot) -> Snapshot:
    """Two Services selecting the same pods on the same port: equal reverse_nat keys, whose order
    the stable sort keeps from the Services' order."""
    a, b = [s for s in snap.services if s.backends and s.protocol == "TCP"][:2]
    twin = dataclasses.replace(b, backends=a.backends, assignment=a.assignment)
    return dataclasses.replace(snap, services=tuple(twin if s is b else s for s in snap.services))


def with_routes(snap: Snapshot) -> Snapshot:
    routes = route_entries([("10.0.0.0/8", 1, "00:00:00:00:00:01"), ("10.1.0.0/16", 2, "00:00:00:00:00:02"),
                            ("192.168.0.0/16", 3, "00:00:00:00:00:03")])
    return dataclasses.replace(snap, global_entries=routes)


def cases(multi: Snapshot) -> dict[str, Snapshot]:
    node, pod = rendered(), rendered(backend_mode="podIP")
    return {
        "multi": multi,
        "nodePort": node,
        "podIP": pod,
        "drain": with_drain(node),
        "shared reverse_nat keys": shared_pods(pod),
        "routes": with_routes(node),
        "extra header field": dataclasses.replace(node, extra={"x-note": "kept"}),
        "no services": dataclasses.replace(node, services=()),
        "64 buckets": rendered(buckets=64),
    }


def test_file_form_is_byte_identical_to_the_entry_form(multi_render: RenderResult) -> None:
    for name, snap in cases(multi_render.snapshot).items():
        assert snap.to_json_text() == reference_text(snap), name
        assert json.loads(snap.to_json_text()) == json.loads(json.dumps(snap.to_document())), name


def test_shared_keys_really_tie(multi_render: RenderResult) -> None:
    snap = cases(multi_render.snapshot)["shared reverse_nat keys"]
    keys = [e.key for e in snap.tables()[n.REVERSE_NAT]]
    assert len(keys) > len(set(keys))  # the case the stable order matters for is exercised


def test_duplicate_service_ids_keep_the_interleaved_order(multi_render: RenderResult) -> None:
    """Not a valid snapshot, but the file form stays what tables() orders (bucket by bucket)."""
    snap = rendered()
    a, b = [s for s in snap.services if s.backends][:2]
    dup = dataclasses.replace(snap, services=tuple(dataclasses.replace(s, service_id=a.service_id) if s is b else s
                                                    for s in snap.services))
    assert dup.to_json_text() == reference_text(dup)


def test_entry_texts_are_the_entries_canonical_forms(multi_render: RenderResult) -> None:
    for name, snap in cases(multi_render.snapshot).items():
        for s in snap.services:
            assert s.entry_texts() == {t: [e.canonical() for e in es] for t, es in s.entries().items()}, (name, s.name)
            generic = {"entries": {t: [e.to_json() for e in es] for t, es in s.entries().items() if es}, "service": s.to_json()}
            assert s.fragment_text() == canonical_json(generic).decode(), (name, s.name)


def test_entry_sort_is_unchanged_by_the_cached_address_order() -> None:
    entries = [Entry(n.REVERSE_NAT, (a, 80, 6), n.SNAT, ("10.9.9.9", 80)) for a in ("10.0.0.10", "10.0.0.9", "9.255.255.255")]
    assert [e.key[0] for e in sorted(entries, key=Entry.sort_key)] == ["9.255.255.255", "10.0.0.9", "10.0.0.10"]


@pytest.mark.parametrize("value", ["10.0.0.0/8", "aa:bb:cc:dd:ee:ff", "1.2.3.4"])
def test_sort_values_cached_equal_fresh(value: str) -> None:
    from reconciler.snapshot import _sort_str, _sort_value

    assert _sort_value(value) == _sort_str.__wrapped__(value)


# --- reading the file form: load_snapshot's text path against from_document -------------------


def outcome(call: Callable[[], Snapshot]) -> tuple[object, ...]:
    try:
        snap = call()
    except SnapshotError as e:
        return ("error", str(e))
    return ("ok", snap.digest, snap.services, snap.global_entries, snap.to_json_text())


def test_file_text_path_gives_from_documents_snapshot(tmp_path: Path, multi_render: RenderResult) -> None:
    from reconciler import snapshot as S

    for name, snap in cases(multi_render.snapshot).items():
        if name in ("extra header field",):
            continue
        text = snap.to_json_text()
        doc = json.loads(text)
        fast = S._from_file_text([doc], text)
        assert fast is not None, name  # the path is taken for what to_json_text writes
        ref = S.from_document(json.loads(text))
        assert (fast.digest, fast.services, fast.global_entries, fast.version, fast.config) == (
            ref.digest, ref.services, ref.global_entries, ref.version, ref.config), name
        path = tmp_path / "s.json"
        path.write_text(text)
        assert S.load_snapshot(path).to_json_text() == text, name


def mutations(text: str) -> list[str]:
    """File texts that differ from what to_json_text writes: each must be decided by from_document."""
    doc = json.loads(text)
    out = [text.replace("\n", "\r\n"), text.replace('"version": ', '"version":  '), json.dumps(doc, indent=2)]
    lines = text.splitlines(keepends=True)
    rows = [i for i, line in enumerate(lines) if line.startswith("      {")]
    for i in rows[:: max(1, len(rows) // 12)]:
        row = lines[i]
        for old, new in (('"meta.bucket":', '"meta.bucket": '), ('"MyIngress.dnat"', '"MyIngress.dnat_draining"'),
                         (':1,', ':2,'), (':0,', ':1,'), ('"node_port":', '"node_port":3'), ('6}', '17}')):
            if old in row:
                out.append("".join(lines[:i]) + row.replace(old, new, 1) + "".join(lines[i + 1:]))
        out.append("".join(lines[:i]) + "".join(lines[i + 1:]))  # an entry missing (and a comma off)
        if row.endswith(",\n"):
            out.append("".join(lines[:i]) + "".join(lines[i + 1:]))
            out.append("".join(lines[: i + 1]) + row + "".join(lines[i + 1:]))  # listed twice
    d = json.loads(text)
    d["digest"] = "sha256:" + "1" * 64
    out.append(json.dumps(d))
    if d["services"]:
        d = json.loads(text)
        d["services"].reverse()
        out.append(json.dumps(d))
        d = json.loads(text)
        d["services"][0]["bucketCount"] += 1
        out.append(json.dumps(d))
    return out


def test_any_other_text_is_decided_by_from_document(tmp_path: Path, multi_render: RenderResult) -> None:
    from reconciler import snapshot as S

    path = tmp_path / "s.json"
    checked = 0
    for name in ("nodePort", "drain", "routes"):
        text = cases(multi_render.snapshot)[name].to_json_text()
        for bad in mutations(text):
            try:
                doc = json.loads(bad)
            except json.JSONDecodeError:
                continue
            path.write_text(bad)
            fast = S._from_file_text([json.loads(bad)], bad)
            if bad != text:
                assert fast is None or fast.to_json_text() == bad, name
            assert outcome(lambda: S.load_snapshot(path)) == outcome(lambda: S.from_document(doc, source=str(path))), name
            checked += 1
    assert checked > 30


def test_reverse_nat_keys_are_the_entries_keys(multi_render: RenderResult) -> None:
    for name, snap in cases(multi_render.snapshot).items():
        for s in snap.services:
            assert list(s.reverse_nat_keys()) == [e.key for e in s.entries().get(n.REVERSE_NAT, ())], (name, s.name)
