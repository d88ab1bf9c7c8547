"""SetForwardingPipelineConfig / GetForwardingPipelineConfig / Capabilities conformance."""

from __future__ import annotations

import grpc
import pytest
from finsy.proto import p4i, p4r
from sim_transcripts import (
    LPM,
    PROGRAM,
    VIP,
    Client,
    load_p4info,
    pipeline_request,
    read_entities,
    read_request,
    vip,
    write_request,
)

from reconciler.sim import SoftwareSwitch

GET = p4r.GetForwardingPipelineConfigRequest


class Primary:
    """A switch and a primary client (election id 10), no pipeline yet."""

    def __init__(self, bmv2: bool) -> None:
        self.switch = SoftwareSwitch(bmv2=bmv2)
        self.switch.start()
        self.client = Client(f"127.0.0.1:{self.switch.port}")
        self.client.arbitrate(10)

    def set(self, p4info=..., action="VERIFY_AND_COMMIT", **kw):
        """`p4info` None sends no config; left out, the transcript program."""
        if p4info is ...:
            p4info = load_p4info()
        return self.client.unary("SetForwardingPipelineConfig",
                                 pipeline_request(p4info, action, **kw))

    def get(self, response_type: int = GET.ALL, device_id: int = 1):
        return self.client.unary("GetForwardingPipelineConfig",
                                 GET(device_id=device_id, response_type=response_type))

    def write(self, *updates):
        return self.client.unary("Write", write_request(updates))

    def vip_count(self) -> int:
        outcome = self.client.read(read_request(p4r.TableEntry(table_id=PROGRAM.table_id(VIP))))
        assert outcome.ok, outcome
        return len(read_entities(outcome))

    def close(self) -> None:
        self.client.close()
        self.switch.stop(0)


@pytest.fixture
def spec():
    primary = Primary(bmv2=False)
    yield primary
    primary.close()


@pytest.fixture
def bmv2():
    primary = Primary(bmv2=True)
    yield primary
    primary.close()


def test_capabilities_work_without_arbitration_or_pipeline() -> None:
    for bmv2, version in ((False, "1.4.0"), (True, "1.3.0")):
        with SoftwareSwitch(bmv2=bmv2) as switch, Client(f"127.0.0.1:{switch.port}") as c:
            outcome = c.unary("Capabilities", p4r.CapabilitiesRequest())
        assert outcome.responses[0].p4runtime_api_version == version


def test_get_before_any_set(spec, bmv2) -> None:
    spec_outcome = spec.get()
    assert spec_outcome.ok and not spec_outcome.responses[0].HasField("config")
    bmv2_outcome = bmv2.get()
    assert (bmv2_outcome.code, bmv2_outcome.details) == (
        grpc.StatusCode.FAILED_PRECONDITION, "No forwarding pipeline config set for this device")


def test_commit_with_cookie_and_every_response_type(spec) -> None:
    assert spec.set(cookie=0x1234, device_config=b'{"json": 1}').ok
    full = spec.get(GET.ALL).responses[0].config
    assert full.p4info == load_p4info() and full.p4_device_config == b'{"json": 1}'
    assert full.cookie.cookie == 0x1234
    cookie = spec.get(GET.COOKIE_ONLY).responses[0].config
    assert not cookie.HasField("p4info") and cookie.p4_device_config == b""
    assert cookie.cookie.cookie == 0x1234
    p4info = spec.get(GET.P4INFO_AND_COOKIE).responses[0].config
    assert p4info.HasField("p4info") and p4info.p4_device_config == b""
    device = spec.get(GET.DEVICE_CONFIG_AND_COOKIE).responses[0].config
    assert not device.HasField("p4info") and device.p4_device_config == b'{"json": 1}'
    invalid = spec.get(7)
    assert (invalid.code, invalid.details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Invalid response_type in GetForwardingPipelineConfigRequest")


def test_cookie_is_omitted_when_the_set_had_none(spec) -> None:
    spec.set(cookie=5)
    spec.set()
    assert not spec.get(GET.COOKIE_ONLY).responses[0].config.HasField("cookie")


def test_verify_and_commit_clears_entries_and_defaults(spec) -> None:
    spec.set()
    assert spec.write(vip(ip=1), PROGRAM.update("MODIFY", LPM, None, "MyIngress.fwd",
                                                {"port": 5}, default=True)).ok
    assert spec.set().ok
    assert spec.vip_count() == 0
    assert spec.switch.default_entry(1, LPM).action == "MyIngress.drop"


def test_verify(spec, bmv2) -> None:
    empty = spec.set(None, "VERIFY")
    assert empty.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bmv2.set(None, "VERIFY").ok  # BMv2 accepts an empty config (surprise 11)
    broken = load_p4info()
    broken.tables[0].action_refs.add(id=0x01999999)
    rejected = spec.set(broken, "VERIFY")
    assert rejected.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "action ref 26843545 names no action" in rejected.details
    assert bmv2.set(broken, "VERIFY").ok
    assert spec.set(load_p4info(), "VERIFY").ok
    assert spec.get().responses[0].HasField("config") is False  # VERIFY commits nothing


def test_bmv2_get_after_verify_only_is_an_empty_config(bmv2) -> None:
    bmv2.set(None, "VERIFY")
    outcome = bmv2.get()
    assert outcome.ok and outcome.responses[0].HasField("config")
    assert outcome.responses[0].config == p4r.ForwardingPipelineConfig()
    # BMv2 crashes on the next Read/Write here (surprise 12); this switch refuses cleanly
    read = bmv2.client.read(read_request(p4r.TableEntry()))
    assert read.code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("mode", ["spec", "bmv2"])
def test_save_then_commit(mode, request) -> None:
    primary = request.getfixturevalue(mode)
    primary.set(cookie=1)
    assert primary.write(vip(ip=1, service=1)).ok
    assert primary.set(action="VERIFY_AND_SAVE", cookie=0x9999).ok
    # P4Runtime already sees the new, empty pipeline ...
    assert primary.get(GET.COOKIE_ONLY).responses[0].config.cookie.cookie == 0x9999
    assert primary.vip_count() == 0
    assert primary.write(vip(ip=2, service=2)).ok
    # ... while packets still use the old one until COMMIT
    device = primary.switch.device(1)
    assert device.lookup_exact(VIP, (1, 80, 6)) == (
        "MyIngress.set_service", {"service_id": 1, "bucket_mask": 255})
    assert device.lookup_exact(VIP, (2, 80, 6)) is None
    assert primary.set(None, "COMMIT").ok
    assert device.lookup_exact(VIP, (1, 80, 6)) is None
    assert device.lookup_exact(VIP, (2, 80, 6))[1]["service_id"] == 2
    assert primary.vip_count() == 1


def test_commit_rules(spec, bmv2) -> None:
    nothing = spec.set(None, "COMMIT")
    assert (nothing.code, nothing.details) == (grpc.StatusCode.NOT_FOUND,
                                               "No saved config to commit")
    bmv2_nothing = bmv2.set(None, "COMMIT")
    assert (bmv2_nothing.code, bmv2_nothing.details) == (
        grpc.StatusCode.UNKNOWN, "Error in second phase of device update")
    for primary in (spec, bmv2):
        primary.set(cookie=1)
        primary.set(action="VERIFY_AND_SAVE", cookie=2)
    with_config = pipeline_request(load_p4info(), "COMMIT", cookie=3)
    refused = spec.client.unary("SetForwardingPipelineConfig", with_config)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bmv2.client.unary("SetForwardingPipelineConfig", with_config).ok
    # BMv2 ignores the config attached to COMMIT: the saved cookie wins (surprise 13)
    assert bmv2.get(GET.COOKIE_ONLY).responses[0].config.cookie.cookie == 2


def test_unspecified_action(spec, bmv2) -> None:
    for primary in (spec, bmv2):
        outcome = primary.set(action="UNSPECIFIED")
        assert (outcome.code, outcome.details) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "Invalid SetForwardingPipeline action")


def test_spec_reconcile_keeps_the_forwarding_state(spec) -> None:
    spec.set()
    counter = p4r.Update(type=p4r.Update.MODIFY)
    counter.entity.counter_entry.counter_id = PROGRAM.counter_id("MyIngress.backend_packets")
    counter.entity.counter_entry.index.index = 3
    counter.entity.counter_entry.data.packet_count = 9
    assert spec.write(vip(ip=1), vip(ip=2), counter,
                      PROGRAM.update("MODIFY", LPM, None, "MyIngress.fwd", {"port": 4},
                                     default=True)).ok
    assert spec.set(action="RECONCILE_AND_COMMIT", cookie=7).ok
    assert spec.vip_count() == 2
    assert spec.switch.default_entry(1, LPM).params == {"port": 4}
    assert spec.switch.counters(1, "MyIngress.backend_packets")[3] == (9, 0)
    assert spec.switch.device(1).lookup_exact(VIP, (2, 80, 6)) is not None
    # a program without vip_table cannot keep its entries: refused, nothing changes
    smaller = load_p4info()
    del smaller.tables[0]
    refused = spec.set(smaller, "RECONCILE_AND_COMMIT")
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Cannot preserve the forwarding state: MyIngress.vip_table" in refused.details
    assert spec.vip_count() == 2
    assert spec.get(GET.COOKIE_ONLY).responses[0].config.cookie.cookie == 7


def test_bmv2_reconcile_fails_with_an_indirect_counter(bmv2) -> None:
    """PI replays counter cells as INSERTs (surprise 15): the reconcile fails and leaves a
    pending swap that only a COMMIT completes."""
    bmv2.set()
    assert bmv2.write(vip(ip=1), PROGRAM.update("MODIFY", LPM, None, "MyIngress.fwd",
                                                {"port": 4}, default=True)).ok
    failed = bmv2.set(action="RECONCILE_AND_COMMIT", cookie=0x5678)
    assert (failed.code, failed.details) == (grpc.StatusCode.UNKNOWN,
                                             "Error when reconciling config")
    assert bmv2.get(GET.COOKIE_ONLY).responses[0].config.cookie.cookie == 0x5678
    assert bmv2.vip_count() == 1
    assert bmv2.switch.default_entry(1, LPM).action == "MyIngress.drop"  # reset
    again = bmv2.set()
    assert (again.code, again.details) == (grpc.StatusCode.UNKNOWN,
                                           "Error in first phase of device update")
    assert bmv2.set(None, "COMMIT").ok
    assert bmv2.set().ok


def test_bmv2_reconcile_without_counters_keeps_entries_but_resets_defaults(bmv2) -> None:
    nocounter = load_p4info("lb_nocounter.p4info.txtpb")
    bmv2.set(nocounter)
    assert bmv2.write(vip(ip=1), PROGRAM.update("MODIFY", LPM, None, "MyIngress.fwd",
                                                {"port": 4}, default=True)).ok
    assert bmv2.set(nocounter, "RECONCILE_AND_COMMIT").ok
    assert bmv2.vip_count() == 1
    assert bmv2.switch.default_entry(1, LPM).action == "MyIngress.drop"


def test_set_on_an_unknown_device(spec, bmv2) -> None:
    spec_outcome = spec.set(device_id=3, election_id=None)
    assert spec_outcome.code == grpc.StatusCode.NOT_FOUND
    bmv2_outcome = bmv2.set(device_id=2, election_id=None)
    assert (bmv2_outcome.code, bmv2_outcome.details) == (grpc.StatusCode.UNKNOWN,
                                                         "Error when trying to assign device")
    after = bmv2.get(GET.COOKIE_ONLY, device_id=2)
    assert after.ok and after.responses[0].config == p4r.ForwardingPipelineConfig()


def test_p4info_with_duplicate_ids(spec, bmv2) -> None:
    duplicate = load_p4info()
    duplicate.tables[0].preamble.id = duplicate.tables[1].preamble.id
    assert spec.set(duplicate).code == grpc.StatusCode.INVALID_ARGUMENT
    assert bmv2.set(duplicate).ok  # accepted by BMv2: the later definition wins


def test_new_pipeline_gives_new_tables(spec) -> None:
    spec.set()
    other = p4i.P4Info()
    other.CopyFrom(load_p4info())
    other.tables[0].preamble.name = "MyIngress.renamed"
    assert spec.set(other).ok
    assert spec.switch.entries(1, "MyIngress.renamed") == []
    with pytest.raises(KeyError, match="no table named 'MyIngress.vip_table'"):
        spec.switch.entries(1, VIP)
