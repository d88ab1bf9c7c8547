"""allocate.ipv4_int, the address-to-integer of the VIP pools (issue 13: resume seeds 5,000 VIPs):
exactly int(ipaddress.IPv4Address(v)) for every string, answering or raising alike."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.render.allocate import ipv4_int


def _reference(v: object) -> int | str:
    try:
        return int(ipaddress.IPv4Address(v))  # type: ignore[arg-type]
    except Exception as e:  # noqa: BLE001 - the kind of failure is what is compared
        return type(e).__name__


def _fast(v: object) -> int | str:
    try:
        return ipv4_int(v)  # type: ignore[arg-type]
    except Exception as e:  # noqa: BLE001
        return type(e).__name__


@given(st.ip_addresses(v=4))
def test_every_address_in_its_canonical_form(address: ipaddress.IPv4Address) -> None:
    assert ipv4_int(str(address)) == int(address)


_PIECES = st.sampled_from(["0", "00", "01", "1", "9", "10", "255", "256", "0x1", "1e2", "-1", "+1", " ", "", "\x00", "٣"])


@given(st.one_of(
    st.lists(_PIECES, min_size=1, max_size=6).map(".".join),
    st.text(alphabet="0123456789.x ", max_size=18),
    st.text(max_size=12),
))
def test_any_other_string_is_answered_or_refused_as_ipaddress_does(text: str) -> None:
    assert _fast(text) == _reference(text)


@pytest.mark.parametrize("v", ["010.1.1.1", "1.2.3", "1.2.3.04", " 1.2.3.4", "1.2.3.4\n", "256.0.0.1", "1.2.3.4\x00", 167772161, None])
def test_forms_inet_pton_and_ipaddress_read_otherwise(v: object) -> None:
    assert _fast(v) == _reference(v)
