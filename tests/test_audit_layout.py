"""The audit layout: a snapshot <-> the files of its config directory."""

from __future__ import annotations

import hashlib
import json

import pytest
from test_audit_support import series

from reconciler.audit.index import shard_of, shard_path
from reconciler.audit.layout import (
    MANIFEST,
    config_dir,
    files_to_document,
    files_to_snapshot,
    read_files,
    service_file_bytes,
    service_name_from_path,
    service_path,
    snapshot_to_files,
)
from reconciler.snapshot import SnapshotError, canonical_json, from_document


@pytest.fixture(scope="module")
def snap():
    return series(services=8, seed=5).snap


def test_round_trip_through_both_readers(snap) -> None:
    files = snapshot_to_files(snap)
    shards = {shard_path(shard_of(s.name)) for s in snap.services}
    assert set(files) == {MANIFEST} | {f"services/{s.name}.json" for s in snap.services} | shards
    for reader in (files_to_snapshot, read_files):
        back = reader(files)
        assert back == snap
        assert back.digest == snap.digest
        assert back.to_json_text() == snap.to_json_text()


def test_reassembled_document_is_the_public_one(snap) -> None:
    doc = files_to_document(snapshot_to_files(snap))
    want = snap.to_document()
    assert {k: v for k, v in doc.items() if k != "tables"} == {k: v for k, v in want.items() if k != "tables"}
    for table, entries in want["tables"].items():
        got = sorted(map(canonical_json, doc["tables"].get(table, [])))
        assert got == sorted(map(canonical_json, entries)), table
    assert from_document(doc).digest == snap.digest


def test_service_file_is_its_fragment_one_entry_per_line(snap) -> None:
    svc = snap.services[0]
    data = service_file_bytes(svc)
    assert canonical_json(json.loads(data)) == svc.fragment_text().encode()
    assert hashlib.sha256(canonical_json(json.loads(data))).hexdigest() == svc.fragment_digest
    entry_lines = [line for line in data.decode().splitlines() if line.startswith('      {"action"')]
    assert len(entry_lines) == sum(len(es) for es in svc.entries().values())


def test_one_service_change_touches_its_file_its_index_shard_and_the_manifest_only() -> None:
    s = series(services=8, seed=5)
    before = snapshot_to_files(s.snap)
    key = s.keys[2]
    after = snapshot_to_files(s.scale(key))
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert changed == sorted([shard_path(shard_of(key)), MANIFEST, f"services/{key}.json"])


def test_manifest_holds_header_and_routes_but_no_service_list(snap) -> None:
    manifest = json.loads(snapshot_to_files(snap)[MANIFEST])
    assert manifest["serviceCount"] == len(snap.services)
    assert manifest["digest"] == snap.digest and manifest["version"] == snap.version
    assert "services" not in manifest
    assert manifest["globalEntries"] == {
        t: [e.to_json() for e in snap.global_entries if e.table == t] for t in {e.table for e in snap.global_entries}
    }


def test_paths() -> None:
    assert config_dir("p4kube-system/lb") == "configs/p4kube-system/lb"
    assert service_path("web/api:https") == "services/web/api__https.json"  # no ":" in file names (Windows)
    assert service_name_from_path("services/web/api__https.json") == "web/api:https"
    for bad in ("services/web/api.txt", "services/a/b/c.json", "services/Web/api.json", "other/web/api.json"):
        with pytest.raises(SnapshotError):
            service_name_from_path(bad)
    with pytest.raises(SnapshotError, match="namespace/name"):
        config_dir("../etc")


def _corrupt(files: dict, path: str, old: bytes, new: bytes) -> dict:
    assert old in files[path], f"{old!r} not in {path}"
    return {**files, path: files[path].replace(old, new, 1)}


@pytest.mark.parametrize("reader", [files_to_snapshot, read_files])
def test_corruptions_are_caught_by_both_readers(snap, reader) -> None:
    files = snapshot_to_files(snap)
    svc = snap.services[0]
    path = f"services/{svc.name}.json"
    b = svc.backends[0]
    cases = {
        "entry points elsewhere": _corrupt(files, path, f'"node_port":{b.port}'.encode(), f'"node_port":{b.port + 1}'.encode()),
        "service object": _corrupt(files, path, f'"vip":"{svc.vip}"'.encode(), b'"vip":"10.9.9.9"'),
        "digest": _corrupt(files, MANIFEST, snap.digest.encode(), b"sha256:" + b"1" * 64),
        "missing file": {k: v for k, v in files.items() if k != path},
        "not JSON": {**files, path: b"{"},
        "schema": _corrupt(files, path, b'"protocol":"TCP"', b'"protocol":"SCTP"'),
        "wrong file name": {**{k: v for k, v in files.items() if k != path}, "services/zz/other.json": files[path]},
    }
    for what, bad in cases.items():
        with pytest.raises(SnapshotError) as info:
            reader(bad)
        assert str(info.value), what


def test_per_file_reader_names_the_file_and_the_problem(snap) -> None:
    files = snapshot_to_files(snap)
    svc = snap.services[1]
    path = f"services/{svc.name}.json"
    bad = {**files, path: files[path].replace(b'"meta.bucket":3,', b'"meta.bucket":3, ', 1).replace(b'"meta.bucket":0,', b'"meta.bucket":99,', 1)}
    with pytest.raises(SnapshotError, match=rf"{path}: .*(bucket 99 outside|not the ones the service implies)"):
        read_files(bad, source="here")
    with pytest.raises(SnapshotError, match=r"manifest says 8 services, the directory holds 7"):
        read_files({k: v for k, v in files.items() if k != path})
