"""Protocol Buffers wire-format pieces for messages assembled from cached bytes for speed
(reconciler.switch.wire, the software switch's read responses and status trailers): varints and
length-delimited fields. protobuf itself builds and parses everything else."""

from __future__ import annotations


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SHORT = tuple(_varint(n) for n in range(1 << 14))  # ids and sub-message lengths: nearly always short


def varint(n: int) -> bytes:
    """The base-128 varint encoding of a non-negative int."""
    return _SHORT[n] if n < 16384 else _varint(n)


def length_delimited(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) whose key fits one byte (`tag`: field << 3 | 2)."""
    return bytes((tag,)) + varint(len(payload)) + payload
