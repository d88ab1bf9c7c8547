"""The packet-path side of a device (the TableLookup protocol) and SoftwareSwitch.inject."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from finsy.proto import p4i, p4r
from google.protobuf import text_format
from sim_transcripts import (
    BACKEND,
    LPM,
    PROGRAM,
    VIP,
    Program,
    Session,
    read_entities,
    read_request,
    vip,
    write_request,
)

from reconciler.sim import TableLookup
from reconciler.sim.device import Device

REPO = Path(__file__).resolve().parents[1]
COUNTER = "MyIngress.backend_packets"


@pytest.fixture
def session():
    s = Session(bmv2=False)
    yield s
    s.close()


def route(prefix: int, plen: int | None, port: int) -> p4r.Update:
    match = {} if plen is None else {"h.ipv4.dstAddr": (prefix, plen)}
    return PROGRAM.update("INSERT", LPM, match, "MyIngress.fwd", {"port": port})


def test_device_satisfies_the_protocol(session) -> None:
    device: TableLookup = session.switch.device(1)
    assert isinstance(device, Device)


def test_lookup_exact(session) -> None:
    device = session.switch.device(1)
    assert session.write(vip(ip=0x0A000001, service=7)).ok
    assert device.lookup_exact(VIP, (0x0A000001, 80, 6)) == (
        "MyIngress.set_service", {"service_id": 7, "bucket_mask": 255})
    assert device.lookup_exact(VIP, (0x0A000001, 81, 6)) is None
    with pytest.raises(TypeError, match="not an exact-match table"):
        device.lookup_exact(LPM, (1,))
    with pytest.raises(KeyError, match="no table named 'MyIngress.nope'"):
        device.lookup_exact("MyIngress.nope", (1,))


def test_lookup_lpm_takes_the_longest_prefix(session) -> None:
    device = session.switch.device(1)
    assert device.lookup_lpm(LPM, 0x0A010203) is None
    assert session.write(route(0, None, 9), route(0x0A000000, 8, 1), route(0x0A010000, 16, 2),
                         route(0x0A010203, 32, 3)).ok
    assert device.lookup_lpm(LPM, 0x0A010203) == ("MyIngress.fwd", {"port": 3})
    assert device.lookup_lpm(LPM, 0x0A010204) == ("MyIngress.fwd", {"port": 2})
    assert device.lookup_lpm(LPM, 0x0A020000) == ("MyIngress.fwd", {"port": 1})
    assert device.lookup_lpm(LPM, 0x0B000000) == ("MyIngress.fwd", {"port": 9})
    delete = route(0x0A010000, 16, 2)
    delete.type = p4r.Update.DELETE
    assert session.write(delete).ok
    assert device.lookup_lpm(LPM, 0x0A010204) == ("MyIngress.fwd", {"port": 1})


def test_default_action_follows_writes(session) -> None:
    device = session.switch.device(1)
    assert device.default_action(LPM) == ("MyIngress.drop", {})
    assert session.write(PROGRAM.update("MODIFY", LPM, None, "MyIngress.fwd", {"port": 5},
                                        default=True)).ok
    assert device.default_action(LPM) == ("MyIngress.fwd", {"port": 5})


def test_count_is_visible_through_p4runtime(session) -> None:
    device = session.switch.device(1)
    device.count(COUNTER, 4)
    device.count(COUNTER, 4, packets=2, nbytes=100)
    entry = p4r.CounterEntry(counter_id=PROGRAM.counter_id(COUNTER))
    entry.index.index = 4
    (cell,) = read_entities(session.client.read(read_request(entry)))
    assert cell.counter_entry.data.packet_count == 3
    with pytest.raises(IndexError, match="out of range"):
        device.count(COUNTER, 1024)


def test_lookups_without_a_pipeline() -> None:
    from reconciler.sim.behavior import SPEC

    with pytest.raises(RuntimeError, match="no committed pipeline"):
        Device(1, SPEC).lookup_exact(VIP, (1, 2, 3))


def test_lookups_are_consistent_during_concurrent_writes(session) -> None:
    """A packet sees each entry either absent or complete, never half-written, while a
    client inserts, modifies and deletes it in batches."""
    device = session.switch.device(1)
    stop = threading.Event()
    seen: set = set()
    problems: list = []

    def packets() -> None:
        while not stop.is_set():
            try:
                hit = device.lookup_exact(BACKEND, (1, 1))
            except Exception as exc:  # recorded and asserted on below
                problems.append(exc)
                return
            if hit is not None:
                action, params = hit
                if action != "MyIngress.dnat" or params["node_ip"] != params["node_port"]:
                    problems.append(hit)
                seen.add(params["node_ip"])

    reader = threading.Thread(target=packets)
    reader.start()
    try:
        for i in range(1, 60):
            kind = ("INSERT", "MODIFY", "DELETE")[i % 3] if i > 1 else "INSERT"
            params = {"node_ip": i, "node_port": i}
            update = PROGRAM.update(kind, BACKEND, {"m.service_id": 1, "m.bucket": 1},
                                    "MyIngress.dnat", params)
            session.write(update)
    finally:
        stop.set()
        reader.join(10)
    assert not problems


def test_inject_runs_the_project_program() -> None:
    """End to end: entries written over P4Runtime steer a packet through pipeline.py."""
    p4info_path = REPO / "p4" / "load_balancer.p4info.txtpb"
    from reconciler.sim import packet

    p4info = text_format.Parse(p4info_path.read_text(), p4i.P4Info())
    program = Program(p4info)
    fields = {t.preamble.name: [f.name for f in t.match_fields] for t in p4info.tables}
    session = Session(bmv2=False, p4info=p4info)
    try:
        vip_fields = fields["MyIngress.vip_table"]
        backend_fields = fields["MyIngress.backend_table"]
        updates = [
            program.update("INSERT", "MyIngress.vip_table",
                           dict(zip(vip_fields, (packet.ip("203.0.113.10"), 80, 6))),
                           "MyIngress.set_service", {"service_id": 3, "bucket_mask": 0}),
            program.update("INSERT", "MyIngress.backend_table",
                           dict(zip(backend_fields, (3, 0))), "MyIngress.dnat",
                           {"node_ip": packet.ip("10.0.0.11"), "node_port": 30080,
                            "backend_id": 5}),
            program.update("INSERT", "MyIngress.ipv4_lpm",
                           {fields["MyIngress.ipv4_lpm"][0]: (packet.ip("10.0.0.0"), 8)},
                           "MyIngress.fwd", {"port": 2, "dst_mac": 0x020000000002}),
        ]
        outcome = session.client.unary("Write", write_request(updates))
        assert outcome.ok, outcome
        frame = packet.build_tcp("198.51.100.7", "203.0.113.10", 40000, 80)
        result = session.switch.inject(1, 1, frame)
        assert result.egress_port == 2
        out = packet.parse_frame(result.data)
        assert packet.ip_str(out.ipv4.dst) == "10.0.0.11" and out.l4_dst_port == 30080
        assert session.switch.counters(1, "MyIngress.backend_packets")[5][0] == 1
    finally:
        session.close()
