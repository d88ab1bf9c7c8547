"""The snapshot's value spelling <-> numbers and P4Runtime bytestrings: the one value codec of
the product side (the software switch in reconciler/sim/ keeps its own, so that a stand-in does
not share the product's bugs).

Spelling (schemas/snapshot.schema.json, "entry"), fixed by bit width so that every value has
exactly one spelling and snapshot digests are stable:
  - 32-bit exact fields and params: IPv4 dotted quad, "203.0.113.10", except the params named in
    INTEGER_PARAMS (numbers, not addresses: dnat_draining's generation), which are ints;
  - 32-bit lpm fields: "10.0.0.0/24" (host bits zero; "0.0.0.0/0" is the default route);
  - 48-bit fields and params: lowercase MAC, "aa:bb:cc:dd:ee:ff";
  - every other width: a non-negative int that fits.
On the wire every value is the canonical bytestring of the P4Runtime specification (shortest
big-endian form, 0 as b"\\x00").

Parsing is cached per string: a 5,000-Service snapshot repeats the same addresses, MACs and
prefixes across ~330,000 entries (bench/bench_encode.py). Every error is a ValueError saying what
is wrong with the value; callers add which table and field it was.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import lru_cache

from reconciler.snapshot import Value

__all__ = [
    "INTEGER_PARAMS",
    "Encoder",
    "LpmEncoder",
    "int_bytes",
    "ipv4_int",
    "lpm_encoder",
    "prefix_value",
    "scalar_decoder",
    "scalar_encoder",
    "scalar_value",
]

Encoder = Callable[[object], bytes]
LpmEncoder = Callable[[object], tuple[bytes, int] | None]

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_PREFIX_LEN_RE = re.compile(r"^(0|[1-9][0-9]?)$")
IPV4_WIDTH, MAC_WIDTH = 32, 48
# 32-bit action parameters spelled as ints (the snapshot schema's "generation": integer).
INTEGER_PARAMS = frozenset({"generation"})

# Bytes of every 16-bit value: ports, service ids, buckets, protocols dominate the tables.
_SMALL = tuple(v.to_bytes((v.bit_length() + 7) // 8 or 1, "big") for v in range(1 << 16))


def int_bytes(v: int) -> bytes:
    """The canonical P4Runtime bytestring of a non-negative int."""
    if v < 65536:
        return _SMALL[v]
    return v.to_bytes((v.bit_length() + 7) // 8, "big")


# --- spelling -> int --------------------------------------------------------------------------


@lru_cache(maxsize=1 << 17)
def ipv4_int(text: str) -> int:
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a dotted-quad IPv4 address") from None
    if str(address) != text:  # one spelling per value, as the snapshot schema requires
        raise ValueError(f"{text!r} is not in canonical dotted-quad form ({address})")
    return int(address)


def _ipv4_value(v: object) -> int:
    if type(v) is not str:
        raise ValueError(f"expected an IPv4 address string like '10.0.0.1', got {v!r}")
    return ipv4_int(v)


@lru_cache(maxsize=1 << 12)
def _mac_int(text: str) -> int:
    if not _MAC_RE.match(text):
        raise ValueError(f"expected a lowercase MAC address like 'aa:bb:cc:dd:ee:ff', got {text!r}")
    return int(text.replace(":", ""), 16)


def _mac_value(v: object) -> int:
    if not isinstance(v, str):
        raise ValueError(f"expected a lowercase MAC address like 'aa:bb:cc:dd:ee:ff', got {v!r}")
    return _mac_int(v)


def _int_value(v: object, bitwidth: int) -> int:
    if type(v) is not int:  # also refuses bool, whose type is bool
        raise ValueError(f"expected an integer, got {v!r}")
    if v < 0:
        raise ValueError(f"{v} is negative: it does not fit in {bitwidth} bits (0 .. {(1 << bitwidth) - 1})")
    if v >> bitwidth:
        raise ValueError(f"{v} does not fit in {bitwidth} bits (0 .. {(1 << bitwidth) - 1})")
    return v


def scalar_value(bitwidth: int, v: object) -> int:
    """The number an exact field or action parameter of this width spells."""
    if bitwidth == IPV4_WIDTH:
        return _ipv4_value(v)
    if bitwidth == MAC_WIDTH:
        return _mac_value(v)
    return _int_value(v, bitwidth)


@lru_cache(maxsize=1 << 12)
def _prefix(text: str) -> tuple[int, int]:
    address, sep, length = text.partition("/")
    if not sep:
        raise ValueError(f"expected an IPv4 prefix like '10.0.0.0/24', got {text!r}")
    if not _PREFIX_LEN_RE.match(length) or int(length) > 32:
        raise ValueError(
            f"prefix length in {text!r} is not an integer from 0 to 32 (an IPv4 prefix like '10.0.0.0/24')"
        )
    value, prefix_len = ipv4_int(address), int(length)
    if value & ((1 << (32 - prefix_len)) - 1):
        raise ValueError(f"{text!r} has host bits set beyond the /{prefix_len} prefix")
    return value, prefix_len


def prefix_value(bitwidth: int, v: object) -> tuple[int, int]:
    """(value, prefix length) an LPM field of this width spells."""
    if bitwidth != IPV4_WIDTH:
        raise ValueError(f"LPM on a {bitwidth}-bit field has no snapshot encoding")
    if not isinstance(v, str):
        raise ValueError(f"expected an IPv4 prefix like '10.0.0.0/24', got {v!r}")
    return _prefix(v)


# --- spelling -> bytes (the encoders, compiled once per field) --------------------------------


@lru_cache(maxsize=1 << 17)
def _ipv4_bytes(text: str) -> bytes:
    return int_bytes(ipv4_int(text))


@lru_cache(maxsize=1 << 12)
def _lpm_bytes(text: str) -> tuple[bytes, int] | None:
    value, prefix_len = _prefix(text)
    return None if prefix_len == 0 else (int_bytes(value), prefix_len)


@lru_cache(maxsize=1 << 12)
def _mac_bytes(text: str) -> bytes:
    return int_bytes(_mac_int(text))


def _text_encoder(cached: Callable[[str], bytes], checked: Callable[[object], int]) -> Encoder:
    """The encoder of a value spelled as a string (IPv4, MAC): the cached parse of a string,
    else `checked`, which raises naming what was given."""

    def text(v: object) -> bytes:
        if type(v) is str:
            return cached(v)
        return int_bytes(checked(v))

    return text


def scalar_encoder(bitwidth: int, *, integer: bool = False) -> Encoder:
    """The encoder of one exact field or action parameter of this width (`integer`: spelled as
    an int whatever the width). The fast path takes what is well formed; the checks that name a
    problem run only when it is not."""
    if bitwidth == IPV4_WIDTH and not integer:
        return _text_encoder(_ipv4_bytes, _ipv4_value)
    if bitwidth == MAC_WIDTH and not integer:
        return _text_encoder(_mac_bytes, _mac_value)
    limit = 1 << bitwidth

    def number(v: object) -> bytes:
        if type(v) is int and 0 <= v < limit:  # type(): a bool is refused
            return int_bytes(v)
        return int_bytes(_int_value(v, bitwidth))  # raises, naming the problem

    return number


def lpm_encoder(bitwidth: int) -> LpmEncoder:
    """The encoder of one LPM field: (bytes, prefix length), or None for a /0, which P4Runtime
    leaves out of the entry (9.1.1; BMv2 rejects prefix_len 0)."""
    prefix_value(bitwidth, "0.0.0.0/0")  # raises for widths without a snapshot spelling

    def lpm(v: object) -> tuple[bytes, int] | None:
        if type(v) is str:
            return _lpm_bytes(v)
        prefix_value(bitwidth, v)  # raises, naming what was given
        raise AssertionError("unreachable: prefix_value refuses a non-string")

    return lpm


# --- int -> spelling --------------------------------------------------------------------------


def _ipv4_text(v: int) -> Value:
    return f"{v >> 24}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}"


def _mac_text(v: int) -> Value:
    return ":".join(f"{b:02x}" for b in v.to_bytes(6, "big"))


def _same(v: int) -> Value:
    return v


def scalar_decoder(bitwidth: int, *, integer: bool = False) -> Callable[[int], Value]:
    """The snapshot spelling of a number of this width (read-back values)."""
    if integer:
        return _same
    if bitwidth == IPV4_WIDTH:
        return _ipv4_text
    if bitwidth == MAC_WIDTH:
        return _mac_text
    return _same
