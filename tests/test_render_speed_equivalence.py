"""Render and the snapshot's file form at scale give the bytes the reference forms give (issue 13):
the file text against one built from Entry objects (tables()), every digest against one hashed
from json.dumps-canonical documents, and a file read back (load_snapshot's fast path) against
the rendered snapshot, or (for values a faster parser would read otherwise) from_document."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

import pytest
from helpers_render import do_render, make_config, pool
from test_snapshot_text import reference_text

from reconciler import snapshot as S
from reconciler.cluster.model import ClusterState
from reconciler.cluster.synthetic import synthetic_cluster, with_scaled_service
from reconciler.snapshot import Snapshot, SnapshotError, canonical_json


def reference_fragment_digest(svc: S.ServiceSnapshot) -> str:
    doc = {"entries": {t: [e.to_json() for e in es] for t, es in svc.entries().items() if es}, "service": svc.to_json()}
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def reference_digest(snap: Snapshot, fragments: list[str]) -> str:
    """compute_digest's algorithm (docs/snapshot.md) over json.dumps-canonical documents, given
    the Services' fragment digests made so (reference_fragment_digest)."""
    h = hashlib.sha256()
    h.update(canonical_json({"config": snap.config, "pipeline": {"program": snap.program, "p4infoDigest": snap.p4info_digest}}))
    h.update(b"\n")
    h.update("".join(f + "\n" for f in fragments).encode())
    routes: dict[str, list[object]] = {}
    for e in snap.global_entries:
        routes.setdefault(e.table, []).append(e.to_json())
    h.update(hashlib.sha256(canonical_json({"entries": routes, "service": None})).hexdigest().encode())
    return "sha256:" + h.hexdigest()


def fresh(snap: Snapshot) -> Snapshot:
    """The same content as new objects: no digest or check cached."""
    return dataclasses.replace(snap, services=tuple(dataclasses.replace(s) for s in snap.services))


@pytest.fixture(scope="module")
def clusters() -> tuple[ClusterState, ClusterState]:
    base = synthetic_cluster(services=1000, nodes=200, endpoints=10000, seed=3)
    key = min(k for k in base.endpoints if base.endpoints[k])
    return base, with_scaled_service(base, key, base.endpoints[key][0].node, 2)


@pytest.mark.parametrize("mode", ["nodePort", "podIP"])
def test_1000_services_render_the_reference_bytes_and_digests(clusters: tuple[ClusterState, ClusterState], mode: str, tmp_path: Path) -> None:
    base, changed = clusters
    config = make_config(buckets=64, backend_mode=mode, vip_pools=(pool(first="172.16.0.1", size=4000),))
    first = do_render(config, base).snapshot
    second = do_render(config, changed, first).snapshot  # unchanged Services keep their objects
    for snap in (first, second):
        assert len([s for s in snap.services if s.backends]) > 900
        text = snap.to_json_text()
        assert text == reference_text(fresh(snap))
        fragments = [reference_fragment_digest(s) for s in snap.services]
        assert [s.fragment_digest for s in snap.services] == fragments
        assert snap.digest == reference_digest(snap, fragments)
        assert S.snapshot_schema_errors(snap) == []
        path = tmp_path / "snap.json"
        path.write_text(text)
        loaded = S.load_snapshot(path)  # the file-text fast path
        assert (loaded.digest, loaded.services, loaded.global_entries, loaded.version) == (
            snap.digest, snap.services, snap.global_entries, snap.version)
        assert fresh(loaded).to_json_text() == text


def test_a_service_checked_before_its_digest_is_known_by_it_after(clusters: tuple[ClusterState, ClusterState], monkeypatch: pytest.MonkeyPatch) -> None:
    """Render checks each Service without hashing it; the file form hashes it later, and an equal
    object made afterwards (a reload, the audit) is then known valid by that digest."""
    monkeypatch.setattr(S, "_VALID_FRAGMENTS", set())
    small = synthetic_cluster(services=20, nodes=10, endpoints=100, seed=4)
    snap = do_render(make_config(buckets=16, pool_size=64), small).snapshot
    served = [s for s in snap.services if s.backends]
    assert served and all("fragment_digest" not in s.__dict__ for s in served)  # not hashed by render
    assert all(S._known_valid(s) for s in served)
    snap.to_json_text()
    twins = [dataclasses.replace(s) for s in served]
    assert not any(S._known_valid(t) for t in twins)  # no digest computed yet: nothing looked up
    assert [t.fragment_digest for t in twins] == [s.fragment_digest for s in served]
    assert all(S._known_valid(t) for t in twins)


def _variants(text: str) -> list[str]:
    """The file text with values that parsers read differently (orjson: 2^64 as a float, no
    1e400, NaN or lone surrogates), for whoever gives load_snapshot a faster one."""
    doc = json.loads(text)
    sid = doc["services"][0]["serviceId"]
    out = []
    for value in ("18446744073709551616", "18446744073709551615", "1e400", "NaN", "-0", "1.0"):
        out.append(text.replace(f'"serviceId":{sid},', f'"serviceId":{value},', 1))
        out.append(text.replace(f'"meta.service_id":{sid}}}', f'"meta.service_id":{value}}}', 1))
        out.append(text.replace('"version": ', f'"version": {value} + ', 1).replace(f"{value} + {doc['version']}", value, 1))
    out.append(text.replace('"vip":"', '"vip":"\\ud800', 1))
    return [v for v in out if v != text]


def _outcome(call: Callable[[], Snapshot]) -> tuple[object, ...]:
    try:
        return ("ok", call().to_json_text())
    except Exception as e:  # noqa: BLE001 - whatever the reference path raises, the same
        return ("error", type(e).__name__, str(e))


def test_values_parsers_read_differently_load_as_from_document_decides(tmp_path: Path) -> None:
    snap = do_render(make_config(buckets=8, pool_size=64), synthetic_cluster(services=3, nodes=4, endpoints=9, seed=6)).snapshot
    text = snap.to_json_text()
    path = tmp_path / "s.json"
    checked = 0
    for bad in _variants(text):
        path.write_text(bad)
        try:
            doc = json.loads(bad)
        except json.JSONDecodeError as e:
            with pytest.raises(SnapshotError, match=f"{path}:{e.lineno}:{e.colno}: not JSON"):
                S.load_snapshot(path)
            continue
        want = _outcome(lambda: S.from_document(doc, source=str(path)))
        assert _outcome(lambda: S.load_snapshot(path)) == want, bad[:200]
        checked += 1
    assert checked >= 12
