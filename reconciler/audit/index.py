"""The snapshot index: a config directory's Services without reading one file per Service.

    configs/<namespace>/<name>/index/<h>/<h'>.json    h h' = the first two hex digits of sha256(service name)

A restarted reconciler needs the last applied snapshot before it reads any switch; reading,
parsing and checking 5,000 service files (~70 MB of JSON) takes many seconds. The index holds
per Service, one line each, what rebuilds it: the Service object, its bucket assignment (the
position in `backends` of the backend each bucket points at), its fragment digest and the Git
blob id of its service file. 256 shards, so a one-Service commit rewrites one shard of ~20
Services (a few KB) and two small trees.

The index is believed only as far as the record it sits in (repo.py `_read_indexed`): the
commit passed the trust rules (trust.py) before anything is read; the shards list exactly the
service files of the tree, with their blob ids; the fragment digests combine to the manifest's
digest, which must be the record's; every rebuilt Service serialises back to the object the
index holds; and a sample of Services has its fragment digest recomputed from the rebuilt
object. Anything else (missing, unparsable or mismatching) and the files are read instead.
What the index does not re-check is the schema of each Service object: its fragment digest
matches the record's, and record() checked the schema when it wrote it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, starmap
from operator import itemgetter
from typing import Any, Iterable, Mapping

import orjson

from ..snapshot import Backend, Drain, ServiceSnapshot, SnapshotError, backend_key, canonical_json, format_time, parse_time

INDEX_DIR = "index"
INDEX_VERSION = 1
_HEX = frozenset("0123456789abcdef")


@lru_cache(maxsize=1 << 16)
def shard_of(name: str) -> tuple[str, str]:
    """The shard of a Service: ("a", "b.json") for index/a/b.json."""
    h = hashlib.sha256(name.encode()).hexdigest()
    return h[0], h[1] + ".json"


def shard_path(shard: tuple[str, str]) -> str:
    return f"{INDEX_DIR}/{shard[0]}/{shard[1]}"


def buckets_of(svc: ServiceSnapshot) -> list[int | None]:
    """The assignment as positions in svc.backends (the first backend with the bucket's key)."""
    pos: dict[str, int] = {}
    for i, b in enumerate(svc.backends):
        pos.setdefault(backend_key(b, svc.backend_mode), i)
    return [None if k is None else pos[k] for k in svc.assignment]


def entry_line(svc: ServiceSnapshot, blob: str) -> str:
    """One Service's line: canonical JSON of its name and index entry."""
    entry = {"blob": blob, "buckets": buckets_of(svc), "digest": svc.fragment_digest, "service": svc.to_json()}
    return f"{json.dumps(svc.name)}: {canonical_json(entry).decode()}"


def shard_bytes(lines: Iterable[tuple[str, str]]) -> bytes:
    """A shard from (service name, entry_line) pairs: one Service per line, in name order."""
    body = ",\n".join(line for _, line in sorted(lines))
    return f'{{\n"auditIndex": {INDEX_VERSION},\n"services": {{\n{body}\n}}\n}}\n'.encode()


def git_blob_id(data: bytes) -> str:
    """The id Git gives a blob of these bytes (what pygit2.hash computes)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def index_files(services: Iterable[ServiceSnapshot], blobs: Mapping[str, str]) -> dict[str, bytes]:
    """Every shard of an index (path relative to the config directory -> bytes); `blobs` maps
    each Service name to its service file's blob id (hex)."""
    shards: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for svc in services:
        shards.setdefault(shard_of(svc.name), []).append((svc.name, entry_line(svc, blobs[svc.name])))
    return {shard_path(s): shard_bytes(lines) for s, lines in shards.items()}


@dataclass(frozen=True)
class IndexEntry:
    """One Service as the index describes it (not yet rebuilt)."""

    name: str
    blob: str
    digest: str
    service: Mapping[str, Any]
    buckets: list[Any] | None
    # What rebuild() gives for this entry, when parse_shard found the shard ordinary and built it
    # then (see _ordinary_shard); None: rebuild() builds and checks it.
    rebuilt: ServiceSnapshot | None = field(default=None, compare=False, repr=False)


def parse_shard(data: bytes, where: str) -> dict[str, IndexEntry]:
    """A shard's entries by Service name; SnapshotError when it is not one."""
    ordinary = _ordinary_shard(data)
    if ordinary is not None:
        return ordinary
    return _parse_shard_json(data, where)


def _parse_shard_json(data: bytes, where: str) -> dict[str, IndexEntry]:
    """parse_shard with the json module, checking each part and saying what is wrong: the path
    for every shard that is not ordinary (and the reference _ordinary_shard must agree with)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SnapshotError(f"{where}: not JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("auditIndex") != INDEX_VERSION or not isinstance(doc.get("services"), dict):
        raise SnapshotError(f"{where}: not an index shard of version {INDEX_VERSION}")
    out = {}
    for name, e in doc["services"].items():
        if not isinstance(e, dict) or set(e) != {"blob", "buckets", "digest", "service"}:
            raise SnapshotError(f"{where}: {name}: expected blob, buckets, digest and service")
        blob, digest, service, buckets = e["blob"], e["digest"], e["service"], e["buckets"]
        if not (_is_hex(blob, 40) and _is_hex(digest, 64) and isinstance(service, dict)):
            raise SnapshotError(f"{where}: {name}: malformed blob id, digest or service")
        if buckets is not None and not isinstance(buckets, list):
            raise SnapshotError(f"{where}: {name}: buckets must be a list")
        out[name] = IndexEntry(name, blob, digest, service, buckets)
    return out


def _is_hex(v: Any, length: int) -> bool:
    return isinstance(v, str) and len(v) == length and _HEX.issuperset(v)


def rebuild(entry: IndexEntry, where: str) -> ServiceSnapshot:
    """The Service an index entry describes, with its fragment digest taken from the entry (the
    caller checks the digests against the record). SnapshotError for anything malformed,
    including an object that does not serialise back to exactly itself (an unknown field)."""
    if entry.rebuilt is not None:
        return entry.rebuilt
    s = entry.service
    try:
        mode = s.get("backendMode", "nodePort")
        backends = tuple(
            Backend(b["node"], b["address"], b["port"], b["replicas"], b["buckets"], b["backendId"], b.get("activeConnections"))
            for b in s["backends"]
        )
        drains = tuple(Drain(d["bucket"], d["from"], d["generation"], parse_time(d["until"])) for d in s.get("drains", ()))
        keys = [backend_key(b, mode) for b in backends]
        count = s["bucketCount"]
        if entry.buckets is None:
            assignment: tuple[str | None, ...] = (None,) * count
        else:
            assignment = tuple(None if i is None else keys[i] for i in entry.buckets)
        svc = ServiceSnapshot(
            name=s["name"], service_id=s["serviceId"], vip=s["vip"], port=s["port"], protocol=s["protocol"],
            algorithm=s["algorithm"], bucket_count=count, backend_mode=mode, backends=backends,
            assignment=assignment, drains=drains,
        )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise SnapshotError(f"{where}: {entry.name}: malformed index entry ({type(e).__name__}: {e})") from e
    # Types, checked in C (type(), not isinstance: a JSON true is not an int here); values and
    # formats are the record's, vouched for by its digest (see the module docstring).
    ints = [svc.service_id, svc.port, count, *(v for b in backends for v in (b.port, b.replicas, b.buckets, b.backend_id))]
    strs = [svc.name, svc.vip, svc.protocol, svc.algorithm, mode, *(b.node for b in backends), *(b.address for b in backends)]
    positions = [] if entry.buckets is None else [i for i in entry.buckets if i is not None]
    if set(map(type, ints + positions)) - {int} or set(map(type, strs)) - {str} or (positions and min(positions) < 0):
        raise SnapshotError(f"{where}: {entry.name}: a field of the wrong type")
    if svc.name != entry.name or len(assignment) != count or svc.to_json() != s:
        raise SnapshotError(f"{where}: {entry.name}: the entry does not describe this Service exactly")
    svc.__dict__["fragment_digest"] = entry.digest  # checked by the caller: digests against the record
    return svc


# --- the ordinary shard, read fast ----------------------------------------------------------------
#
# What record() writes: every field present with its exact JSON type (ints within 64 bits, no
# floats or bools), nothing else. Such a shard is read with orjson (several times faster than
# json), checked and its Services built without building to_json(): the checks below imply every
# check of _parse_shard_json and rebuild, so the entries and Services are the ones they give.
# svc.to_json() == the entry's object in particular: the object has exactly the keys to_json()
# writes (drains only when there are some), each value is the very object the Service holds,
# each backend has exactly the keys Backend.to_json() writes (activeConnections only when set)
# and each drain's time writes back to its own text. Anything else, including what orjson
# refuses or reads otherwise (NaN, integers past 64 bits, which it makes floats, a BOM, UTF-16,
# lone surrogates, nesting json cannot follow), is read by _parse_shard_json and rebuild, with
# their messages. tests/test_audit_index_fast.py holds the two paths to the same results.

_ENTRY = itemgetter("blob", "buckets", "digest", "service")
_SERVICE = itemgetter("name", "serviceId", "vip", "port", "protocol", "algorithm", "bucketCount", "backendMode", "backends")
_SERVICE_TYPES = (str, int, str, int, str, str, int, str, list)
_BACKEND = itemgetter("node", "address", "port", "replicas", "buckets", "backendId")
_BACKEND_TYPES = (str, str, int, int, int, int)
_DRAIN = itemgetter("bucket", "from", "generation", "until")
_DRAIN_TYPES = (int, str, int, str)
_INT_OR_NONE = frozenset((int, type(None)))
_DICT, _LIST, _STR = frozenset((dict,)), frozenset((list,)), frozenset((str,))
_HEX_DIGITS = "0123456789abcdef"


def _ordinary_shard(data: bytes) -> dict[str, IndexEntry] | None:
    """parse_shard's entries, each with its rebuilt Service, when the shard is ordinary; None
    for anything else. Each check runs over the whole shard at once (all entries, all Services,
    all backends, all buckets): ~9% less CPU than entry by entry, in fewer calls."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or len(doc) != 2:
        return None
    version, services = doc.get("auditIndex"), doc.get("services")
    if type(version) is not int or version != INDEX_VERSION or type(services) is not dict:
        return None
    if not services:
        return {}
    names = list(services)
    n = len(names)
    # entries: each a dict (else TypeError) with these four keys and no other (at least four each)
    try:
        entries = list(map(_ENTRY, services.values()))
    except (KeyError, TypeError):
        return None
    if sum(map(len, services.values())) != 4 * n:
        return None
    blobs, buckets_lists, digests, objects = zip(*entries)
    if not (_all_hex(blobs, 40) and _all_hex(digests, 64)):
        return None
    if {*map(type, objects)} != _DICT or {*map(type, buckets_lists)} != _LIST:
        return None
    # Services: the nine keys to_json() always writes, with their types (type(), as rebuild: a
    # JSON true is not an int), the entry's name, as many buckets as bucketCount ...
    try:
        fields = list(map(_SERVICE, objects))
    except KeyError:
        return None
    if tuple(map(type, chain.from_iterable(fields))) != _SERVICE_TYPES * n:
        return None
    if [f[0] for f in fields] != names or [f[6] for f in fields] != list(map(len, buckets_lists)):
        return None
    # ... and a tenth key only for drains, a non-empty list (to_json() writes none for none)
    drains_of: dict[int, tuple[Drain, ...]] = {}
    if sum(map(len, objects)) != 9 * n:
        for i, s in enumerate(objects):
            if len(s) == 9:
                continue
            listed = s.get("drains")
            drains = _ordinary_drains(listed) if len(s) == 10 and type(listed) is list and listed else None
            if drains is None:
                return None
            drains_of[i] = drains
    backends = _ordinary_backends(list(chain.from_iterable(f[8] for f in fields)))
    if backends is None:
        return None
    # buckets: positions (ints, not negative) into their Service's backends, or all null when it has none
    flat = list(chain.from_iterable(buckets_lists))
    kinds = {*map(type, flat)}
    if not kinds <= _INT_OR_NONE:
        return None
    positions = [p for p in flat if p is not None] if type(None) in kinds else flat
    if positions and min(positions) < 0:
        return None
    out = {}
    at = 0
    for i, (name, f, buckets) in enumerate(zip(names, fields, buckets_lists)):
        svc_name, service_id, vip, port, protocol, algorithm, count, mode, listed_backends = f
        own = tuple(backends[at:at + len(listed_backends)])
        at += len(own)
        keys = [b.address if mode == "podIP" else b.node for b in own]  # backend_key
        assignment: tuple[str | None, ...]
        if keys:
            try:  # a null among positions: TypeError; past the backends: IndexError
                assignment = tuple(map(keys.__getitem__, buckets))
            except (IndexError, TypeError):
                return None
        elif buckets.count(None) == count:
            assignment = tuple(buckets)
        else:
            return None
        svc = ServiceSnapshot(
            name=svc_name, service_id=service_id, vip=vip, port=port, protocol=protocol, algorithm=algorithm,
            bucket_count=count, backend_mode=mode, backends=own, assignment=assignment, drains=drains_of.get(i, ()),
        )
        svc.__dict__["fragment_digest"] = digests[i]  # as rebuild: the caller checks it against the record
        out[name] = IndexEntry(name, blobs[i], digests[i], objects[i], buckets, svc)
    return out


def _all_hex(values: tuple[Any, ...], length: int) -> bool:
    """_is_hex of each."""
    return {*map(type, values)} == _STR and {*map(len, values)} == {length} and not "".join(values).strip(_HEX_DIGITS)


def _ordinary_backends(items: list[Any]) -> list[Backend] | None:
    """The Backends of backend objects that have exactly the keys Backend.to_json() writes (the
    six, and activeConnections only when set: an int), with their types; None for anything else."""
    try:
        values = list(map(_BACKEND, items))  # each a dict (anything else: TypeError) with these six keys
    except (KeyError, TypeError):
        return None
    if tuple(map(type, chain.from_iterable(values))) != _BACKEND_TYPES * len(values):
        return None
    if sum(map(len, items)) == 6 * len(values):  # each has at least the six: none has more
        return list(starmap(Backend, values))
    out = []
    for (node, address, port, replicas, n, backend_id), b in zip(values, items):
        if len(b) == 6:
            out.append(Backend(node, address, port, replicas, n, backend_id))
        elif len(b) == 7 and type(b.get("activeConnections")) is int:
            out.append(Backend(node, address, port, replicas, n, backend_id, b["activeConnections"]))
        else:
            return None
    return out


def _ordinary_drains(items: list[Any]) -> tuple[Drain, ...] | None:
    """The Drains of drain objects with exactly the keys Drain.to_json() writes, their types, and
    a time that writes back to its own text; None for anything else."""
    out = []
    for d in items:
        if type(d) is not dict or len(d) != 4:
            return None
        try:
            values = _DRAIN(d)
        except KeyError:
            return None
        if tuple(map(type, values)) != _DRAIN_TYPES:
            return None
        bucket, source, generation, until = values
        try:  # whatever either raises, rebuild (or the to_json() after it) meets it too
            t = parse_time(until)
            if format_time(t) != until:
                return None
        except Exception:
            return None
        out.append(Drain(bucket, source, generation, t))
    return tuple(out)


def mismatches(listed: Mapping[str, IndexEntry] | Mapping[str, str], files: Mapping[str, str], limit: int = 3) -> list[str]:
    """How an index's entries (or their blob ids) differ from the service files of its tree
    (name -> blob id hex)."""
    blob = {n: e if isinstance(e, str) else e.blob for n, e in listed.items()}
    out = []
    for name in sorted(files.keys() - listed.keys())[:limit]:
        out.append(f"{name} has a file but no index entry")
    for name in sorted(listed.keys() - files.keys())[:limit]:
        out.append(f"{name} is indexed but has no file")
    for name in sorted(n for n in blob.keys() & files.keys() if blob[n] != files[n])[:limit]:
        out.append(f"{name}: the index names blob {blob[name][:12]}, the file is {files[name][:12]}")
    return out
