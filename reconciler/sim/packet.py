"""Ethernet/IPv4/TCP/UDP frames for the software switch: build, parse, checksum.

Pure functions over `bytes` and frozen dataclasses. Headers are the fixed-size layouts that
p4/load_balancer.p4 declares (ethernet_t, ipv4_t without options, tcp_t, udp_t) and
`parse_frame` follows its parser; whatever follows the last parsed header is kept, untouched, as
`Frame.payload` (TCP options, data, Ethernet padding), as a P4 deparser re-emits the unparsed
rest of a packet. The checksum checks (`ipv4_checksum_ok`, `l4_checksum_ok`) are what a
receiving host verifies (RFC 791/793/768), independent of how the program computes them.

Addresses and MACs are ints in headers; `ip()` / `ip_str()` / `mac()` / `mac_str()` convert.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any

ETHERTYPE_IPV4 = 0x0800
PROTO_TCP = 6
PROTO_UDP = 17

ETH_LEN = 14
IPV4_LEN = 20  # ipv4_t without options
TCP_LEN = 20  # tcp_t without options
UDP_LEN = 8

# TCP control bits (the low 8 bits of the flags field).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

DEFAULT_SRC_MAC = 0x02_00_00_00_00_01
DEFAULT_DST_MAC = 0x02_00_00_00_00_02

_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBHII")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_PSEUDO = struct.Struct("!IIBBH")


# ---------------------------------------------------------------------------------------------
# Address helpers


def ip(value: str | int) -> int:
    """An IPv4 address as an int, from dotted text or an int (checked to fit 32 bits)."""
    if isinstance(value, int):
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"IPv4 address {value} does not fit in 32 bits")
        return value
    parts = value.split(".")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
        raise ValueError(f"not a dotted-quad IPv4 address: {value!r}")
    return int.from_bytes(bytes(int(p) for p in parts), "big")


def ip_str(value: int) -> str:
    """Dotted text of an int IPv4 address."""
    return ".".join(str(b) for b in value.to_bytes(4, "big"))


def mac(value: str | int) -> int:
    """A MAC address as an int, from "aa:bb:cc:dd:ee:ff" text or an int (checked to fit 48 bits)."""
    if isinstance(value, int):
        if not 0 <= value <= 0xFFFF_FFFF_FFFF:
            raise ValueError(f"MAC address {value} does not fit in 48 bits")
        return value
    parts = value.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address (aa:bb:cc:dd:ee:ff): {value!r}")
    try:
        return int("".join(parts), 16)
    except ValueError:
        raise ValueError(f"not a MAC address (aa:bb:cc:dd:ee:ff): {value!r}") from None


def mac_str(value: int) -> str:
    """Colon-separated lowercase text of an int MAC address."""
    return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))


# ---------------------------------------------------------------------------------------------
# Headers


@dataclass(frozen=True, slots=True)
class Ethernet:
    dst: int
    src: int
    ether_type: int

    def pack(self) -> bytes:
        return _ETH.pack(self.dst.to_bytes(6, "big"), self.src.to_bytes(6, "big"), self.ether_type)


@dataclass(frozen=True, slots=True)
class IPv4:
    """The 20-byte fixed IPv4 header; options, if any, stay in the frame's payload."""

    src: int
    dst: int
    protocol: int
    total_len: int
    ttl: int = 64
    ihl: int = 5
    version: int = 4
    diffserv: int = 0
    identification: int = 0
    flags: int = 0  # 3 bits: reserved, DF, MF
    frag_offset: int = 0  # 13 bits
    checksum: int = 0

    def pack(self) -> bytes:
        return _IPV4.pack(
            (self.version << 4) | self.ihl,
            self.diffserv,
            self.total_len,
            self.identification,
            (self.flags << 13) | self.frag_offset,
            self.ttl,
            self.protocol,
            self.checksum,
            self.src,
            self.dst,
        )

    def with_checksum(self) -> IPv4:
        """This header with its checksum recomputed over the 20 bytes (what v1model's
        update_checksum over the ipv4_t fields computes)."""
        return replace(self, checksum=internet_checksum(replace(self, checksum=0).pack()))


@dataclass(frozen=True, slots=True)
class TCP:
    """The 20-byte fixed TCP header; options stay in the frame's payload."""

    src_port: int
    dst_port: int
    flags: int = 0  # low 8 control bits (CWR ECE URG ACK PSH RST SYN FIN)
    seq: int = 0
    ack: int = 0
    data_offset: int = 5
    reserved: int = 0  # 4 bits between data offset and the flags (incl. the old NS bit)
    window: int = 65535
    checksum: int = 0
    urgent: int = 0

    def pack(self) -> bytes:
        return _TCP.pack(
            self.src_port,
            self.dst_port,
            self.seq,
            self.ack,
            (self.data_offset << 4) | self.reserved,
            self.flags,
            self.window,
            self.checksum,
            self.urgent,
        )


@dataclass(frozen=True, slots=True)
class UDP:
    src_port: int
    dst_port: int
    length: int
    checksum: int = 0

    def pack(self) -> bytes:
        return _UDP.pack(self.src_port, self.dst_port, self.length, self.checksum)


@dataclass(frozen=True, slots=True)
class Frame:
    """A parsed frame. A header is None when it is absent or was not reached (see parse_frame)."""

    ethernet: Ethernet | None
    ipv4: IPv4 | None
    tcp: TCP | None
    udp: UDP | None
    payload: bytes  # everything after the last parsed header
    parser_error: str | None = None  # None, "PacketTooShort", "IPv4BadVersion", "IPv4OptionsNotSupported"

    def pack(self) -> bytes:
        """Deparse: the valid headers in order, then the payload."""
        parts = [h.pack() for h in (self.ethernet, self.ipv4, self.tcp, self.udp) if h is not None]
        parts.append(self.payload)
        return b"".join(parts)

    @property
    def l4_src_port(self) -> int:
        return self.tcp.src_port if self.tcp else self.udp.src_port if self.udp else 0

    @property
    def l4_dst_port(self) -> int:
        return self.tcp.dst_port if self.tcp else self.udp.dst_port if self.udp else 0


# ---------------------------------------------------------------------------------------------
# Checksums


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum: the ones' complement of the ones' complement sum of 16-bit words.

    Computed as one big-int remainder: 2**16 == 1 (mod 0xFFFF), so the folded end-around-carry
    sum of the words equals the whole buffer read as an integer, mod 0xFFFF (with 0xFFFF, not 0,
    for a non-zero buffer). Orders of magnitude faster than a Python loop over words.
    """
    if len(data) & 1:
        data = data + b"\x00"
    n = int.from_bytes(data, "big")
    s = n % 0xFFFF
    if s == 0 and n:
        s = 0xFFFF
    return ~s & 0xFFFF


def l4_segment(frame: Frame) -> bytes:
    """The TCP/UDP segment bytes (header + options + data) bounded by IPv4 totalLen, i.e. without
    Ethernet padding or anything past the IP datagram."""
    assert frame.ipv4 is not None
    l4 = frame.tcp.pack() if frame.tcp else frame.udp.pack() if frame.udp else b""
    seg_len = frame.ipv4.total_len - frame.ipv4.ihl * 4
    return (l4 + frame.payload)[: max(seg_len, 0)]


def l4_checksum(ipv4: IPv4, segment: bytes) -> int:
    """TCP/UDP checksum over the IPv4 pseudo header and `segment` (whose checksum field must be
    zero). The pseudo header length is the segment's length."""
    pseudo = _PSEUDO.pack(ipv4.src, ipv4.dst, 0, ipv4.protocol, len(segment))
    return internet_checksum(pseudo + segment)


def with_l4_checksum(frame: Frame) -> Frame:
    """`frame` with its TCP or UDP checksum recomputed, as a sending host does: a UDP checksum that
    computes to 0 is sent as 0xFFFF (RFC 768), since 0 means "no checksum"."""
    if frame.ipv4 is None:
        return frame
    if frame.tcp is not None:
        zeroed = replace(frame, tcp=replace(frame.tcp, checksum=0))
        return replace(frame, tcp=replace(frame.tcp, checksum=l4_checksum(frame.ipv4, l4_segment(zeroed))))
    if frame.udp is not None:
        zeroed = replace(frame, udp=replace(frame.udp, checksum=0))
        c = l4_checksum(frame.ipv4, l4_segment(zeroed)) or 0xFFFF
        return replace(frame, udp=replace(frame.udp, checksum=c))
    return frame


def ipv4_checksum_ok(data: bytes) -> bool:
    """True when the frame's IPv4 header checksum (over ihl*4 bytes, options included) verifies.
    Raises ValueError when the frame carries no complete IPv4 header."""
    frame = parse_frame(data)
    if frame.ipv4 is None:
        raise ValueError("frame carries no IPv4 header (not etherType 0x0800, or too short)")
    hlen = frame.ipv4.ihl * 4
    header = data[ETH_LEN : ETH_LEN + hlen]
    if hlen < IPV4_LEN or len(header) < hlen:
        return False
    return internet_checksum(header) == 0


def l4_checksum_ok(data: bytes) -> bool:
    """True when the frame's TCP or UDP checksum verifies over the pseudo header and the segment
    (bounded by IPv4 totalLen). A UDP checksum of 0 ("none") is accepted. Raises ValueError when
    the frame carries no TCP or UDP header."""
    frame = parse_frame(data)
    if frame.ipv4 is None or (frame.tcp is None and frame.udp is None):
        raise ValueError(
            "frame carries no parsed TCP or UDP header over IPv4 (another protocol, a fragment, "
            "IPv4 options, or truncated)"
        )
    if frame.udp is not None and frame.udp.checksum == 0:
        return True
    seg = l4_segment(frame)
    if len(seg) != frame.ipv4.total_len - frame.ipv4.ihl * 4:
        return False  # truncated datagram: the checksum cannot verify
    pseudo = _PSEUDO.pack(frame.ipv4.src, frame.ipv4.dst, 0, frame.ipv4.protocol, len(seg))
    return internet_checksum(pseudo + seg) == 0


# ---------------------------------------------------------------------------------------------
# Parse


def parse_frame(data: bytes) -> Frame:
    """Parse as MyParser in p4/load_balancer.p4 does.

    Ethernet; IPv4 when etherType is 0x0800 (the fixed 20-byte header), then verify version 4
    (else parser_error "IPv4BadVersion") and ihl 5 (else "IPv4OptionsNotSupported"; options are
    not skipped, so no L4 header is parsed); TCP when protocol 6, UDP when 17, but only for an
    unfragmented datagram (MF clear and fragment offset 0): a fragment carries no L4 header.
    A header the frame is too short for is left out with parser_error "PacketTooShort".
    Headers extracted before an error stay (v1model hands the packet to ingress with
    parser_error set; the program then drops it)."""
    n = len(data)
    if n < ETH_LEN:
        return Frame(None, None, None, None, data, "PacketTooShort")
    d, s, et = _ETH.unpack_from(data, 0)
    eth = Ethernet(int.from_bytes(d, "big"), int.from_bytes(s, "big"), et)
    if et != ETHERTYPE_IPV4:
        return Frame(eth, None, None, None, data[ETH_LEN:])
    if n < ETH_LEN + IPV4_LEN:
        return Frame(eth, None, None, None, data[ETH_LEN:], "PacketTooShort")
    vi, tos, tlen, ident, ff, ttl, proto, csum, src, dst = _IPV4.unpack_from(data, ETH_LEN)
    ip4 = IPv4(src, dst, proto, tlen, ttl, vi & 0xF, vi >> 4, tos, ident, ff >> 13, ff & 0x1FFF, csum)
    off = ETH_LEN + IPV4_LEN
    if ip4.version != 4:
        return Frame(eth, ip4, None, None, data[off:], "IPv4BadVersion")
    if ip4.ihl != 5:
        return Frame(eth, ip4, None, None, data[off:], "IPv4OptionsNotSupported")
    if ip4.flags & 0x1 or ip4.frag_offset:  # a fragment: no L4 header to parse
        return Frame(eth, ip4, None, None, data[off:])
    if proto == PROTO_TCP:
        if n < off + TCP_LEN:
            return Frame(eth, ip4, None, None, data[off:], "PacketTooShort")
        sp, dp, seq, ack, doff, flags, win, tcsum, urg = _TCP.unpack_from(data, off)
        tcp = TCP(sp, dp, flags, seq, ack, doff >> 4, doff & 0xF, win, tcsum, urg)
        return Frame(eth, ip4, tcp, None, data[off + TCP_LEN :])
    if proto == PROTO_UDP:
        if n < off + UDP_LEN:
            return Frame(eth, ip4, None, None, data[off:], "PacketTooShort")
        sp, dp, ulen, ucsum = _UDP.unpack_from(data, off)
        return Frame(eth, ip4, None, UDP(sp, dp, ulen, ucsum), data[off + UDP_LEN :])
    return Frame(eth, ip4, None, None, data[off:])


# ---------------------------------------------------------------------------------------------
# Build


def build_tcp(
    src: str | int,
    dst: str | int,
    sport: int,
    dport: int,
    flags: int = SYN,
    payload: bytes = b"",
    *,
    seq: int = 0,
    ack: int = 0,
    ttl: int = 64,
    src_mac: str | int = DEFAULT_SRC_MAC,
    dst_mac: str | int = DEFAULT_DST_MAC,
) -> bytes:
    """An Ethernet/IPv4/TCP frame with correct IPv4 and TCP checksums."""
    _check_port(sport, "sport")
    _check_port(dport, "dport")
    if not 0 <= flags <= 0xFF:
        raise ValueError(f"TCP flags {flags:#x} do not fit in 8 bits")
    tcp = TCP(sport, dport, flags, seq, ack)
    return _assemble(src, dst, PROTO_TCP, ttl, src_mac, dst_mac, tcp, None, payload)


def build_udp(
    src: str | int,
    dst: str | int,
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    checksum: bool = True,
    ttl: int = 64,
    src_mac: str | int = DEFAULT_SRC_MAC,
    dst_mac: str | int = DEFAULT_DST_MAC,
) -> bytes:
    """An Ethernet/IPv4/UDP frame; `checksum=False` sends UDP checksum 0 ("none")."""
    _check_port(sport, "sport")
    _check_port(dport, "dport")
    udp = UDP(sport, dport, UDP_LEN + len(payload), 0)
    return _assemble(src, dst, PROTO_UDP, ttl, src_mac, dst_mac, None, udp, payload, checksum)


def build_frame(
    protocol: int | str,
    src: str | int,
    dst: str | int,
    sport: int,
    dport: int,
    flags: int = SYN,
    payload: bytes = b"",
    **kwargs: Any,  # build_tcp's or build_udp's own keywords, checked by the one called
) -> bytes:
    """build_tcp or build_udp by protocol (6/"TCP" or 17/"UDP"); `flags` is ignored for UDP."""
    proto = {"TCP": PROTO_TCP, "UDP": PROTO_UDP}.get(protocol, protocol) if isinstance(protocol, str) else protocol
    if proto == PROTO_TCP:
        return build_tcp(src, dst, sport, dport, flags, payload, **kwargs)
    if proto == PROTO_UDP:
        return build_udp(src, dst, sport, dport, payload, **kwargs)
    raise ValueError(f"build_frame supports TCP (6) and UDP (17), not protocol {protocol!r}")


def _check_port(port: int, what: str) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"{what} {port} does not fit in 16 bits")


def _assemble(
    src: str | int,
    dst: str | int,
    proto: int,
    ttl: int,
    src_mac: str | int,
    dst_mac: str | int,
    tcp: TCP | None,
    udp: UDP | None,
    payload: bytes,
    l4_csum: bool = True,
) -> bytes:
    if not 0 <= ttl <= 0xFF:
        raise ValueError(f"TTL {ttl} does not fit in 8 bits")
    l4_len = (TCP_LEN if tcp else UDP_LEN) + len(payload)
    total = IPV4_LEN + l4_len
    if total > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes makes an IPv4 datagram over 65535 bytes")
    ip4 = IPv4(ip(src), ip(dst), proto, total, ttl).with_checksum()
    frame = Frame(Ethernet(mac(dst_mac), mac(src_mac), ETHERTYPE_IPV4), ip4, tcp, udp, payload)
    if l4_csum:
        frame = with_l4_checksum(frame)
    return frame.pack()
