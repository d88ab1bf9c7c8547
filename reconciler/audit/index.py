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
# json) and each entry rebuilt while checked, in one pass without building to_json(): the checks
# below imply every check of _parse_shard_json and rebuild (each noted), so the entries and
# Services are the ones they give. Anything else, including what orjson refuses or reads otherwise
# (NaN, integers past 64 bits, which it makes floats, a BOM, UTF-16, lone surrogates, nesting json
# cannot follow) is read by _parse_shard_json and rebuild, with their messages.

_ENTRY = itemgetter("blob", "buckets", "digest", "service")
_SERVICE = itemgetter("name", "serviceId", "vip", "port", "protocol", "algorithm", "bucketCount", "backendMode", "backends")
_SERVICE_TYPES = (str, int, str, int, str, str, int, str, list)
_BACKEND = itemgetter("node", "address", "port", "replicas", "buckets", "backendId")
_BACKEND_TYPES = (str, str, int, int, int, int)
_ACTIVE = itemgetter("activeConnections")
_DRAIN = itemgetter("bucket", "from", "generation", "until")
_DRAIN_TYPES = (int, str, int, str)
_INT = frozenset((int,))


def _ordinary_shard(data: bytes) -> dict[str, IndexEntry] | None:
    """parse_shard's entries, each with its rebuilt Service, when the shard is ordinary; None
    for anything else."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or len(doc) != 2:
        return None
    version, services = doc.get("auditIndex"), doc.get("services")
    if type(version) is not int or version != INDEX_VERSION or type(services) is not dict:
        return None
    out = {}
    for name, e in services.items():
        if type(e) is not dict or len(e) != 4:
            return None
        try:
            blob, buckets, digest, s = _ENTRY(e)  # with len 4: exactly these keys
        except KeyError:
            return None
        if not (_is_hex(blob, 40) and _is_hex(digest, 64)):
            return None
        svc = _ordinary_service(name, s, buckets)
        if svc is None:
            return None
        svc.__dict__["fragment_digest"] = digest  # as rebuild: the caller checks it against the record
        out[name] = IndexEntry(name, blob, digest, s, buckets, svc)
    return out


def _ordinary_service(name: str, s: Any, buckets: Any) -> ServiceSnapshot | None:
    """rebuild() of an ordinary entry, or None. svc.to_json() == s holds because s has exactly
    the keys to_json() writes (drains only when there are some) and every value is the one the
    Service holds: the same objects, backends with exactly their keys (activeConnections only
    when set), each drain's time written back to its own text."""
    if type(s) is not dict or type(buckets) is not list:
        return None
    if len(s) == 9:
        drains: tuple[Drain, ...] = ()
    elif len(s) == 10 and type(s.get("drains")) is list and s["drains"]:
        ordinary_drains = _ordinary_drains(s["drains"])
        if ordinary_drains is None:
            return None
        drains = ordinary_drains
    else:
        return None
    try:
        fields = _SERVICE(s)
    except KeyError:
        return None
    if tuple(map(type, fields)) != _SERVICE_TYPES:  # type(), as rebuild: a JSON true is not an int
        return None
    svc_name, service_id, vip, port, protocol, algorithm, count, mode, backends_json = fields
    if svc_name != name or len(buckets) != count:
        return None
    backends = _ordinary_backends(backends_json)
    if backends is None:
        return None
    keys = [b.address if mode == "podIP" else b.node for b in backends]  # backend_key
    assignment: tuple[str | None, ...]
    if not keys:
        if buckets.count(None) != count:
            return None
        assignment = (None,) * count
    else:
        if not _INT.issuperset(map(type, buckets)) or (buckets and min(buckets) < 0):
            return None
        try:
            assignment = tuple(map(keys.__getitem__, buckets))
        except IndexError:
            return None
    return ServiceSnapshot(
        name=svc_name, service_id=service_id, vip=vip, port=port, protocol=protocol, algorithm=algorithm,
        bucket_count=count, backend_mode=mode, backends=backends, assignment=assignment, drains=drains,
    )


def _ordinary_backends(items: list[Any]) -> tuple[Backend, ...] | None:
    """The Backends of a list of backend objects that have exactly the keys Backend.to_json()
    writes, with their types; None for anything else. All at once, not one by one: the ~4.6
    backends of a Service made the per-backend checks a third of the cost."""
    try:
        values = list(map(_BACKEND, items))  # each a dict (anything else: TypeError) with these six keys
    except (KeyError, TypeError):
        return None
    if tuple(map(type, chain.from_iterable(values))) != _BACKEND_TYPES * len(values):
        return None
    width = sum(map(len, items))  # each has at least the six: a total of 6n means none has more
    if width == 6 * len(values):
        return tuple(starmap(Backend, values))
    if width != 7 * len(values):
        return None
    try:  # each must have a seventh key, then: activeConnections, set (an int)
        conns = list(map(_ACTIVE, items))
    except KeyError:
        return None
    if not _INT.issuperset(map(type, conns)):
        return None
    return tuple(
        Backend(node, address, port, replicas, n, backend_id, c)
        for (node, address, port, replicas, n, backend_id), c in zip(values, conns)
    )


def _ordinary_drains(items: list[Any]) -> tuple[Drain, ...] | None:
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
