"""The packet pipeline model of p4/load_balancer.p4 (reconciler/sim/pipeline.py, packet.py)."""

from __future__ import annotations

import math
import random
import zlib
from collections import Counter
from dataclasses import replace

import pytest

from reconciler import p4names as n
from reconciler.sim import packet as pk
from reconciler.sim.pipeline import (
    DROP_PORT,
    PipelineError,
    PipelineResult,
    TableLookup,
    flow_hash,
    process_packet,
)

Action = tuple[str, dict[str, int]]


class DictTables:
    """A dict-backed TableLookup, as the switch's device state will provide it."""

    def __init__(self) -> None:
        self.exact: dict[str, dict[tuple[int, ...], Action]] = {
            n.VIP_TABLE: {}, n.BACKEND_TABLE: {}, n.REVERSE_NAT: {}
        }
        self.lpm: dict[str, list[tuple[int, int, Action]]] = {n.IPV4_LPM: []}
        self.defaults: dict[str, Action] = {
            n.VIP_TABLE: (n.NO_ACTION, {}),
            n.BACKEND_TABLE: (n.NO_ACTION, {}),
            n.REVERSE_NAT: (n.NO_ACTION, {}),
            n.IPV4_LPM: (n.DROP, {}),
        }
        self.packets: Counter[tuple[str, int]] = Counter()
        self.bytes: Counter[tuple[str, int]] = Counter()
        self.registers: dict[tuple[str, int], int] = {}

    def lookup_exact(self, table: str, key: tuple[int, ...]) -> Action | None:
        return self.exact[table].get(key)

    def lookup_lpm(self, table: str, value: int) -> Action | None:
        best: tuple[int, Action] | None = None
        for prefix, plen, action in self.lpm[table]:
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
            if value & mask == prefix and (best is None or plen > best[0]):
                best = (plen, action)
        return best[1] if best else None

    def default_action(self, table: str) -> Action:
        return self.defaults[table]

    def count(self, counter: str, index: int, packets: int = 1, nbytes: int = 0) -> None:
        self.packets[(counter, index)] += packets
        self.bytes[(counter, index)] += nbytes

    def register_read(self, register: str, index: int) -> int:
        return self.registers.get((register, index), 0)

    def register_write(self, register: str, index: int, value: int) -> None:
        self.registers[(register, index)] = value

    def route(self, cidr: str, action: Action) -> None:
        net, plen = cidr.split("/")
        self.lpm[n.IPV4_LPM].append((pk.ip(net), int(plen), action))


_typed: type[TableLookup] = DictTables  # DictTables must satisfy the protocol (checked by mypy)

VIP = "203.0.113.10"
CLIENT_NET = "198.51.100.0/24"
CLIENT_PORT, CLIENT_MAC = 2, "02:00:00:00:00:c1"
NODES = {  # node ip -> (backend_id for the TCP service, switch port, mac)
    "10.0.0.11": (1, 11, "02:00:00:00:00:11"),
    "10.0.0.12": (2, 12, "02:00:00:00:00:12"),
    "10.0.0.13": (3, 13, "02:00:00:00:00:13"),
}
TCP_SERVICE, TCP_NODE_PORT = 3, 30080
UDP_SERVICE, UDP_NODE_PORT = 4, 30053
UDP_BACKENDS = {"10.0.0.11": 4, "10.0.0.12": 5}
KUBE_PROXY_PORT = 1  # where a VIP goes when the switch does not balance it


def _owner(bucket: int) -> str:
    """64 buckets in shares 32/16/16, interleaved as a renderer would spread them."""
    return "10.0.0.11" if bucket % 4 < 2 else "10.0.0.12" if bucket % 4 == 2 else "10.0.0.13"


@pytest.fixture
def tables() -> DictTables:
    t = DictTables()
    t.exact[n.VIP_TABLE][(pk.ip(VIP), 80, 6)] = (n.SET_SERVICE, {"service_id": TCP_SERVICE, "bucket_mask": 63})
    t.exact[n.VIP_TABLE][(pk.ip(VIP), 53, 17)] = (n.SET_SERVICE, {"service_id": UDP_SERVICE, "bucket_mask": 3})
    for bucket in range(64):
        node = _owner(bucket)
        t.exact[n.BACKEND_TABLE][(TCP_SERVICE, bucket)] = (
            n.DNAT, {"node_ip": pk.ip(node), "node_port": TCP_NODE_PORT, "backend_id": NODES[node][0]})
    for bucket in range(4):
        node = "10.0.0.11" if bucket < 2 else "10.0.0.12"
        t.exact[n.BACKEND_TABLE][(UDP_SERVICE, bucket)] = (
            n.DNAT, {"node_ip": pk.ip(node), "node_port": UDP_NODE_PORT, "backend_id": UDP_BACKENDS[node]})
    for node in NODES:
        t.exact[n.REVERSE_NAT][(pk.ip(node), TCP_NODE_PORT, 6)] = (n.SNAT, {"vip": pk.ip(VIP), "vip_port": 80})
        t.exact[n.REVERSE_NAT][(pk.ip(node), UDP_NODE_PORT, 17)] = (n.SNAT, {"vip": pk.ip(VIP), "vip_port": 53})
    for node, (_, port, mac) in NODES.items():
        t.route(f"{node}/32", (n.FWD, {"port": port, "dst_mac": pk.mac(mac)}))
    t.route(CLIENT_NET, (n.FWD, {"port": CLIENT_PORT, "dst_mac": pk.mac(CLIENT_MAC)}))
    t.route("203.0.113.0/24", (n.FWD, {"port": KUBE_PROXY_PORT, "dst_mac": pk.mac("02:00:00:00:00:11")}))
    t.route("192.0.2.0/24", (n.DROP, {}))  # a blackhole route
    return t


def _expected_bucket(src: str, dst: str, proto: int, sport: int, dport: int, mask: int) -> int:
    # Independent of the model's code: byte concatenation by hand, zlib's CRC-32.
    data = pk.ip(src).to_bytes(4, "big") + pk.ip(dst).to_bytes(4, "big") + bytes([proto])
    data += sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    assert len(data) == 13
    return zlib.crc32(data) % 65536 & mask


def _naive_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _assert_checksums(data: bytes) -> None:
    assert pk.ipv4_checksum_ok(data), "IPv4 header checksum does not verify"
    assert pk.l4_checksum_ok(data), "TCP/UDP checksum does not verify"


# ---------------------------------------------------------------------------------------------
# packet.py


def test_ipv4_checksum_known_vector() -> None:
    # A classic worked example: header 4500 0073 0000 4000 4011 ____ c0a8 0001 c0a8 00c7 -> 0xb861.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert pk.internet_checksum(header) == 0xB861
    h = pk.IPv4(pk.ip("192.168.0.1"), pk.ip("192.168.0.199"), 17, 0x73, ttl=64, flags=2)
    assert h.pack() == header
    assert h.with_checksum().checksum == 0xB861


def test_internet_checksum_matches_word_loop() -> None:
    rng = random.Random(7)
    cases = [b"", b"\x00", b"\xff\xff", b"\x00\x00\x00", b"\xff" * 7]
    cases += [rng.randbytes(rng.randrange(0, 300)) for _ in range(500)]
    for data in cases:
        assert pk.internet_checksum(data) == _naive_checksum(data), data.hex()


def test_build_and_parse_tcp() -> None:
    data = pk.build_tcp("198.51.100.7", VIP, 40000, 80, pk.SYN | pk.ACK, b"hello", seq=5, ack=9, ttl=17)
    assert len(data) == 14 + 20 + 20 + 5
    f = pk.parse_frame(data)
    assert f.parser_error is None and f.udp is None
    assert f.ethernet == pk.Ethernet(pk.DEFAULT_DST_MAC, pk.DEFAULT_SRC_MAC, 0x0800)
    assert (pk.ip_str(f.ipv4.src), pk.ip_str(f.ipv4.dst), f.ipv4.protocol, f.ipv4.ttl) == ("198.51.100.7", VIP, 6, 17)
    assert f.ipv4.total_len == 45
    assert (f.tcp.src_port, f.tcp.dst_port, f.tcp.flags, f.tcp.seq, f.tcp.ack) == (40000, 80, 0x12, 5, 9)
    assert f.payload == b"hello"
    assert f.pack() == data
    _assert_checksums(data)


def test_build_and_parse_udp_with_and_without_checksum() -> None:
    data = pk.build_udp("198.51.100.7", VIP, 5353, 53, b"query")
    f = pk.parse_frame(data)
    assert f.udp == pk.UDP(5353, 53, 13, f.udp.checksum) and f.udp.checksum != 0
    assert f.payload == b"query"
    _assert_checksums(data)
    bare = pk.build_udp("198.51.100.7", VIP, 5353, 53, b"query", checksum=False)
    assert pk.parse_frame(bare).udp.checksum == 0
    _assert_checksums(bare)  # 0 = no checksum: accepted


def test_checksum_checks_catch_corruption() -> None:
    data = bytearray(pk.build_tcp("198.51.100.7", VIP, 40000, 80, pk.ACK, b"payload"))
    bad_ip = bytearray(data)
    bad_ip[14 + 8] ^= 0x01  # TTL
    assert not pk.ipv4_checksum_ok(bytes(bad_ip))
    bad_l4 = bytearray(data)
    bad_l4[-1] ^= 0x40  # a payload byte
    assert pk.ipv4_checksum_ok(bytes(bad_l4)) and not pk.l4_checksum_ok(bytes(bad_l4))
    bad_pseudo = bytearray(data)
    bad_pseudo[14 + 12] ^= 0x01  # source address: IPv4 header and TCP pseudo header both break
    assert not pk.ipv4_checksum_ok(bytes(bad_pseudo)) and not pk.l4_checksum_ok(bytes(bad_pseudo))
    with pytest.raises(ValueError, match="no IPv4"):
        pk.ipv4_checksum_ok(b"\x00" * 12 + b"\x86\xdd" + b"\x00" * 40)


def test_builder_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="dotted-quad"):
        pk.build_tcp("10.0.0.256", VIP, 1, 80)
    with pytest.raises(ValueError, match="dotted-quad"):
        pk.build_tcp("10.0.0", VIP, 1, 80)
    with pytest.raises(ValueError, match="sport 70000"):
        pk.build_tcp("10.0.0.1", VIP, 70000, 80)
    with pytest.raises(ValueError, match="MAC"):
        pk.build_udp("10.0.0.1", VIP, 1, 53, src_mac="02:00:00")
    with pytest.raises(ValueError, match="protocol 1"):
        pk.build_frame(1, "10.0.0.1", VIP, 1, 2)
    assert pk.parse_frame(pk.build_frame("UDP", "10.0.0.1", VIP, 1, 53)).udp is not None


# ---------------------------------------------------------------------------------------------
# The hash


def test_crc32_is_bmv2s_and_flow_hash_uses_the_13_byte_tuple() -> None:
    # BMv2's crc32 is CRC-32/ISO-HDLC (poly 0x04c11db7 reflected, init and xorout 0xffffffff),
    # whose standard check value is 0xcbf43926: zlib implements the same CRC.
    assert zlib.crc32(b"123456789") == 0xCBF43926
    rng = random.Random(3)
    for _ in range(1000):
        src, dst = rng.getrandbits(32), rng.getrandbits(32)
        proto, sport, dport = rng.choice((6, 17)), rng.getrandbits(16), rng.getrandbits(16)
        expected = _expected_bucket(pk.ip_str(src), pk.ip_str(dst), proto, sport, dport, 0xFFFF)
        assert flow_hash(src, dst, proto, sport, dport) == expected


# ---------------------------------------------------------------------------------------------
# Load balancing


def test_10000_flows_split_by_bucket_share_and_verify(tables: DictTables) -> None:
    rng = random.Random(20240611)
    flows = 10_000
    per_node: Counter[str] = Counter()
    per_bucket: Counter[int] = Counter()
    for _ in range(flows):
        src = pk.ip_str(rng.getrandbits(32))
        sport = rng.randrange(1024, 65536)
        data = pk.build_tcp(src, VIP, sport, 80, pk.SYN, ttl=64)
        res = process_packet(tables, CLIENT_PORT, data)
        bucket = _expected_bucket(src, VIP, 6, sport, 80, 63)
        node = _owner(bucket)
        assert res.egress_port == NODES[node][1]
        f = pk.parse_frame(res.data)
        assert pk.ip_str(f.ipv4.dst) == node and f.tcp.dst_port == TCP_NODE_PORT
        assert pk.ip_str(f.ipv4.src) == src and f.tcp.src_port == sport
        assert f.ipv4.ttl == 63 and f.ethernet.dst == pk.mac(NODES[node][2])
        _assert_checksums(res.data)
        per_node[node] += 1
        per_bucket[bucket] += 1

    # Each node's share of flows against its bucket share (32/16/16 of 64). The count is
    # Binomial(10000, p); 6 standard deviations bound it (failure odds ~1e-9 for any seed; with
    # the fixed seed the outcome is fixed).
    for node, buckets in Counter(_owner(b) for b in range(64)).items():
        p = buckets / 64
        sd = math.sqrt(flows * p * (1 - p))
        assert abs(per_node[node] - flows * p) <= 6 * sd, (node, per_node[node], flows * p)
    # And the hash spreads flows evenly over all 64 buckets: chi-square with 63 degrees of freedom,
    # mean 63, sd ~11.2; 150 is ~7.8 sd above the mean.
    assert len(per_bucket) == 64
    expected = flows / 64
    chi2 = sum((per_bucket[b] - expected) ** 2 / expected for b in range(64))
    assert chi2 < 150, chi2


def test_a_flow_always_lands_on_the_same_node(tables: DictTables) -> None:
    rng = random.Random(11)
    for _ in range(200):
        src, sport = pk.ip_str(rng.getrandbits(32)), rng.randrange(1024, 65536)
        segments = [
            pk.build_tcp(src, VIP, sport, 80, pk.SYN),
            pk.build_tcp(src, VIP, sport, 80, pk.ACK, seq=1, ack=1),
            pk.build_tcp(src, VIP, sport, 80, pk.PSH | pk.ACK, rng.randbytes(rng.randrange(1, 1400))),
            pk.build_tcp(src, VIP, sport, 80, pk.FIN | pk.ACK, ttl=3),
        ]
        results = [process_packet(tables, CLIENT_PORT, d) for d in segments]
        dsts = {(pk.parse_frame(r.data).ipv4.dst, r.egress_port) for r in results}
        assert len(dsts) == 1


def test_reply_from_node_is_reverse_natted_to_the_vip(tables: DictTables) -> None:
    client, sport = "198.51.100.23", 51515
    req = process_packet(tables, CLIENT_PORT, pk.build_tcp(client, VIP, sport, 80, pk.SYN, seq=100))
    node = pk.ip_str(pk.parse_frame(req.data).ipv4.dst)
    reply = pk.build_tcp(node, client, TCP_NODE_PORT, sport, pk.SYN | pk.ACK, b"", seq=7, ack=101)
    before = dict(tables.packets)
    res = process_packet(tables, NODES[node][1], reply)
    assert res.egress_port == CLIENT_PORT
    f = pk.parse_frame(res.data)
    assert (pk.ip_str(f.ipv4.src), f.tcp.src_port) == (VIP, 80)
    assert (pk.ip_str(f.ipv4.dst), f.tcp.dst_port) == (client, sport)
    assert (f.tcp.flags, f.tcp.seq, f.tcp.ack) == (pk.SYN | pk.ACK, 7, 101)
    assert f.ethernet.dst == pk.mac(CLIENT_MAC)
    _assert_checksums(res.data)
    assert res.trace[1] == f"reverse_nat: hit snat(vip={VIP}, vip_port=80)"
    assert not any(t.startswith(("vip_table", "backend_table")) for t in res.trace)
    assert dict(tables.packets) == before  # replies are not counted per backend


def test_udp_service_balances_and_keeps_checksum_zero(tables: DictTables) -> None:
    client, sport = "198.51.100.9", 6000
    node = "10.0.0.11" if _expected_bucket(client, VIP, 17, sport, 53, 3) < 2 else "10.0.0.12"
    for with_checksum in (True, False):
        data = pk.build_udp(client, VIP, sport, 53, b"\x12\x34question", checksum=with_checksum)
        res = process_packet(tables, CLIENT_PORT, data)
        f = pk.parse_frame(res.data)
        assert res.egress_port == NODES[node][1]
        assert (pk.ip_str(f.ipv4.dst), f.udp.dst_port, f.payload) == (node, UDP_NODE_PORT, b"\x12\x34question")
        assert (f.udp.checksum != 0) is with_checksum
        _assert_checksums(res.data)
        # The reply, NATed back to the VIP.
        back = process_packet(tables, NODES[node][1], pk.build_udp(node, client, UDP_NODE_PORT, sport, b"answer",
                                                                  checksum=with_checksum))
        g = pk.parse_frame(back.data)
        assert back.egress_port == CLIENT_PORT
        assert (pk.ip_str(g.ipv4.src), g.udp.src_port) == (VIP, 53)
        assert (g.udp.checksum != 0) is with_checksum
        _assert_checksums(back.data)
    assert tables.packets[(n.BACKEND_PACKETS, UDP_BACKENDS[node])] == 2
    assert tables.packets[(n.BACKEND_SYN, UDP_BACKENDS[node])] == 0


# ---------------------------------------------------------------------------------------------
# Misses and drops


def _same_but_routed(original: bytes, out: bytes, dst_mac: str) -> None:
    """`out` is `original` routed: Ethernet dst, TTL and the IPv4 checksum changed, nothing else."""
    a, b = pk.parse_frame(original), pk.parse_frame(out)
    assert b.ethernet.dst == pk.mac(dst_mac) and b.ipv4.ttl == a.ipv4.ttl - 1
    assert (a.ipv4.src, a.ipv4.dst, a.tcp, a.udp, a.payload) == (b.ipv4.src, b.ipv4.dst, b.tcp, b.udp, b.payload)
    assert len(out) == len(original)
    _assert_checksums(out)


def test_vip_table_miss_routes_normally(tables: DictTables) -> None:
    # Wrong port and wrong protocol for the VIP: not balanced, routed (to kube-proxy's nodes).
    for data in (pk.build_tcp("198.51.100.4", VIP, 4000, 443, pk.SYN),
                 pk.build_udp("198.51.100.4", VIP, 4000, 80, b"x")):
        res = process_packet(tables, CLIENT_PORT, data)
        assert res.egress_port == KUBE_PROXY_PORT
        assert res.trace[1:3] == ("reverse_nat: miss NoAction()", "vip_table: miss NoAction()")
        _same_but_routed(data, res.data, "02:00:00:00:00:11")
    assert sum(tables.packets.values()) == 0


def test_backend_table_miss_leaves_the_packet_unchanged(tables: DictTables) -> None:
    del tables.exact[n.BACKEND_TABLE][(TCP_SERVICE, 5)]
    rng = random.Random(5)
    while True:  # a flow that hashes into the hole
        src, sport = pk.ip_str(rng.getrandbits(32)), rng.randrange(1024, 65536)
        if _expected_bucket(src, VIP, 6, sport, 80, 63) == 5:
            break
    data = pk.build_tcp(src, VIP, sport, 80, pk.SYN)
    res = process_packet(tables, CLIENT_PORT, data)
    assert "hash: bucket=5" in res.trace and "backend_table: miss NoAction()" in res.trace
    assert res.egress_port == KUBE_PROXY_PORT
    _same_but_routed(data, res.data, "02:00:00:00:00:11")
    assert sum(tables.packets.values()) == 0


def test_lpm_miss_drop_route_and_non_ipv4_are_dropped(tables: DictTables) -> None:
    for dst in ("8.8.8.8", "192.0.2.77"):  # no route (default drop); blackhole route (drop action)
        res = process_packet(tables, CLIENT_PORT, pk.build_tcp("198.51.100.4", dst, 4000, 80))
        assert res == PipelineResult(None, None, res.trace) and res.dropped
        assert res.trace[-1] == "ingress: drop"
    assert process_packet(tables, CLIENT_PORT, pk.build_tcp("198.51.100.4", "8.8.8.8", 1, 2)).trace[3] == \
        "ipv4_lpm: miss drop()"
    ipv6 = b"\x02" * 12 + b"\x86\xdd" + bytes(40)
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    for frame in (ipv6, arp):
        res = process_packet(tables, CLIENT_PORT, frame)
        assert res.dropped and res.data is None and res.trace[-1] == "ingress: not IPv4 -> drop"
    assert "etherType 0x86dd" in process_packet(tables, 0, ipv6).trace[0]


def test_ttl_is_decremented_without_expiry_check(tables: DictTables) -> None:
    # The program's fwd has no TTL check (bit<8> arithmetic): modelled as written.
    for ttl, out_ttl in ((64, 63), (2, 1), (1, 0), (0, 255)):
        res = process_packet(tables, CLIENT_PORT, pk.build_tcp("198.51.100.4", VIP, 4000, 80, ttl=ttl))
        assert pk.parse_frame(res.data).ipv4.ttl == out_ttl
        _assert_checksums(res.data)


def test_default_action_and_drop_port(tables: DictTables) -> None:
    tables.defaults[n.IPV4_LPM] = (n.FWD, {"port": 9, "dst_mac": pk.mac("02:00:00:00:00:99")})
    res = process_packet(tables, CLIENT_PORT, pk.build_tcp("198.51.100.4", "8.8.8.8", 4000, 80))
    assert res.egress_port == 9 and "ipv4_lpm: miss fwd(port=9, dst_mac=02:00:00:00:00:99)" in res.trace
    tables.route("8.8.8.0/24", (n.FWD, {"port": DROP_PORT, "dst_mac": 1}))
    assert process_packet(tables, CLIENT_PORT, pk.build_tcp("198.51.100.4", "8.8.8.8", 4000, 80)).dropped


def test_ipv4_without_tcp_or_udp_uses_port_zero(tables: DictTables) -> None:
    icmp = b"\x08\x00\xf7\xff\x00\x00\x00\x00"  # echo request, checksum over the 8 bytes
    ip4 = pk.IPv4(pk.ip("198.51.100.4"), pk.ip(VIP), 1, 28, ttl=9).with_checksum()
    frame = pk.Frame(pk.Ethernet(1, 2, 0x0800), ip4, None, None, icmp).pack()
    tables.exact[n.VIP_TABLE][(pk.ip(VIP), 0, 1)] = (n.SET_SERVICE, {"service_id": 9, "bucket_mask": 0})
    res = process_packet(tables, CLIENT_PORT, frame)
    assert "vip_table: hit set_service(service_id=9, bucket_mask=0)" in res.trace
    assert res.egress_port == KUBE_PROXY_PORT
    out = pk.parse_frame(res.data)
    assert out.payload == icmp and out.ipv4.ttl == 8 and pk.ipv4_checksum_ok(res.data)


def test_parser_errors_drop(tables: DictTables) -> None:
    good = pk.build_tcp("198.51.100.4", VIP, 4000, 80)
    truncated = good[: 14 + 20 + 10]
    bad_version = good[:14] + bytes([0x65]) + good[15:]
    ip4 = pk.parse_frame(good).ipv4
    with_options = pk.Frame(
        pk.Ethernet(1, 2, 0x0800),
        pk.IPv4(ip4.src, ip4.dst, 6, ip4.total_len + 4, ihl=6).with_checksum(),
        None, None, b"\x01\x01\x01\x00" + good[34:],  # 4 bytes of NOP/EOL options, then TCP
    ).pack()
    for frame, error in ((truncated, "PacketTooShort"), (bad_version, "IPv4BadVersion"),
                         (with_options, "IPv4OptionsNotSupported"), (good[:20], "PacketTooShort"),
                         (good[:10], "PacketTooShort")):
        res = process_packet(tables, CLIENT_PORT, frame)
        assert res.dropped and f"(error {error})" in res.trace[0], res.trace
        assert res.trace[-1] == "ingress: parser error -> drop"
    assert sum(tables.packets.values()) == 0


def test_fragments_are_routed_without_l4(tables: DictTables) -> None:
    # MF set, or a non-zero offset: no L4 header is parsed, ports are 0, the VIP entry for port
    # 80 does not match, and the fragment is routed as it is.
    whole = pk.parse_frame(pk.build_udp("198.51.100.4", VIP, 4000, 53, b"x" * 40))
    for flags, offset in ((0b001, 0), (0b000, 185), (0b011, 3)):
        ip4 = replace(whole.ipv4, flags=flags, frag_offset=offset).with_checksum()
        frame = pk.Frame(whole.ethernet, ip4, None, whole.udp, whole.payload).pack()
        res = process_packet(tables, CLIENT_PORT, frame)
        assert res.trace[0] == "parser: ethernet ipv4"
        assert "vip_table: miss NoAction()" in res.trace and res.egress_port == KUBE_PROXY_PORT
        assert res.data[34:] == frame[34:] and pk.ipv4_checksum_ok(res.data)


def test_padded_frame_keeps_padding_and_checksums(tables: DictTables) -> None:
    syn = pk.build_tcp("198.51.100.4", VIP, 4000, 80)
    padded = syn + bytes(60 - len(syn))  # Ethernet minimum frame, zero padding
    res = process_packet(tables, CLIENT_PORT, padded)
    assert len(res.data) == 60 and res.data[len(syn):] == bytes(6)
    _assert_checksums(res.data)


def test_backend_default_action_counts_packets_but_not_connections(tables: DictTables) -> None:
    # dnat as backend_table's default action (a control-plane choice) runs on a miss, which
    # counts backend_packets; the SYN/FIN counting is under `if (backend_table.apply().hit)`.
    tables.exact[n.BACKEND_TABLE].clear()
    tables.defaults[n.BACKEND_TABLE] = (n.DNAT, {"node_ip": pk.ip("10.0.0.13"), "node_port": 1, "backend_id": 7})
    res = process_packet(tables, CLIENT_PORT, pk.build_tcp("198.51.100.4", VIP, 4000, 80, pk.SYN))
    assert res.egress_port == NODES["10.0.0.13"][1]
    assert tables.packets == Counter({(n.BACKEND_PACKETS, 7): 1})


def test_bad_table_state_and_bad_port_raise(tables: DictTables) -> None:
    data = pk.build_tcp("198.51.100.4", "8.8.8.8", 4000, 80)
    with pytest.raises(ValueError, match="ingress port 512"):
        process_packet(tables, 512, data)
    tables.defaults[n.IPV4_LPM] = (n.DNAT, {"node_ip": 1, "node_port": 2, "backend_id": 3})
    with pytest.raises(PipelineError, match="MyIngress.ipv4_lpm returned action 'MyIngress.dnat'"):
        process_packet(tables, 0, data)
    tables.defaults[n.IPV4_LPM] = (n.FWD, {"port": 1})
    with pytest.raises(PipelineError, match="without parameter.*dst_mac"):
        process_packet(tables, 0, data)


# ---------------------------------------------------------------------------------------------
# Counters


def test_counters_per_backend_with_syn_and_fin(tables: DictTables) -> None:
    rng = random.Random(99)
    want_pkts: Counter[int] = Counter()
    want_bytes: Counter[int] = Counter()
    want_syn: Counter[int] = Counter()
    want_fin: Counter[int] = Counter()
    kinds = [pk.SYN, pk.SYN | pk.ACK, pk.ACK, pk.PSH | pk.ACK, pk.FIN | pk.ACK, pk.RST, pk.RST | pk.ACK, pk.FIN]
    for _ in range(600):
        src, sport = pk.ip_str(rng.getrandbits(32)), rng.randrange(1024, 65536)
        flags = rng.choice(kinds)
        data = pk.build_tcp(src, VIP, sport, 80, flags, rng.randbytes(rng.randrange(0, 100)))
        backend = NODES[_owner(_expected_bucket(src, VIP, 6, sport, 80, 63))][0]
        process_packet(tables, CLIENT_PORT, data)
        want_pkts[backend] += 1
        want_bytes[backend] += len(data)
        want_syn[backend] += flags in (pk.SYN,)
        want_fin[backend] += flags in (pk.FIN | pk.ACK, pk.RST, pk.RST | pk.ACK, pk.FIN)
    for backend in (1, 2, 3):
        assert tables.packets[(n.BACKEND_PACKETS, backend)] == want_pkts[backend] > 0
        assert tables.bytes[(n.BACKEND_PACKETS, backend)] == want_bytes[backend]
        assert tables.packets[(n.BACKEND_SYN, backend)] == want_syn[backend] > 0
        assert tables.packets[(n.BACKEND_FIN, backend)] == want_fin[backend] > 0
        assert tables.bytes[(n.BACKEND_SYN, backend)] == tables.bytes[(n.BACKEND_FIN, backend)] == 0
    assert {c for c, _ in tables.packets} == {n.BACKEND_PACKETS, n.BACKEND_SYN, n.BACKEND_FIN}


def test_trace_reads_like_the_program(tables: DictTables) -> None:
    src, sport = "198.51.100.200", 33333
    bucket = _expected_bucket(src, VIP, 6, sport, 80, 63)
    node = _owner(bucket)
    res = process_packet(tables, CLIENT_PORT, pk.build_tcp(src, VIP, sport, 80))
    backend, port, mac = NODES[node]
    assert res.trace == (
        "parser: ethernet ipv4 tcp",
        "reverse_nat: miss NoAction()",
        f"vip_table: hit set_service(service_id={TCP_SERVICE}, bucket_mask=63)",
        f"hash: bucket={bucket}",
        f"backend_table: hit dnat(node_ip={node}, node_port={TCP_NODE_PORT}, backend_id={backend})",
        f"ipv4_lpm: hit fwd(port={port}, dst_mac={mac})",
        f"egress: port {port}",
    )
