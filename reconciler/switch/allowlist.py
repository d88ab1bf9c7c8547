"""Which switch addresses intent may name: the operator's --allowed-switches.

Intent is untrusted (a pull request, any team's custom resource), and the reconciler pushes
its pipeline and table writes to the address intent names. So a switch must match an entry
the operator gave before any connection is made. Entries:

    10.0.0.0/8            any port on addresses in the CIDR (a bare address is a /32 or /128)
    10.0.0.0/8:9559       only that port
    [fd00::/8]:9559       IPv6 CIDR with a port (a bare IPv6 CIDR without port also works)
    switch.example        a DNS name, matched exactly (case-insensitively), any port
    switch.example:9559   a DNS name and port

A DNS name in intent matches only a name entry (never a CIDR: it could resolve anywhere), and
an address only a CIDR entry. The default is loopback only.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..diagnostics import clip

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOWED = ("127.0.0.0/8", "::1")
FLAG = "--allowed-switches"

_DNS_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class AllowlistError(ValueError):
    """An entry of --allowed-switches that is not one of the accepted forms."""


@dataclass(frozen=True)
class Entry:
    text: str
    network: IPNetwork | None = None
    host: str | None = None  # a DNS name, lower case
    port: int | None = None  # None: any port

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host is not None:
            return self.host == host
        ip = _ip(host)
        if ip is None or self.network is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        return ip.version == self.network.version and ip in self.network


@dataclass(frozen=True)
class Allowlist:
    entries: tuple[Entry, ...]

    def allows(self, host: str, port: int) -> bool:
        """Whether the (normalized) host and port of a switch address may be connected to."""
        return any(e.matches(host.lower().rstrip("."), port) for e in self.entries)

    def describe(self) -> str:
        return ", ".join(e.text for e in self.entries)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise AllowlistError(f"{FLAG} entry {entry!r}: port must be 1 to 65535")
    return int(text)


def _network(text: str, entry: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise AllowlistError(f"{FLAG} entry {entry!r}: {e}") from None


def parse_entry(text: str) -> Entry:
    entry = text.strip()
    if not entry:
        raise AllowlistError(f"{FLAG}: empty entry")
    if entry.startswith("["):  # [v6CIDR]:PORT
        inner, sep, port = entry[1:].partition("]:")
        if not sep:
            raise AllowlistError(f"{FLAG} entry {entry!r}: use [IPv6-CIDR]:PORT, e.g. [fd00::/8]:9559")
        return Entry(entry, network=_network(inner, entry), port=_port(port, entry))
    if entry.count(":") > 1:  # a bare IPv6 address or CIDR
        return Entry(entry, network=_network(entry, entry))
    head, sep, port = entry.partition(":")
    port_no = _port(port, entry) if sep else None
    if _ip(head.partition("/")[0]) is not None:
        return Entry(entry, network=_network(head, entry), port=port_no)
    name = head.lower().rstrip(".")
    if "/" in name or not _DNS_NAME.match(name):
        raise AllowlistError(f"{FLAG} entry {entry!r}: expected CIDR, CIDR:PORT, [IPv6-CIDR]:PORT, HOST or HOST:PORT")
    return Entry(entry, host=name, port=port_no)


def parse_allowlist(values: Iterable[str] | None) -> Allowlist:
    """The allowlist from the repeatable, comma-separated flag values (None/empty: the default)."""
    texts = [part for value in (values or ()) for part in value.split(",") if part.strip()]
    return Allowlist(tuple(parse_entry(t) for t in (texts or DEFAULT_ALLOWED)))


def refusals(allowlist: Allowlist, switches: Sequence[tuple[str, str, tuple[str, int] | str]]) -> list[str]:
    """One message per switch (name, address as written, parsed endpoint or its error) that may
    not be connected to."""
    out = []
    for name, address, endpoint in switches:
        shown = clip(address)
        if isinstance(endpoint, str):
            out.append(f"switch {name!r} address {shown!r}: {endpoint}")
        elif not allowlist.allows(*endpoint):
            out.append(
                f"switch {name!r} address {shown!r} is not allowed by {FLAG} ({allowlist.describe()}): "
                f"refused before connecting; the operator allows it with {FLAG}"
            )
    return out
