"""Read RPC conformance: wildcards, default entries, full-key reads, counters, error reporting."""

from __future__ import annotations

import grpc
import pytest
from finsy.proto import p4r
from sim_transcripts import (
    BACKEND,
    LPM,
    PROGRAM,
    VIP,
    Client,
    Session,
    load_p4info,
    read_entities,
    read_request,
    vip,
    vip_match,
)

from reconciler.sim import SoftwareSwitch
from reconciler.sim import server as sim_server

OK, UNKNOWN, INVALID_ARGUMENT, OUT_OF_RANGE = 0, 2, 3, 11
COUNTER = "MyIngress.backend_packets"


@pytest.fixture
def spec():
    session = Session(bmv2=False)
    _populate(session)
    yield session
    session.close()


@pytest.fixture
def bmv2():
    session = Session(bmv2=True)
    _populate(session)
    yield session
    session.close()


def _populate(session: Session) -> None:
    outcome = session.write(
        vip(ip=1), vip(ip=2), vip(ip=3),
        PROGRAM.update("INSERT", BACKEND, {"m.service_id": 1, "m.bucket": 0}, "MyIngress.dnat",
                       {"node_ip": 0xC0A80101, "node_port": 8080}),
        PROGRAM.update("INSERT", LPM, {"h.ipv4.dstAddr": (0x0A000000, 8)}, "MyIngress.fwd",
                       {"port": 1}),
        PROGRAM.update("MODIFY", LPM, None, "MyIngress.fwd", {"port": 7}, default=True),
    )
    assert outcome.ok, outcome


def table_ids(entities: list[p4r.Entity]) -> list[int]:
    return [e.table_entry.table_id for e in entities]


def test_wildcard_read_of_all_tables_excludes_defaults(spec) -> None:
    entities = read_entities(spec.client.read(read_request(p4r.TableEntry())))
    assert table_ids(entities) == [PROGRAM.table_id(VIP)] * 3 + [
        PROGRAM.table_id(BACKEND), PROGRAM.table_id(LPM)]  # P4Info order, then handle order
    assert not any(e.table_entry.is_default_action for e in entities)


def test_default_entries_are_read_explicitly(spec) -> None:
    every = read_entities(spec.client.read(read_request(p4r.TableEntry(is_default_action=True))))
    assert len(every) == 4 and all(e.table_entry.is_default_action for e in every)
    one = read_entities(spec.client.read(read_request(
        p4r.TableEntry(table_id=PROGRAM.table_id(LPM), is_default_action=True))))
    (entry,) = [e.table_entry for e in one]
    assert entry.action.action.action_id == PROGRAM.action_id("MyIngress.fwd")
    assert entry.action.action.params[0].value == b"\x07"


def test_one_table_and_full_key_reads(spec) -> None:
    backend = read_entities(spec.client.read(read_request(
        p4r.TableEntry(table_id=PROGRAM.table_id(BACKEND)))))
    assert table_ids(backend) == [PROGRAM.table_id(BACKEND)]
    key = PROGRAM.entry(VIP, vip_match(2))
    (found,) = read_entities(spec.client.read(read_request(key)))
    assert found.table_entry.match[0].exact.value == b"\x02"
    missing = spec.client.read(read_request(PROGRAM.entry(VIP, vip_match(99))))
    assert missing.ok and read_entities(missing) == []  # not NOT_FOUND (surprise 31)


def test_padded_key_reads_canonical(spec) -> None:
    padded = PROGRAM.entry(VIP, vip_match(2))
    padded.match[0].exact.value = b"\x00\x00\x00\x00\x00\x02"
    (found,) = read_entities(spec.client.read(read_request(padded)))
    assert found.table_entry.match[0].exact.value == b"\x02"


def test_action_filter(spec, bmv2) -> None:
    wanted = PROGRAM.entry(VIP, None, "NoAction")
    assert read_entities(spec.client.read(read_request(wanted))) == []  # spec filters
    assert len(read_entities(bmv2.client.read(read_request(wanted)))) == 3  # BMv2 ignores it


def test_bmv2_read_error_comes_after_a_partial_response(bmv2) -> None:
    partial = PROGRAM.entry(VIP, {"h.ipv4.dstAddr": 1})
    request = read_request(p4r.TableEntry(table_id=PROGRAM.table_id(BACKEND)), partial)
    outcome = bmv2.client.read(request)
    assert (outcome.code, outcome.details) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "Missing non-ternary field in match key")
    assert len(outcome.responses) == 1 and len(read_entities(outcome)) == 1
    assert (outcome.status.code, outcome.status.message, len(outcome.status.details)) == (
        INVALID_ARGUMENT, "Missing non-ternary field in match key", 0)


def test_spec_read_errors_are_per_request(spec) -> None:
    partial = PROGRAM.entry(VIP, {"h.ipv4.dstAddr": 1})
    unknown = p4r.TableEntry(table_id=0x02999999)
    request = read_request(p4r.TableEntry(table_id=PROGRAM.table_id(BACKEND)), partial, unknown)
    outcome = spec.client.read(request)
    assert outcome.code == grpc.StatusCode.UNKNOWN
    assert len(read_entities(outcome)) == 1  # the valid request was answered
    assert [(e.canonical_code, e.message) for e in outcome.errors()] == [
        (OK, ""),
        (INVALID_ARGUMENT, "Missing non-ternary field in match key"),
        (INVALID_ARGUMENT, "Invalid P4 id"),
    ]


def test_entity_with_nothing_set(spec, bmv2) -> None:
    empty = read_request(p4r.Entity())
    bmv2_outcome = bmv2.client.read(empty)
    assert (bmv2_outcome.code, bmv2_outcome.details) == (grpc.StatusCode.UNKNOWN,
                                                         "Incorrect entity type")
    spec_outcome = spec.client.read(empty)
    assert [(e.canonical_code, e.message) for e in spec_outcome.errors()] == [
        (INVALID_ARGUMENT, "Incorrect entity type")]


def test_empty_read_request_is_one_empty_response(spec) -> None:
    outcome = spec.client.read(p4r.ReadRequest(device_id=1))
    assert outcome.ok and len(outcome.responses) == 1 and read_entities(outcome) == []


def test_read_before_pipeline_and_on_unknown_device() -> None:
    with SoftwareSwitch() as switch, Client(f"127.0.0.1:{switch.port}") as client:
        before = client.read(read_request(p4r.TableEntry()))
        unknown = client.read(read_request(p4r.TableEntry(), device_id=9))
    assert (before.code, before.details) == (
        grpc.StatusCode.FAILED_PRECONDITION, "No forwarding pipeline config set for this device")
    assert unknown.code == grpc.StatusCode.NOT_FOUND


def test_large_reads_are_split_in_spec_mode_only(spec, bmv2, monkeypatch) -> None:
    monkeypatch.setattr(sim_server, "READ_CHUNK", 2)
    request = read_request(p4r.TableEntry())
    assert [len(r.entities) for r in spec.client.read(request).responses] == [2, 2, 1]
    assert [len(r.entities) for r in bmv2.client.read(request).responses] == [5]


def counter(index: int | None = None, packets: int | None = None, nbytes: int | None = None
            ) -> p4r.CounterEntry:
    entry = p4r.CounterEntry(counter_id=PROGRAM.counter_id(COUNTER))
    if index is not None:
        entry.index.index = index
    if packets is not None or nbytes is not None:
        entry.data.packet_count = packets or 0
        entry.data.byte_count = nbytes or 0
    return entry


def counter_update(kind: str, entry: p4r.CounterEntry) -> p4r.Update:
    update = p4r.Update(type=p4r.Update.Type.Value(kind))
    update.entity.counter_entry.CopyFrom(entry)
    return update


def test_indirect_counter_cells(spec) -> None:
    (cell,) = read_entities(spec.client.read(read_request(counter(5))))
    assert cell.counter_entry.HasField("data") and cell.counter_entry.data.packet_count == 0
    assert spec.codes(counter_update("MODIFY", counter(5, packets=100, nbytes=6400))) == [
        (OK, "")]
    (cell,) = read_entities(spec.client.read(read_request(counter(5))))
    # a PACKETS counter keeps no byte count
    assert (cell.counter_entry.data.packet_count, cell.counter_entry.data.byte_count) == (100, 0)
    everything = read_entities(spec.client.read(read_request(counter())))
    assert len(everything) == 1024 and everything[5].counter_entry.data.packet_count == 100
    assert spec.switch.counters(1, COUNTER)[5] == (100, 0)


@pytest.mark.parametrize("mode", ["spec", "bmv2"])
def test_counter_write_rules(mode, request) -> None:
    session = request.getfixturevalue(mode)
    bmv2 = mode == "bmv2"
    session.codes(counter_update("MODIFY", counter(5, packets=3)))
    results = session.codes(
        counter_update("INSERT", counter(6, packets=1)),
        counter_update("DELETE", counter(5)),
        counter_update("MODIFY", counter(1024, packets=1)),
        counter_update("MODIFY", counter(-1, packets=1)),
        counter_update("MODIFY", counter(None, packets=2)),
    )
    assert results[0] == (INVALID_ARGUMENT, "INSERT update type not supported for counters")
    assert results[3] == (INVALID_ARGUMENT, "A negative number is not a valid index value")
    if bmv2:
        assert results[1] == (OK, "")  # DELETE zeroes the cell (surprise 35)
        assert results[2] == (UNKNOWN, "Error when writing to counter")
        assert results[4] == (12, "Wildcard write is not supported for indirect counters yet")
        assert session.switch.counters(1, COUNTER)[5] == (0, 0)
    else:
        assert results[1] == (INVALID_ARGUMENT, "DELETE update type not supported for counters")
        assert results[2] == (OUT_OF_RANGE, "Index 1024 is out of range (size 1024)")
        assert results[4] == (OK, "")  # spec: no index sets every cell
        assert set(session.switch.counters(1, COUNTER)) == {(2, 0)}


def test_counter_read_out_of_range(spec, bmv2) -> None:
    outcome = bmv2.client.read(read_request(counter(1024)))
    assert (outcome.code, outcome.details) == (grpc.StatusCode.UNKNOWN,
                                               "Error when reading counter from target")
    (partial,) = read_entities(outcome)  # BMv2 had already added the entry, without data
    assert not partial.counter_entry.HasField("data")
    spec_outcome = spec.client.read(read_request(counter(1024)))
    assert [e.canonical_code for e in spec_outcome.errors()] == [OUT_OF_RANGE]
    negative = bmv2.client.read(read_request(counter(-1)))
    assert (negative.code, negative.details) == (
        grpc.StatusCode.INVALID_ARGUMENT, "A negative number is not a valid index value")


def test_direct_counter_entry_on_a_table_without_one(bmv2) -> None:
    direct = p4r.Entity()
    direct.direct_counter_entry.table_entry.CopyFrom(PROGRAM.entry(VIP, vip_match(1)))
    outcome = bmv2.client.read(read_request(direct))
    assert (outcome.code, outcome.details) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "Table has no direct counters")
    update = p4r.Update(type=p4r.Update.MODIFY)
    update.entity.CopyFrom(direct)
    assert bmv2.codes(update) == [(INVALID_ARGUMENT, "Table has no direct counters")]
    # counter_data in a table read is silently ignored (surprise 36)
    request = p4r.TableEntry(table_id=PROGRAM.table_id(VIP))
    request.counter_data.SetInParent()
    assert len(read_entities(bmv2.client.read(read_request(request)))) == 3


def test_unknown_ids_in_reads(bmv2) -> None:
    for entity in (p4r.TableEntry(table_id=0x02999999),
                   p4r.TableEntry(table_id=PROGRAM.action_id("NoAction")),
                   p4r.CounterEntry(counter_id=PROGRAM.table_id(VIP))):
        outcome = bmv2.client.read(read_request(entity))
        assert (outcome.code, outcome.details) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "Invalid P4 id")


def test_priority_in_an_exact_read(bmv2) -> None:
    key = PROGRAM.entry(VIP, vip_match(1), priority=10)
    outcome = bmv2.client.read(read_request(key))
    assert (outcome.code, outcome.details) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "Non-zero priority for non-ternary match")


def test_project_program_reads(tmp_path) -> None:
    """The project's own P4Info works end to end (three 65536-cell counters)."""
    from pathlib import Path

    p4info_path = Path(__file__).resolve().parents[1] / "p4" / "load_balancer.p4info.txtpb"
    from finsy.proto import p4i
    from google.protobuf import text_format

    p4info = text_format.Parse(p4info_path.read_text(), p4i.P4Info())
    session = Session(bmv2=False, p4info=p4info)
    try:
        counters = read_entities(session.client.read(read_request(p4r.CounterEntry())))
        assert len(counters) == sum(c.size for c in p4info.counters)
    finally:
        session.close()


def test_load_p4info_fixture_is_the_transcript_program() -> None:
    assert [t.preamble.name for t in load_p4info().tables][0] == VIP


def _raw_read(session: Session, request: p4r.ReadRequest) -> list[bytes]:
    """The ReadResponses as the bytes on the wire (no deserializer)."""
    with grpc.insecure_channel(f"127.0.0.1:{session.switch.port}") as channel:
        read = channel.unary_stream("/p4.v1.P4Runtime/Read", request_serializer=p4r.ReadRequest.SerializeToString)
        return list(read(request, timeout=10))


@pytest.mark.parametrize("mode", ["spec", "bmv2"])
def test_reads_served_as_cached_bytes_equal_the_messages_serialized(mode, request) -> None:
    session: Session = request.getfixturevalue(mode)
    device = session.switch._devices[1]
    wildcard = read_request(p4r.TableEntry())
    with_counters = p4r.TableEntry(table_id=PROGRAM.table_id(BACKEND))
    with_counters.counter_data.SetInParent()
    defaults = p4r.TableEntry(table_id=PROGRAM.table_id(LPM), is_default_action=True)
    every = read_request(p4r.TableEntry(), with_counters, defaults)
    every.entities.add().counter_entry.counter_id = PROGRAM.counter_id(COUNTER)

    def same(req: p4r.ReadRequest) -> list[bytes]:
        wire = _raw_read(session, req)
        assert b"".join(wire) == device.read(req).response.SerializeToString()
        assert b"".join(wire) == b"".join(r.SerializeToString() for r in session.client.read(req).responses)
        return wire

    first = same(every)
    assert same(every) == first  # the second read is served from the cached bytes
    # A modified entry is a new object: its new bytes are read, not the cached ones.
    assert session.write(PROGRAM.update("MODIFY", BACKEND, {"m.service_id": 1, "m.bucket": 0}, "MyIngress.dnat",
                                        {"node_ip": 0xC0A80102, "node_port": 8081})).ok
    assert same(every) != first
    assert session.write(PROGRAM.update("DELETE", VIP, vip_match(ip=2))).ok
    after = same(wildcard)
    assert len(p4r.ReadResponse.FromString(after[0]).entities) == 4
