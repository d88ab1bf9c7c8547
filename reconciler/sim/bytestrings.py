"""P4Runtime bytestrings: lenient decoding on input, canonical encoding on output.

The specification (section "Bytestrings") accepts any length as long as the *value* fits the
P4Info bitwidth, and the canonical form is the shortest string (0 is b"\\x00"). BMv2/PI does the
same, except that it also accepts an empty string as 0, where the specification rejects it.
"""

from __future__ import annotations

from functools import lru_cache


class BytestringError(ValueError):
    """A bytestring that does not fit its field (or is empty where that is not allowed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def decode(value: bytes, bitwidth: int, allow_empty: bool) -> int:
    """Return the unsigned integer held by `value`, checking that it fits in `bitwidth` bits."""
    if not value:
        if allow_empty:
            return 0
        raise BytestringError("Bytestring must not be empty")
    number = int.from_bytes(value, "big")
    if number >> bitwidth:
        raise BytestringError(f"Bytestring provided does not fit within {bitwidth} bits")
    return number


@lru_cache(maxsize=4096)
def _small(number: int) -> bytes:
    return number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big")


def encode(number: int) -> bytes:
    """Canonical (shortest) big-endian form; 0 encodes as b"\\x00"."""
    if number < 65536:
        return _small(number)
    return number.to_bytes((number.bit_length() + 7) // 8, "big")
