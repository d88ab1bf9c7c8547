"""The switch snapshot: its types, table entries, canonical JSON, digest and schema check.

A snapshot's table entries are a pure function of its services (and the config's routes), so
they are generated on demand instead of being stored: a 5,000-Service snapshot holds 330,000
entries, and keeping only services makes an incremental render and a diff cost in proportion
to what changed. The public document (``to_document``) still lists every entry, as DESIGN.md 4
requires, and ``from_document`` checks that a document's tables agree with its services.

The digest covers what the switches hold and why (config, pipeline, services, tables), not the
render's metadata (version, sources): step 1 of the transaction compares digests to decide
whether anything is to be done, which a digest over the version number could never allow.
See docs/snapshot.md for the exact algorithm.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import operator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jsonschema

from .gcpause import gc_paused
from . import p4names as n
from . import snapshot_schema

API_VERSION = "snapshot.p4kube.io/v1"
KIND = "SwitchSnapshot"

Value = int | str  # IPv4 as dotted quad, LPM as "a.b.c.d/len", MAC as "aa:bb:..", others int
_SortKey = tuple[tuple[int, int], ...]  # Entry.sort_key


class SnapshotError(ValueError):
    """A snapshot document that cannot be used: names the snapshot and the field."""


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8: the digest input form."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pretty_json(obj: Any) -> str:
    """The form written to files for people: still deterministic (sorted keys, fixed indent)."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- table layouts ----------------------------------------------------------------------------

TABLE_FIELDS: dict[str, tuple[str, ...]] = {
    n.VIP_TABLE: tuple(f for f, _ in n.VIP_MATCH),
    n.BACKEND_TABLE: tuple(f for f, _ in n.BACKEND_MATCH),
    n.REVERSE_NAT: tuple(f for f, _ in n.REVERSE_NAT_MATCH),
    n.IPV4_LPM: tuple(f for f, _ in n.IPV4_LPM_MATCH),
}
ACTION_PARAMS: dict[str, tuple[str, ...]] = {
    n.SET_SERVICE: tuple(p for p, _ in n.SET_SERVICE_PARAMS),
    n.DNAT: tuple(p for p, _ in n.DNAT_PARAMS),
    n.DNAT_DRAINING: tuple(p for p, _ in n.DNAT_DRAINING_PARAMS),
    n.SNAT: tuple(p for p, _ in n.SNAT_PARAMS),
    n.FWD: tuple(p for p, _ in n.FWD_PARAMS),
    n.DROP: (),
    n.NO_ACTION: (),
}


_TEMPLATES: dict[tuple[str, str], tuple[tuple[int, ...], tuple[int, ...], str]] = {}


def _template(table: str, action: str) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """Value orders and a format string giving an entry's canonical JSON minus its closing brace."""
    t = _TEMPLATES.get((table, action))
    if t is None:
        fields, params = TABLE_FIELDS[table], ACTION_PARAMS[action]
        key_order = tuple(sorted(range(len(fields)), key=lambda i: fields[i]))
        arg_order = tuple(sorted(range(len(params)), key=lambda i: params[i]))
        match = ",".join(json.dumps(fields[i]).replace("{", "{{").replace("}", "}}") + ":{}" for i in key_order)
        par = ",".join(json.dumps(params[i]).replace("{", "{{").replace("}", "}}") + ":{}" for i in arg_order)
        act = json.dumps(action).replace("{", "{{").replace("}", "}}")
        t = _TEMPLATES[(table, action)] = (key_order, arg_order, f'{{{{"action":{act},"match":{{{{{match}}}}},"params":{{{{{par}}}}}')
    return t


@lru_cache(maxsize=1 << 17)
def _enc_str(v: str) -> str:
    return json.dumps(v, ensure_ascii=False)


def _enc(v: Value) -> str:
    return str(v) if v.__class__ is int else _enc_str(v)


def _sort_value(v: Value) -> tuple[int, int]:
    """Order IPv4 strings numerically, prefixes by (address, length), ints as themselves."""
    if isinstance(v, int):
        return (v, 0)
    return _sort_str(v)


@lru_cache(maxsize=1 << 16)
def _sort_str(v: str) -> tuple[int, int]:
    # Cached: a snapshot's addresses repeat (1,000 node addresses over 23,000 reverse_nat keys) and
    # ipaddress parsing is the cost of sorting and diffing whole tables.
    if "/" in v:
        net = ipaddress.IPv4Network(v)
        return (int(net.network_address), net.prefixlen)
    if ":" in v:  # MAC
        return (int(v.replace(":", ""), 16), 0)
    return (int(ipaddress.IPv4Address(v)), 0)


@dataclass(frozen=True, slots=True)
class Entry:
    """One table entry. Values are in the table's match-field order and the action's param order."""

    table: str
    key: tuple[Value, ...]
    action: str
    args: tuple[Value, ...]
    service: str | None = None

    def sort_key(self) -> tuple[tuple[int, int], ...]:
        return tuple(_sort_value(v) for v in self.key)

    def canonical(self) -> str:
        """canonical_json(self.to_json()) as text, built from a per-(table, action) template:
        this is the hot path of the digest and of writing snapshots (330,000 entries at 5,000
        Services); tests check it equals canonical_json."""
        key_order, arg_order, fmt = _template(self.table, self.action)
        key, args = self.key, self.args
        vals = [_enc(key[i]) for i in key_order]
        vals += [_enc(args[i]) for i in arg_order]
        if self.service is not None:
            return fmt.format(*vals) + f',"service":{_enc(self.service)}}}'
        return fmt.format(*vals) + "}"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "match": dict(zip(TABLE_FIELDS[self.table], self.key)),
            "action": self.action,
            "params": dict(zip(ACTION_PARAMS[self.action], self.args)),
        }
        if self.service is not None:
            doc["service"] = self.service
        return doc

    @classmethod
    def from_json(cls, table: str, doc: Mapping[str, Any], where: str) -> "Entry":
        fields = TABLE_FIELDS.get(table)
        if fields is None:
            raise SnapshotError(f"{where}: table {table!r} is not in the load_balancer.p4 pipeline")
        match = doc["match"]
        if set(match) != set(fields):
            raise SnapshotError(f"{where}.match: expected fields {list(fields)}, got {sorted(match)}")
        action = doc["action"]
        params_names = ACTION_PARAMS.get(action)
        if params_names is None:
            raise SnapshotError(f"{where}.action: unknown action {action!r}")
        params = doc["params"]
        if set(params) != set(params_names):
            raise SnapshotError(f"{where}.params: {action} takes {list(params_names)}, got {sorted(params)}")
        return cls(
            table,
            tuple(match[f] for f in fields),
            action,
            tuple(params[p] for p in params_names),
            doc.get("service"),
        )


# --- services ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backend:
    node: str
    address: str
    port: int
    replicas: int
    buckets: int
    backend_id: int
    active_connections: int | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "node": self.node,
            "address": self.address,
            "port": self.port,
            "replicas": self.replicas,
            "buckets": self.buckets,
            "backendId": self.backend_id,
        }
        if self.active_connections is not None:
            doc["activeConnections"] = self.active_connections
        return doc


MAX_GENERATION = (1 << n.CONN_GEN_WIDTH) - 1
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(epoch: float) -> str:
    """Whole epoch seconds as RFC 3339 UTC ("2026-12-06T04:01:00Z"), the form drains carry."""
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime(_TIME_FORMAT)


def parse_time(text: str) -> float:
    """The inverse of format_time (raises ValueError)."""
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp()


@dataclass(frozen=True, slots=True)
class Drain:
    """A bucket that moved and still carries its old backend (DESIGN.md 5.1): until `until`, its
    entry is dnat_draining(new backend, `source`'s backend, `generation`), so established
    connections stay on `source` while new ones go to the bucket's new backend."""

    bucket: int
    source: str  # backend key the bucket drains from: node (nodePort mode) or pod address (podIP)
    generation: int  # 1..2^32-1, carried by the entry; conn_gen cells marked with it match
    until: float  # epoch seconds (whole): a render at or after this time writes the plain entry

    def to_json(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "from": self.source, "generation": self.generation, "until": format_time(self.until)}


def backend_key(backend: Backend, backend_mode: str) -> str:
    """What a bucket points at: the node in nodePort mode, the pod address in podIP mode."""
    return backend.address if backend_mode == "podIP" else backend.node


@dataclass(frozen=True)
class ServiceSnapshot:
    """One Service port as the switches serve it.

    `assignment[b]` is the backend key bucket b points at (None only when there are no
    backends, in which case the Service has no entries and its VIP is routed to the nodes).
    """

    name: str
    service_id: int
    vip: str
    port: int
    protocol: str
    algorithm: str
    bucket_count: int
    backend_mode: str
    backends: tuple[Backend, ...]
    assignment: tuple[str | None, ...]
    # Buckets draining from their previous backend, sorted by bucket. Each source is listed in
    # `backends` (possibly with 0 replicas and 0 buckets) so its backend id and reverse_nat stay.
    drains: tuple[Drain, ...] = ()

    @property
    def service_key(self) -> str:
        """namespace/name of the Kubernetes Service (without the :port suffix)."""
        return self.name.split(":", 1)[0]

    def to_json(self) -> dict[str, Any]:
        doc = {
            "name": self.name,
            "serviceId": self.service_id,
            "vip": self.vip,
            "port": self.port,
            "protocol": self.protocol,
            "algorithm": self.algorithm,
            "bucketCount": self.bucket_count,
            "backendMode": self.backend_mode,
            "backends": [b.to_json() for b in self.backends],
        }
        if self.drains:  # only when present: snapshots without drains keep their exact JSON and digest
            doc["drains"] = [d.to_json() for d in self.drains]
        return doc

    def entries(self) -> dict[str, list[Entry]]:
        """This Service's entries per table, each list in key order."""
        if not self.backends or self.assignment[0] is None:
            return {}
        proto = n.IP_PROTOCOLS[self.protocol]
        by_key: dict[str | None, Backend] = {backend_key(b, self.backend_mode): b for b in self.backends}
        backend_entries = []
        for bucket, key in enumerate(self.assignment):
            b = by_key[key]
            backend_entries.append(
                Entry(n.BACKEND_TABLE, (self.service_id, bucket), n.DNAT, (b.address, b.port, b.backend_id), self.name)
            )
        for d in self.drains:
            b, o = by_key[self.assignment[d.bucket]], by_key[d.source]
            args = (b.address, b.port, b.backend_id, o.address, o.port, o.backend_id, d.generation)
            backend_entries[d.bucket] = Entry(n.BACKEND_TABLE, (self.service_id, d.bucket), n.DNAT_DRAINING, args, self.name)
        reverse = sorted(
            (
                Entry(n.REVERSE_NAT, (b.address, b.port, proto), n.SNAT, (self.vip, self.port), self.name)
                for b in self.backends
            ),
            key=Entry.sort_key,
        )
        vip = Entry(n.VIP_TABLE, (self.vip, self.port, proto), n.SET_SERVICE, (self.service_id, self.bucket_count - 1), self.name)
        return {n.VIP_TABLE: [vip], n.BACKEND_TABLE: backend_entries, n.REVERSE_NAT: reverse}

    def reverse_nat_keys(self) -> tuple[tuple[Value, ...], ...]:
        """The keys of entries()[REVERSE_NAT], in that order, without making the bucket entries
        (render looks them up for every Service of a --previous snapshot). Made once per object:
        a render from --previous and the encoding of the same snapshot both ask."""
        return self._reverse_nat_keys

    def reverse_nat_keys_unordered(self) -> list[tuple[Value, ...]]:
        """reverse_nat_keys() in backend order, unsorted: for seeding a map, which needs no order
        (the sort, addresses parsed to compare, is most of what seeding 5,000 Services costs)."""
        if not self.backends or self.assignment[0] is None:
            return []
        proto = n.IP_PROTOCOLS[self.protocol]
        return [(b.address, b.port, proto) for b in self.backends]

    @cached_property
    def _reverse_nat_keys(self) -> tuple[tuple[Value, ...], ...]:
        return tuple(sorted(self.reverse_nat_keys_unordered(), key=lambda k: tuple(_sort_value(v) for v in k)))

    @cached_property
    def fragment_digest(self) -> str:
        """sha256 hex of this Service's fragment (its JSON object and its entries)."""
        digest = _sha256_hex(self.fragment_text().encode())
        _known_by_digest(self, digest)
        return digest

    def fragment_text(self) -> str:
        """Canonical JSON of this Service's fragment: _fragment_text(self.to_json(), self.entries()).

        Specialised for speed (entry texts from entry_texts, no Entry objects for the buckets);
        tests check it is byte-identical to the generic form."""
        parts = self._parts()
        return _fragment_from(parts.bodies(","), self.service_text())

    def service_text(self) -> str:
        """canonical_json(self.to_json()) as text: the fragment's and the file form's "service"."""
        return canonical_json(self.to_json()).decode()

    def entry_texts(self) -> dict[str, list[str]]:
        """Each entry's canonical JSON (Entry.canonical), per table in entries() order, without
        making the bucket entries: one format per bucket, each backend's part encoded once. The
        digest's fragments and the file form are written from these (tested equal)."""
        p = self._parts()
        if p.vip is None:
            return {}
        return {n.VIP_TABLE: [p.vip], n.BACKEND_TABLE: p.backend_rows(), n.REVERSE_NAT: p.reverse}

    def _parts(self) -> "_EntryParts":
        """The parts entry_texts() is made of, with the vip_table and reverse_nat sort keys."""
        if not self.backends or self.assignment[0] is None:
            return _EntryParts(None, None, "", (), None, [], [])
        name = _enc(self.name)
        first, second, sid_first, par_order, par_format = _backend_row_parts()
        sid = self.service_id
        sid_text = "%d" % sid  # as the bucket: match values are written with %d
        # Row b is lead + "b" + its backend's tail (match keys in canonical order): with the
        # bucket first (load_balancer.p4's field names), lead is the same for every Service.
        lead, mid = (first + sid_text + second, "") if sid_first else (first, second + sid_text)
        tails: dict[str | None, str] = {}
        end = name + "}"
        for b in self.backends:
            args: tuple[Value, ...] = (b.address, b.port, b.backend_id)  # DNAT's params, in order
            tails[backend_key(b, self.backend_mode)] = mid + par_format % tuple([_enc(args[i]) for i in par_order]) + end
        proto = n.IP_PROTOCOLS[self.protocol]
        row_tails = list(map(tails.__getitem__, self.assignment))
        rows: list[str] | None = None
        if self.drains:  # rare: each row made, the draining ones in the generic form
            rows = [f"{lead}{bucket:d}{tail}" for bucket, tail in enumerate(row_tails)]
            by_key: dict[str | None, Backend] = {backend_key(b, self.backend_mode): b for b in self.backends}
            for d in self.drains:
                b, o = by_key[self.assignment[d.bucket]], by_key[d.source]
                args2 = (b.address, b.port, b.backend_id, o.address, o.port, o.backend_id, d.generation)
                rows[d.bucket] = Entry(n.BACKEND_TABLE, (sid, d.bucket), n.DNAT_DRAINING, args2, self.name).canonical()
        # reverse_nat: one key per backend, sorted (stably, as entries() does) by its sort key;
        # the action's part and the service name are the same in every row.
        key_order, arg_order, fmt = _template(n.REVERSE_NAT, n.SNAT)
        snat_args = (self.vip, self.port)
        arg_vals = [_enc(snat_args[i]) for i in arg_order]
        tail = f',"service":{name}}}'
        keys = [(b.address, b.port, proto) for b in self.backends]
        sort_keys = [(_sort_value(a), _sort_value(p), _sort_value(q)) for a, p, q in keys]
        order = sorted(range(len(keys)), key=sort_keys.__getitem__)
        reverse = [fmt.format(*[_enc(keys[i][j]) for j in key_order], *arg_vals) + tail for i in order]
        vip = Entry(n.VIP_TABLE, (self.vip, self.port, proto), n.SET_SERVICE, (sid, self.bucket_count - 1), self.name)
        return _EntryParts(
            vip.canonical(), rows, lead, row_tails, vip.sort_key(), reverse,
            [sort_keys[i] for i in order],
        )


@dataclass(frozen=True, slots=True)
class _EntryParts:
    """A Service's entry texts in parts (ServiceSnapshot._parts). The backend_table rows are
    `rows`, or (the common case, `rows` None) lead + "<bucket>" + tails[bucket] for each bucket,
    concatenated and joined in C loops rather than made one by one in Python (320,000 rows at
    5,000 Services)."""

    vip: str | None  # None: the Service has no entries
    rows: list[str] | None
    lead: str
    tails: Sequence[str]
    vip_key: _SortKey | None
    reverse: list[str]
    reverse_keys: list[_SortKey]

    def backend_rows(self) -> list[str]:
        if self.rows is not None:
            return self.rows
        return list(map(str.__add__, _heads(self.lead, len(self.tails), ""), self.tails))

    def backend_joined(self, sep: str) -> str:
        """sep.join(self.backend_rows())."""
        if self.rows is not None:
            return sep.join(self.rows)
        return "".join(itertools.chain.from_iterable(zip(_heads(self.lead, len(self.tails), sep), self.tails)))

    def bodies(self, sep: str) -> dict[str, str]:
        """Each table's rows joined by sep (no tables when the Service has no entries)."""
        if self.vip is None:
            return {}
        return {n.VIP_TABLE: self.vip, n.BACKEND_TABLE: self.backend_joined(sep), n.REVERSE_NAT: sep.join(self.reverse)}


def _fragment_from(bodies: Mapping[str, str], service_text: str) -> str:
    """A Service's fragment from its tables' rows joined by "," and its service_text()."""
    body = ",".join(f"{json.dumps(t)}:[{rows}]" for t, rows in sorted(bodies.items()))
    return f'{{"entries":{{{body}}},"service":{service_text}}}'


@lru_cache(maxsize=16)
def _heads(lead: str, count: int, sep: str) -> tuple[str, ...]:
    """Each bucket's row text before its tail, all but the first preceded by sep: the same for
    every Service of a snapshot (one bucket count) when the bucket is the first match key."""
    return tuple((sep if b else "") + lead + "%d" % b for b in range(count))


@lru_cache(maxsize=1)
def _backend_row_parts() -> tuple[str, str, bool, tuple[int, ...], str]:
    """A dnat backend_table row's constant text, around its two match values: (text before the
    first value, text between them, whether the service id comes first, the order of the dnat
    params (indices into DNAT's) by name, and a %-format of the text from the match's closing
    brace to the service name, taking the encoded params in that order). Canonical key order,
    as Entry.canonical."""
    fields = TABLE_FIELDS[n.BACKEND_TABLE]
    key_order = sorted(range(len(fields)), key=lambda i: fields[i])
    head = '{"action":' + _enc(n.DNAT) + ',"match":{'
    a, b = (json.dumps(fields[i]) + ":" for i in key_order)
    names = ACTION_PARAMS[n.DNAT]
    order = tuple(sorted(range(len(names)), key=lambda i: names[i]))
    params = ",".join(json.dumps(names[i]).replace("%", "%%") + ":%s" for i in order)
    return head + a, "," + b, key_order == [0, 1], order, '},"params":{' + params + '},"service":'


def _fragment_text(service: dict[str, Any] | None, entries: Mapping[str, list[Entry]]) -> str:
    """canonical_json({"entries": {table: [entry...]}, "service": service}), built from the
    entries' canonical text (tests check it equals canonical_json of the same object)."""
    tables = ",".join(
        f"{json.dumps(t)}:[{','.join(e.canonical() for e in es)}]" for t, es in sorted(entries.items()) if es
    )
    return f'{{"entries":{{{tables}}},"service":{canonical_json(service).decode()}}}'


def route_entries(routes: Iterable[tuple[str, int, str]]) -> tuple[Entry, ...]:
    """ipv4_lpm entries from (prefix, port, next-hop MAC) triples, in key order."""
    return tuple(sorted((Entry(n.IPV4_LPM, (p,), n.FWD, (port, mac)) for p, port, mac in routes), key=Entry.sort_key))


# --- the snapshot -----------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Snapshot:
    config: str
    version: int
    intent_commit: str | None
    cluster_resource_version: str | None
    program: str
    p4info_digest: str
    services: tuple[ServiceSnapshot, ...]  # sorted by name
    global_entries: tuple[Entry, ...] = ()  # entries owned by the config (routes), key order
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        # Short: a 5,000-Service snapshot's full repr is megabytes and takes 0.2 s, and asyncio
        # makes one of a finished task's result when asyncio.run() restores its SIGINT handler.
        return (f"Snapshot(config={self.config!r}, version={self.version}, services={len(self.services)}, "
                f"global_entries={len(self.global_entries)}, intent_commit={self.intent_commit!r})")

    @cached_property
    def digest(self) -> str:
        return compute_digest(self.config, self.program, self.p4info_digest, self.services, self.global_entries)

    @cached_property
    def by_name(self) -> dict[str, ServiceSnapshot]:
        return {s.name: s for s in self.services}

    @cached_property
    def _drain_bounds(self) -> tuple[float | None, int]:
        until: float | None = None
        generation = 0
        for svc in self.services:
            for d in svc.drains:
                until = d.until if until is None else min(until, d.until)
                generation = max(generation, d.generation)
        return until, generation

    def drain_until(self) -> float | None:
        """The earliest `until` of any drain (epoch seconds), None when nothing drains: the
        time at which a render writes the plain entries of the first drain to end."""
        return self._drain_bounds[0]

    def max_drain_generation(self) -> int:
        """The highest generation any drain carries (0 when none): new drains use a higher one."""
        return self._drain_bounds[1]

    @cached_property
    def table_counts(self) -> dict[str, int]:
        """How many entries each table holds, without building them (the health round's
        quick check compares these with what a switch reports)."""
        out = dict.fromkeys(n.TABLE_ORDER, 0)
        for svc in self.services:
            if svc.backends and svc.assignment[0] is not None:
                out[n.VIP_TABLE] += 1
                out[n.BACKEND_TABLE] += svc.bucket_count
                out[n.REVERSE_NAT] += len(svc.backends)
        for e in self.global_entries:
            out[e.table] += 1
        return out

    def tables(self) -> dict[str, list[Entry]]:
        """Every entry per table, each table in key order."""
        out: dict[str, list[Entry]] = {t: [] for t in n.TABLE_ORDER}
        for svc in self.services:
            for table, entries in svc.entries().items():
                out[table].extend(entries)
        for e in self.global_entries:
            out[e.table].append(e)
        for table in (n.VIP_TABLE, n.REVERSE_NAT, n.IPV4_LPM):
            out[table].sort(key=Entry.sort_key)
        # backend_table: services are not in service-id order, so sort by (id, bucket) too.
        out[n.BACKEND_TABLE].sort(key=lambda e: e.key)
        return out

    def entry_count(self) -> int:
        return sum(len(es) for es in self.tables().values())

    def to_document(self) -> dict[str, Any]:
        return header_document(
            self,
            [s.to_json() for s in self.services],
            {t: [e.to_json() for e in es] for t, es in self.tables().items()},
            self.digest,
        )

    def to_json_text(self) -> str:
        """The file form: indented JSON with sorted keys, one table entry per line, so that a
        change to one bucket is a one-line diff in review. Deterministic, like canonical JSON."""
        return snapshot_text(self)

    def with_version(self, version: int) -> "Snapshot":
        """The same content at another version; the digest (which excludes the version) is kept."""
        snap = Snapshot(
            self.config,
            version,
            self.intent_commit,
            self.cluster_resource_version,
            self.program,
            self.p4info_digest,
            self.services,
            self.global_entries,
            self.extra,
        )
        if "digest" in self.__dict__:
            snap.__dict__["digest"] = self.__dict__["digest"]
        return snap


def compute_digest(
    config: str,
    program: str,
    p4info_digest: str,
    services: Sequence[ServiceSnapshot],
    global_entries: Sequence[Entry],
) -> str:
    """sha256 over the header, then one line per Service fragment digest, then the global fragment.

    Per-Service fragment digests are cached on the (immutable) services, so re-digesting a
    5,000-Service snapshot after one change hashes one fragment and 5,000 short lines.
    """
    h = hashlib.sha256()
    h.update(canonical_json({"config": config, "pipeline": {"program": program, "p4infoDigest": p4info_digest}}))
    h.update(b"\n")
    h.update(("\n".join([s.fragment_digest for s in services]) + "\n" if services else "").encode())
    globals_by_table: dict[str, list[Entry]] = {}
    for e in global_entries:
        globals_by_table.setdefault(e.table, []).append(e)
    h.update(_sha256_hex(_fragment_text(None, globals_by_table).encode()).encode())
    return "sha256:" + h.hexdigest()


# --- schema check and parsing -----------------------------------------------------------------


def schema_validator() -> jsonschema.protocols.Validator:
    """The python-jsonschema validator of the whole schema: it explains refusals (see
    snapshot_schema); checks go through schema_errors, which a compiled validator decides."""
    return snapshot_schema.reference()


def schema_errors(doc: Any, *, subschema: str | None = None) -> list[str]:
    """Schema violations as "path: message" strings sorted by path (empty when valid).

    `subschema` names a $defs entry ("service", "entry") to check a part on its own. Decided
    by the compiled validator; explained (when refused) by jsonschema, for the failing parts only.
    """
    return snapshot_schema.errors(doc, subschema)


# Fragment digests of Service objects known to satisfy $defs/service (checked by render, by
# from_document or by snapshot_schema_errors): a Service is checked once per process, and a later
# check of a whole snapshot costs what changed. Bounded; when full it starts again (a re-check
# costs ~40 us per Service).
_VALID_FRAGMENTS: set[str] = set()
_VALID_FRAGMENTS_LIMIT = 1 << 16
# Set in a Service object's __dict__ when the object itself was checked before its fragment digest
# was computed (render checks each Service it makes; the digest comes later, from the texts the
# file form writes, so the entries' texts are made once). The object is immutable: it stays valid.
_CHECKED = "_schema_checked"


def _note_valid(svc: "ServiceSnapshot") -> None:
    digest = svc.__dict__.get("fragment_digest")
    if digest is None:
        svc.__dict__[_CHECKED] = True  # known by its digest too once that is computed
        return
    _remember_valid(digest)


def _remember_valid(digest: str) -> None:
    if len(_VALID_FRAGMENTS) >= _VALID_FRAGMENTS_LIMIT:
        _VALID_FRAGMENTS.clear()
    _VALID_FRAGMENTS.add(digest)


def _known_by_digest(svc: "ServiceSnapshot", digest: str) -> None:
    """The fragment digest was just computed: an object checked before is now known by it."""
    if svc.__dict__.get(_CHECKED):
        _remember_valid(digest)


def _known_valid(svc: "ServiceSnapshot") -> bool:
    if svc.__dict__.get(_CHECKED):
        return True
    # Only a digest already computed is looked up: computing one for an invalid object may fail.
    digest = svc.__dict__.get("fragment_digest")
    return digest is not None and digest in _VALID_FRAGMENTS


def _service_violations(svc: "ServiceSnapshot", at: snapshot_schema.Loc) -> list[tuple[snapshot_schema.Loc, str]]:
    """Why the Service object fails $defs/service (empty when it does not; then it is noted valid).

    Its table entries are not checked here: each is built from the object's own fields (strings
    and integers the object's schema already types) and constant action names, so an object that
    satisfies $defs/service implies entries that satisfy $defs/entry (tested)."""
    if _known_valid(svc):
        return []
    doc = svc.to_json()
    if snapshot_schema.is_valid(doc, "service"):
        _note_valid(svc)
        return []
    return snapshot_schema.explain(doc, "service", at)


def service_schema_errors(svc: "ServiceSnapshot") -> list[str]:
    """Why a Service object fails $defs/service, as "path: message" (empty when it does not):
    ~10 us compiled, nothing when its fragment was checked before in this process (by render,
    from_document or an earlier call). For writers that check what they write (the audit)."""
    return [f"{snapshot_schema.format_path(p)}: {m}" for p, m in _service_violations(svc, ())]


def check_service_schema(svc: "ServiceSnapshot") -> None:
    """Schema check of one Service object as render produces it (~10 us, nothing when its
    fragment was checked before): render checks each Service it (re)computes."""
    errors = service_schema_errors(svc)
    if errors:
        raise SnapshotError(f"rendered service {svc.name} fails snapshot.schema.json (a bug): " + "; ".join(errors[:5]))


def _digest_or_placeholder(snap: Snapshot) -> str:
    """The digest, or (when a broken Service cannot even be hashed, which its own check then
    explains) a stand-in of the same form: compute_digest's output always has the schema's form."""
    try:
        return snap.digest
    except (KeyError, IndexError, TypeError, ValueError):
        return "sha256:" + "0" * 64


def header_document(snap: Snapshot, services: list[Any], tables: Mapping[str, list[Any]], digest: str) -> dict[str, Any]:
    """The snapshot's document with these services, tables and digest: its extra fields, then
    the fixed header (DESIGN.md 4). Whole (to_document) or with parts left out for a check."""
    doc: dict[str, Any] = dict(snap.extra)
    doc.update(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "config": snap.config,
            "version": snap.version,
            "sources": {"intentCommit": snap.intent_commit, "clusterResourceVersion": snap.cluster_resource_version},
            "pipeline": {"program": snap.program, "p4infoDigest": snap.p4info_digest},
            "services": services,
            "tables": dict(tables),
            "digest": digest,
        }
    )
    return doc


def global_tables(snap: Snapshot) -> dict[str, list[Any]]:
    """The config's own entries (routes) as JSON, by table."""
    tables: dict[str, list[Any]] = {}
    for e in snap.global_entries:
        tables.setdefault(e.table, []).append(e.to_json())
    return tables


def snapshot_schema_errors(snap: Snapshot) -> list[str]:
    """schema_errors(snap.to_document()), incrementally: the header and the config's own entries,
    then only the Services not checked before in this process (by fragment digest). Same
    strings as the full check, without building 348,000 entry objects at 5,000 Services."""
    tables: dict[str, list[Any]] = {t: [] for t in n.TABLE_ORDER}
    tables.update(global_tables(snap))
    head = header_document(snap, [], tables, _digest_or_placeholder(snap))
    found = [] if snapshot_schema.is_valid(head) else snapshot_schema.document_violations(head)
    for i, svc in enumerate(snap.services):
        found += _service_violations(svc, ("services", i))
    if found:
        # Refused (a bug): say all the full check says, the entries an invalid object implies too.
        try:
            doc = snap.to_document()
        except (KeyError, IndexError, TypeError, ValueError):  # entries cannot even be built
            return snapshot_schema.formatted(found)
        return snapshot_schema.errors(doc)
    return []


def _from_header(doc: Mapping[str, Any], services: Sequence[ServiceSnapshot], global_entries: Iterable[Entry]) -> Snapshot:
    """A snapshot from a document's header fields and the services and routes parsed from it."""
    return Snapshot(
        config=doc["config"],
        version=doc["version"],
        intent_commit=doc["sources"]["intentCommit"],
        cluster_resource_version=doc["sources"]["clusterResourceVersion"],
        program=doc["pipeline"]["program"],
        p4info_digest=doc["pipeline"]["p4infoDigest"],
        services=tuple(services),
        global_entries=tuple(sorted(global_entries, key=Entry.sort_key)),
    )


def from_document(doc: Mapping[str, Any], *, source: str = "snapshot") -> Snapshot:
    """Parse and check a snapshot document: schema, table/service agreement, and digest."""
    errors = schema_errors(doc)
    if errors:
        raise SnapshotError(f"{source}: not a valid snapshot:\n  " + "\n  ".join(errors[:20]))
    fast = _from_canonical_document(doc)
    if fast is not None:
        return fast
    # The reference path: anything the fast path does not take (an error, an unusual document)
    # is decided and worded here.
    tables: dict[str, list[Entry]] = {
        t: [Entry.from_json(t, e, f"{source}: tables.{t}[{i}]") for i, e in enumerate(es)]
        for t, es in doc["tables"].items()
    }
    owned: dict[str, list[Entry]] = {}
    global_entries: list[Entry] = []
    for es in tables.values():
        for e in es:
            (owned.setdefault(e.service, []) if e.service else global_entries).append(e)
    services = []
    for i, s in enumerate(doc["services"]):
        services.append(service_from_json(s, owned.get(s["name"], []), f"{source}: services[{i}]"))
    names = [s.name for s in services]
    if names != sorted(names) or len(set(names)) != len(names):
        raise SnapshotError(f"{source}: services must be unique and sorted by name")
    unknown = set(owned) - set(names)
    if unknown:
        raise SnapshotError(f"{source}: entries name services that are not listed: {sorted(unknown)}")
    snap = _from_header(doc, services, global_entries)
    # Entries are regenerated from services: they must be exactly what the document lists.
    regenerated = {(e.table, e.key, e.action, e.args, e.service) for es in snap.tables().values() for e in es}
    listed = {(e.table, e.key, e.action, e.args, e.service) for es in tables.values() for e in es}
    if regenerated != listed:
        extra = sorted(map(str, listed - regenerated))[:3]
        missing = sorted(map(str, regenerated - listed))[:3]
        raise SnapshotError(
            f"{source}: tables disagree with services (entries not implied by services: {extra}; "
            f"implied but missing: {missing})"
        )
    if snap.digest != doc["digest"]:
        raise SnapshotError(f"{source}: digest mismatch: document says {doc['digest']}, content hashes to {snap.digest}")
    for svc in services:  # checked with the document: a later check of them is a look-up
        _note_valid(svc)
    return snap


def _from_canonical_document(doc: Mapping[str, Any]) -> Snapshot | None:
    """from_document's result for a document in canonical form (what to_document and the file
    form write), in a third of the time at 5,000 Services; None for anything else, which the
    reference path then decides (with its wording of any error).

    Instead of parsing every entry and comparing sets, each Service's listed entries must be,
    byte for byte in canonical JSON, the entries its object implies: that is the fragment whose
    sha256 the digest is built from, so the hashing reuses it. Equal bytes imply what the
    reference path checks (same entries, none extra or missing, nothing but known fields), and
    the objects built are the ones it would build (tested against it)."""
    try:
        owned: dict[str, dict[str, list[Any]]] = {}
        global_docs: list[tuple[str, int, Mapping[str, Any]]] = []
        for t, es in doc["tables"].items():
            for i, e in enumerate(es):
                name = e.get("service")
                if name is None:
                    global_docs.append((t, i, e))
                else:
                    owned.setdefault(name, {}).setdefault(t, []).append(e)
        global_entries = [Entry.from_json(t, e, f"tables.{t}[{i}]") for t, i, e in global_docs]
        services: list[ServiceSnapshot] = []
        for i, s in enumerate(doc["services"]):
            listed = owned.pop(s["name"], {})
            entries = []
            for t, es in listed.items():
                fields = TABLE_FIELDS[t]
                for e in es:
                    match, params, action = e["match"], e["params"], e["action"]
                    entries.append(Entry(t, tuple(match[f] for f in fields), action, tuple(params[p] for p in ACTION_PARAMS[action]), e.get("service")))
            svc = service_from_json(s, entries, f"services[{i}]")
            text = svc.fragment_text()
            if canonical_json({"entries": listed, "service": svc.to_json()}) != text.encode():
                return None
            svc.__dict__["fragment_digest"] = _sha256_hex(text.encode())
            services.append(svc)
        names = [s.name for s in services]
        if owned or names != sorted(names) or len(set(names)) != len(names):
            return None
        snap = _from_header(doc, services, global_entries)
        if snap.digest != doc["digest"]:
            return None
    except (SnapshotError, KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError):
        return None
    for svc in services:
        _note_valid(svc)
    return snap


def service_from_json(s: Mapping[str, Any], entries: list[Entry], where: str) -> ServiceSnapshot:
    mode = s.get("backendMode", "nodePort")
    backends = tuple(
        Backend(
            node=b["node"],
            address=b["address"],
            port=b["port"],
            replicas=b["replicas"],
            buckets=b["buckets"],
            backend_id=b.get("backendId", 0),
            active_connections=b.get("activeConnections"),
        )
        for b in s["backends"]
    )
    by_target: dict[tuple[Value, ...], str] = {(b.address, b.port, b.backend_id): backend_key(b, mode) for b in backends}
    drains = _drains_from_json(s, {backend_key(b, mode) for b in backends}, where)
    draining = {d.bucket: d for d in drains}
    assignment: list[str | None] = [None] * s["bucketCount"]
    for e in entries:
        if e.table != n.BACKEND_TABLE:
            continue
        _, bucket = e.key
        if not isinstance(bucket, int) or bucket >= s["bucketCount"]:
            raise SnapshotError(f"{where}: backend_table bucket {bucket} outside bucketCount {s['bucketCount']}")
        target = by_target.get(tuple(e.args[:3]))
        if target is None:
            raise SnapshotError(f"{where}: backend_table entry for bucket {bucket} points at {e.args}, not a listed backend")
        drain = draining.get(bucket)
        if (e.action == n.DNAT_DRAINING) != (drain is not None):
            raise SnapshotError(
                f"{where}: backend_table entry for bucket {bucket} is {e.action} but drains "
                + ("list it" if drain is not None else "do not list it")
            )
        if drain is not None and drain.source == target:
            raise SnapshotError(f"{where}.drains: bucket {bucket} drains from {drain.source!r}, the backend it points at")
        assignment[bucket] = target
    if backends and None in assignment:
        raise SnapshotError(f"{where}: bucket {assignment.index(None)} has no backend_table entry")
    return ServiceSnapshot(
        name=s["name"],
        service_id=s["serviceId"],
        vip=s["vip"],
        port=s["port"],
        protocol=s["protocol"],
        algorithm=s["algorithm"],
        bucket_count=s["bucketCount"],
        backend_mode=mode,
        backends=backends,
        assignment=tuple(assignment),
        drains=drains,
    )


def _drains_from_json(s: Mapping[str, Any], keys: set[str], where: str) -> tuple[Drain, ...]:
    """A service object's drains, checked: sorted, unique, inside bucketCount, from a listed backend."""
    drains = []
    for i, d in enumerate(s.get("drains", ())):
        at = f"{where}.drains[{i}]"
        if d["bucket"] >= s["bucketCount"]:
            raise SnapshotError(f"{at}.bucket: {d['bucket']} outside bucketCount {s['bucketCount']}")
        if d["from"] not in keys:
            raise SnapshotError(f"{at}.from: {d['from']!r} is not a listed backend")
        try:
            until = parse_time(d["until"])
        except ValueError as e:
            raise SnapshotError(f"{at}.until: {e}") from e
        drains.append(Drain(d["bucket"], d["from"], d["generation"], until))
    if [d.bucket for d in drains] != sorted({d.bucket for d in drains}):
        raise SnapshotError(f"{where}.drains: buckets must be unique and sorted")
    return tuple(drains)


def load_snapshot(path: str | Path) -> Snapshot:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SnapshotError(f"{p}: cannot read snapshot: {e.strerror}") from e
    with gc_paused():  # millions of acyclic containers: the collector's passes find nothing
        # json, not orjson: orjson's parse of a 5,000-Service file peaks ~180 MB higher, which
        # would take plan --previous past its 600 MB budget for ~0.3 s.
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise SnapshotError(f"{p}:{e.lineno}:{e.colno}: not JSON: {e.msg}") from e
        holder = [doc]
        del doc  # the fast path drops the parsed tables once it has read them (peak memory)
        fast = _from_file_text(holder, text)
        if fast is not None:
            return fast
        doc = holder[0] if holder else json.loads(text)
        return from_document(doc, source=str(p))


def _from_file_text(holder: list[Any], text: str) -> Snapshot | None:
    """from_document's result for a file written by to_json_text, without parsing its entries; None
    for anything else, which from_document then decides and words.

    The Services are built from their objects and their backend_table entries (which bucket points
    where), and the snapshot they make must write exactly `text`: equal text means the listed
    tables are the implied ones, the digest is theirs and the document is the snapshot's own
    document, whose schema check is then the incremental one (tested equal to from_document).
    `holder` holds the parsed document; it is emptied once the Services are built, so that the
    ~350,000 parsed entries are freed before the text is written for the comparison."""
    doc = holder[0]
    try:
        by_service: dict[str, list[Mapping[str, Any]]] = {}
        global_entries: list[Entry] = []
        for t, es in doc["tables"].items():
            if t == n.BACKEND_TABLE:
                # A Service's rows are consecutive in the file form: grouped in C, not row by row.
                for name, group in itertools.groupby(es, _SERVICE_OF):
                    if name is None:  # not what to_json_text writes: from_document decides it
                        return None
                    by_service.setdefault(name, []).extend(group)
                continue
            for i, e in enumerate(es):
                if e.get("service") is None:
                    global_entries.append(Entry.from_json(t, e, f"tables.{t}[{i}]"))
        services = [_service_from_bucket_docs(s, by_service.pop(s["name"], [])) for s in doc["services"]]
        names = [s.name for s in services]
        if by_service or names != sorted(names) or len(set(names)) != len(names):
            return None
        snap = _from_header(doc, services, global_entries)
        del doc, holder[:]
        if snapshot_text(snap) != text or snapshot_schema_errors(snap):
            return None
    except (SnapshotError, KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError):
        return None
    return snap


_SERVICE_OF = operator.methodcaller("get", "service")
_BUCKET_FIELD = n.BACKEND_MATCH[1][0]
_TARGET_PARAMS = tuple(p for p, _ in n.DNAT_PARAMS)  # dnat_draining's first three too (p4names)


def _service_from_bucket_docs(s: Mapping[str, Any], buckets: list[Mapping[str, Any]]) -> ServiceSnapshot:
    """service_from_json from the Service's backend_table entry documents, reading only which
    backend each bucket points at. Its checks are service_from_json's (any failure is a
    SnapshotError; the caller then leaves the wording to the reference path)."""
    mode = s.get("backendMode", "nodePort")
    backends = tuple(
        Backend(b["node"], b["address"], b["port"], b["replicas"], b["buckets"], b.get("backendId", 0), b.get("activeConnections"))
        for b in s["backends"]
    )
    by_target: dict[tuple[Any, ...], str] = {(b.address, b.port, b.backend_id): backend_key(b, mode) for b in backends}
    drains = _drains_from_json(s, set(by_target.values()), "")
    draining = {d.bucket: d.source for d in drains}
    count = s["bucketCount"]
    ip, port, bid = _TARGET_PARAMS
    assignment: list[str | None] = [None] * count
    for e in buckets:
        bucket, params = e["match"][_BUCKET_FIELD], e["params"]
        if bucket.__class__ is not int or not 0 <= bucket < count:
            raise SnapshotError("bucket")
        target = by_target.get((params[ip], params[port], params[bid]))
        if target is None or (e["action"] == n.DNAT_DRAINING) != (bucket in draining) or draining.get(bucket) == target:
            raise SnapshotError("bucket")
        assignment[bucket] = target
    if backends and None in assignment:
        raise SnapshotError("bucket")
    return ServiceSnapshot(
        name=s["name"], service_id=s["serviceId"], vip=s["vip"], port=s["port"], protocol=s["protocol"],
        algorithm=s["algorithm"], bucket_count=count, backend_mode=mode, backends=backends,
        assignment=tuple(assignment), drains=drains,
    )


def iter_entries(tables: Mapping[str, Sequence[Entry]]) -> Iterator[Entry]:
    for es in tables.values():
        yield from es


_ROW_SEP = ",\n      "  # between two table entries in the file form


def snapshot_text(snap: Snapshot) -> str:
    rows, service_texts = _table_rows(snap)  # first: it also fills the fragment digests the digest needs
    head = header_document(snap, [], {}, snap.digest)
    del head["services"], head["tables"]  # made below from the texts
    # Each top-level value as a list of pieces, joined once at the end: the tables are ~60 MB at
    # 5,000 Services, and every intermediate string would copy them again.
    items: list[tuple[str, list[str]]] = [(k, [json.dumps(v, sort_keys=True, ensure_ascii=False)]) for k, v in head.items()]
    services = ",\n".join("    " + text for text in service_texts)
    items.append(("services", [f"[\n{services}\n  ]" if snap.services else "[]"]))
    tables = ["{\n"]
    for i, (t, texts) in enumerate(sorted(rows.items())):
        if i:
            tables.append(",\n")
        if texts:
            tables += (f"    {json.dumps(t)}: [\n      ", _ROW_SEP.join(texts), "\n    ]")
        else:
            tables.append(f"    {json.dumps(t)}: []")
    tables.append("\n  }")
    items.append(("tables", tables))
    items.sort(key=lambda item: item[0])
    parts = ["{\n"]
    for i, (k, value) in enumerate(items):
        parts.append(f",\n  {json.dumps(k)}: " if i else f"  {json.dumps(k)}: ")
        parts += value
    parts.append("\n}\n")
    return "".join(parts)


def _table_rows(snap: Snapshot) -> tuple[dict[str, list[str]], list[str]]:
    """For each table of snap.tables(), its entries' canonical texts in the same order, as runs
    (one or more rows already joined by _ROW_SEP, never empty), and each Service's
    service_text(). Built from the Services' entry texts, each made once: no Entry object per
    bucket (348,137 entries at 5,000 Services). Fills the fragment digests not yet computed
    from the same texts."""
    service_texts = [s.service_text() for s in snap.services]
    ids = [s.service_id for s in snap.services]
    if len(set(ids)) != len(ids):  # not a valid snapshot; tables()' interleaving order, the slow way
        return {t: [e.canonical() for e in es] for t, es in snap.tables().items()}, service_texts
    vips: list[tuple[_SortKey, str]] = []
    reverse: list[tuple[_SortKey, str]] = []
    backend_of: list[str] = []
    for svc, service_text in zip(snap.services, service_texts):
        p = svc._parts()
        if p.vip is None:
            backend_of.append("")
        else:
            assert p.vip_key is not None  # set with vip
            vips.append((p.vip_key, p.vip))
            reverse += zip(p.reverse_keys, p.reverse)
            backend_of.append(p.backend_joined(_ROW_SEP))
        if "fragment_digest" not in svc.__dict__:  # the digest's fragment, from the same texts
            digest = _sha256_hex(_fragment_from(p.bodies(","), service_text).encode())
            svc.__dict__["fragment_digest"] = digest
            _known_by_digest(svc, digest)
    # tables() sorts backend_table by (service id, bucket): with unique ids, Service by Service
    backend = [backend_of[i] for i in sorted(range(len(ids)), key=ids.__getitem__) if backend_of[i]]
    lpm: list[tuple[_SortKey, str]] = []
    for e in snap.global_entries:  # routes (ipv4_lpm); tables() appends them after the Services'
        rows = {n.VIP_TABLE: vips, n.REVERSE_NAT: reverse, n.IPV4_LPM: lpm}.get(e.table)
        if rows is None:  # backend_table or unknown: tables()' own way (and its errors)
            return {t: [x.canonical() for x in es] for t, es in snap.tables().items()}, service_texts
        rows.append((e.sort_key(), e.canonical()))
    out: dict[str, list[str]] = {}
    # stable sorts by the same keys as tables(): ties keep the Services' order, as there
    for table, rows in ((n.VIP_TABLE, vips), (n.REVERSE_NAT, reverse), (n.IPV4_LPM, lpm)):
        rows.sort(key=lambda r: r[0])
        out[table] = [text for _, text in rows]
    out[n.BACKEND_TABLE] = backend
    return {t: out[t] for t in n.TABLE_ORDER}, service_texts
