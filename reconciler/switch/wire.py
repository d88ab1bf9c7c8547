"""Snapshot entries as P4Runtime wire bytes, and read-backs compared as bytes (issue 13).

A full sync writes and reads back ~350,000 entries. Building a protobuf message per entry, and
decoding every entry read back into an Entry, cost the client far more than the switch spends
(bench/bench_full_sync.py). Here each entry is encoded once, straight to the bytes of its
TableEntry as a switch returns it on a wildcard Read, from per-table templates compiled from the
P4Info (generic over tables and actions); the same bytes go into the WriteRequests and are looked
up in a set when the read-back arrives, still undecoded. Only entries whose bytes differ are
decoded, and compared by value, so that a switch serialising differently (another field order,
padded values, zero fields spelt out, counter data) is slower but never wrong.

The canonical form: fields in field-number order; match fields in P4Info order, LPM /0 omitted;
params in P4Info order; values as the shortest big-endian bytestring (0 as b"\\x00"); priority,
metadata and every other zero field absent. It equals entry_to_proto(...).SerializeToString()
(tested for every table and action), and it is what BMv2 and the software switch return
(fixtures/p4runtime-bmv2/07-reads.txt; tested against the software switch in BMv2 mode).
"""

from __future__ import annotations

import functools
import logging
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence, Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from finsy.proto import p4r
from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError

from reconciler.protowire import length_delimited, message_classes, varint
from reconciler.diff import Update
from reconciler.p4info import PipelineInfo
from reconciler import p4names as n
from reconciler.snapshot import Entry, ServiceSnapshot, Snapshot, backend_key
from reconciler.switch.codec import Encoder, LpmEncoder
from reconciler.switch.encoded_memo import KnownEncodings
from reconciler.switch.translate import EXACT, LPM, TranslationError, compiled, election_id_proto, entry_to_proto, per_info

__all__ = [
    "EncodedEntries",
    "EncodedWriteRequest",
    "EntryEncoder",
    "Readback",
    "encoded_requests",
    "encoder_for",
    "match_readback",
    "split_read_response",
    "write_requests",
]

log = logging.getLogger("reconciler.switch.wire")

_CACHE_LIMIT = 1 << 17  # values remembered per field or parameter (a long-running process churns)
_KNOWN_SAMPLE = 8  # Services taken from KnownEncodings that of_snapshot encodes again to compare


class _Slot(dict[object, bytes]):
    """One match field or action parameter: value -> its finished chunk (tag, length and
    sub-message), made by the strict encoder `make` on the first miss and kept. Values are
    looked up only when of the Python type the first accepted value had (the width's spelling):
    a bool or float equal to a cached int must not hit the cache; `make` refuses them."""

    __slots__ = ("kind", "make")

    def __init__(self, make: Callable[[object], bytes]) -> None:
        super().__init__()
        self.kind: type | None = None
        self.make = make

    def miss(self, v: object) -> bytes:
        c = self.make(v)  # ValueError when the value does not fit: the caller explains
        if self.kind is None and v.__class__ in (int, str):
            self.kind = v.__class__
        if v.__class__ is self.kind:
            if len(self) >= _CACHE_LIMIT:
                self.clear()
            self[v] = c
        return c


def _chunks(slots: tuple[_Slot, ...], values: tuple[object, ...]) -> bytes:
    return b"".join([
        (s.get(v) or s.miss(v)) if v.__class__ is s.kind else s.miss(v) for s, v in zip(slots, values)
    ])


def _exact_slot(field_id: int, encode: Encoder) -> _Slot:
    head = b"\x08" + varint(field_id)

    def make(v: object) -> bytes:
        value = encode(v)
        exact = b"\x0a" + varint(len(value)) + value
        return length_delimited(0x12, head + length_delimited(0x12, exact))

    return _Slot(make)


def _lpm_slot(field_id: int, encode: LpmEncoder) -> _Slot:
    head = b"\x08" + varint(field_id)

    def make(v: object) -> bytes:
        lpm = encode(v)
        if lpm is None:
            return b""  # /0: the field is left out (P4Runtime 9.1.1)
        value, prefix_len = lpm
        body = b"\x0a" + varint(len(value)) + value + b"\x10" + varint(prefix_len)
        return length_delimited(0x12, head + length_delimited(0x22, body))

    return _Slot(make)


def _param_slot(param_id: int, encode: Encoder) -> _Slot:
    head = b"\x10" + varint(param_id)

    def make(v: object) -> bytes:
        value = encode(v)
        return length_delimited(0x22, head + b"\x1a" + varint(len(value)) + value)

    return _Slot(make)


class _ActionTemplate:
    __slots__ = ("head", "slots", "default_only")

    def __init__(self, action_id: int, slots: tuple[_Slot, ...], default_only: bool) -> None:
        self.head = b"\x08" + varint(action_id)
        self.slots = slots
        self.default_only = default_only


def _action_chunk(action: _ActionTemplate, args: tuple[object, ...]) -> bytes:
    """TableEntry.action (field 3) holding Action `action` with `args`: LookupError or
    ValueError when they do not fit (the caller explains)."""
    if action.default_only or len(args) != len(action.slots):
        raise LookupError
    inner = action.head + _chunks(action.slots, args)
    size = varint(len(inner))
    return b"\x1a" + varint(1 + len(size) + len(inner)) + b"\x0a" + size + inner


class _TableTemplate:
    __slots__ = ("head", "slots", "actions")

    def __init__(self, table_id: int, slots: tuple[_Slot, ...] | None, actions: dict[str, _ActionTemplate]) -> None:
        self.head = b"\x08" + varint(table_id)
        self.slots = slots  # None: a match kind without a snapshot spelling (refused via the slow path)
        self.actions = actions


class EntryEncoder:
    """Entry -> the canonical bytes of its p4.v1.TableEntry (see the module docstring), built
    once per P4Info. An entry that does not fit raises TranslationError naming table and field,
    exactly as entry_to_proto does (that is the slow path taken then)."""

    def __init__(self, info: PipelineInfo) -> None:
        self.info = info
        self._tables: dict[str, _TableTemplate] = {}
        self._buckets: list[bytes] = []  # backend_table's bucket chunks by bucket (encode_service)
        # The value encoders are translate's own (one spelling of every value, whichever it is).
        for name, table in compiled(info).tables.items():
            slots: list[_Slot] | None = []
            for field_id, kind, exact, lpm in zip(table.field_ids, table.kinds, table.exact, table.lpm):
                if slots is None or kind not in (EXACT, LPM):
                    slots = None  # no snapshot spelling: the slow path refuses, naming it
                elif kind == EXACT:
                    slots.append(_exact_slot(field_id, exact))
                else:
                    slots.append(_lpm_slot(field_id, lpm))
            actions = {
                a.name: _ActionTemplate(
                    a.id, tuple(_param_slot(pid, enc) for pid, enc in zip(a.param_ids, a.encoders)), a.default_only
                )
                for a in table.actions.values()
            }
            self._tables[name] = _TableTemplate(table.id, tuple(slots) if slots is not None else None, actions)

    def encode(self, e: Entry) -> bytes:
        """The TableEntry bytes of `e`, with its action (its `service` plays no part)."""
        try:
            table = self._tables[e.table]
            action = table.actions[e.action]
            slots = table.slots
            key, args = e.key, e.args
            if slots is None or len(key) != len(slots):
                raise LookupError
            # the hot loop of a full sync: a cached chunk per value, of the value's own type
            parts = [table.head]
            for s, v in zip(slots, key):
                parts.append(s[v] if v.__class__ is s.kind and v in s else s.miss(v))
            parts.append(_action_chunk(action, args))
        except (LookupError, ValueError):
            raise self._explain(e, key_only=False) from None
        return b"".join(parts)

    def encode_service(self, svc: ServiceSnapshot) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
        """The bytes of every entry of `svc.entries()`, in its order (VIP, backend_table by
        bucket, reverse_nat in key order), and each one's table, without making an Entry per
        bucket: a Service's buckets differ only in their key's bucket chunk and in which of its
        few backends they point at, so each backend's action is encoded once. Draining Services
        (rare) take the generic path. Tests check it equals encode() over svc.entries()."""
        slots = self._tables[n.BACKEND_TABLE].slots if n.BACKEND_TABLE in self._tables else None
        if not (svc.drains or not svc.backends or svc.assignment[0] is None or slots is None or len(slots) != 2):
            try:
                return self._encode_plain_service(svc, slots)
            except (LookupError, ValueError):
                pass  # the generic path below refuses it with the same error as encode()
        entries = [e for es in svc.entries().values() for e in es]
        return tuple([self.encode(e) for e in entries]), tuple([e.table for e in entries])

    def _encode_plain_service(self, svc: ServiceSnapshot, slots: tuple[_Slot, ...]
                              ) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
        proto = n.IP_PROTOCOLS[svc.protocol]
        sid = svc.service_id
        prefix = self._tables[n.BACKEND_TABLE].head + _chunks(slots[:1], (sid,))
        dnat = self._tables[n.BACKEND_TABLE].actions[n.DNAT]
        tails: dict[str | None, bytes] = {  # backend key -> its dnat action's bytes, the same for every bucket
            backend_key(b, svc.backend_mode): _action_chunk(dnat, (b.address, b.port, b.backend_id))
            for b in svc.backends
        }
        buckets = self._bucket_chunks(slots[1], len(svc.assignment))
        backend = [prefix + chunk + tails[k] for chunk, k in zip(buckets, svc.assignment)]
        vip = Entry(n.VIP_TABLE, (svc.vip, svc.port, proto), n.SET_SERVICE, (sid, svc.bucket_count - 1))
        reverse = [Entry(n.REVERSE_NAT, k, n.SNAT, (svc.vip, svc.port)) for k in svc.reverse_nat_keys()]
        blobs = (self.encode(vip), *backend, *[self.encode(e) for e in reverse])
        return blobs, _tables_of(svc)

    def _bucket_chunks(self, slot: _Slot, count: int) -> list[bytes]:
        """The key chunks of buckets 0 .. count-1 (the same for every Service)."""
        chunks = self._buckets
        if len(chunks) < count:
            chunks += [_chunks((slot,), (b,)) for b in range(len(chunks), count)]
        return chunks[:count]

    def encode_key(self, e: Entry) -> bytes:
        """The TableEntry bytes of `e`'s key alone (a DELETE, a read by key)."""
        try:
            table = self._tables[e.table]
            slots = table.slots
            if slots is None or len(e.key) != len(slots):
                raise LookupError
            return table.head + _chunks(slots, e.key)
        except (LookupError, ValueError):
            raise self._explain(e, key_only=True) from None

    def _explain(self, e: Entry, *, key_only: bool) -> TranslationError:
        try:
            entry_to_proto(self.info, e, key_only=key_only)
        except TranslationError as exc:
            return exc
        return TranslationError(f"{e.table}: cannot encode entry {e!r}")


_ENCODERS: dict[int, tuple[PipelineInfo, EntryEncoder]] = {}  # one per P4Info (translate.per_info)


def encoder_for(info: PipelineInfo) -> EntryEncoder:
    return per_info(_ENCODERS, info, EntryEncoder)


class EncodedEntries:
    """Entries and their canonical bytes, encoded once: what a switch must hold, for the write
    requests and the read-back comparison alike (an entry's `service` plays no part).

    `source` gives the same entries again, in the same order: after release() only the bytes
    are kept (a long-running applier keeps its last target's bytes, ~64 MB at 348,000 entries,
    not the Entry objects too), and the entries are made again if a read-back differs."""

    __slots__ = ("blobs", "tables", "keys", "stored_taken", "_index", "_entries", "_source", "_by_entry", "_info", "_per_service", "_starts",
                 "_services", "_global")

    def __init__(self, info: PipelineInfo, entries: Iterable[Entry],
                 source: Callable[[], Iterable[Entry]] | None = None) -> None:
        encode = encoder_for(info).encode
        self._entries: tuple[Entry, ...] | None = tuple(entries)
        self._source = source
        self.blobs: tuple[bytes, ...] = tuple([encode(e) for e in self._entries])
        self.tables: tuple[str, ...] = tuple([e.table for e in self._entries])  # each entry's table
        self.keys: frozenset[bytes] = frozenset(self.blobs)  # the blobs, for matching a read-back
        self.stored_taken = 0  # of_snapshot: how many Services took their bytes from `known`
        self._index: dict[bytes, int] | None = None
        self._by_entry: dict[int, bytes] | None = None
        self._info = info
        self._per_service: dict[object, tuple[tuple[bytes, ...], tuple[str, ...]]] = {}  # see of_snapshot
        self._starts: list[int] = []  # of_snapshot: where each Service's entries start
        self._services: Sequence[ServiceSnapshot] = ()
        self._global: Sequence[Entry] = ()

    @classmethod
    def of_snapshot(cls, info: PipelineInfo, services: Sequence[ServiceSnapshot], global_entries: Sequence[Entry],
                    source: Callable[[], Iterable[Entry]], previous: EncodedEntries | None = None,
                    known: KnownEncodings | None = None) -> EncodedEntries:
        """The entries of `services` (each Service's entries(), in order) then `global_entries`,
        encoded without making their Entry objects (`source` makes them, in that order, when a
        read-back differs). A Service equal to one of `previous` (same P4Info) reuses its bytes:
        a changed snapshot encodes only the Services that changed. Else a Service whose fragment
        digest is in `known` (stored by an earlier process, for this P4Info) takes its bytes
        from there; a sample of those is encoded again, and on any difference `known` is not
        used at all."""
        encode = encoder_for(info)
        cache = previous._per_service if previous is not None and previous._info is info else {}
        stored = known.services if known is not None and known.for_info(info) else None
        taken: list[tuple[ServiceSnapshot, str]] = []  # the Services whose bytes came from `known`, by digest
        per_service: dict[object, tuple[tuple[bytes, ...], tuple[str, ...]]] = {}
        blobs: list[bytes] = []
        tables: list[str] = []
        starts: list[int] = []
        for svc in services:
            # Each Service's bytes are kept under its fragment digest when it has one (a str
            # hashes once, where a dataclass holding tuples of dataclasses hashes in ~5 us, on
            # every lookup and store), else under the object (equal objects hit).
            digest: str = _digest_of(svc) if stored is not None else svc.__dict__.get("fragment_digest", "")
            hit = (cache.get(digest) or per_service.get(digest)) if digest else None
            if hit is None and cache:
                hit = cache.get(svc)  # kept before its digest was made
            if hit is None and not digest:
                hit = per_service.get(svc)
            if hit is None and stored is not None and digest:
                hit = stored.get(digest)
                if hit is not None:
                    taken.append((svc, digest))
                    if hit[1] != _tables_of(svc) or len(hit[0]) != len(hit[1]):
                        stored = None  # not this Service's layout: nothing stored is to be trusted
            if hit is None:
                hit = encode.encode_service(svc)
            per_service[digest or svc] = hit  # see above: the object only without a digest
            starts.append(len(blobs))
            blobs += hit[0]
            tables += hit[1]
        if taken and (stored is None or not _agree(encode, taken, per_service)):
            log.warning("stored encoded entries differ from this reconciler's encoding: every Service is encoded")
            return cls.of_snapshot(info, services, global_entries, source, previous)  # as if nothing were known
        starts.append(len(blobs))  # the global entries start here
        for e in global_entries:
            blobs.append(encode.encode(e))
            tables.append(e.table)
        self = cls.__new__(cls)
        self._entries = None
        self._source = source
        self.blobs = tuple(blobs)
        self.tables = tuple(tables)
        self.keys = frozenset(self.blobs)
        self.stored_taken = len(taken)
        self._index = None
        self._by_entry = None
        self._info = info
        self._per_service = per_service
        self._starts = starts
        self._services = services
        self._global = global_entries
        return self

    @classmethod
    def of(cls, info: PipelineInfo, snap: Snapshot | None, previous: EncodedEntries | None = None,
           known: KnownEncodings | None = None) -> EncodedEntries:
        """of_snapshot() for a whole snapshot (None: empty tables), its entries made again from it
        in the same order when a read-back differs."""
        if snap is None:
            return cls.of_snapshot(info, (), (), list, previous)

        def source() -> list[Entry]:
            return [e for svc in snap.services for es in svc.entries().values() for e in es] + list(snap.global_entries)

        return cls.of_snapshot(info, snap.services, snap.global_entries, source, previous, known)

    def service_layout(self) -> tuple[PipelineInfo, Sequence[ServiceSnapshot], Sequence[int]] | None:
        """(P4Info, Services, where each Service's entries start, then where the global entries
        start) when made by of_snapshot, else None: what encoded_memo.dump_encodings stores."""
        if not self._starts:
            return None
        return self._info, self._services, self._starts

    def __len__(self) -> int:
        return len(self.blobs)

    @property
    def index(self) -> dict[bytes, int]:
        """blob -> position (the last, if two entries encode alike), made when first asked: a
        read-back matched as sets needs only `keys`, which costs a third as much to make."""
        if self._index is None:
            self._index = {b: i for i, b in enumerate(self.blobs)}
        return self._index

    @property
    def entries(self) -> tuple[Entry, ...]:
        if self._entries is None:
            assert self._source is not None  # release() keeps nothing without a source
            self._entries = tuple(self._source())
            if len(self._entries) != len(self.blobs):
                raise RuntimeError("the entries' source gave another number of entries than were encoded")
        return self._entries

    def release(self) -> None:
        """Drop the Entry objects (kept: the bytes), when they can be made again."""
        if self._source is not None:
            self._entries = None
            self._by_entry = None  # ids of released objects mean nothing

    def blob_of(self, e: Entry) -> bytes | None:
        """The bytes of `e` when it is one of these entries (the very object), else None."""
        if self._entries is None:
            return None  # not made (or released): `e` cannot be one of them
        if self._by_entry is None:
            self._by_entry = {id(x): b for x, b in zip(self.entries, self.blobs)}
        return self._by_entry.get(id(e))

    def at(self, positions: Sequence[int]) -> list[Entry]:
        """The entries at `positions`. Made from their Services alone when the entries are not
        at hand (of_snapshot): a few differences must not make 350,000 Entry objects."""
        if not positions:
            return []
        if self._entries is None and self._starts:
            return self._made_at(positions)
        entries = self.entries
        return [entries[i] for i in positions]

    def _made_at(self, positions: Sequence[int]) -> list[Entry]:
        starts, services = self._starts, self._services
        made: dict[int, list[Entry]] = {}
        out: list[Entry] = []
        for i in positions:
            if not 0 <= i < len(self.blobs):
                raise IndexError(i)
            k = bisect_right(starts, i) - 1
            if k == len(services):
                out.append(self._global[i - starts[k]])
                continue
            es = made.get(k)
            if es is None:
                es = made[k] = [e for group in services[k].entries().values() for e in group]
            out.append(es[i - starts[k]])
        return out

    def except_at(self, positions: Iterable[int]) -> list[Entry]:
        """Every entry but those at `positions`."""
        skip = set(positions)
        return [e for i, e in enumerate(self.entries) if i not in skip]


def _digest_of(svc: ServiceSnapshot) -> str:
    """The Service's fragment digest (cached on it; the snapshot's digest is made of them), or ""
    (never stored) when it cannot be made: encode_service then refuses the Service as always."""
    try:
        return svc.fragment_digest
    except Exception:  # noqa: BLE001 (whatever it is, the old path decides)
        return ""


def _tables_of(svc: ServiceSnapshot) -> tuple[str, ...]:
    """The table of each entry of `svc.entries()`, in its order (encode_service's layout), from
    its counts alone: stored bytes are taken only when they are laid out so, or `at()` would
    name the wrong entries."""
    if not svc.backends or svc.assignment[0] is None:
        return ()
    return _layout(len(svc.assignment), len(svc.backends))


@functools.lru_cache(maxsize=1024)
def _layout(buckets: int, backends: int) -> tuple[str, ...]:
    """One tuple per shape, shared by every Service of that shape (5,000 share a few)."""
    return (n.VIP_TABLE,) + (n.BACKEND_TABLE,) * buckets + (n.REVERSE_NAT,) * backends


def _agree(encode: EntryEncoder, taken: Sequence[tuple[ServiceSnapshot, str]],
           got: Mapping[object, tuple[tuple[bytes, ...], tuple[str, ...]]]) -> bool:
    """Whether a spread of the Services whose bytes were stored (with their digests) encodes
    to those bytes now: a change of the encoding that was not given a new version
    (encoded_memo._ENCODING) must not put stale bytes on a switch."""
    step = max(1, len(taken) // _KNOWN_SAMPLE)
    sample = dict([*taken[::step][:_KNOWN_SAMPLE], taken[-1]])
    try:
        return all(encode.encode_service(svc) == got[key] for svc, key in sample.items())
    except (TranslationError, LookupError, ValueError):
        return False  # the Service does not encode: the old path says why


@dataclass(frozen=True)
class Readback:
    """A read-back matched against EncodedEntries: `extra` are the blobs read that no expected
    entry encodes to (decode them to know what they are), `missing` the positions of expected
    entries whose bytes were not read."""

    extra: tuple[bytes, ...]
    missing: tuple[int, ...]
    matched: int

    @property
    def exact(self) -> bool:
        return not self.extra and not self.missing


def match_readback(actual: Iterable[bytes], expected: EncodedEntries, read: AbstractSet[bytes] | None = None) -> Readback:
    """Compare read-back TableEntry bytes with the expected ones, as bytes (a set lookup each).
    `read`: set(actual), when the caller has it already (one read-back matched twice)."""
    keys = expected.keys
    blobs = actual if isinstance(actual, (list, tuple)) else list(actual)
    if read is None:
        read = set(blobs)
    # With no blob read twice and every expected blob distinct (always, unless two entries
    # encode alike), the comparison is set operations at C speed: each blob read is either
    # expected (matched once) or extra, and what is expected but not read is missing. Anything
    # else takes the loop below.
    if len(read) == len(blobs) and len(keys) == len(expected.blobs):
        if len(read) == len(keys) and read == keys:  # what a switch in step returns: one pass
            return Readback((), (), len(blobs))
        unexpected = read - keys
        extra = tuple([b for b in blobs if b in unexpected]) if unexpected else ()  # in the order read
        if len(read) - len(extra) == len(keys):
            return Readback(extra, (), len(blobs) - len(extra))
        absent = keys - read
        missing = tuple([i for i, b in enumerate(expected.blobs) if b in absent])  # positions, ascending
        return Readback(extra, missing, len(blobs) - len(extra))
    index = expected.index
    seen = bytearray(len(expected.blobs))
    extra_read: list[bytes] = []
    matched = 0
    for blob in blobs:
        i = index.get(blob)
        if i is None:
            extra_read.append(blob)
        elif not seen[i]:
            seen[i] = 1
            matched += 1
    missing = tuple(i for i in range(len(seen)) if not seen[i]) if matched != len(seen) else ()
    return Readback(tuple(extra_read), missing, matched)


def readback_from_held(blobs: Sequence[bytes], read: AbstractSet[bytes], held: EncodedEntries,
                       target: EncodedEntries) -> Readback | None:
    """match_readback(blobs, target) for a switch that holds exactly `held` (read == held.keys,
    no blob twice on either side), computed from the Services whose bytes differ between the
    two encodings instead of from every entry; None when that is not the case (or either side
    is not a per-Service encoding): the caller matches as usual then.

    A transaction's usual read-back: the switch holds the last good snapshot, and the target
    differs from it in a few Services. Every blob of a Service whose bytes are the same object
    (or equal) on both sides is on both sides, so what differs can only come from the others."""
    if not (len(read) == len(blobs) == len(held.keys) == len(held.blobs) and len(target.keys) == len(target.blobs)):
        return None
    pairs = _differing_parts(held, target)
    if pairs is None or read != held.keys:
        return None
    held_only = {b for _, part in pairs[0] for b in part if b not in target.keys}
    extra = tuple([b for b in blobs if b in held_only]) if held_only else ()  # in the order read
    # Positions in the target, from where each differing part starts (blobs are unique there).
    missing = tuple(sorted(at + k for at, part in pairs[1] for k, b in enumerate(part) if b not in held.keys))
    return Readback(extra, missing, len(blobs) - len(extra))


_Part = tuple[int, Sequence[bytes]]  # where a slice of an encoding starts, and its bytes


def _differing_parts(a: EncodedEntries, b: EncodedEntries) -> tuple[list[_Part], list[_Part]] | None:
    """The slices of `a` and of `b` that may differ, each with where it starts: each Service (by
    name) whose bytes are not the same on both sides, on its side, and the global entries when
    they differ; None when either is not laid out by Service (of_snapshot)."""
    if not a._starts or not b._starts or len(a._starts) != len(a._services) + 1 or len(b._starts) != len(b._services) + 1:
        return None
    sa = {svc.name: i for i, svc in enumerate(a._services)}
    sb = {svc.name: i for i, svc in enumerate(b._services)}
    if len(sa) != len(a._services) or len(sb) != len(b._services):
        return None  # a name twice: not a snapshot's layout

    def part(e: EncodedEntries, i: int) -> _Part:
        return e._starts[i], e.blobs[e._starts[i]:e._starts[i + 1]]

    only_a: list[_Part] = []
    only_b: list[_Part] = []
    for name, i in sa.items():
        j = sb.get(name)
        if j is None:
            only_a.append(part(a, i))
            continue
        pa, pb = part(a, i), part(b, j)
        if pa[1] != pb[1]:
            only_a.append(pa)
            only_b.append(pb)
    only_b.extend(part(b, j) for name, j in sb.items() if name not in sa)
    ga, gb = a.blobs[a._starts[-1]:], b.blobs[b._starts[-1]:]
    if ga != gb:
        only_a.append((a._starts[-1], ga))
        only_b.append((b._starts[-1], gb))
    return only_a, only_b


# --- ReadResponse bytes -> TableEntry bytes ----------------------------------------------------


class _Malformed(Exception):
    pass


def _readvarint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise _Malformed
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Malformed


def _skip(data: bytes, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return _readvarint(data, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        n, pos = _readvarint(data, pos)
        return pos + n
    if wire_type == 5:
        return pos + 4
    raise _Malformed


# Two message types of one field each: `Entities` (`repeated bytes entities = 1`, ReadResponse's
# framing alone) and `TableEntries` (`repeated bytes table_entries = 2`, an Entity's table_entry
# field, repeated), so that protobuf's C parser cuts a response into its TableEntry bytes.
_BYTES = (descriptor_pb2.FieldDescriptorProto.TYPE_BYTES, descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
_ENTITIES, _TABLE_ENTRIES = message_classes("p4kube/read_framing.proto", "p4kube.framing", {
    "Entities": [("entities", 1, *_BYTES)], "TableEntries": [("table_entries", 2, *_BYTES)]})


def split_read_response(data: bytes) -> list[bytes]:
    """The bytes of every table entry in a serialized ReadResponse, as the switch sent them,
    without decoding them. Entities of other kinds are left out (as read_entries does). An
    entity that is not a lone table_entry field is decoded and its table entry re-serialized;
    bytes that do not parse raise google.protobuf's DecodeError."""
    fast = _split_short(data)
    if fast is not None:
        return fast
    try:
        return _split(data)
    except (_Malformed, IndexError):
        response = p4r.ReadResponse.FromString(data)  # raises DecodeError saying why
        return [e.table_entry.SerializeToString() for e in response.entities if e.WhichOneof("entity") == "table_entry"]


def _split_short(data: bytes) -> list[bytes] | None:
    """_split's answer, cut by protobuf's C parser, when the response is nothing but entities
    of the form every switch sends for entries under 126 bytes: b"\x0a" len b"\x12" len
    TableEntry, each length one byte. None for anything else (longer entries, other entities,
    other fields, bytes that do not parse): _split decides then.

    No loop over the entities in Python: the entities' lengths summing with two framing bytes
    each to the whole response leave no room for another field or a longer length; then their
    concatenation, parsed as `repeated bytes table_entries = 2`, gives one item per entity, each
    two bytes shorter than its entity. Each item's framing takes at least two bytes, so they take
    exactly two and item and entity boundaries coincide: every entity is b"\x12" len TableEntry
    and nothing else (an unknown field, a longer length, a missing or second table_entry would
    change the count or a length)."""
    try:
        entities = list(_ENTITIES.FromString(data).entities)
    except DecodeError:
        return None
    sizes = list(map(len, entities))
    if sum(sizes) + 2 * len(sizes) != len(data):
        return None
    try:
        out = list(_TABLE_ENTRIES.FromString(b"".join(entities)).table_entries)
    except DecodeError:
        return None
    if len(out) != len(sizes) or list(map(len, out)) != [n - 2 for n in sizes]:
        return None
    return out


def _split(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    add = out.append
    pos, end = 0, len(data)
    while pos < end:
        tag = data[pos]
        if tag != 0x0A:  # not `entities` (or a multi-byte tag): skip the field
            key, pos = _readvarint(data, pos)
            pos = _skip(data, pos, key & 7)
            continue
        b = data[pos + 1]
        if b < 0x80:
            n, pos = b, pos + 2
        else:
            n, pos = _readvarint(data, pos + 1)
        stop = pos + n
        if stop > end:
            raise _Malformed
        if data[pos] == 0x12:  # Entity.table_entry
            b = data[pos + 1]
            if b < 0x80:
                m, start = b, pos + 2
            else:
                m, start = _readvarint(data, pos + 1)
            if start + m == stop:
                add(data[start:stop])
                pos = stop
                continue
        entity = p4r.Entity.FromString(data[pos:stop])
        if entity.WhichOneof("entity") == "table_entry":
            add(entity.table_entry.SerializeToString())
        pos = stop
    if pos != end:
        raise _Malformed
    return out


# --- diff -> WriteRequests, from bytes ---------------------------------------------------------

class EncodedWriteRequest:
    """A WriteRequest kept as its serialized bytes and sent as they are (switch/writes.py): the
    batches of a full sync never become protobuf messages. The message is parsed only when
    asked for (an error names one of its updates)."""

    __slots__ = ("raw", "device_id", "election_id", "size", "_message")

    def __init__(self, raw: bytes, device_id: int, election_id: p4r.Uint128, size: int) -> None:
        self.raw = raw
        self.device_id = device_id
        self.election_id = election_id
        self.size = size  # updates in it
        self._message: p4r.WriteRequest | None = None

    def message(self) -> p4r.WriteRequest:
        if self._message is None:
            self._message = p4r.WriteRequest.FromString(self.raw)
        return self._message

    @property
    def updates(self) -> Any:  # the message's repeated `updates` field (protobuf has no public type)
        return self.message().updates

    def SerializeToString(self) -> bytes:  # noqa: N802 (protobuf's name: it stands in for the message)
        return self.raw


_UPDATE_TYPE = {"INSERT": b"\x08\x01", "MODIFY": b"\x08\x02", "DELETE": b"\x08\x03"}


def write_requests(
    info: PipelineInfo,
    phases: Sequence[Sequence[Update]],
    *,
    device_id: int,
    election_id: int,
    batch_size: int,
    known: EncodedEntries | None = None,
) -> list[list[EncodedWriteRequest]]:
    """What translate.updates_to_requests makes (the same messages, byte for byte), built from
    each entry's encoded bytes: those of `known` where the update's entry is one of its
    entries, else encoded here."""
    encoder = encoder_for(info)
    items: list[list[tuple[str, bytes]]] = []
    for phase in phases:
        out: list[tuple[str, bytes]] = []
        for u in phase:
            if u.kind == "DELETE":
                te = encoder.encode_key(u.entry)
            else:
                te = (known.blob_of(u.entry) if known is not None else None) or encoder.encode(u.entry)
            out.append((u.kind, te))
        items.append(out)
    return encoded_requests(items, device_id=device_id, election_id=election_id, batch_size=batch_size)


def encoded_requests(
    phases: Sequence[Sequence[tuple[str, bytes]]],
    *,
    device_id: int,
    election_id: int,
    batch_size: int,
) -> list[list[EncodedWriteRequest]]:
    """One list of WriteRequests per phase, each of at most `batch_size` updates (kind, TableEntry
    bytes: a DELETE's holds only the key), CONTINUE_ON_ERROR, as translate.updates_to_requests."""
    if batch_size < 1:
        raise TranslationError(f"batch size must be at least 1, got {batch_size}")
    if device_id < 0 or device_id >= 1 << 64:
        raise TranslationError(f"device id {device_id} does not fit in 64 bits")
    eid = election_id_proto(election_id)
    head = (b"\x08" + varint(device_id) if device_id else b"") + length_delimited(0x1A, eid.SerializeToString())
    out: list[list[EncodedWriteRequest]] = []
    for phase in phases:
        requests: list[EncodedWriteRequest] = []
        for start in range(0, len(phase), batch_size):
            parts = [head]
            for kind, te in phase[start : start + batch_size]:
                update_type = _UPDATE_TYPE.get(kind)
                if update_type is None:
                    raise TranslationError(f"unknown update kind {kind!r}")
                entity = b"\x12" + varint(len(te)) + te
                update = update_type + b"\x12" + varint(len(entity)) + entity
                parts.append(b"\x22" + varint(len(update)) + update)
            requests.append(EncodedWriteRequest(b"".join(parts), device_id, eid, len(parts) - 1))
        out.append(requests)
    return out
