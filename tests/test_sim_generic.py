"""The switch is a generic P4Runtime target: ternary, range and optional matches, priorities,
and direct counters, on a small P4Info built here (not the load balancer's)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import text_format
from finsy.proto import p4i, p4r

from sim_transcripts import Program, Session, read_entities, read_request

OK, INVALID_ARGUMENT, NOT_FOUND = 0, 3, 5

ACL_P4INFO = """
tables {
  preamble { id: 33554433 name: "ingress.acl" alias: "acl" }
  match_fields { id: 1 name: "src" bitwidth: 32 match_type: TERNARY }
  match_fields { id: 2 name: "dport" bitwidth: 16 match_type: RANGE }
  match_fields { id: 3 name: "proto" bitwidth: 8 match_type: OPTIONAL }
  action_refs { id: 16777217 }
  action_refs { id: 16777218 }
  direct_resource_ids: 318767105
  initial_default_action { action_id: 16777218 }
  size: 8
}
actions { preamble { id: 16777217 name: "ingress.permit" alias: "permit" }
          params { id: 1 name: "port" bitwidth: 9 } }
actions { preamble { id: 16777218 name: "ingress.deny" alias: "deny" } }
direct_counters {
  preamble { id: 318767105 name: "ingress.acl_hits" alias: "acl_hits" }
  spec { unit: BOTH }
  direct_table_id: 33554433
}
"""
ACL = "ingress.acl"


@pytest.fixture(scope="module")
def program() -> Program:
    return Program(text_format.Parse(ACL_P4INFO, p4i.P4Info()))


@pytest.fixture
def session(program):
    s = Session(bmv2=False, p4info=program.p4info)
    yield s
    s.close()


def acl(program: Program, kind: str = "INSERT", priority: int = 10, **match) -> p4r.Update:
    return program.update(kind, ACL, match or {"src": (0x0A000000, 0xFF000000)},
                          "ingress.permit", {"port": 1}, priority=priority)


def range_update(program: Program, low: int, high: int) -> p4r.Update:
    update = acl(program)
    m = update.entity.table_entry.match.add(field_id=2)
    m.range.low, m.range.high = low.to_bytes(2, "big"), high.to_bytes(2, "big")
    return update


def test_priority_rules(session, program) -> None:
    assert session.codes(acl(program, priority=0), acl(program, priority=10),
                         acl(program, priority=11), acl(program, priority=10)) == [
        (INVALID_ARGUMENT, "Zero priority for ternary match"),
        (OK, ""),
        (OK, ""),  # the same match with another priority is another entry
        (6, "Match entry exists, use MODIFY if you wish to change action"),
    ]


def test_ternary_and_range_checks(session, program) -> None:
    no_mask = acl(program, src=(0x0A000000, 0))
    host_bits = acl(program, src=(0x0A000001, 0xFF000000))
    assert session.codes(no_mask, host_bits, range_update(program, 9, 3),
                         range_update(program, 0, 0xFFFF), range_update(program, 80, 90)) == [
        (INVALID_ARGUMENT, "Invalid representation of 'don't care' ternary match, omit match "
                           "field instead of using 0 mask"),
        (INVALID_ARGUMENT, "Invalid ternary value, make sure value & mask == value"),
        (INVALID_ARGUMENT, "Invalid range value, make sure low <= high"),
        (INVALID_ARGUMENT, "Invalid representation of 'don't care' range match, omit match "
                           "field instead of using low=0 and high=2**bitwidth-1"),
        (OK, ""),
    ]


def test_read_back_omits_dont_care_fields(session, program) -> None:
    update = acl(program, priority=5)
    optional = update.entity.table_entry.match.add(field_id=3)
    optional.optional.value = b"\x00\x06"
    assert session.write(update).ok
    (entity,) = read_entities(session.client.read(read_request(
        p4r.TableEntry(table_id=program.table_id(ACL)))))
    te = entity.table_entry
    assert [m.field_id for m in te.match] == [1, 3]  # the range was omitted
    assert (te.match[0].ternary.value, te.match[0].ternary.mask) == (b"\x0a\x00\x00\x00",
                                                                     b"\xff\x00\x00\x00")
    assert te.match[1].optional.value == b"\x06" and te.priority == 5
    (view,) = session.switch.entries(1, ACL)
    assert view.key == ((0x0A000000, 0xFF000000), None, 6, 5)


def test_direct_counter(session, program) -> None:
    update = acl(program)
    update.entity.table_entry.counter_data.packet_count = 3
    update.entity.table_entry.counter_data.byte_count = 300
    assert session.write(update).ok
    with_counters = p4r.TableEntry(table_id=program.table_id(ACL))
    with_counters.counter_data.SetInParent()
    (entity,) = read_entities(session.client.read(read_request(with_counters)))
    assert (entity.table_entry.counter_data.packet_count,
            entity.table_entry.counter_data.byte_count) == (3, 300)

    direct = p4r.Entity()
    direct.direct_counter_entry.table_entry.CopyFrom(update.entity.table_entry)
    direct.direct_counter_entry.table_entry.ClearField("counter_data")
    direct.direct_counter_entry.data.packet_count = 7
    modify = p4r.Update(type=p4r.Update.MODIFY, entity=direct)
    insert = p4r.Update(type=p4r.Update.INSERT, entity=direct)
    assert session.codes(modify, insert) == [
        (OK, ""), (INVALID_ARGUMENT, "INSERT update type not supported for counters")]
    (read,) = read_entities(session.client.read(read_request(direct)))
    assert read.direct_counter_entry.data.packet_count == 7

    missing = p4r.Entity()
    missing.direct_counter_entry.table_entry.CopyFrom(
        acl(program, src=(0x0B000000, 0xFF000000)).entity.table_entry)
    outcome = session.client.read(read_request(missing))
    assert outcome.code == grpc.StatusCode.UNKNOWN
    assert [e.canonical_code for e in outcome.errors()] == [NOT_FOUND]


def test_deleted_entry_frees_its_handle_for_the_next(session, program) -> None:
    first, second, third = (acl(program, priority=p) for p in (1, 2, 3))
    assert session.write(first, second).ok
    delete = acl(program, "DELETE", priority=1)
    assert session.write(delete, third).ok
    # the third entry reuses the first one's handle, so it is listed first, as in BMv2
    assert [v.priority for v in session.switch.entries(1, ACL)] == [3, 2]
