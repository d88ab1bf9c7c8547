"""Write RPC conformance: validation, per-update errors, capacity, atomicity, default entries.

Each test drives a real server through a raw P4RuntimeStub. Spec mode is the default; BMv2
mode is used where it departs (codes only: the message texts are BMv2's in both modes).
"""

from __future__ import annotations

import grpc
import pytest
from finsy.proto import p4r
from sim_transcripts import (
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
    write_request,
)

from reconciler.sim import SoftwareSwitch

OK, UNKNOWN, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS = 0, 2, 3, 5, 6
PERMISSION_DENIED, RESOURCE_EXHAUSTED, OUT_OF_RANGE, UNIMPLEMENTED = 7, 8, 11, 12

@pytest.fixture
def spec():
    session = Session(bmv2=False)
    yield session
    session.close()


@pytest.fixture
def bmv2():
    session = Session(bmv2=True)
    yield session
    session.close()


def test_insert_then_read_back_canonical(spec) -> None:
    assert spec.write(vip()).ok
    (entry,) = spec.read_table(VIP)
    assert [m.exact.value for m in entry.match] == [b"\x0a\x00\x00\x01", b"P", b"\x06"]
    assert [p.value for p in entry.action.action.params] == [b"\x01", b"\xff"]


def test_padded_and_canonical_bytestrings_are_the_same_key(spec) -> None:
    padded = vip(ip=5)
    for m in padded.entity.table_entry.match:
        m.exact.value = b"\x00\x00" + m.exact.value  # longer than the field, value fits
    assert spec.write(padded).ok
    canonical = vip(ip=5)
    for m in canonical.entity.table_entry.match:
        m.exact.value = m.exact.value.lstrip(b"\x00") or b"\x00"
    assert spec.codes(canonical) == [
        (ALREADY_EXISTS, "Match entry exists, use MODIFY if you wish to change action")]
    (entry,) = spec.read_table(VIP)
    assert [m.exact.value for m in entry.match] == [b"\x05", b"P", b"\x06"]


@pytest.mark.parametrize("mode,code", [("spec", OUT_OF_RANGE), ("bmv2", INVALID_ARGUMENT)])
def test_value_wider_than_the_field(mode, code, request) -> None:
    session = request.getfixturevalue(mode)
    wide = vip()
    wide.entity.table_entry.match[2].exact.value = b"\x01\x00"  # 256 in an 8-bit field
    assert session.codes(wide) == [(code, "Bytestring provided does not fit within 8 bits")]
    port = PROGRAM.update("INSERT", LPM, {"h.ipv4.dstAddr": (0x0A000000, 8)}, "MyIngress.fwd",
                          {"port": b"\x02\x00"})  # 512 needs 10 bits, fits in 2 bytes
    assert session.codes(port) == [(code, "Bytestring provided does not fit within 9 bits")]


def test_empty_bytestring(spec, bmv2) -> None:
    empty = vip()
    empty.entity.table_entry.match[0].exact.value = b""
    assert spec.codes(empty) == [(OUT_OF_RANGE, "Bytestring must not be empty")]
    assert bmv2.codes(empty) == [(OK, "")]  # BMv2 reads it as 0 (surprise 23)
    assert bmv2.read_table(VIP)[0].match[0].exact.value == b"\x00"


def test_invalid_ids(spec) -> None:
    unknown_table = vip()
    unknown_table.entity.table_entry.table_id = 0x02999999
    action_as_table = vip()
    action_as_table.entity.table_entry.table_id = PROGRAM.action_id("MyIngress.set_service")
    unknown_action = vip()
    unknown_action.entity.table_entry.action.action.action_id = 0x01999999
    wrong_action = PROGRAM.update("INSERT", VIP, vip_match(), "MyIngress.dnat",
                                  {"node_ip": 1, "node_port": 2})
    assert spec.codes(unknown_table, action_as_table, unknown_action, wrong_action) == [
        (INVALID_ARGUMENT, "Invalid P4 id"),
        (INVALID_ARGUMENT, "Invalid P4 id"),
        (INVALID_ARGUMENT, "Invalid P4 id"),
        (INVALID_ARGUMENT, "Invalid action for table"),
    ]


def test_match_key_shape(spec) -> None:
    missing = vip()
    del missing.entity.table_entry.match[2]
    extra = vip()
    extra.entity.table_entry.match.add(field_id=4).exact.value = b"\x01"
    twice = vip()
    twice.entity.table_entry.match.add().CopyFrom(twice.entity.table_entry.match[2])
    kind = vip()
    field = kind.entity.table_entry.match[0]
    field.lpm.value, field.lpm.prefix_len = b"\x0a\x00\x00\x01", 32
    reordered = vip(ip=7)
    match = reordered.entity.table_entry.match
    items = [match[2], match[0], match[1]]
    copies = [p4r.FieldMatch() for _ in items]
    for c, m in zip(copies, items):
        c.CopyFrom(m)
    del match[:]
    match.extend(copies)
    priority = vip(ip=8, priority=10)
    assert spec.codes(missing, extra, twice, kind, reordered, priority) == [
        (INVALID_ARGUMENT, "Missing non-ternary field in match key"),
        (INVALID_ARGUMENT, "Too many fields in match key"),
        (INVALID_ARGUMENT, "Too many fields in match key"),
        (INVALID_ARGUMENT, "Invalid match type"),
        (OK, ""),  # match fields may come in any order
        (INVALID_ARGUMENT, "Non-zero priority for non-ternary match"),
    ]


def test_action_parameters(spec, bmv2) -> None:
    missing = vip()
    del missing.entity.table_entry.action.action.params[1]
    extra = vip()
    extra.entity.table_entry.action.action.params.add(param_id=3, value=b"\x01")
    no_action = vip()
    no_action.entity.table_entry.ClearField("action")
    assert spec.codes(missing, extra, no_action) == [
        (INVALID_ARGUMENT, "Unexpected number of action parameters"),
        (INVALID_ARGUMENT, "Unexpected number of action parameters"),
        (INVALID_ARGUMENT, "'action' field must be set"),
    ]
    twice = vip(ip=9)
    params = twice.entity.table_entry.action.action.params
    params[1].param_id = 1  # param 1 twice, param 2 missing
    assert spec.codes(twice) == [(INVALID_ARGUMENT, "Duplicate action parameter service_id")]
    # BMv2 only checks the count: the last value wins and param 2 becomes 0 (surprise 24)
    assert bmv2.codes(twice) == [(OK, "")]
    (entry,) = bmv2.read_table(VIP)
    assert [(p.param_id, p.value) for p in entry.action.action.params] == [(1, b"\xff"),
                                                                           (2, b"\x00")]


def test_insert_modify_delete_codes(spec) -> None:
    assert spec.codes(vip(), vip(), vip("MODIFY", ip=99), vip("DELETE", ip=98)) == [
        (OK, ""),
        (ALREADY_EXISTS, "Match entry exists, use MODIFY if you wish to change action"),
        (NOT_FOUND, "Cannot find match entry"),
        (NOT_FOUND, "Cannot find match entry"),
    ]
    delete = vip("DELETE")
    delete.entity.table_entry.action.action.action_id = 0x01999999  # ignored by DELETE
    assert spec.codes(vip("MODIFY", service=7), delete) == [(OK, ""), (OK, "")]
    assert spec.read_table(VIP) == []


def test_errors_are_one_per_update_in_request_order(spec) -> None:
    assert spec.write(vip(ip=1)).ok
    outcome = spec.write(vip(ip=2), vip(ip=1), vip(ip=3), vip("MODIFY", ip=4))
    assert outcome.code == grpc.StatusCode.UNKNOWN
    assert outcome.status.code == UNKNOWN
    assert outcome.details == outcome.status.message == "2 of 4 updates failed"
    errors = outcome.errors()
    assert [e.canonical_code for e in errors] == [OK, ALREADY_EXISTS, OK, NOT_FOUND]
    assert (errors[0].message, errors[0].space) == ("", "")
    assert errors[1].space == "ALL-sswitch-p4org"
    assert len(spec.read_table(VIP)) == 3  # the good updates were applied


def test_bmv2_failed_batch_has_empty_details(bmv2) -> None:
    outcome = bmv2.write(vip(), vip())
    assert (outcome.code, outcome.details, outcome.status.message) == (
        grpc.StatusCode.UNKNOWN, "", "")


def test_batch_applies_in_request_order(spec) -> None:
    assert spec.codes(vip(), vip("DELETE"), vip(), vip()) == [
        (OK, ""), (OK, ""), (OK, ""),
        (ALREADY_EXISTS, "Match entry exists, use MODIFY if you wish to change action")]


@pytest.mark.parametrize("mode,code,message", [
    ("spec", RESOURCE_EXHAUSTED, "Table is full"),
    ("bmv2", UNKNOWN, "Error when adding match entry to target"),
])
def test_full_table(mode, code, message, request) -> None:
    session = request.getfixturevalue(mode)
    updates = [vip(ip=i) for i in range(1025)]  # vip_table has size 1024 in the P4Info
    results = session.codes(*updates)
    assert results[:1024] == [(OK, "")] * 1024
    assert results[1024] == (code, message)
    # other updates still work; the default entry can still change; DELETE frees a slot
    assert session.codes(vip(ip=2000), vip("MODIFY", ip=3, service=9),
                         vip("DELETE", ip=0), vip(ip=2001), vip(ip=2002)) == [
        (code, message), (OK, ""), (OK, ""), (OK, ""), (code, message)]
    default = PROGRAM.update("MODIFY", VIP, None, "NoAction", default=True)
    assert session.codes(default) == [(OK, "")]


def test_shrunk_table(spec) -> None:
    spec.switch.shrink_table(1, VIP, 2)
    assert spec.codes(vip(ip=1), vip(ip=2), vip(ip=3)) == [
        (OK, ""), (OK, ""), (RESOURCE_EXHAUSTED, "Table is full")]


@pytest.mark.parametrize("atomicity", [1, 2, 7])
def test_only_continue_on_error_is_implemented(spec, atomicity) -> None:
    for updates in ([vip(ip=1), vip(ip=2)], []):
        outcome = spec.write(*updates, atomicity=atomicity)
        assert (outcome.code, outcome.details) == (
            grpc.StatusCode.UNIMPLEMENTED,
            "Support for atomic write modes has not been implemented yet")
    assert spec.read_table(VIP) == []


def test_write_before_pipeline_is_failed_precondition() -> None:
    with SoftwareSwitch() as switch, Client(f"127.0.0.1:{switch.port}") as client:
        client.arbitrate(10)
        outcome = client.unary("Write", write_request([vip()]))
    assert (outcome.code, outcome.details) == (
        grpc.StatusCode.FAILED_PRECONDITION, "No forwarding pipeline config set for this device")
    assert outcome.status is None


def test_empty_batch_is_ok(spec) -> None:
    assert spec.write().ok


def test_entity_with_nothing_set(spec) -> None:
    assert spec.codes(p4r.Update(type=p4r.Update.INSERT)) == [(UNKNOWN, "Incorrect entity type")]


def test_update_type_unspecified(spec) -> None:
    update = vip()
    update.type = p4r.Update.UNSPECIFIED
    assert spec.codes(update) == [(INVALID_ARGUMENT, "Update type is not set")]


def test_lpm_rules(spec) -> None:
    def route(value: int, plen: int | None, port: int = 1) -> p4r.Update:
        match = {} if plen is None else {"h.ipv4.dstAddr": (value, plen)}
        return PROGRAM.update("INSERT", LPM, match, "MyIngress.fwd", {"port": port})

    assert spec.codes(route(0x0A010203, 16), route(0x0A010000, 16), route(0, 0),
                      route(0x0A000000, 33), route(0x0C000000, 8), route(0x0C000000, 9),
                      route(0x0C000000, 8), route(0, None)) == [
        (INVALID_ARGUMENT, "Invalid LPM value, incorrect number of trailing zeros"),
        (OK, ""),
        (INVALID_ARGUMENT, "Invalid reprsentation of 'don't care' LPM match, omit match "
                           "field instead of using a prefix length of 0"),
        (INVALID_ARGUMENT, "Prefix length cannot be > bitwidth"),
        (OK, ""),
        (OK, ""),  # the same value with another prefix length is another entry
        (ALREADY_EXISTS, "Match entry exists, use MODIFY if you wish to change action"),
        (OK, ""),  # the don't-care entry omits the field
    ]
    entries = spec.read_table(LPM)
    assert [(e.match[0].lpm.prefix_len if e.match else None) for e in entries] == [16, 8, 9, None]
    assert entries[0].match[0].lpm.value == b"\x0a\x01\x00\x00"


def test_default_entry(spec) -> None:
    set_default = PROGRAM.update("MODIFY", VIP, None, "MyIngress.set_service",
                                 {"service_id": 42, "bucket_mask": 1}, default=True)
    assert spec.codes(set_default) == [(OK, "")]
    read = spec.client.read(read_request(p4r.TableEntry(table_id=PROGRAM.table_id(VIP),
                                                        is_default_action=True)))
    (entry,) = [e.table_entry for e in read_entities(read)]
    assert entry.is_default_action and entry.action.action.params[0].value == b"*"
    reset = PROGRAM.update("MODIFY", VIP, None, None, default=True)  # no action: reset
    insert = PROGRAM.update("INSERT", VIP, None, "NoAction", default=True)
    delete = PROGRAM.update("DELETE", VIP, None, None, default=True)
    keyed = PROGRAM.update("MODIFY", VIP, vip_match(), "NoAction", default=True)
    wrong = PROGRAM.update("MODIFY", VIP, None, "MyIngress.dnat",
                           {"node_ip": 1, "node_port": 1}, default=True)
    assert spec.codes(reset, insert, delete, keyed, wrong) == [
        (OK, ""),
        (INVALID_ARGUMENT, "Cannot use INSERT for default entry"),
        (INVALID_ARGUMENT, "Cannot use DELETE for default entry"),
        (INVALID_ARGUMENT, "Non-empty key for default entry"),
        (INVALID_ARGUMENT, "Invalid action for table"),
    ]
    assert spec.switch.default_entry(1, VIP).action == "NoAction"


def test_modify_without_action(spec, bmv2) -> None:
    for session in (spec, bmv2):
        assert session.write(vip(service=3)).ok
    bare = vip("MODIFY")
    bare.entity.table_entry.ClearField("action")
    assert spec.codes(bare) == [(OK, "")]  # spec: the action is left as it is
    assert spec.switch.entries(1, VIP)[0].params["service_id"] == 3
    assert bmv2.codes(bare) == [
        (INVALID_ARGUMENT, "'action' field must be set for non-default entries")]


def test_is_const_in_a_write(spec, bmv2) -> None:
    update = vip()
    update.entity.table_entry.is_const = True
    assert spec.codes(update) == [(INVALID_ARGUMENT, "is_const must not be set in a write")]
    assert bmv2.codes(update) == [(OK, "")]  # accepted and ignored (surprise 28)


def test_unsupported_entry_features(spec) -> None:
    timeout = vip(ip=1)
    timeout.entity.table_entry.idle_timeout_ns = 1000
    counters = vip(ip=2)
    counters.entity.table_entry.counter_data.packet_count = 1
    last_hit = vip(ip=3)
    last_hit.entity.table_entry.time_since_last_hit.elapsed_ns = 1
    metadata = vip(ip=4)
    metadata.entity.table_entry.controller_metadata = 7
    metadata.entity.table_entry.metadata = b"cookie"
    assert spec.codes(timeout, counters, last_hit, metadata) == [
        (INVALID_ARGUMENT, "idle_timeout_ns must be set to 0 for tables which do not support "
                           "idle timeout"),
        (INVALID_ARGUMENT, "Table has no direct counters"),
        (INVALID_ARGUMENT, "has_time_since_last_hit must not be set in WriteRequest"),
        (OK, ""),
    ]
    (entry,) = spec.read_table(VIP)
    assert (entry.controller_metadata, entry.metadata) == (7, b"cookie")


@pytest.mark.parametrize("mode,code", [("spec", PERMISSION_DENIED), ("bmv2", UNKNOWN)])
def test_const_table_and_const_default(mode, code) -> None:
    session = Session(bmv2=mode == "bmv2", p4info=load_p4info("lb_const.p4info.txtpb"))
    try:
        insert = PROGRAM.update("INSERT", "MyIngress.reverse_nat",
                                {"h.ipv4.srcAddr": 1, "h.tcp.srcPort": 2, "h.ipv4.protocol": 6},
                                "NoAction")
        const_default = PROGRAM.update("MODIFY", LPM, None, "MyIngress.drop", default=True)
        results = session.codes(insert, const_default)
        assert results[0][0] == code
        assert results[1] == (PERMISSION_DENIED, "Cannot set / reset default action for table "
                                                 "37375156 which has a const default action")
    finally:
        session.close()


def test_failing_batch_trailer_needs_a_raised_metadata_limit(bmv2) -> None:
    """~35 bytes per update: 500 failing updates overflow a stock client's 16 KiB limit
    (surprise 29), while a client with a raised limit reads all 500 errors."""
    updates = [vip("DELETE", ip=i) for i in range(500)]  # all NOT_FOUND
    with Client(f"127.0.0.1:{bmv2.switch.port}", stock=True) as stock:
        outcome = stock.unary("Write", write_request(updates))
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds hard limit" in outcome.details
    raised = bmv2.write(*updates)
    assert raised.code == grpc.StatusCode.UNKNOWN
    assert len(raised.errors()) == 500
    assert len(raised.status.SerializeToString()) > 16384
    small = bmv2.write(*updates[:100])  # a small failing batch fits the stock limit
    with Client(f"127.0.0.1:{bmv2.switch.port}", stock=True) as stock:
        assert len(stock.unary("Write", write_request(updates[:100])).errors()) == 100
    assert len(small.errors()) == 100


def test_ok_details_are_35_bytes_each(bmv2) -> None:
    assert bmv2.write(vip(ip=1)).ok
    outcome = bmv2.write(*[vip(ip=i) for i in range(2, 102)], vip(ip=1))
    status_size = len(outcome.status.SerializeToString())
    failing = len(outcome.status.details[-1].SerializeToString()) + 2
    assert status_size == 2 + 100 * 35 + failing
