"""Long-lived TCP connections to a Service's VIP, followed packet by packet through a switch's
model of load_balancer.p4: opened (SYN) before a scale event, then sent a data packet while the
moved buckets drain and again after the drain (DESIGN.md 5.1, docs/dataplane.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..sim.packet import ACK, PSH, SYN, build_tcp, ip, ip_str, parse_frame
from ..sim.pipeline import flow_bucket
from ..sim.server import SoftwareSwitch
from .checks import CLIENT_PORT
from .errors import DemoFailed

TCP = 6
FIRST_PORT = 40000  # client ports are searched upwards from here


@dataclass(frozen=True)
class Connection:
    """One client connection and the node its SYN reached."""

    src: str
    sport: int
    bucket: int
    node: str

    def __str__(self) -> str:
        return f"{self.src}:{self.sport} (bucket {self.bucket})"


class Traffic:
    """TCP packets from clients to one VIP through one switch's pipeline, and the node each
    reaches (its destination rewritten to that node's address and the Service's nodePort)."""

    def __init__(self, switch: SoftwareSwitch, vip: str, port: int, bucket_count: int,
                 nodes_by_ip: Mapping[str, str], node_port: int) -> None:
        self.switch, self.vip, self.port = switch, vip, port
        self.mask = bucket_count - 1
        self.nodes_by_ip, self.node_port = nodes_by_ip, node_port

    def ports_for(self, src: str, buckets: Iterable[int]) -> dict[int, int]:
        """bucket -> the lowest client port from FIRST_PORT whose flow from `src` hashes into it."""
        wanted, out = set(buckets), {}
        for sport in range(FIRST_PORT, 65536):
            b = flow_bucket(ip(src), ip(self.vip), TCP, sport, self.port, self.mask)
            if b in wanted and b not in out:
                out[b] = sport
                if len(out) == len(wanted):
                    return out
        raise DemoFailed(f"no client port from {src} hashes into buckets {sorted(wanted - set(out))}")

    def open(self, src: str, buckets: Iterable[int]) -> tuple[Connection, ...]:
        """One new connection (its SYN) from `src` into each bucket."""
        return tuple(Connection(src, sport, b, self.send(src, sport, SYN))
                     for b, sport in sorted(self.ports_for(src, buckets).items()))

    def data(self, conn: Connection) -> str:
        """A data packet (ACK, PSH) of an open connection: the node it reaches."""
        return self.send(conn.src, conn.sport, ACK | PSH)

    def send(self, src: str, sport: int, flags: int) -> str:
        out = self.switch.inject(1, CLIENT_PORT, build_tcp(src, self.vip, sport, self.port, flags, b"x"))
        flow = f"TCP {src}:{sport} -> {self.vip}:{self.port}"
        if out.dropped or out.data is None:
            raise DemoFailed(f"{flow} was dropped: {out.trace}")
        frame = parse_frame(out.data)
        assert frame.ipv4 is not None and frame.tcp is not None
        dst, dport = ip_str(frame.ipv4.dst), frame.tcp.dst_port
        node = self.nodes_by_ip.get(dst)
        if node is None or dport != self.node_port:
            raise DemoFailed(f"{flow} went to {dst}:{dport}, not to a node's nodePort {self.node_port}: {out.trace}")
        return node


__all__ = ["Connection", "Traffic"]
