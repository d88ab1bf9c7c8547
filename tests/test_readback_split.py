"""wire.split_read_response's fast path (protobuf's C parser cuts the response): it gives exactly
what the byte walk it stands in front of gives, on ReadResponses from the software switch in
both modes and on every other shape (other entities, long entries, other fields, malformed
bytes), which the walk still decides."""

from __future__ import annotations

import grpc
import pytest
from finsy.proto import p4r
from google.protobuf.message import DecodeError
from helpers import run
from hypothesis import given, settings
from hypothesis import strategies as st
from test_switch_wire import DEVICE_CONFIG, INFO, P4INFO, switch  # noqa: F401 (switch: the fixture)

from reconciler import p4names as n
from reconciler.diff import diff_snapshots
from reconciler.protowire import varint
from reconciler.render import RenderResult
from reconciler.snapshot import Entry
from reconciler.sim import SoftwareSwitch
from reconciler.switch import SwitchSession
from reconciler.switch import wire
from reconciler.switch.wire import EncodedEntries, split_read_response, write_requests


def walked(data: bytes) -> list[bytes] | type[DecodeError]:
    """The answer of the byte walk alone (split_read_response before its fast path): the list,
    or DecodeError when the bytes do not parse."""
    try:
        try:
            return wire._split(data)
        except (wire._Malformed, IndexError):
            response = p4r.ReadResponse.FromString(data)
            return [e.table_entry.SerializeToString() for e in response.entities if e.WhichOneof("entity") == "table_entry"]
    except DecodeError:
        return DecodeError


def split(data: bytes) -> list[bytes] | type[DecodeError]:
    try:
        return split_read_response(data)
    except DecodeError:
        return DecodeError


def _raw_replies(port: int) -> list[bytes]:
    """A wildcard Read of every table, the replies left as the bytes the switch sent."""
    request = p4r.ReadRequest(device_id=1)
    for table in INFO.tables.values():
        request.entities.add().table_entry.table_id = table.id
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        read = ch.unary_stream("/p4.v1.P4Runtime/Read", request_serializer=p4r.ReadRequest.SerializeToString,
                               response_deserializer=None)
        return list(read(request, timeout=10))


def test_real_read_responses_split_as_the_walk_splits_them(switch: SoftwareSwitch, multi_render: RenderResult) -> None:
    snap = multi_render.snapshot
    expected = EncodedEntries(INFO, [e for es in snap.tables().values() for e in es])

    async def fill() -> None:
        """Every entry, in the order the transaction writes them (buckets before their VIP)."""
        phases = write_requests(INFO, diff_snapshots(None, snap).phases, device_id=1, election_id=1 << 64, batch_size=100)
        async with SwitchSession(f"127.0.0.1:{switch.port}", device_id=1, election_id=1 << 64, info=INFO) as s:
            await s.ensure_pipeline(P4INFO, DEVICE_CONFIG)
            assert all([(await s.write(requests)).ok for requests in phases])

    run(fill())
    assert switch.port is not None
    replies = _raw_replies(switch.port)
    got = [b for r in replies for b in split_read_response(r)]
    assert got == [b for r in replies for b in wire._split(r)]
    assert sorted(got) == sorted(expected.blobs)
    # each reply took the fast path (the whole response in the switches' form)
    assert all(wire._split_short(r) is not None for r in replies)


def _entity(te: bytes) -> bytes:
    body = b"\x12" + varint(len(te)) + te
    return b"\x0a" + varint(len(body)) + body


def _entries() -> list[bytes]:
    return list(EncodedEntries(INFO, [
        Entry(n.VIP_TABLE, ("203.0.113.10", 80, 6), n.SET_SERVICE, (3, 63)),
        Entry(n.BACKEND_TABLE, (3, 7), n.DNAT, ("10.0.0.7", 8080, 2)),
        Entry(n.REVERSE_NAT, ("10.0.0.7", 8080, 6), n.SNAT, ("203.0.113.10", 80)),
    ]).blobs)


def _shapes() -> dict[str, bytes]:
    """Responses of every shape the fast path must hand to the walk, and a few it takes."""
    blobs = _entries()
    plain = b"".join(_entity(b) for b in blobs)
    counter = p4r.Entity()
    counter.counter_entry.counter_id = 5
    long_entry = p4r.TableEntry.FromString(blobs[1])
    long_entry.metadata = b"m" * 200  # a TableEntry of more than 125 bytes: two-byte lengths
    split_te = blobs[0]
    pieces = b"\x12" + bytes([4]) + split_te[:4] + b"\x12" + bytes([len(split_te) - 4]) + split_te[4:]
    return {
        "empty": b"",
        "plain": plain,
        "other entity": plain + b"\x0a" + varint(counter.ByteSize()) + counter.SerializeToString(),
        "long entry": plain + _entity(long_entry.SerializeToString()),
        "unknown field": plain + b"\x10\x01",
        "unknown field first": b"\x1a\x00" + plain,
        "table entry in two pieces": b"\x0a" + bytes([len(pieces)]) + pieces + plain,
        "empty entity": b"\x0a\x00" + plain,
        "entity of one byte": b"\x0a\x01\x12" + plain,
        "truncated": plain[:-3],
        "length past the end": b"\x0a\x50\x12",
        "field number 0": b"\x00\x00" + plain,
        "group": b"\x0b\x0c" + plain,
        # Entity and item boundaries that could be confused when only totals are compared:
        "two table entries in one entity, then an empty one": b"\x0a" + bytes([len(_entity(blobs[0])[2:]) + len(_entity(blobs[1])[2:])])
        + _entity(blobs[0])[2:] + _entity(blobs[1])[2:] + b"\x0a\x00" + plain,
        "a table entry and an unknown field in one entity": b"\x0a" + bytes([len(blobs[0]) + 4]) + b"\x12"
        + bytes([len(blobs[0])]) + blobs[0] + b"\x18\x01" + plain,
        "a table entry's length in two bytes": b"\x0a" + bytes([len(blobs[0]) + 3]) + b"\x12" + bytes([0x80 | len(blobs[0]), 0])
        + blobs[0] + plain,
    }


@pytest.mark.parametrize("name", list(_shapes()))
def test_every_shape_splits_as_the_walk_splits_it(name: str) -> None:
    data = _shapes()[name]
    assert split(data) == walked(data)
    if name in ("empty", "plain"):
        assert wire._split_short(data) is not None
    else:
        assert wire._split_short(data) is None  # the walk decides


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_responses_split_as_the_walk_splits_them(data: st.DataObject) -> None:
    """Random edits of a response (bytes changed, cut, inserted): the same list, or DecodeError
    from both."""
    raw = bytearray(_shapes()[data.draw(st.sampled_from(["plain", "other entity", "long entry"]))])
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        how = data.draw(st.sampled_from(["set", "cut", "insert"]))
        if how == "set" and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del raw[at:at + data.draw(st.integers(1, 8))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    assert split(bytes(raw)) == walked(bytes(raw))


def _looped(actual: list[bytes], expected: EncodedEntries) -> wire.Readback:
    """match_readback's loop alone (before its set comparison)."""
    seen = bytearray(len(expected.blobs))
    extra: list[bytes] = []
    for blob in actual:
        i = expected.index.get(blob)
        if i is None:
            extra.append(blob)
        else:
            seen[i] = 1
    matched = sum(seen)
    return wire.Readback(tuple(extra), tuple(i for i, s in enumerate(seen) if not s), matched)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_match_readback_equals_its_loop_whatever_was_read(data: st.DataObject) -> None:
    """Any read-back (the expected set in any order, entries left out, read twice, unexpected
    ones), against expected entries that may encode alike: the same Readback as the loop."""
    entries = [Entry(n.BACKEND_TABLE, (1, b), n.DNAT, (f"10.0.0.{b % 250}", 8080, b)) for b in range(data.draw(st.integers(0, 12)))]
    if data.draw(st.booleans()) and entries:
        entries.append(entries[data.draw(st.integers(0, len(entries) - 1))])  # two entries, one encoding
    expected = EncodedEntries(INFO, entries)
    pool = [*expected.blobs, b"\x08\x01", b"\x08\x02" + bytes(3)] + ([expected.blobs[0] + b"\x00"] if entries else [])
    actual = data.draw(st.permutations(list(expected.blobs)))
    if data.draw(st.booleans()):
        actual = data.draw(st.lists(st.sampled_from(pool), max_size=16))
    read = wire.match_readback(actual, expected)
    assert read == _looped(actual, expected)
    assert wire.match_readback(iter(actual), expected) == read  # any iterable
