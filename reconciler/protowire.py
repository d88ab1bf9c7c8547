"""Protocol Buffers wire-format pieces for messages assembled from cached bytes for speed
(reconciler.switch.wire, the software switch's read responses and status trailers): varints and
length-delimited fields. protobuf itself builds and parses everything else."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


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


def message_classes(file: str, package: str, messages: Mapping[str, Sequence[tuple[str, int, int, int]]]) -> list[Any]:
    """Message classes made at run time from a descriptor, for framings of our own that
    protobuf's C parser then cuts (no .proto of ours to compile): per message, its fields as
    (name, number, FieldDescriptorProto type, label). In the order of `messages`."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name=file, package=package, syntax="proto3")
    for name, fields in messages.items():
        msg = proto.message_type.add(name=name)
        for field, number, kind, label in fields:
            msg.field.add(name=field, number=number, type=kind, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return [message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}")) for name in messages]
