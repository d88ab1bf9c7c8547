"""The whole path of issue 3 in one loop: a rendered snapshot is written to the software switch
over P4Runtime (real gRPC on 127.0.0.1), then packets go through the switch's model of
load_balancer.p4. Flows land on nodes in the snapshot's bucket shares, stay on one node,
replies are reverse-NATed to the VIP, and every checksum verifies."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import random
from pathlib import Path

import pytest

from reconciler.cluster.recorded import load_cluster_file
from reconciler.diff import diff_snapshots
from reconciler.intent.loader import load_intent
from reconciler.intent.model import Route
from reconciler.p4info import load_p4info, pipeline_info_from_message
from reconciler.pipeline_io import config_p4info_digest
from reconciler.render import render
from reconciler.sim.packet import ACK, SYN, build_tcp, build_udp, ip, ip_str, ipv4_checksum_ok, l4_checksum_ok, parse_frame
from reconciler.sim.pipeline import flow_bucket
from reconciler.sim.server import SoftwareSwitch
from reconciler.switch import SwitchSession, pipeline_cookie
from reconciler.switch.translate import updates_to_requests

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"
P4INFO = load_p4info()
INFO = pipeline_info_from_message(P4INFO)
CLIENTS = ipaddress.IPv4Network("10.200.0.0/16")
CLIENT_PORT, NODE_PORT = 2, 1


@pytest.fixture(scope="module")
def programmed():
    """A switch holding the multi-service snapshot (plus a route back to the clients)."""
    base = load_intent([MULTI]).config()
    routes = base.switch_config.routes + (Route(CLIENTS, CLIENT_PORT, "02:00:0a:c8:00:01"),)
    config = dataclasses.replace(base, switch_config=dataclasses.replace(base.switch_config, routes=routes))
    snap = render(config, load_cluster_file(MULTI / "cluster.yaml"), None, p4info_digest=config_p4info_digest(config)).snapshot
    sw = SoftwareSwitch()
    sw.start()

    async def program() -> None:
        async with SwitchSession(f"127.0.0.1:{sw.port}", device_id=1, election_id=1, info=INFO) as s:
            await s.ensure_pipeline(P4INFO, b"", pipeline_cookie(P4INFO, b""))
            for requests in updates_to_requests(INFO, diff_snapshots(None, snap).phases, device_id=1, election_id=1, batch_size=200):
                if requests:
                    assert (await s.write(requests)).ok

    try:
        asyncio.run(program())
        yield sw, snap
    finally:
        sw.stop(0)


def node_of(snap, svc_name: str) -> dict[str, str]:
    return {b.address: b.node for b in snap.by_name[svc_name].backends}


def test_flows_follow_bucket_shares_exactly_and_stick(programmed):
    sw, snap = programmed
    svc = snap.by_name["payments/ledger"]
    nodes = node_of(snap, svc.name)
    by_key = {b.node: b for b in svc.backends}
    rng = random.Random(2026)
    counts: dict[str, int] = {}
    flows = []
    for _ in range(10_000):
        src = ip_str(int(CLIENTS.network_address) + rng.randrange(1, CLIENTS.num_addresses - 1))
        sport = rng.randrange(1024, 65536)
        out = sw.inject(1, CLIENT_PORT, build_tcp(src, svc.vip, sport, svc.port, SYN))
        assert out.egress_port == NODE_PORT, out.trace
        frame = parse_frame(out.data)
        node = nodes[ip_str(frame.ipv4.dst)]
        # Exactly the node the snapshot's bucket assignment names for this flow's hash.
        bucket = flow_bucket(ip(src), ip(svc.vip), 6, sport, svc.port, svc.bucket_count - 1)
        assert node == svc.assignment[bucket]
        assert frame.tcp.dst_port == by_key[node].port
        assert ipv4_checksum_ok(out.data) and l4_checksum_ok(out.data)
        counts[node] = counts.get(node, 0) + 1
        flows.append((src, sport, node))
    # Shares match bucket shares (binomial, 6 sigma: cannot flake with the fixed seed).
    for b in svc.backends:
        p = b.buckets / svc.bucket_count
        mean, sd = 10_000 * p, (10_000 * p * (1 - p)) ** 0.5
        assert abs(counts.get(b.node, 0) - mean) <= 6 * sd, (b.node, counts.get(b.node), mean)
    # A flow stays on its node for every later packet.
    for src, sport, node in flows[:300]:
        out = sw.inject(1, CLIENT_PORT, build_tcp(src, svc.vip, sport, svc.port, ACK, b"data"))
        assert nodes[ip_str(parse_frame(out.data).ipv4.dst)] == node


def test_replies_are_reverse_natted_to_the_vip(programmed):
    sw, snap = programmed
    svc = snap.by_name["web/api"]
    client, cport = "10.200.3.4", 40000
    out = sw.inject(1, CLIENT_PORT, build_tcp(client, svc.vip, cport, svc.port, SYN))
    f = parse_frame(out.data)
    node_ip, node_port = ip_str(f.ipv4.dst), f.tcp.dst_port
    reply = sw.inject(1, NODE_PORT, build_tcp(node_ip, client, node_port, cport, SYN | ACK))
    assert reply.egress_port == CLIENT_PORT, reply.trace
    r = parse_frame(reply.data)
    assert (ip_str(r.ipv4.src), r.tcp.src_port) == (svc.vip, svc.port)
    assert ipv4_checksum_ok(reply.data) and l4_checksum_ok(reply.data)


def test_udp_service_and_unknown_vip(programmed):
    sw, snap = programmed
    dns = snap.by_name["payments/dns-cache"]
    out = sw.inject(1, CLIENT_PORT, build_udp("10.200.9.9", dns.vip, 5353, dns.port, b"q"))
    f = parse_frame(out.data)
    assert ip_str(f.ipv4.dst) in node_of(snap, dns.name) and f.udp.dst_port == dns.backends[0].port
    assert l4_checksum_ok(out.data)
    # A VIP the switch does not hold is routed, not balanced (the kube-proxy path on the nodes).
    miss = sw.inject(1, CLIENT_PORT, build_tcp("10.200.9.9", "172.20.0.14", 1234, 80, SYN))
    assert miss.egress_port == NODE_PORT
    assert ip_str(parse_frame(miss.data).ipv4.dst) == "172.20.0.14"


def test_backend_counters_count_packets_and_syns(programmed):
    sw, snap = programmed
    svc = snap.by_name["web/frontend"]
    before = {i: c for i, c in enumerate(sw.counters(1, "MyIngress.backend_syn"))}
    out = sw.inject(1, CLIENT_PORT, build_tcp("10.200.7.7", svc.vip, 5555, svc.port, SYN))
    node = node_of(snap, svc.name)[ip_str(parse_frame(out.data).ipv4.dst)]
    bid = next(b.backend_id for b in svc.backends if b.node == node)
    after = sw.counters(1, "MyIngress.backend_syn")
    assert after[bid][0] == before[bid][0] + 1
