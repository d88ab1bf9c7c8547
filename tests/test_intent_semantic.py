"""Parsers and cross-config checks of reconciler.intent.semantic."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.intent.semantic import (
    DocumentFacts,
    SwitchClaim,
    VipRange,
    Where,
    check_across,
    parse_endpoint,
    parse_ipv4_network,
    parse_vip_entry,
)


def ip(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10.0.0.1:9559", ("10.0.0.1", 9559)),
        ("Leaf-1.Example.COM:1", ("leaf-1.example.com", 1)),
        ("switch.example.com.:65535", ("switch.example.com", 65535)),
        ("[2001:DB8::1]:9559", ("2001:db8::1", 9559)),
        ("localhost:9559", ("localhost", 9559)),
    ],
)
def test_parse_endpoint_valid(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("10.0.0.1", 'missing port in "10.0.0.1": use host:port, e.g. 10.0.0.1:9559'),
        ("10.0.0.1:0", 'invalid port "0" in "10.0.0.1:0": must be 1 to 65535'),
        ("10.0.0.1:65536", 'invalid port "65536" in "10.0.0.1:65536": must be 1 to 65535'),
        ("10.0.0.1:http", 'invalid port "http" in "10.0.0.1:http": must be 1 to 65535'),
        ("10.0.0.256:1", 'invalid IPv4 address "10.0.0.256"'),
        ("2001:db8::1:9559", "an IPv6 address needs brackets: use [2001:db8::1]:9559"),
        ("[2001:db8::zz]:1", 'invalid IPv6 address "2001:db8::zz" in "[2001:db8::zz]:1"'),
        ("[2001:db8::1]", 'invalid address "[2001:db8::1]": use [IPv6]:port, e.g. [2001:db8::1]:9559'),
        (":9559", 'missing host in ":9559"'),
        ("bad_host:1", 'invalid host "bad_host": expected an IPv4 address, [IPv6] or a DNS name'),
    ],
)
def test_parse_endpoint_errors(text: str, message: str) -> None:
    assert parse_endpoint(text) == message


def test_parse_vip_entry_forms() -> None:
    assert parse_vip_entry("203.0.113.0/30") == (ip("203.0.113.0"), ip("203.0.113.3"))
    assert parse_vip_entry("203.0.113.9/32") == (ip("203.0.113.9"), ip("203.0.113.9"))
    assert parse_vip_entry("203.0.113.10-203.0.113.20") == (ip("203.0.113.10"), ip("203.0.113.20"))
    assert parse_vip_entry("203.0.113.7") == (ip("203.0.113.7"), ip("203.0.113.7"))
    assert parse_vip_entry("203.0.113.7-203.0.113.7") == (ip("203.0.113.7"), ip("203.0.113.7"))
    assert parse_vip_entry("203.0.113.007") == 'invalid IPv4 address "203.0.113.007"'  # ambiguous octal
    assert parse_vip_entry("2001:db8::1") == 'IPv6 address "2001:db8::1" is not supported: only IPv4'
    assert parse_vip_entry("203.0.113.1/") == 'invalid prefix length / in "203.0.113.1/": must be 0 to 32'


def test_host_bits_message_names_the_fix() -> None:
    assert parse_ipv4_network("10.1.2.3/16") == "10.1.2.3/16 has host bits set: use 10.1.0.0/16 for the whole network, or 10.1.2.3/32 for one address"
    assert parse_ipv4_network("10.1.0.0/16") == ipaddress.IPv4Network("10.1.0.0/16")


def where(n: int, file: str = "f.yaml") -> Where:
    return Where(file, n, 1, f"spec.vipPools[0].addresses[{n}]")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), min_size=1, max_size=12))
def test_overlaps_are_reported_at_the_later_range(spans: list[tuple[int, int]]) -> None:
    base = int(ip("198.51.100.0"))
    ranges = [
        VipRange(ipaddress.IPv4Address(base + lo), ipaddress.IPv4Address(base + lo + n), f"r{i}", "p", "ns/c", where(i))
        for i, (lo, n) in enumerate(spans)
    ]
    facts = [DocumentFacts("ns/c", where(100), tuple(ranges[:5])), DocumentFacts("ns/d", where(101), tuple(ranges[5:]))]
    reported = {d.line for d in check_across(facts)}
    expected = {i for i, (lo, n) in enumerate(spans) if any(lo <= lo2 + n2 and lo2 <= lo + n for lo2, n2 in spans[:i])}
    assert reported == expected


def test_switch_claims_by_name_and_by_endpoint() -> None:
    def claim(name: str, host: str, device: int, config: str, line: int) -> SwitchClaim:
        at = Where("f.yaml", line, 1, "spec.switchConfig.switches[0].name")
        return SwitchClaim(name, (host, 9559, device), f"{host}:9559", device, config, at, at)

    facts = [
        DocumentFacts("ns/a", Where("f.yaml", 1, 1, "metadata.name"), (), (claim("s1", "10.0.0.1", 1, "ns/a", 10),)),
        DocumentFacts(
            "ns/b",
            Where("f.yaml", 2, 1, "metadata.name"),
            (),
            (
                claim("s2", "10.0.0.1", 2, "ns/b", 20),  # other device id on the same address: fine
                claim("s3", "10.0.0.1", 1, "ns/b", 30),  # same address and device as s1
                claim("s1", "10.0.0.9", 1, "ns/b", 40),  # same name as s1
            ),
        ),
        DocumentFacts("ns/a", Where("g.yaml", 3, 1, "metadata.name")),
    ]
    assert [str(d) for d in check_across(facts)] == [
        "g.yaml:3:1: metadata.name: LoadBalancerConfig ns/a is already defined at f.yaml:1",
        'f.yaml:30:1: spec.switchConfig.switches[0].name: switch 10.0.0.1:9559 device 1 is already claimed as "s1" by ns/a (f.yaml:10)',
        'f.yaml:40:1: spec.switchConfig.switches[0].name: switch "s1" is already claimed by ns/a (f.yaml:10)',
    ]
