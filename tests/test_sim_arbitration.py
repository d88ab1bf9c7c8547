"""StreamChannel arbitration and write authorization, driven through P4Runtime only.

"Nobody else was told" is checked without sleeping: a later event that notifies everyone must
be the next message the other clients see.
"""

from __future__ import annotations

import grpc
import pytest
from finsy.proto import p4r
from sim_transcripts import (
    Client,
    arbitration,
    load_p4info,
    pipeline_request,
    read_request,
    write_request,
)

from reconciler.sim import SoftwareSwitch

ALREADY_EXISTS, NOT_FOUND = 6, 5


@pytest.fixture
def spec():
    with SoftwareSwitch(device_ids=(1, 2)) as switch:
        yield switch


@pytest.fixture
def bmv2():
    with SoftwareSwitch(bmv2=True) as switch:
        yield switch


@pytest.fixture
def spec_client(spec):
    with Client(f"127.0.0.1:{spec.port}") as c:
        yield c


@pytest.fixture
def bmv2_client(bmv2):
    with Client(f"127.0.0.1:{bmv2.port}") as c:
        yield c


def status(message: p4r.StreamMessageResponse) -> tuple[int, str, int]:
    arb = message.arbitration
    return arb.status.code, arb.status.message, arb.election_id.low


def test_first_controller_becomes_primary(spec_client) -> None:
    _, answer = spec_client.arbitrate(10)
    assert status(answer) == (0, "Is primary", 10)
    assert answer.arbitration.device_id == 1


def test_lower_id_is_backup_and_only_it_is_told(spec_client) -> None:
    a, _ = spec_client.arbitrate(10)
    b, answer = spec_client.arbitrate(5)
    assert status(answer) == (ALREADY_EXISTS, "Is backup", 10)
    c, answer = spec_client.arbitrate(20)  # takes over: everyone is told
    assert status(answer) == (0, "Is primary", 20)
    assert status(a.next()) == (ALREADY_EXISTS, "Is backup", 20)  # a got nothing in between
    assert status(b.next()) == (ALREADY_EXISTS, "Is backup", 20)


def test_duplicate_election_id_closes_the_newcomer(spec_client) -> None:
    spec_client.arbitrate(10)
    dup = spec_client.stream()
    dup.send(arbitration(10))
    end = dup.wait_end()
    assert (end.code, end.details) == (grpc.StatusCode.INVALID_ARGUMENT,
                                       "Election id already exists")


def test_spec_primary_leaving_leaves_no_primary(spec, spec_client) -> None:
    primary, _ = spec_client.arbitrate(20)
    backup, _ = spec_client.arbitrate(10)
    spec_client.unary("SetForwardingPipelineConfig",
                      pipeline_request(load_p4info(), election_id=20))
    primary.cancel()
    # the backup is told there is no primary; the election id is the highest ever seen
    assert status(backup.next()) == (NOT_FOUND, "No primary", 20)
    outcome = spec_client.unary("Write", write_request([], election_id=10))
    assert (outcome.code, outcome.details) == (grpc.StatusCode.PERMISSION_DENIED, "Not primary")
    # re-arbitrating below the highest id seen keeps it a backup ...
    backup.send(arbitration(15))
    assert status(backup.next()) == (NOT_FOUND, "No primary", 20)
    # ... at or above it makes it primary
    backup.send(arbitration(21))
    assert status(backup.next()) == (0, "Is primary", 21)
    assert spec_client.unary("Write", write_request([], election_id=21)).ok


def test_bmv2_promotes_the_highest_remaining_stream(bmv2_client) -> None:
    primary, _ = bmv2_client.arbitrate(20)
    low, _ = bmv2_client.arbitrate(5)
    high, _ = bmv2_client.arbitrate(10)
    primary.cancel()
    assert status(high.next()) == (0, "Is primary", 10)
    assert status(low.next()) == (ALREADY_EXISTS, "Is backup", 10)
    outcome = bmv2_client.unary("Write", write_request([], election_id=10))
    assert outcome.code == grpc.StatusCode.FAILED_PRECONDITION  # passed the primary check


def test_primary_self_demotion(spec_client) -> None:
    primary, _ = spec_client.arbitrate(20)
    backup, _ = spec_client.arbitrate(10)
    primary.send(arbitration(5))
    assert status(primary.next()) == (NOT_FOUND, "No primary", 20)
    assert status(backup.next()) == (NOT_FOUND, "No primary", 20)


def test_write_must_carry_the_primary_election_id_in_128_bits(spec_client) -> None:
    spec_client.arbitrate(10)
    spec_client.arbitrate((7 << 64) | 9)  # 128-bit id above 10: primary
    assert spec_client.unary("SetForwardingPipelineConfig",
                             pipeline_request(load_p4info(), election_id=None)).code == \
        grpc.StatusCode.PERMISSION_DENIED
    for election_id in (10, 9, (1 << 64) | 9, None):
        outcome = spec_client.unary("Write", write_request([], election_id=election_id))
        assert (outcome.code, outcome.details) == (grpc.StatusCode.PERMISSION_DENIED,
                                                   "Not primary"), election_id
        assert outcome.status is None  # no grpc-status-details-bin on RPC-wide errors
    request = write_request([], election_id=(7 << 64) | 9)
    assert spec_client.unary("Write", request).code == grpc.StatusCode.FAILED_PRECONDITION


def test_spec_write_without_any_stream_is_refused(spec_client) -> None:
    outcome = spec_client.unary("Write", write_request([], election_id=None))
    assert outcome.code == grpc.StatusCode.PERMISSION_DENIED


def test_bmv2_without_streams_accepts_only_id_less_requests(bmv2_client) -> None:
    request = pipeline_request(load_p4info(), election_id=None)
    assert bmv2_client.unary("SetForwardingPipelineConfig", request).ok
    assert bmv2_client.unary("Write", write_request([], election_id=None)).ok
    denied = bmv2_client.unary("Write", write_request([], election_id=10))
    assert (denied.code, denied.details) == (grpc.StatusCode.PERMISSION_DENIED, "Not primary")


def test_backup_cannot_set_the_pipeline(spec_client) -> None:
    spec_client.arbitrate(10)
    spec_client.arbitrate(5)
    outcome = spec_client.unary("SetForwardingPipelineConfig",
                                pipeline_request(load_p4info(), election_id=5))
    assert (outcome.code, outcome.details) == (grpc.StatusCode.PERMISSION_DENIED, "Not primary")


def test_read_needs_no_arbitration(spec, spec_client) -> None:
    spec_client.arbitrate(10)
    spec_client.unary("SetForwardingPipelineConfig", pipeline_request(load_p4info()))
    with Client(f"127.0.0.1:{spec.port}") as other:  # a channel without any stream
        outcome = other.read(read_request(p4r.TableEntry()))
    assert outcome.ok and len(outcome.responses) == 1


def test_spec_roles_have_their_own_primary(spec_client) -> None:
    default, _ = spec_client.arbitrate(10)
    foo, answer = spec_client.arbitrate(5, role="foo")
    assert status(answer) == (0, "Is primary", 5)
    assert answer.arbitration.role.name == "foo"
    spec_client.unary("SetForwardingPipelineConfig", pipeline_request(load_p4info()))
    assert spec_client.unary("Write", write_request([], election_id=5, role="foo")).ok
    assert spec_client.unary("Write", write_request([], election_id=5)).code == \
        grpc.StatusCode.PERMISSION_DENIED
    unknown = spec_client.unary("Write", write_request([], election_id=5, role="bar"))
    assert unknown.code == grpc.StatusCode.NOT_FOUND
    foo.send(arbitration(6, role="other"))
    end = foo.wait_end()
    assert (end.code, end.details) == (grpc.StatusCode.FAILED_PRECONDITION, "Invalid role")


def test_bmv2_ignores_roles(bmv2_client) -> None:
    default, _ = bmv2_client.arbitrate(10)
    foo, answer = bmv2_client.arbitrate(21, role="foo")
    assert status(answer) == (0, "Is primary", 21)
    assert not answer.arbitration.HasField("role")
    assert status(default.next()) == (ALREADY_EXISTS, "Is backup", 21)


def test_unknown_device(spec_client, bmv2_client) -> None:
    stream = spec_client.stream()
    stream.send(arbitration(10, device_id=3))
    end = stream.wait_end()
    assert end.code == grpc.StatusCode.NOT_FOUND
    assert spec_client.unary("Write", write_request([], device_id=3)).code == \
        grpc.StatusCode.NOT_FOUND
    # BMv2 accepts any device id for arbitration (surprise 6)
    _, answer = bmv2_client.arbitrate(30, device_id=2)
    assert status(answer) == (0, "Is primary", 30)


def test_second_device_has_its_own_arbitration(spec_client) -> None:
    _, one = spec_client.arbitrate(10, device_id=1)
    _, two = spec_client.arbitrate(5, device_id=2)
    assert status(one)[:2] == status(two)[:2] == (0, "Is primary")


def test_changing_device_id_on_a_stream_fails(spec_client) -> None:
    stream, _ = spec_client.arbitrate(10)
    stream.send(arbitration(10, device_id=2))
    end = stream.wait_end()
    assert (end.code, end.details) == (grpc.StatusCode.FAILED_PRECONDITION, "Invalid device id")


def test_seventeenth_stream_is_refused(spec, spec_client) -> None:
    for election_id in range(1, 17):
        spec_client.arbitrate(election_id)
    extra = spec_client.stream()
    extra.send(arbitration(17))
    end = extra.wait_end()
    assert (end.code, end.details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "Too many connections")
    assert spec.wait_for_streams(16)


def test_bmv2_resending_the_same_id_is_silent(bmv2_client) -> None:
    a, _ = bmv2_client.arbitrate(10)
    a.send(arbitration(10))
    bmv2_client.arbitrate(20)
    assert status(a.next()) == (ALREADY_EXISTS, "Is backup", 20)  # nothing came before it


def test_bmv2_reuse_of_a_live_id_does_not_drop_the_primary(bmv2_client) -> None:
    """BMv2 silently drops the primary here and later aborts (surprise 10): not reproduced."""
    primary, _ = bmv2_client.arbitrate(50)
    backup, _ = bmv2_client.arbitrate(40)
    backup.send(arbitration(50))
    end = backup.wait_end()
    assert (end.code, end.details) == (grpc.StatusCode.INVALID_ARGUMENT,
                                       "New election id already exists")
    _, answer = bmv2_client.arbitrate(45)
    assert status(answer) == (ALREADY_EXISTS, "Is backup", 50)
    assert bmv2_client.unary("Write", write_request([], election_id=50)).code == \
        grpc.StatusCode.FAILED_PRECONDITION  # still the primary


def test_half_close_ends_the_stream_with_ok(spec, spec_client) -> None:
    stream, _ = spec_client.arbitrate(10)
    stream.half_close()
    assert stream.wait_end().code == grpc.StatusCode.OK
    assert spec.wait_for_streams(0)


def test_packet_out_before_arbitration_is_dropped_silently(bmv2_client) -> None:
    stream = bmv2_client.stream()
    stream.send(p4r.StreamMessageRequest(packet=p4r.PacketOut(payload=b"\x00" * 14)))
    stream.send(arbitration(10))
    assert status(stream.next()) == (0, "Is primary", 10)  # the first and only answer
