"""Reads: a switch's table entries (all, by key, or only counted) and counter cells, decoded
into snapshot entries.

A Read may stream data and then fail (BMv2), so data is only used when the RPC ends OK.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import grpc
from finsy.proto import p4r
from google.protobuf.message import DecodeError

from reconciler.p4info import PipelineInfo
from reconciler.snapshot import Entry, Value
from reconciler.switch.channel import Connection
from reconciler.switch.errors import ReadError, status_text
from reconciler.switch.translate import TranslationError, entry_to_proto, proto_to_entry
from reconciler.switch.wire import split_read_response

__all__ = [
    "CounterCell",
    "count_entries",
    "decode_entries",
    "read",
    "read_counters",
    "read_defaults",
    "read_encoded",
    "read_entries",
    "read_keys",
    "SameReads",
]

_READ_METHOD = "/p4.v1.P4Runtime/Read"

_READ_KEYS_CHUNK = 5000  # entities per ReadRequest when reading by key


class SameReads:
    """The last read's responses and the entries cut from them (split_read_response), so that
    a read answered with the very same bytes is given the very same list instead of being cut
    again: the other switch of a pair, holding the same entries written in the same order,
    answers a full read byte for byte alike. Equal responses cut to equal entries, so only the
    work differs; the caller must not change the list. Kept for one pass (clear())."""

    __slots__ = ("_replies", "_entries")

    def __init__(self) -> None:
        self._replies: list[bytes] | None = None
        self._entries: list[bytes] = []

    def cut(self, replies: list[bytes], split: Callable[[list[bytes]], list[bytes]]) -> list[bytes]:
        """split(replies), or the list it gave for equal replies last time."""
        if self._replies is not None and self._replies == replies:  # memcmp: ms for 25 MB
            return self._entries
        entries = split(replies)
        self._replies, self._entries = replies, entries
        return entries

    def clear(self) -> None:
        self._replies, self._entries = None, []


@dataclass(frozen=True)
class CounterCell:
    index: int
    packets: int
    bytes: int


async def _replies(connection: Connection, request: p4r.ReadRequest, what: str) -> AsyncIterator[p4r.ReadResponse]:
    """The Read's responses; ReadError names the switch and `what` was read. BMv2 may send data
    and then fail the RPC: callers consume every response, so nothing is used unless it ends OK."""
    stub = connection.stub_for(f"read {what}")
    try:
        async for reply in stub.Read(request, timeout=connection.rpc_timeout):
            yield reply
    except grpc.aio.AioRpcError as exc:
        raise _read_error(connection, what, exc) from None


async def read(connection: Connection, request: p4r.ReadRequest, what: str) -> list[p4r.Entity]:
    """Every entity the Read returns; ReadError names the switch and `what` was read."""
    return [entity async for reply in _replies(connection, request, what) for entity in reply.entities]


async def _count(connection: Connection, request: p4r.ReadRequest, what: str) -> int:
    return sum([len(reply.entities) async for reply in _replies(connection, request, what)])


def _read_error(connection: Connection, what: str, exc: grpc.aio.AioRpcError) -> ReadError:
    peer = connection.peer
    return ReadError(f"{peer.where()}: reading {what} failed: {status_text(exc)}", switch=peer.name, code=exc.code())


def _tables_request(connection: Connection, info: PipelineInfo, names: Iterable[str]) -> p4r.ReadRequest:
    """One wildcard read per table, in one request."""
    request = p4r.ReadRequest(device_id=connection.peer.device_id)
    for name in names:
        request.entities.add().table_entry.table_id = info.table(name).id
    return request


async def read_entries(connection: Connection, info: PipelineInfo, tables: Iterable[str] | None = None) -> list[Entry]:
    """Every (non-default) entry of `tables` (default: all tables of the P4Info), one
    wildcard read per table in one request. Values come back canonical."""
    names = list(info.tables) if tables is None else list(tables)
    if not names:
        return []
    request = _tables_request(connection, info, names)
    return _decode_entries(connection, info, await read(connection, request, f"table entries of {', '.join(names)}"))


def _decode_entries(connection: Connection, info: PipelineInfo, entities: Iterable[p4r.Entity]) -> list[Entry]:
    return _decode_tables(connection, info, (e.table_entry for e in entities if e.WhichOneof("entity") == "table_entry"))


def _decode_tables(connection: Connection, info: PipelineInfo, entries: Iterable[p4r.TableEntry]) -> list[Entry]:
    out: list[Entry] = []
    for te in entries:
        if te.is_default_action:
            continue
        try:
            out.append(proto_to_entry(info, te))
        except TranslationError as exc:
            peer = connection.peer
            raise ReadError(f"{peer.where()}: read-back entry does not fit the P4Info: {exc}",
                            switch=peer.name) from None
    return out


async def read_encoded(connection: Connection, info: PipelineInfo, tables: Iterable[str] | None = None,
                       same: SameReads | None = None) -> list[bytes]:
    """What read_entries reads, left undecoded: the bytes of every table entry as the switch
    sent them (default entries included, should a switch send any: decode_entries drops them).
    The responses arrive as bytes (no protobuf message is built for them) and are split into
    entries without decoding (wire.split_read_response): a full read-back is compared as bytes.
    `same`: responses equal to its last ones give its list (SameReads)."""
    names = list(info.tables) if tables is None else list(tables)
    if not names:
        return []
    request = _tables_request(connection, info, names)
    what = f"table entries of {', '.join(names)}"
    connection.stub_for(f"read {what}")
    channel = connection.channel
    assert channel is not None  # stub_for raised otherwise
    call = channel.unary_stream(_READ_METHOD, request_serializer=p4r.ReadRequest.SerializeToString,
                                response_deserializer=None)
    replies: list[bytes] = []
    try:
        async for reply in call(request, timeout=connection.rpc_timeout):
            replies.append(reply)
    except grpc.aio.AioRpcError as exc:
        raise _read_error(connection, what, exc) from None

    def split(replies: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for reply in replies:
            try:
                out += split_read_response(reply)
            except DecodeError as exc:
                peer = connection.peer
                raise ReadError(f"{peer.where()}: reading {what}: the response does not parse: {exc}",
                                switch=peer.name) from None
        return out

    return split(replies) if same is None else same.cut(replies, split)


def decode_entries(connection: Connection, info: PipelineInfo, blobs: Iterable[bytes]) -> list[Entry]:
    """The snapshot entries that table entry bytes (from read_encoded) stand for; default
    entries are dropped, and an entry that does not fit the P4Info is a ReadError."""
    tables: list[p4r.TableEntry] = []
    for blob in blobs:
        try:
            tables.append(p4r.TableEntry.FromString(blob))
        except DecodeError as exc:
            peer = connection.peer
            raise ReadError(f"{peer.where()}: read-back entry does not parse: {exc}", switch=peer.name) from None
    return _decode_tables(connection, info, tables)


async def read_defaults(connection: Connection, info: PipelineInfo) -> list[p4r.TableEntry]:
    """The default entry of every table of the P4Info, as the switch reports it (wildcard reads
    never return default entries, so each is asked for explicitly)."""
    request = p4r.ReadRequest(device_id=connection.peer.device_id)
    for table in info.tables.values():
        request.entities.add().table_entry.CopyFrom(p4r.TableEntry(table_id=table.id, is_default_action=True))
    entities = await read(connection, request, "default entries")
    return [
        e.table_entry
        for e in entities
        if e.WhichOneof("entity") == "table_entry" and e.table_entry.is_default_action
    ]


async def count_entries(
    connection: Connection, info: PipelineInfo, tables: Iterable[str] | None = None
) -> dict[str, int]:
    """How many (non-default) entries each of `tables` (default: all) holds: one wildcard
    Read per table, counting the entities of the responses without decoding them into
    Entry objects (the health round's cheap check; wildcard reads never return default
    entries)."""
    names = list(info.tables) if tables is None else list(tables)
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = await _count(connection, _tables_request(connection, info, [name]), f"table entries of {name}")
    return counts


async def read_keys(connection: Connection, info: PipelineInfo, entries: Iterable[Entry]) -> list[Entry]:
    """The switch's entries at the keys of `entries` (their actions are not compared here);
    keys the switch does not hold are simply absent from the result.

    A key whose encoding has no match field at all (an LPM /0, the field being omitted)
    would be a wildcard read, so such tables are read whole and filtered."""
    peer = connection.peer
    wanted: set[tuple[str, tuple[Value, ...]]] = set()
    whole: set[str] = set()
    keyed: list[p4r.TableEntry] = []
    for e in entries:
        if (e.table, e.key) in wanted:
            continue
        wanted.add((e.table, e.key))
        try:
            te = entry_to_proto(info, e, key_only=True)
        except TranslationError as exc:
            raise ReadError(f"{peer.where()}: cannot read {e.table} {e.key!r}: {exc}", switch=peer.name) from None
        if len(te.match) == 0 and info.table(e.table).match_fields:
            whole.add(e.table)
        else:
            keyed.append(te)
    found: dict[tuple[str, tuple[Value, ...]], Entry] = {}
    for start in range(0, len(keyed), _READ_KEYS_CHUNK):
        request = p4r.ReadRequest(device_id=peer.device_id)
        for te in keyed[start : start + _READ_KEYS_CHUNK]:
            request.entities.add().table_entry.CopyFrom(te)
        entities = await read(connection, request, f"{len(request.entities)} entries by key")
        for entry in _decode_entries(connection, info, entities):
            found[(entry.table, entry.key)] = entry
    if whole:
        for entry in await read_entries(connection, info, sorted(whole)):
            found[(entry.table, entry.key)] = entry
    return [e for k, e in found.items() if k in wanted]


async def read_counters(
    connection: Connection, info: PipelineInfo, name: str, indexes: Iterable[int] | None = None
) -> list[CounterCell]:
    """Cells of the indirect counter `name` (all of them, or `indexes`), sorted by index."""
    counter = info.counter(name)
    request = p4r.ReadRequest(device_id=connection.peer.device_id)
    if indexes is None:
        request.entities.add().counter_entry.counter_id = counter.id
    else:
        for index in indexes:
            ce = request.entities.add().counter_entry
            ce.counter_id = counter.id
            ce.index.index = index
    entities = await read(connection, request, f"counter {name}")
    cells = [
        CounterCell(e.counter_entry.index.index, e.counter_entry.data.packet_count, e.counter_entry.data.byte_count)
        for e in entities
        if e.WhichOneof("entity") == "counter_entry" and e.counter_entry.counter_id == counter.id
    ]
    return sorted(cells, key=lambda c: c.index)
