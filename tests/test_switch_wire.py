"""switch/wire.py: entries encoded straight to TableEntry bytes, WriteRequests built from them,
ReadResponses split into entry bytes undecoded, and read-backs compared as bytes; the byte form
holds against the software switch in both modes (BMv2's canonical output, fixture 07)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from finsy.proto import p4r
from google.protobuf.message import DecodeError
from helpers import run

from reconciler import p4names as n
from reconciler.diff import Update, diff_entries, diff_snapshots
from reconciler.p4info import load_p4info, pipeline_info
from reconciler.render import RenderResult
from reconciler.sim import SoftwareSwitch
from reconciler.snapshot import Backend, Drain, Entry, ServiceSnapshot, Snapshot
from reconciler.switch import SwitchSession, TranslationError
from reconciler.switch.translate import entry_to_proto, proto_to_entry, updates_to_requests
from reconciler.switch.wire import (
    EncodedEntries,
    EntryEncoder,
    encoded_requests,
    encoder_for,
    match_readback,
    split_read_response,
    write_requests,
)

INFO = pipeline_info()
P4INFO = load_p4info()
DEVICE_CONFIG = b'{"program": "load_balancer.p4 (opaque to the software switch)"}'


def _generic_entries() -> list[Entry]:
    """One entry per (table, action) the P4Info allows on an entry, with values of every spelling
    (small and large ints, IPv4, MAC, LPM prefixes incl. /0), derived from the P4Info alone."""
    out: list[Entry] = []
    for name, table in INFO.tables.items():
        key: list[object] = []
        for i, f in enumerate(table.match_fields):
            if f.match_type == "LPM":
                key.append("10.1.0.0/16" if i % 2 == 0 else "0.0.0.0/0")
            elif f.bitwidth == 32:
                key.append("203.0.113.7")
            elif f.bitwidth == 48:
                key.append("02:00:0a:00:00:01")
            else:
                key.append((1 << f.bitwidth) - 1)
        for action_id in table.action_ids:
            if action_id in table.default_only_action_ids:
                continue
            action = INFO.action_by_id(action_id)
            args: list[object] = []
            for p in action.params:
                if p.bitwidth == 48:
                    args.append("aa:bb:cc:dd:ee:0f")
                elif p.bitwidth == 32:
                    args.append(_spelt_32(name, action.name, p.name))
                else:
                    args.append(0)
            out.append(Entry(name, tuple(key), action.name, tuple(args)))  # type: ignore[arg-type]
    return out


def _spelt_32(table: str, action: str, param: str) -> object:
    """A 32-bit value spelt the way translate takes it for this parameter (address or int)."""
    for v in ("192.0.2.1", 4294967295):
        try:
            entry_to_proto(INFO, _probe(table, action, param, v))
            return v
        except TranslationError:
            continue
    return "192.0.2.1"


def _probe(table: str, action: str, param: str, v: object) -> Entry:
    t = INFO.table(table)
    key = tuple("10.0.0.0/8" if f.match_type == "LPM" else ("1.2.3.4" if f.bitwidth == 32 else 1) for f in t.match_fields)
    a = INFO.action(action)
    args = tuple(v if p.name == param else ("1.2.3.4" if p.bitwidth == 32 else ("aa:bb:cc:dd:ee:ff" if p.bitwidth == 48 else 1)) for p in a.params)
    return Entry(table, key, action, args)  # type: ignore[arg-type]


def test_encoding_equals_entry_to_proto_for_every_table_and_action(multi_render: RenderResult) -> None:
    encoder = encoder_for(INFO)
    rendered = [e for es in multi_render.snapshot.tables().values() for e in es]
    generic = [e for e in _generic_entries() if _translates(e)]
    assert {e.table for e in generic} == set(INFO.tables)
    for e in rendered + generic:
        assert encoder.encode(e) == entry_to_proto(INFO, e).SerializeToString(), e
        assert encoder.encode(e) == entry_to_proto(INFO, e).SerializeToString(), e  # cached chunks too
        assert encoder.encode_key(e) == entry_to_proto(INFO, e, key_only=True).SerializeToString(), e
        assert proto_to_entry(INFO, p4r.TableEntry.FromString(encoder.encode(e))) == Entry(e.table, e.key, e.action, e.args)


def _translates(e: Entry) -> bool:
    try:
        entry_to_proto(INFO, e)
        return True
    except TranslationError:
        return False


def test_bad_values_are_refused_as_entry_to_proto_refuses_them_even_after_equal_values_were_cached() -> None:
    encoder = encoder_for(INFO)
    good = Entry(n.VIP_TABLE, ("203.0.113.10", 80, 1), n.SET_SERVICE, (3, 63))
    encoder.encode(good)  # 1 and 63 are cached now
    for bad in (
        Entry(n.VIP_TABLE, ("203.0.113.10", 80, True), n.SET_SERVICE, (3, 63)),
        Entry(n.VIP_TABLE, ("203.0.113.10", 80, 1.0), n.SET_SERVICE, (3, 63)),  # type: ignore[arg-type]
        Entry(n.VIP_TABLE, ("203.0.113.10", 80, 256), n.SET_SERVICE, (3, 63)),
        Entry(n.VIP_TABLE, ("203.0.113.010", 80, 1), n.SET_SERVICE, (3, 63)),
        Entry(n.VIP_TABLE, ("203.0.113.10", 80), n.SET_SERVICE, (3, 63)),
        Entry(n.VIP_TABLE, ("203.0.113.10", 80, 1), n.DNAT, (3, 63)),
        Entry("MyIngress.nope", (1,), n.DNAT, ()),
    ):
        with pytest.raises(TranslationError) as ours:
            encoder.encode(bad)
        with pytest.raises(TranslationError) as theirs:
            entry_to_proto(INFO, bad)
        assert str(ours.value) == str(theirs.value)


def test_write_requests_equal_updates_to_requests_byte_for_byte(multi_render: RenderResult) -> None:
    snap = multi_render.snapshot
    entries = [e for es in snap.tables().values() for e in es]
    known = EncodedEntries(INFO, entries)
    half = entries[: len(entries) // 2]
    changed = [Entry(e.table, e.key, e.action, e.args) for e in entries[len(entries) // 2 :]]
    # INSERTs, MODIFYs and DELETEs, some entries known, some not
    diff = diff_entries(half + [Entry(e.table, e.key, e.action, e.args) for e in changed[:3]], entries[:5] + changed[3:])
    for phases in (diff_snapshots(None, snap).phases, diff.phases):
        ours = write_requests(INFO, phases, device_id=7, election_id=(5 << 64) | 3, batch_size=17, known=known)
        old = updates_to_requests(INFO, phases, device_id=7, election_id=(5 << 64) | 3, batch_size=17)
        assert [[r.SerializeToString() for r in p] for p in ours] == [[r.SerializeToString() for r in p] for p in old]
        assert all(r.message().SerializeToString() == r.raw and r.size == len(r.updates) for p in ours for r in p)
    with pytest.raises(TranslationError, match="unknown update kind"):
        encoded_requests([[("UPSERT", b"")]], device_id=1, election_id=1, batch_size=1)
    with pytest.raises(TranslationError, match="batch size"):
        write_requests(INFO, [[Update("INSERT", entries[0])]], device_id=1, election_id=1, batch_size=0)


def test_split_read_response_gives_each_table_entry_as_sent_and_skips_other_entities() -> None:
    encoder = encoder_for(INFO)
    entries = _generic_entries()[:3]
    response = p4r.ReadResponse()
    for e in entries:
        response.entities.add().table_entry.CopyFrom(entry_to_proto(INFO, e))
    response.entities.add().counter_entry.counter_id = 5  # another kind: left out
    blobs = split_read_response(response.SerializeToString())
    assert blobs == [encoder.encode(e) for e in entries]
    assert split_read_response(b"") == []
    # an Entity whose table_entry is sent in two pieces (protobuf merges them): re-serialized
    te = entry_to_proto(INFO, entries[0]).SerializeToString()
    cut = len(p4r.TableEntry(table_id=INFO.table(entries[0].table).id).SerializeToString())
    body = b"\x12" + bytes([cut]) + te[:cut] + b"\x12" + bytes([len(te) - cut]) + te[cut:]
    assert split_read_response(b"\x0a" + bytes([len(body)]) + body) == [te]
    with pytest.raises(DecodeError):
        split_read_response(b"\x0a\x50\x12")  # truncated


def test_match_readback_decodes_nothing_when_bytes_agree_and_reports_only_the_differences() -> None:
    entries = [Entry(n.BACKEND_TABLE, (1, b), n.DNAT, (f"10.0.0.{b}", 8080, b)) for b in range(8)]
    expected = EncodedEntries(INFO, entries)
    assert match_readback(expected.blobs[::-1], expected).exact
    changed = encoder_for(INFO).encode(Entry(n.BACKEND_TABLE, (1, 2), n.DNAT, ("10.9.9.9", 8080, 2)))
    read = match_readback([b for i, b in enumerate(expected.blobs) if i not in (2, 5)] + [changed], expected)
    assert read.extra == (changed,) and read.missing == (2, 5) and read.matched == 6
    assert expected.at(read.missing) == [entries[2], entries[5]]
    assert expected.except_at(read.missing) == [e for i, e in enumerate(entries) if i not in (2, 5)]


def test_released_entries_are_made_again_from_their_source_and_the_bytes_stay() -> None:
    made: list[int] = []

    def source() -> list[Entry]:
        made.append(1)
        return [Entry(n.BACKEND_TABLE, (1, b), n.DNAT, (f"10.0.0.{b}", 8080, b)) for b in range(4)]

    expected = EncodedEntries(INFO, source(), source)
    first = expected.entries[1]
    assert expected.blob_of(first) == expected.blobs[1]
    expected.release()
    assert match_readback(expected.blobs, expected).exact and len(made) == 1  # bytes only: nothing made
    assert expected.at(()) == [] and len(made) == 1
    assert expected.at((1,)) == [first] and len(made) == 2
    assert expected.blob_of(first) is None  # the old object is not one of the entries any more
    assert expected.tables == (n.BACKEND_TABLE,) * 4
    kept = EncodedEntries(INFO, source())  # without a source, release() keeps the entries
    kept.release()
    assert len(kept.entries) == 4 and len(made) == 3


def _varied_services(snap: Snapshot) -> list[ServiceSnapshot]:
    """The rendered Services, plus the shapes encode_service treats apart: a drain, pod-address
    backends, no backends, a UDP Service, a bucket value no 16-bit field holds."""
    base = next(s for s in snap.services if len(s.backends) >= 2)
    other = next(b for b in base.backends if b.node != base.assignment[0])
    drained = dataclasses.replace(base, drains=(Drain(0, other.node, 7, 1_900_000_000.0),))
    pods = dataclasses.replace(base, name=base.name + "-pods", backend_mode="podIP",
                               assignment=tuple(next(b.address for b in base.backends if b.node == k) for k in base.assignment))
    empty = dataclasses.replace(base, name=base.name + "-empty", backends=(), assignment=(None,) * base.bucket_count)
    udp = dataclasses.replace(base, name=base.name + "-udp", protocol="UDP")
    return [*snap.services, drained, pods, empty, udp]


def test_a_snapshot_encoded_per_service_equals_its_entries_encoded_one_by_one(multi_render: RenderResult) -> None:
    snap = multi_render.snapshot
    services = _varied_services(snap)

    def source() -> list[Entry]:
        return [e for s in services for es in s.entries().values() for e in es] + list(snap.global_entries)

    one_by_one = EncodedEntries(INFO, source())
    fast = EncodedEntries.of_snapshot(INFO, services, snap.global_entries, source)
    assert fast.blobs == one_by_one.blobs and fast.tables == one_by_one.tables
    assert fast.entries == one_by_one.entries  # made from the source, in the same order
    assert len(fast) > len(snap.services) * 3
    # A changed Service is encoded again; the others are the very bytes of the previous target.
    changed = [dataclasses.replace(services[0], vip="198.51.100.77"), *services[1:]]
    again = EncodedEntries.of_snapshot(INFO, changed, snap.global_entries, source, fast)
    assert again.blobs[0] != fast.blobs[0] and again.blobs[0] == EntryEncoder(INFO).encode(changed[0].entries()[n.VIP_TABLE][0])
    n0 = 1 + len(services[0].assignment) + len(services[0].backends)
    end = len(fast) - len(snap.global_entries)  # routes are few and encoded each time
    assert end > n0 and all(a is b for a, b in zip(again.blobs[n0:end], fast.blobs[n0:end]))


def test_a_service_that_does_not_fit_is_refused_as_its_entries_are() -> None:
    svc = ServiceSnapshot("ns/a:80", 70000, "198.51.100.1", 80, "TCP", "replica-weighted", 2, "nodePort",
                          (Backend("n1", "10.0.0.1", 30080, 1, 2, 1),), ("n1", "n1"))
    with pytest.raises(TranslationError) as fast:
        EntryEncoder(INFO).encode_service(svc)
    with pytest.raises(TranslationError) as slow:
        EntryEncoder(INFO).encode(svc.entries()[n.VIP_TABLE][0])
    assert str(fast.value) == str(slow.value)


@pytest.fixture(params=["spec", "bmv2"])
def switch(request: pytest.FixtureRequest) -> Iterator[SoftwareSwitch]:
    sw = SoftwareSwitch(bmv2=request.param == "bmv2", max_workers=8)
    sw.start("127.0.0.1:0")
    try:
        yield sw
    finally:
        sw.stop(0)


def test_what_the_switch_returns_equals_our_bytes(switch: SoftwareSwitch, multi_render: RenderResult) -> None:
    """The byte comparison holds against the switch (BMv2 mode: BMv2's field order, shortest
    bytestrings, no priority/metadata/counter data): every entry written matches as bytes,
    none is decoded. A changed entry is the one left over, and decoding it tells what it is."""
    snap = multi_render.snapshot
    entries = [e for es in snap.tables().values() for e in es]
    expected = EncodedEntries(INFO, entries)

    async def go() -> None:
        async with SwitchSession(f"127.0.0.1:{switch.port}", device_id=1, election_id=1 << 64, info=INFO) as s:
            await s.ensure_pipeline(P4INFO, DEVICE_CONFIG)
            for phase in write_requests(INFO, diff_snapshots(None, snap).phases, device_id=1,
                                        election_id=s.election_id, batch_size=100, known=expected):
                assert (await s.write(phase)).ok
            blobs = await s.read_encoded()
            read = match_readback(blobs, expected)
            assert read.exact and read.matched == len(entries) == len(blobs)
            assert sorted(s.decode_entries(blobs), key=repr) == sorted(
                (Entry(e.table, e.key, e.action, e.args) for e in entries), key=repr)
            # one bucket changed behind our back
            bucket = next(e for e in entries if e.table == n.BACKEND_TABLE)
            moved = Entry(bucket.table, bucket.key, bucket.action, ("10.9.9.9",) + bucket.args[1:])
            for phase in write_requests(INFO, [[Update("MODIFY", moved)]], device_id=1,
                                        election_id=s.election_id, batch_size=100):
                assert (await s.write(phase)).ok
            read = match_readback(await s.read_encoded(), expected)
            assert read.matched == len(entries) - 1
            assert s.decode_entries(read.extra) == [moved]
            assert expected.at(read.missing) == [bucket]

    run(go())


def test_a_refused_update_of_a_request_sent_as_bytes_is_named(switch: SoftwareSwitch) -> None:
    vip = Entry(n.VIP_TABLE, ("203.0.113.10", 80, 6), n.SET_SERVICE, (3, 63))
    other = Entry(n.VIP_TABLE, ("203.0.113.11", 80, 6), n.SET_SERVICE, (4, 63))

    async def go() -> None:
        async with SwitchSession(f"127.0.0.1:{switch.port}", device_id=1, election_id=1 << 64, info=INFO) as s:
            await s.ensure_pipeline(P4INFO, DEVICE_CONFIG)
            (first,) = write_requests(INFO, [[Update("INSERT", vip)]], device_id=1, election_id=s.election_id, batch_size=10)
            assert (await s.write(first)).ok
            (again,) = write_requests(INFO, [[Update("INSERT", other), Update("INSERT", vip)]], device_id=1,
                                      election_id=s.election_id, batch_size=10)
            outcome = await s.write(again)
            assert not outcome.ok and outcome.updates_sent == 2
            (error,) = outcome.errors
            assert error.index == 1 and error.code == "ALREADY_EXISTS"
            assert error.update == "INSERT MyIngress.vip_table ('203.0.113.10', 80, 6)"
            assert sorted(s.decode_entries(await s.read_encoded()), key=repr) == [vip, other]

    run(go())


def test_entries_at_positions_are_made_from_their_services_alone(multi_render: RenderResult) -> None:
    snap = multi_render.snapshot
    services = _varied_services(snap)
    made: list[int] = []

    def source() -> list[Entry]:
        made.append(1)
        return [e for s in services for es in s.entries().values() for e in es] + list(snap.global_entries)

    fast = EncodedEntries.of_snapshot(INFO, services, snap.global_entries, source)
    everything = source()
    positions = [0, len(everything) - 1, 5, 3, len(everything) // 2, len(everything) - len(snap.global_entries)]
    positions = [p for p in positions if p < len(everything)]
    assert fast.at(positions) == [everything[p] for p in positions] and len(made) == 1  # the source was not asked
    assert fast.blob_of(everything[0]) is None and len(made) == 1  # not one of its (unmade) entries
    with pytest.raises(IndexError):
        fast.at([len(everything)])
    assert fast.entries == tuple(everything) and len(made) == 2
    assert fast.blob_of(fast.entries[3]) == fast.blobs[3]
