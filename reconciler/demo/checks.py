"""What the demo verifies after each step, from the outside: both switches' tables read back
and compared with the snapshot, and a packet sent through the primary's pipeline."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..sim.packet import SYN, build_tcp, ip, ip_str, parse_frame
from ..sim.pipeline import flow_bucket
from ..sim.server import SoftwareSwitch
from ..snapshot import Snapshot
from .errors import DemoFailed

CLIENT = ("10.200.0.7", 40001)  # one fixed flow, so the node it lands on is the same every run
CLIENT_PORT = 2  # the switch port clients arrive on; the nodes are behind port 1 (the route)

Entries = frozenset[tuple[Any, ...]]


@dataclass(frozen=True)
class SwitchCheck:
    """Both switches' tables, read from the switches at one moment, against the snapshot."""

    label: str
    version: int
    held: Mapping[str, Entries]  # switch name -> every entry it holds
    expected: Entries  # the snapshot's entries

    @property
    def ok(self) -> bool:
        return all(h == self.expected for h in self.held.values())


def check_switches(switches: Mapping[str, SoftwareSwitch], tables: Sequence[str], snap: Snapshot,
                   label: str = "") -> SwitchCheck:
    """Read every switch's tables and compare them with the snapshot; DemoFailed unless each
    holds exactly the snapshot's entries."""
    held = {name: _switch_entries(sw, tables) for name, sw in switches.items()}
    result = SwitchCheck(label or f"v{snap.version}", snap.version, held, _snapshot_entries(snap))
    if not result.ok:
        details = "; ".join(f"{k}: {len(v - result.expected)} extra, {len(result.expected - v)} missing"
                            for k, v in held.items())
        raise DemoFailed(f"the switches do not hold {result.label}: {details}")
    return result


def check_packet(switch: SoftwareSwitch, name: str, snap: Snapshot, service: str,
                 vip: tuple[str, int] | None = None) -> str:
    """One TCP SYN through the switch's pipeline; returns what it showed, in words. A Service on
    the switches: the node it lands on must be the one the snapshot's bucket assignment names
    for the flow's hash. A fallen back Service (`vip` given): the VIP must miss and be routed to
    the nodes unchanged."""
    src, sport = CLIENT
    svc = snap.by_name.get(service)
    if vip is not None:
        dst_ip, dst_port = vip
    else:
        assert svc is not None, f"{service} is not in v{snap.version}"  # the steps name Services they put there
        dst_ip, dst_port = svc.vip, svc.port
    out = switch.inject(1, CLIENT_PORT, build_tcp(src, dst_ip, sport, dst_port, SYN))
    if out.dropped or out.data is None:
        raise DemoFailed(f"a SYN to {service}'s VIP {dst_ip}:{dst_port} was dropped: {out.trace}")
    frame = parse_frame(out.data)
    assert frame.ipv4 is not None and frame.tcp is not None
    dst, dport = ip_str(frame.ipv4.dst), frame.tcp.dst_port
    flow = f"SYN {src}:{sport} -> {dst_ip}:{dst_port} ({service})"
    if vip is not None:
        if (dst, dport) != (dst_ip, dst_port):
            raise DemoFailed(f"{flow} was balanced to {dst}:{dport} although {service} is not on the switches")
        return (f"{flow} misses vip_table and leaves {name} unchanged on port {out.egress_port}, towards the "
                f"nodes: kube-proxy's path")
    assert svc is not None
    node = {b.address: b.node for b in svc.backends}.get(dst)
    bucket = flow_bucket(ip(src), ip(svc.vip), 6, sport, svc.port, svc.bucket_count - 1)
    if node is None or node != svc.assignment[bucket]:
        raise DemoFailed(f"{flow} went to {dst}:{dport}; the snapshot sends bucket {bucket} to {svc.assignment[bucket]}")
    return (f"{flow} leaves {name} on port {out.egress_port} for {node} at {dst}:{dport}: "
            f"bucket {bucket} of {svc.bucket_count}, the node the snapshot assigns it")


def _value(v: Any) -> Any:
    """A snapshot value as the switch holds it: IPv4 and MAC as integers, a prefix as (int, len)."""
    if isinstance(v, int):
        return v
    if "/" in v:
        net = ipaddress.IPv4Network(v)
        return (int(net.network_address), net.prefixlen)
    if ":" in v:
        return int(v.replace(":", ""), 16)
    return int(ipaddress.IPv4Address(v))


def _snapshot_entries(snap: Snapshot) -> Entries:
    return frozenset(
        (e.table, tuple(map(_value, e.key)), e.action, tuple(map(_value, e.args)))
        for es in snap.tables().values() for e in es
    )


def _switch_entries(sw: SoftwareSwitch, tables: Sequence[str]) -> Entries:
    return frozenset(
        (t, tuple(v.key), v.action, tuple(v.params.values())) for t in tables for v in sw.entries(1, t)
    )


__all__ = ["CLIENT", "CLIENT_PORT", "Entries", "SwitchCheck", "check_packet", "check_switches"]
