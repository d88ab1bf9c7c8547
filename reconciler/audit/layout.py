"""The audit repository's file layout: a snapshot <-> the files of one config directory.

    configs/<namespace>/<name>/manifest.json                          everything but the Services
    configs/<namespace>/<name>/services/<namespace>/<service>[__port].json  one per Service port

A service file is that Service's fragment (docs/snapshot.md): its object from "services" and
its table entries, one entry per line, so a change to one bucket is a one-line diff and a change
to one Service touches only its file and the manifest. Parsed and re-serialised canonically, a
service file is byte-identical to `ServiceSnapshot.fragment_text()`, so its sha256 is the
fragment digest the snapshot digest is built from.

The manifest does not list the Services: the directory does. A list of 5,000 names with their
fragment digests is ~600 KB (~220 KB zlib-compressed, since digests do not compress) and would
be rewritten by every commit; the Git tree already holds one id per file and is rewritten only
for the namespace that changed. `serviceCount` lets a reader notice a missing file early (the
digest would catch it anyway).

Two readers: `files_to_snapshot` reassembles the full public document and parses it with
`from_document` (the reference check; ~20 s at 5,000 Services, because of the JSON Schema pass
over 330,000 entries), and `read_files` checks the same things per file (schema of the Service
object, entries equal to the ones the object implies, digest), which is what the repository
uses so that a file read once is never checked again (its blob id is cached).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..snapshot import (
    API_VERSION,
    KIND,
    Entry,
    ServiceSnapshot,
    Snapshot,
    SnapshotError,
    canonical_json,
    compute_digest,
    from_document,
    schema_errors,
    service_from_json,
)
from .. import snapshot_schema
from .index import INDEX_DIR, git_blob_id, index_files

CONFIGS_DIR = "configs"
MANIFEST = "manifest.json"
SERVICES_DIR = "services"
LAYOUT_VERSION = 1

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_CONFIG_RE = re.compile(rf"^{_LABEL}/{_LABEL}$")
_SERVICE_RE = re.compile(rf"^{_LABEL}/{_LABEL}(:{_LABEL})?$")
_HEADER_KEYS = ("apiVersion", "kind", "config", "version", "sources", "pipeline", "digest")


def config_dir(config: str) -> str:
    """configs/<namespace>/<name> for a config key "namespace/name"."""
    if not isinstance(config, str) or not _CONFIG_RE.match(config):
        raise SnapshotError(f"config {config!r} is not namespace/name (lowercase DNS labels)")
    return sys.intern(f"{CONFIGS_DIR}/{config}")  # a pygit2 lookup key: see trees.git_name


# A snapshot name's ":port" is written "__port" in file names: ":" cannot appear in Windows
# file names, and Kubernetes names and port names cannot contain "_", so the mapping is exact.
PORT_SEPARATOR = "__"


def service_path(name: str) -> str:
    """services/<namespace>/<service>[__port].json, relative to the config directory."""
    if not _SERVICE_RE.match(name):
        raise SnapshotError(f"service name {name!r} is not namespace/name[:port]")
    return f"{SERVICES_DIR}/{name.replace(':', PORT_SEPARATOR)}.json"


def service_name_from_path(path: str) -> str:
    """The inverse of service_path; raises SnapshotError for anything else."""
    parts = path.split("/")
    if len(parts) != 3 or parts[0] != SERVICES_DIR or not parts[2].endswith(".json"):
        raise SnapshotError(f"{path}: not a service file (expected {SERVICES_DIR}/<namespace>/<service>.json)")
    name = f"{parts[1]}/{parts[2][: -len('.json')].replace(PORT_SEPARATOR, ':')}"
    if not _SERVICE_RE.match(name):
        raise SnapshotError(f"{path}: {name!r} is not a service name (namespace/name[:port])")
    return name


# --- writing ------------------------------------------------------------------------------------


def _table_block(tables: Iterable[tuple[str, list[Entry]]], indent: str) -> str:
    """{"table": [entry, ...], ...} with one entry per line (each its canonical JSON)."""
    blocks = []
    for t, es in tables:
        body = ",\n".join(f"{indent}    " + e.canonical() for e in es)
        blocks.append(f"{indent}  {json.dumps(t)}: [\n{body}\n{indent}  ]")
    return "{\n" + ",\n".join(blocks) + f"\n{indent}}}" if blocks else "{}"


def service_file_bytes(svc: ServiceSnapshot) -> bytes:
    """A Service's file: its fragment, indented, one entry per line."""
    tables = [(t, es) for t, es in sorted(svc.entries().items()) if es]
    service = canonical_json(svc.to_json()).decode()
    return f'{{\n  "entries": {_table_block(tables, "  ")},\n  "service": {service}\n}}\n'.encode()


def manifest_document(snap: Snapshot) -> dict[str, Any]:
    by_table: dict[str, list[Entry]] = {}
    for e in snap.global_entries:
        by_table.setdefault(e.table, []).append(e)
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "auditLayout": LAYOUT_VERSION,
        "config": snap.config,
        "digest": snap.digest,
        "kind": KIND,
        "pipeline": {"program": snap.program, "p4infoDigest": snap.p4info_digest},
        "serviceCount": len(snap.services),
        "sources": {"intentCommit": snap.intent_commit, "clusterResourceVersion": snap.cluster_resource_version},
        "version": snap.version,
        "globalEntries": by_table,
    }
    if snap.extra:
        doc["extra"] = dict(snap.extra)
    return doc


def manifest_bytes(snap: Snapshot) -> bytes:
    """The manifest: the snapshot's header and its global entries (routes), one per line."""
    doc = manifest_document(snap)
    globals_ = doc.pop("globalEntries")
    items = [(k, json.dumps(v, sort_keys=True, ensure_ascii=False)) for k, v in doc.items()]
    items.append(("globalEntries", _table_block(sorted(globals_.items()), "  ")))
    items.sort()
    return ("{\n" + ",\n".join(f"  {json.dumps(k)}: {v}" for k, v in items) + "\n}\n").encode()


def snapshot_to_files(snap: Snapshot) -> dict[str, bytes]:
    """Every file of the snapshot's config directory, by path relative to that directory
    (the index's shards included: index.py)."""
    files = {MANIFEST: manifest_bytes(snap)}
    blobs = {}
    for svc in snap.services:
        data = files[service_path(svc.name)] = service_file_bytes(svc)
        blobs[svc.name] = git_blob_id(data)
    files.update(index_files(snap.services, blobs))
    return files


def _is_index(path: str) -> bool:
    """An index shard: derived from the service files, which the readers here check instead."""
    return path.startswith(INDEX_DIR + "/")


# --- reading: the reference path through from_document -------------------------------------------


def _load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except UnicodeDecodeError as e:
        raise SnapshotError(f"{where}: not UTF-8: {e.reason}") from e
    except json.JSONDecodeError as e:
        raise SnapshotError(f"{where}:{e.lineno}:{e.colno}: not JSON: {e.msg}") from e


def _object(doc: Any, keys: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(doc, dict):
        raise SnapshotError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    missing, unknown = keys - doc.keys(), doc.keys() - keys
    if missing or unknown:
        raise SnapshotError(f"{where}: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}")
    return doc


_MANIFEST_KEYS = {*_HEADER_KEYS, "auditLayout", "serviceCount", "globalEntries"}


def _manifest_json(data: bytes, where: str) -> dict[str, Any]:
    doc = _load_json(data, where)
    if not isinstance(doc, dict):
        raise SnapshotError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    doc = dict(doc)
    extra = doc.pop("extra", {})
    if not isinstance(extra, dict):
        raise SnapshotError(f"{where}: extra must be an object")
    _object(doc, _MANIFEST_KEYS, where)
    if doc["auditLayout"] != LAYOUT_VERSION:
        raise SnapshotError(f"{where}: auditLayout {doc['auditLayout']!r} is not supported (this reconciler reads {LAYOUT_VERSION})")
    if not isinstance(doc["globalEntries"], dict) or not all(isinstance(v, list) for v in doc["globalEntries"].values()):
        raise SnapshotError(f"{where}: globalEntries must map table names to lists of entries")
    if extra:
        doc["extra"] = extra
    return doc


def files_to_document(files: Mapping[str, bytes], *, source: str = "audit files") -> dict[str, Any]:
    """The full public snapshot document reassembled from a config directory's files."""
    if MANIFEST not in files:
        raise SnapshotError(f"{source}: no {MANIFEST}")
    manifest = _manifest_json(files[MANIFEST], f"{source}/{MANIFEST}")
    doc: dict[str, Any] = dict(manifest.get("extra", {}))
    doc.update({k: manifest[k] for k in _HEADER_KEYS})
    tables: dict[str, list[Any]] = {t: list(es) for t, es in manifest["globalEntries"].items()}
    services = []
    for path in sorted(p for p in files if p != MANIFEST and not _is_index(p)):
        where = f"{source}/{path}"
        name = service_name_from_path(path)
        frag = _object(_load_json(files[path], where), {"entries", "service"}, where)
        if not isinstance(frag["service"], dict) or frag["service"].get("name") != name:
            raise SnapshotError(f"{where}: the file holds service {_name_of(frag['service'])!r}, not {name!r}")
        if not isinstance(frag["entries"], dict):
            raise SnapshotError(f"{where}: entries must map table names to lists")
        services.append(frag["service"])
        for t, es in frag["entries"].items():
            tables.setdefault(t, []).extend(es if isinstance(es, list) else [es])
    if len(services) != manifest["serviceCount"]:
        raise SnapshotError(f"{source}: manifest says {manifest['serviceCount']} services, the directory holds {len(services)}")
    doc["services"] = sorted(services, key=lambda s: s["name"])
    doc["tables"] = tables
    return doc


def _name_of(service: Any) -> Any:
    return service.get("name") if isinstance(service, dict) else service


def files_to_snapshot(files: Mapping[str, bytes], *, source: str = "audit files") -> Snapshot:
    """Parse a config directory's files through from_document: schema, entries and digest."""
    return from_document(files_to_document(files, source=source), source=source)


# --- reading: per file, for the repository --------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    config: str
    version: int
    intent_commit: str | None
    cluster_resource_version: str | None
    program: str
    p4info_digest: str
    digest: str
    service_count: int
    global_entries: tuple[Entry, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Parse and schema-check a manifest (header fields and global entries)."""
    doc = _manifest_json(data, where)
    if not isinstance(doc["serviceCount"], int) or doc["serviceCount"] < 0:
        raise SnapshotError(f"{where}: serviceCount must be a non-negative integer")
    # The header and the routes are checked with the snapshot schema itself, as a snapshot
    # without services (the schema has no separate definition for them).
    header = {k: doc[k] for k in _HEADER_KEYS}
    errors = schema_errors({**header, "services": [], "tables": doc["globalEntries"]})
    if errors:
        raise SnapshotError(f"{where}: not a valid manifest:\n  " + "\n  ".join(errors[:20]))
    entries = []
    for t, es in sorted(doc["globalEntries"].items()):
        for i, e in enumerate(es):
            entry = Entry.from_json(t, e, f"{where}: globalEntries.{t}[{i}]")
            if entry.service is not None:
                raise SnapshotError(f"{where}: globalEntries.{t}[{i}] names service {entry.service!r}; it belongs in that service's file")
            entries.append(entry)
    return Manifest(
        config=doc["config"],
        version=doc["version"],
        intent_commit=doc["sources"]["intentCommit"],
        cluster_resource_version=doc["sources"]["clusterResourceVersion"],
        program=doc["pipeline"]["program"],
        p4info_digest=doc["pipeline"]["p4infoDigest"],
        digest=doc["digest"],
        service_count=doc["serviceCount"],
        global_entries=tuple(sorted(entries, key=Entry.sort_key)),
        extra=doc.get("extra", {}),
    )


def service_schema_errors(service: Any) -> list[str]:
    """schema_errors(service, subschema="service") in this module's path form ("backends.0.port"):
    decided by the compiled validator (this runs for every service file read, 5,000 times for a
    cold read of a large snapshot), explained by jsonschema only when it fails."""
    if snapshot_schema.is_valid(service, "service"):
        return []
    errors = sorted(snapshot_schema.explain(service, "service"), key=lambda e: list(map(str, e[0])))
    return [f"{'.'.join(map(str, path)) or '(service)'}: {message}" for path, message in errors]


def parse_service_file(data: bytes, where: str, expected_name: str | None = None) -> ServiceSnapshot:
    """Parse a service file and check it completely.

    The Service object is checked against the schema's "service" definition; the entries are
    then checked by regeneration: the file's canonical form must equal the fragment the object
    implies, byte for byte, so every entry is exactly one the object implies (and therefore
    schema-valid) and none is missing or extra. The fragment digest comes for free.
    """
    frag = _object(_load_json(data, where), {"entries", "service"}, where)
    service = frag["service"]
    errors = service_schema_errors(service)
    if errors:
        raise SnapshotError(f"{where}: service is not valid:\n  " + "\n  ".join(errors[:20]))
    if expected_name is not None and service["name"] != expected_name:
        raise SnapshotError(f"{where}: the file holds service {service['name']!r}, not {expected_name!r}")
    if not isinstance(frag["entries"], dict):
        raise SnapshotError(f"{where}: entries must map table names to lists")
    entries: list[Entry] = []
    for t, es in frag["entries"].items():
        if not isinstance(es, list):
            raise SnapshotError(f"{where}: entries.{t} must be a list")
        for i, e in enumerate(es):
            if not isinstance(e, dict) or not {"match", "action", "params"} <= e.keys():
                raise SnapshotError(f"{where}: entries.{t}[{i}] needs match, action and params")
            entries.append(Entry.from_json(t, e, f"{where}: entries.{t}[{i}]"))
    svc = service_from_json(service, entries, where)
    canonical = canonical_json(frag)
    expected = svc.fragment_text().encode()
    if canonical != expected:
        raise SnapshotError(f"{where}: entries are not the ones the service implies ({_first_difference(canonical, expected)})")
    # fragment_digest is a cached_property: seed it with the hash of the bytes just compared.
    svc.__dict__["fragment_digest"] = hashlib.sha256(canonical).hexdigest()
    return svc


def _first_difference(got: bytes, want: bytes) -> str:
    i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    lo = max(0, i - 60)
    return f"file has ...{got[lo:i + 60].decode(errors='replace')}... where the service implies ...{want[lo:i + 60].decode(errors='replace')}..."


def assemble(manifest: Manifest, services: Iterable[ServiceSnapshot], where: str) -> Snapshot:
    """The snapshot of a manifest and its (already checked) services; checks count and digest."""
    ordered = sorted(services, key=lambda s: s.name)
    if len(ordered) != manifest.service_count:
        raise SnapshotError(f"{where}: manifest says {manifest.service_count} services, the directory holds {len(ordered)}")
    snap = Snapshot(
        config=manifest.config,
        version=manifest.version,
        intent_commit=manifest.intent_commit,
        cluster_resource_version=manifest.cluster_resource_version,
        program=manifest.program,
        p4info_digest=manifest.p4info_digest,
        services=tuple(ordered),
        global_entries=manifest.global_entries,
        extra=dict(manifest.extra),
    )
    digest = compute_digest(snap.config, snap.program, snap.p4info_digest, snap.services, snap.global_entries)
    if digest != manifest.digest:
        raise SnapshotError(f"{where}: digest mismatch: manifest says {manifest.digest}, content hashes to {digest}")
    snap.__dict__["digest"] = digest
    return snap


def read_files(files: Mapping[str, bytes], *, source: str = "audit files") -> Snapshot:
    """Like files_to_snapshot, checked per file (fast): see parse_service_file."""
    if MANIFEST not in files:
        raise SnapshotError(f"{source}: no {MANIFEST}")
    manifest = parse_manifest(files[MANIFEST], f"{source}/{MANIFEST}")
    services = [
        parse_service_file(data, f"{source}/{path}", service_name_from_path(path))
        for path, data in files.items()
        if path != MANIFEST and not _is_index(path)
    ]
    return assemble(manifest, services, source)
