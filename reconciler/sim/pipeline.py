"""Packet pipeline model of p4/load_balancer.p4 (v1model) for the software switch.

`process_packet(tables, ingress_port, data)` runs one frame through parser, ingress, egress and
deparser, reading table entries through the `TableLookup` protocol that the device state
implements, and returns where the frame leaves, its bytes, and a trace of what was applied.

It follows p4/load_balancer.p4 statement by statement (DESIGN.md 5):
- MyParser (packet.parse_frame): Ethernet -> IPv4 (0x0800; verify version 4 and ihl 5) ->
  TCP (6) | UDP (17) for unfragmented datagrams; meta.l4_src_port/l4_dst_port from TCP or UDP,
  0 otherwise; meta.l4_len = totalLen - 20.
- MyIngress: a packet without IPv4 or with any parser error (PacketTooShort, IPv4BadVersion,
  IPv4OptionsNotSupported) is dropped. Otherwise reverse_nat on (src, l4_src_port, protocol);
  if it missed, vip_table on (dst, l4_dst_port, protocol); if that hit, meta.bucket = v1model
  hash(crc32, base 0, {src, dst, protocol, l4_src_port, l4_dst_port}, max 65536) & bucket_mask
  and backend_table on (service_id, bucket); if that hit with a draining entry, the connection
  picks its backend (below), then backend_syn[backend_id] for TCP SYN without ACK and
  backend_fin[backend_id] for TCP FIN or RST. The (possibly NATed) metadata
  ports are written back into the TCP or UDP header, then ipv4_lpm on the current dst.
- A draining entry (dnat_draining) only stores both backends and the generation. Then, for TCP,
  two conn_gen cells: idx_a = crc32({l4_dst_port, l4_src_port, protocol, dst, src}) % 2^18 and
  idx_b = crc32({src, l4_src_port, dst, l4_dst_port, protocol}) % 2^18, on the packet as it
  arrived. A SYN without ACK writes the generation into both and takes the new backend; any
  other TCP packet takes the new backend only if both cells hold the generation. UDP (and
  anything else) takes the old backend. The chosen backend is DNATed and counted as dnat does.
- A table miss runs the table's default action (which the control plane may have changed) and
  `.hit` stays false, as in P4.
- Actions: set_service sets meta; snat rewrites ipv4 src and meta.l4_src_port; dnat rewrites ipv4
  dst, meta.l4_dst_port, meta.backend_id and counts backend_packets[backend_id] (1 packet,
  standard_metadata.packet_length bytes); fwd sets egress_spec, Ethernet dst, and TTL - 1 with
  no expiry check (bit<8> arithmetic: TTL 1 leaves as 0, TTL 0 wraps to 255), as the program
  does; drop is mark_to_drop (egress_spec 511, which also drops a fwd to port 511).
- MyEgress: nothing. MyComputeChecksum: IPv4 header checksum (csum16 over the 20-byte header);
  TCP checksum over {src, dst, 0, protocol, meta.l4_len, TCP header without checksum} + payload;
  UDP checksum, only when it is not 0 (0 = "no checksum" stays 0), over {src, dst, 0, protocol,
  udp.len, UDP header without checksum} + payload. "Payload" is, as in BMv2, every byte after
  the parsed headers (Ethernet padding included). A csum16 result of 0 is emitted as 0.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from reconciler import p4names as n
from reconciler.sim.packet import (
    ACK,
    FIN,
    RST,
    SYN,
    TCP,
    UDP,
    Ethernet,
    Frame,
    IPv4,
    internet_checksum,
    ip_str,
    mac_str,
    parse_frame,
)

DROP_PORT = 511  # v1model: mark_to_drop sets egress_spec to 511; packets sent there are dropped
PORT_MAX = 511  # egress_spec / ingress_port are bit<9>

_HASH_INPUT = struct.Struct("!IIBHH")  # srcAddr dstAddr protocol l4_src_port l4_dst_port: 13 bytes
# The conn_gen indices: two orders of the same 13 bytes (p4/README.md, "The connection hashes").
_CONN_INPUT_A = struct.Struct("!HHBII")  # l4_dst_port l4_src_port protocol dstAddr srcAddr
_CONN_INPUT_B = struct.Struct("!IHIHB")  # srcAddr l4_src_port dstAddr l4_dst_port protocol
_PSEUDO = struct.Struct("!IIBBH")


class TableLookup(Protocol):
    """Access to a device's table entries, counters and registers, as the pipeline needs it.

    The same protocol as reconciler/sim/device.py's (duplicated here, structurally identical, so
    that this module does not depend on the device module). Names are fully qualified P4Info
    names; key values are in P4Info match-field order.
    """

    def lookup_exact(self, table: str, key: tuple[int, ...]) -> tuple[str, dict[str, int]] | None: ...

    def lookup_lpm(self, table: str, value: int) -> tuple[str, dict[str, int]] | None: ...

    def default_action(self, table: str) -> tuple[str, dict[str, int]]: ...

    def count(self, counter: str, index: int, packets: int = 1, nbytes: int = 0) -> None: ...

    def register_read(self, register: str, index: int) -> int: ...

    def register_write(self, register: str, index: int, value: int) -> None: ...


@dataclass(frozen=True)
class PipelineResult:
    egress_port: int | None  # None: dropped
    data: bytes | None  # the deparsed frame; None when dropped
    trace: tuple[str, ...]

    @property
    def dropped(self) -> bool:
        return self.egress_port is None


class PipelineError(RuntimeError):
    """The table state handed to the pipeline is not one the program can hold (an action the table
    does not list, or missing action parameters): a bug in the device state, not in a packet."""


# Actions each table lists in the program (P4Info action_refs), with the params each needs.
_TABLE_ACTIONS: Mapping[str, frozenset[str]] = {
    n.REVERSE_NAT: frozenset({n.SNAT, n.NO_ACTION}),
    n.VIP_TABLE: frozenset({n.SET_SERVICE, n.NO_ACTION}),
    n.BACKEND_TABLE: frozenset({n.DNAT, n.DNAT_DRAINING, n.NO_ACTION}),
    n.IPV4_LPM: frozenset({n.FWD, n.DROP}),
}
_ACTION_PARAMS: Mapping[str, tuple[str, ...]] = {
    n.NO_ACTION: (),
    n.DROP: (),
    n.SET_SERVICE: tuple(p for p, _ in n.SET_SERVICE_PARAMS),
    n.DNAT: tuple(p for p, _ in n.DNAT_PARAMS),
    n.DNAT_DRAINING: tuple(p for p, _ in n.DNAT_DRAINING_PARAMS),
    n.SNAT: tuple(p for p, _ in n.SNAT_PARAMS),
    n.FWD: tuple(p for p, _ in n.FWD_PARAMS),
}
_SHOW_IP = frozenset({"node_ip", "old_node_ip", "vip"})
_SHOW_MAC = frozenset({"dst_mac"})


def flow_hash(src: int, dst: int, protocol: int, sport: int, dport: int) -> int:
    """v1model hash(HashAlgorithm.crc32, (bit<16>)0, {srcAddr, dstAddr, protocol, l4_src_port,
    l4_dst_port}, (bit<32>)65536): BMv2's crc32 is the standard reflected CRC-32 (zlib's) over
    the fields' big-endian concatenation (32+32+8+16+16 bits = 13 bytes), and the result is
    base + crc % max, i.e. the low 16 bits."""
    return zlib.crc32(_HASH_INPUT.pack(src, dst, protocol, sport, dport)) & 0xFFFF


def flow_bucket(src: int, dst: int, protocol: int, sport: int, dport: int, bucket_mask: int) -> int:
    """The backend_table bucket a flow lands in for a service with `bucket_mask`."""
    return flow_hash(src, dst, protocol, sport, dport) & bucket_mask


def conn_cells(src: int, dst: int, protocol: int, sport: int, dport: int) -> tuple[int, int]:
    """The two conn_gen cells of a connection (idx_a, idx_b): v1model hash(crc32, (bit<32>)0,
    {...}, CONN_CELLS) over two field orders of the 13 bytes, i.e. the low 18 bits of each CRC
    (base + crc % max, max = 2^18)."""
    a = zlib.crc32(_CONN_INPUT_A.pack(dport, sport, protocol, dst, src)) % n.CONN_CELLS
    b = zlib.crc32(_CONN_INPUT_B.pack(src, sport, dst, dport, protocol)) % n.CONN_CELLS
    return a, b


class _Phv:
    """The packet's header fields the program writes, and its metadata, while it is in the
    pipeline (mutable, like a PHV). Everything else is read from the parsed `frame`."""

    __slots__ = ("frame", "eth_dst", "ip_src", "ip_dst", "ttl", "hdr_src_port", "hdr_dst_port",
                 "l4_src_port", "l4_dst_port", "service_id", "bucket_mask", "bucket", "backend_id",
                 "l4_len", "egress_spec", "draining")

    def __init__(self, frame: Frame) -> None:
        assert frame.ipv4 is not None and frame.ethernet is not None
        self.frame = frame
        self.eth_dst = frame.ethernet.dst
        self.ip_src = frame.ipv4.src
        self.ip_dst = frame.ipv4.dst
        self.ttl = frame.ipv4.ttl
        self.hdr_src_port = self.l4_src_port = frame.l4_src_port  # tcp/udp srcPort and the meta copy
        self.hdr_dst_port = self.l4_dst_port = frame.l4_dst_port
        self.service_id = 0
        self.bucket_mask = 0
        self.bucket = 0
        self.backend_id = 0
        self.l4_len = (frame.ipv4.total_len - 20) & 0xFFFF  # bit<16> subtraction in the parser
        self.egress_spec = 0  # v1model initialises metadata and standard_metadata to 0
        self.draining: Mapping[str, int] | None = None  # dnat_draining's parameters


def process_packet(tables: TableLookup, ingress_port: int, data: bytes) -> PipelineResult:
    """Run one frame received on `ingress_port` through the program; see the module docstring."""
    if not 0 <= ingress_port <= PORT_MAX:
        raise ValueError(f"ingress port {ingress_port} does not fit in 9 bits (0..{PORT_MAX})")
    trace: list[str] = []
    frame = parse_frame(bytes(data))
    trace.append(_parser_trace(frame))
    if frame.ipv4 is None or frame.parser_error is not None:
        trace.append("ingress: parser error -> drop" if frame.parser_error else "ingress: not IPv4 -> drop")
        return PipelineResult(None, None, tuple(trace))

    phv = _Phv(frame)
    ctx = _Ctx(tables, len(data), trace)
    ip4 = frame.ipv4
    if not _apply_exact(ctx, phv, n.REVERSE_NAT, (ip4.src, phv.l4_src_port, ip4.protocol)):
        if _apply_exact(ctx, phv, n.VIP_TABLE, (ip4.dst, phv.l4_dst_port, ip4.protocol)):
            # Nothing has rewritten the 5-tuple on this path: it is the packet's own.
            h = flow_hash(ip4.src, ip4.dst, ip4.protocol, phv.l4_src_port, phv.l4_dst_port)
            phv.bucket = h & phv.bucket_mask
            trace.append(f"hash: bucket={phv.bucket}")
            if _apply_exact(ctx, phv, n.BACKEND_TABLE, (phv.service_id, phv.bucket)):
                if phv.draining is not None:
                    _drain(ctx, phv, phv.draining)
                _count_connection_events(ctx, phv)
    if frame.tcp is not None or frame.udp is not None:  # write the NATed ports back
        phv.hdr_src_port, phv.hdr_dst_port = phv.l4_src_port, phv.l4_dst_port
    _apply_lpm(ctx, phv, n.IPV4_LPM, phv.ip_dst)

    if phv.egress_spec == DROP_PORT:
        trace.append("ingress: drop")
        return PipelineResult(None, None, tuple(trace))
    out = _deparse(phv)
    trace.append(f"egress: port {phv.egress_spec}")
    return PipelineResult(phv.egress_spec, out, tuple(trace))


def _drain(ctx: _Ctx, phv: _Phv, params: Mapping[str, int]) -> None:
    """The apply block's draining branch: old backend unless the TCP connection is new in this
    drain (its SYN now, or both of its cells hold the generation); then dnat's rewrite and count
    on the chosen backend. The hashes see the packet as it arrived (nothing rewrote it yet)."""
    frame = phv.frame
    ip4 = frame.ipv4
    assert ip4 is not None
    generation = params["generation"]
    new = False
    if frame.tcp is None:
        why = "not TCP"
    else:
        a, b = conn_cells(ip4.src, ip4.dst, ip4.protocol, phv.l4_src_port, phv.l4_dst_port)
        if frame.tcp.flags & (SYN | ACK) == SYN:
            ctx.tables.register_write(n.CONN_GEN, a, generation)
            ctx.tables.register_write(n.CONN_GEN, b, generation)
            new = True
            why = f"SYN marks cells {a}, {b} with generation {generation}"
        else:
            gen_a = ctx.tables.register_read(n.CONN_GEN, a)
            gen_b = ctx.tables.register_read(n.CONN_GEN, b)
            new = gen_a == generation and gen_b == generation
            why = f"cells {a}={gen_a}, {b}={gen_b}, generation {generation}"
    prefix = "" if new else "old_"
    phv.ip_dst = params[prefix + "node_ip"]
    phv.l4_dst_port = params[prefix + "node_port"]
    phv.backend_id = params[prefix + "backend_id"]
    ctx.tables.count(n.BACKEND_PACKETS, phv.backend_id, 1, ctx.packet_length)
    ctx.trace.append(f"drain: {why} -> {'new' if new else 'old'} backend "
                     f"{ip_str(phv.ip_dst)}:{phv.l4_dst_port} (backend_id {phv.backend_id})")


def _count_connection_events(ctx: _Ctx, phv: _Phv) -> None:
    """The least-connections estimate: SYN without ACK opens a connection, FIN or RST closes it.
    Packet counters, so 0 bytes."""
    tcp = phv.frame.tcp
    if tcp is None:
        return
    if tcp.flags & (SYN | ACK) == SYN:
        ctx.tables.count(n.BACKEND_SYN, phv.backend_id, 1, 0)
    if tcp.flags & (FIN | RST):
        ctx.tables.count(n.BACKEND_FIN, phv.backend_id, 1, 0)


# ---------------------------------------------------------------------------------------------
# Tables and actions


@dataclass(frozen=True)
class _Ctx:
    tables: TableLookup
    packet_length: int  # standard_metadata.packet_length: the frame as received
    trace: list[str]


def _apply_exact(ctx: _Ctx, phv: _Phv, table: str, key: tuple[int, ...]) -> bool:
    found = ctx.tables.lookup_exact(table, key)
    return _run(ctx, phv, table, found)


def _apply_lpm(ctx: _Ctx, phv: _Phv, table: str, value: int) -> bool:
    found = ctx.tables.lookup_lpm(table, value)
    return _run(ctx, phv, table, found)


def _run(ctx: _Ctx, phv: _Phv, table: str, found: tuple[str, dict[str, int]] | None) -> bool:
    """Run the entry's action, or the default action on a miss; return `.hit`."""
    hit = found is not None
    action, params = found if found is not None else ctx.tables.default_action(table)
    _check_action(table, action, params)
    short = table.rsplit(".", 1)[-1]
    ctx.trace.append(f"{short}: {'hit' if hit else 'miss'} {_show(action, params)}")
    _ACTIONS[action](ctx, phv, params)
    return hit


def _check_action(table: str, action: str, params: Mapping[str, int]) -> None:
    allowed = _TABLE_ACTIONS[table]
    if action not in allowed:
        raise PipelineError(f"{table} returned action {action!r}; the program allows only {sorted(allowed)}")
    missing = [p for p in _ACTION_PARAMS[action] if p not in params]
    if missing:
        raise PipelineError(f"{table} returned {action} without parameter(s) {', '.join(missing)}")


def _show(action: str, params: Mapping[str, int]) -> str:
    def fmt(k: str, v: int) -> str:
        if k in _SHOW_IP:
            return f"{k}={ip_str(v)}"
        if k in _SHOW_MAC:
            return f"{k}={mac_str(v)}"
        return f"{k}={v}"

    args = ", ".join(fmt(k, params[k]) for k in _ACTION_PARAMS[action])
    return f"{action.rsplit('.', 1)[-1]}({args})"


def _no_action(ctx: _Ctx, phv: _Phv, params: Mapping[str, int]) -> None:
    pass


def _drop(ctx: _Ctx, phv: _Phv, params: Mapping[str, int]) -> None:
    phv.egress_spec = DROP_PORT  # mark_to_drop(standard_metadata)


def _set_service(ctx: _Ctx, phv: _Phv, params: Mapping[str, int]) -> None:
    phv.service_id = params["service_id"]
    phv.bucket_mask = params["bucket_mask"]


def _snat(ctx: _Ctx, phv: _Phv, params: Mapping[str, int]) -> None:
    phv.ip_src = params["vip"]
    phv.l4_src_port = params["vip_port"]


def _dnat(ctx: _Ctx, phv: _Phv, params: Mapping[str, int]) -> None:
    phv.ip_dst = params["node_ip"]
    phv.l4_dst_port = params["node_port"]
    phv.backend_id = params["backend_id"]
    ctx.tables.count(n.BACKEND_PACKETS, phv.backend_id, 1, ctx.packet_length)


def _dnat_draining(ctx: _Ctx, phv: _Phv, params: Mapping[str, int]) -> None:
    phv.draining = params  # no rewrite here: the choice needs the packet's own 5-tuple


def _fwd(ctx: _Ctx, phv: _Phv, params: Mapping[str, int]) -> None:
    phv.egress_spec = params["port"]
    phv.eth_dst = params["dst_mac"]
    phv.ttl = (phv.ttl - 1) & 0xFF  # no expiry check in the program: 1 -> 0, 0 -> 255


_ACTIONS: Mapping[str, Callable[[_Ctx, _Phv, Mapping[str, int]], None]] = {
    n.NO_ACTION: _no_action,
    n.DROP: _drop,
    n.SET_SERVICE: _set_service,
    n.SNAT: _snat,
    n.DNAT: _dnat,
    n.DNAT_DRAINING: _dnat_draining,
    n.FWD: _fwd,
}


# ---------------------------------------------------------------------------------------------
# Checksums and deparser


def _deparse(phv: _Phv) -> bytes:
    """MyComputeChecksum then MyDeparser: the headers with the PHV's fields and fresh checksums,
    then the unparsed rest of the packet."""
    f = phv.frame
    assert f.ethernet is not None and f.ipv4 is not None
    eth = Ethernet(phv.eth_dst, f.ethernet.src, f.ethernet.ether_type).pack()
    i = f.ipv4
    ip4 = IPv4(phv.ip_src, phv.ip_dst, i.protocol, i.total_len, phv.ttl, i.ihl, i.version,
               i.diffserv, i.identification, i.flags, i.frag_offset, 0)
    ip_raw = ip4.pack()
    ip_raw = _with_csum(ip_raw, 10, internet_checksum(ip_raw))
    l4_raw = b""
    if f.tcp is not None:
        t = f.tcp
        # The program's field list leaves the checksum out: the same sum as a zeroed field.
        l4_raw = TCP(phv.hdr_src_port, phv.hdr_dst_port, t.flags, t.seq, t.ack, t.data_offset,
                     t.reserved, t.window, 0, t.urgent).pack()
        l4_raw = _with_csum(l4_raw, 16, _csum16(ip4, phv.l4_len, l4_raw, f.payload))
    elif f.udp is not None:
        u = f.udp
        l4_raw = UDP(phv.hdr_src_port, phv.hdr_dst_port, u.length, 0).pack()
        if u.checksum != 0:  # 0 = "no checksum" stays 0
            l4_raw = _with_csum(l4_raw, 6, _csum16(ip4, u.length, l4_raw, f.payload))
    return b"".join((eth, ip_raw, l4_raw, f.payload))


def _with_csum(raw: bytes, offset: int, csum: int) -> bytes:
    return raw[:offset] + csum.to_bytes(2, "big") + raw[offset + 2 :]


def _csum16(ip4: IPv4, pseudo_len: int, l4_header: bytes, payload: bytes) -> int:
    """update_checksum_with_payload(..., HashAlgorithm.csum16): pseudo header with the length the
    program puts there, the L4 header, and every byte after the parsed headers (BMv2 includes
    Ethernet padding too; zero padding adds nothing to the sum)."""
    return internet_checksum(_PSEUDO.pack(ip4.src, ip4.dst, 0, ip4.protocol, pseudo_len) + l4_header + payload)


def _parser_trace(frame: Frame) -> str:
    names = [name for name, h in (("ethernet", frame.ethernet), ("ipv4", frame.ipv4),
                                   ("tcp", frame.tcp), ("udp", frame.udp)) if h is not None]
    text = "parser: " + (" ".join(names) if names else "nothing")
    if frame.ethernet is not None and frame.ipv4 is None and frame.parser_error is None:
        text += f" (etherType {frame.ethernet.ether_type:#06x})"
    if frame.parser_error:
        text += f" (error {frame.parser_error})"
    return text
