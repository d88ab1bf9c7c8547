"""A snapshot's encoded entries, stored so that a fresh process reuses them (issue 13).

`reconcile --once` is a new process each run; encoding every entry of the last applied
snapshot and of the target (switch/wire.py) costs it more than anything else once the switches
answer. The bytes of a Service's entries depend only on its fragment (ServiceSnapshot
.fragment_digest: same digest, same entries) and on the P4Info, so the last run's bytes are
stored by fragment digest, and the next run encodes only the Services whose fragment is new.

The stored form is one protobuf message (a type built here from a descriptor, parsed by
protobuf's C parser: 350,000 entries load in tens of milliseconds, where a loop per entry would
cost what it saves), behind a header with the format version and a sha256 of the message: a
stored byte that changed would otherwise be written to a switch as it is and then read back as
"equal". Anything that does not check out raises ValueError; the caller then encodes as before.
The sha256 finds damage, not intent (it has no key): the file belongs where only the writers of
the audit repository can write.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, groupby, repeat
from types import MappingProxyType
from typing import Any, Protocol

from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError

from reconciler.p4info import PipelineInfo
from reconciler.protowire import message_classes, varint
from reconciler.snapshot import ServiceSnapshot
from reconciler.switch.translate import per_info

__all__ = ["FORMAT_VERSION", "EncodedLayout", "KnownEncodings", "dump_encodings", "info_key", "load_encodings"]

FORMAT_VERSION = 1
_MAGIC = b"p4kube-encoded-entries\x00"
_HEAD = len(_MAGIC) + 2 + 32  # magic, version (2 bytes, big-endian), sha256 of the message
_DIGEST = re.compile(r"[0-9a-f]{64}")
_DIGESTS = re.compile(r"(?:[0-9a-f]{64})*")
# What the bytes mean: bump it with any change to switch/wire.py's canonical form, so that bytes
# stored by another version are not taken for ours (of_snapshot also re-encodes a sample).
_ENCODING = "p4runtime-canonical-table-entry/1"

Encoded = tuple[tuple[bytes, ...], tuple[str, ...]]  # a Service's entries' bytes, and each one's table


@dataclass(frozen=True)
class KnownEncodings:
    """Fragment digest -> that Service's entries as EncodedEntries.of_snapshot lays them out
    (encode_service: the bytes, and each one's table), valid for the P4Info whose info_key()
    is `info_key` alone."""

    info_key: str
    services: Mapping[str, Encoded]

    def __len__(self) -> int:
        return len(self.services)

    def for_info(self, info: PipelineInfo) -> bool:
        """Whether these bytes were encoded for `info` (same tables, actions, ids and widths)."""
        return self.info_key == info_key(info)


class EncodedLayout(Protocol):
    """What dump_encodings needs of an EncodedEntries (switch/wire.py, which imports this module)."""

    @property
    def blobs(self) -> Sequence[bytes]: ...

    @property
    def tables(self) -> Sequence[str]: ...

    def service_layout(self) -> tuple[PipelineInfo, Sequence[ServiceSnapshot], Sequence[int]] | None: ...


_KEYS: dict[int, tuple[PipelineInfo, str]] = {}


def info_key(info: PipelineInfo) -> str:
    """sha256 of what the encoding depends on in `info` (every table's and action's id, match
    fields, params and widths), and of the encoding's own version."""
    return per_info(_KEYS, info, _info_key)


def _info_key(info: PipelineInfo) -> str:
    tables = [
        [t.name, t.id, [[f.name, f.id, f.bitwidth, f.match_type] for f in t.match_fields], list(t.action_ids),
         sorted(t.default_only_action_ids)]
        for t in sorted(info.tables.values(), key=lambda t: t.name)
    ]
    actions = [[a.name, a.id, [[p.name, p.id, p.bitwidth] for p in a.params]]
               for a in sorted(info.actions.values(), key=lambda a: a.name)]
    text = json.dumps([_ENCODING, tables, actions], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _message_type() -> Any:
    """The stored message, built from a descriptor (no .proto of our own to compile). Per Service
    (in `digests` order): its entry count and its number of table runs; per run (a table's
    consecutive entries): the table (index into table_names and table_ids) and its length; then
    every entry's bytes, Service after Service."""
    f = descriptor_pb2.FieldDescriptorProto
    fields = [("info_key", f.TYPE_STRING, f.LABEL_OPTIONAL), ("digests", f.TYPE_STRING, f.LABEL_REPEATED),
              ("counts", f.TYPE_UINT32, f.LABEL_REPEATED), ("runs", f.TYPE_UINT32, f.LABEL_REPEATED),
              ("run_tables", f.TYPE_UINT32, f.LABEL_REPEATED), ("run_lengths", f.TYPE_UINT32, f.LABEL_REPEATED),
              ("table_names", f.TYPE_STRING, f.LABEL_REPEATED), ("blobs", f.TYPE_BYTES, f.LABEL_REPEATED),
              ("table_ids", f.TYPE_UINT32, f.LABEL_REPEATED)]
    numbered = [(name, number, kind, label) for number, (name, kind, label) in enumerate(fields, 1)]
    return message_classes("p4kube/encoded_memo.proto", "p4kube.memo", {"Encodings": numbered})[0]


_ENCODINGS = _message_type()


def dump_encodings(encoded: EncodedLayout) -> bytes:
    """The Services' entries of `encoded` (made by EncodedEntries.of_snapshot or .of), by
    fragment digest, as load_encodings reads them. The global entries are left out (they are
    few, and no digest names them). ValueError for entries not laid out per Service."""
    layout = encoded.service_layout()
    if layout is None:
        raise ValueError("these encoded entries were not made per Service (EncodedEntries.of_snapshot)")
    info, services, starts = layout
    blobs, tables = encoded.blobs, encoded.tables
    names: dict[str, int] = {}
    shapes: dict[tuple[str, ...], tuple[list[int], list[int]]] = {}  # a Service's tables -> its runs
    digests: list[str] = []
    counts: list[int] = []
    runs: list[int] = []
    run_tables: list[int] = []
    run_lengths: list[int] = []
    kept: list[bytes] = []
    seen: set[str] = set()
    for k, svc in enumerate(services):
        digest = svc.fragment_digest
        if digest in seen:
            continue  # the same fragment twice: the same entries, stored once
        seen.add(digest)
        start, stop = starts[k], starts[k + 1]
        own = tuple(tables[start:stop])
        shape = shapes.get(own)
        if shape is None:
            grouped = [(t, len(list(group))) for t, group in groupby(own)]
            shape = shapes[own] = ([names.setdefault(t, len(names)) for t, _ in grouped], [n for _, n in grouped])
        digests.append(digest)
        counts.append(stop - start)
        runs.append(len(shape[0]))
        run_tables += shape[0]
        run_lengths += shape[1]
        kept += blobs[start:stop]
    msg = _ENCODINGS(info_key=info_key(info), digests=digests, counts=counts, runs=runs, run_tables=run_tables,
                     run_lengths=run_lengths, blobs=kept)
    msg.table_names.extend(names)
    msg.table_ids.extend([info.table(t).id for t in names])
    body: bytes = msg.SerializeToString()
    return _MAGIC + FORMAT_VERSION.to_bytes(2, "big") + hashlib.sha256(body).digest() + body


def load_encodings(data: bytes, *, checked: bool = False) -> KnownEncodings:
    """What dump_encodings wrote; ValueError saying why for anything else (another format
    version, a damaged or truncated file, counts that do not add up). `checked`: the caller
    has checked these very bytes with a digest of its own (pass_cache, over the whole file),
    so the body's checksum is not computed a second time (~30 ms for 22 MB)."""
    if not data.startswith(_MAGIC):
        raise ValueError("not stored encoded entries: the p4kube-encoded-entries header is missing")
    if len(data) < _HEAD:
        raise ValueError("stored encoded entries: truncated header")
    version = int.from_bytes(data[len(_MAGIC):len(_MAGIC) + 2], "big")
    if version != FORMAT_VERSION:
        raise ValueError(f"stored encoded entries: format version {version}, this reconciler reads version {FORMAT_VERSION}")
    body = memoryview(data)[_HEAD:]
    if not checked and hashlib.sha256(body).digest() != data[_HEAD - 32:_HEAD]:
        raise ValueError("stored encoded entries: checksum mismatch (the file is damaged or truncated)")
    try:
        msg = _ENCODINGS.FromString(body)
    except DecodeError as e:
        raise ValueError(f"stored encoded entries: the message does not parse: {e}") from None
    return KnownEncodings(msg.info_key, MappingProxyType(_services(msg)))


def _bad(why: str) -> ValueError:
    return ValueError(f"stored encoded entries: {why}")


def _services(msg: Any) -> dict[str, Encoded]:
    """The message's Services, checked: every count adds up before anything is sliced."""
    digests, counts, runs = list(msg.digests), list(msg.counts), list(msg.runs)
    run_tables, run_lengths, names = list(msg.run_tables), list(msg.run_lengths), tuple(msg.table_names)
    heads = [b"\x08" + varint(i) for i in msg.table_ids]  # how a TableEntry of each table starts
    blobs = tuple(msg.blobs)
    if not _DIGEST.fullmatch(msg.info_key):
        raise _bad("no P4Info key")
    if not len(digests) == len(counts) == len(runs):
        raise _bad(f"{len(digests)} Services but {len(counts)} entry counts and {len(runs)} run counts")
    if sum(counts) != len(blobs):
        raise _bad(f"the Services' entry counts add up to {sum(counts)}, but {len(blobs)} entries are stored")
    if not sum(runs) == len(run_tables) == len(run_lengths):
        raise _bad(f"the Services' run counts add up to {sum(runs)}, but {len(run_tables)} tables "
                   f"and {len(run_lengths)} lengths of runs are stored")
    if len(set(names)) != len(names) or not all(names) or len(heads) != len(names) or len(set(heads)) != len(heads):
        raise _bad("table names or ids missing, empty or repeated")
    if run_tables and max(run_tables) >= len(names):
        raise _bad(f"a run names table {max(run_tables)} of {len(names)}")
    if run_lengths and min(run_lengths) == 0:
        raise _bad("an empty run")
    if len(set(digests)) != len(digests) or set(map(len, digests)) - {64} or not _DIGESTS.fullmatch("".join(digests)):
        raise _bad("fragment digests malformed or repeated")
    # Loops over Services and runs only (C-level where they touch entries): a loop per entry
    # would cost what storing the bytes saves.
    run_ends = list(accumulate(run_lengths, initial=0))  # run k: entries run_ends[k] .. run_ends[k + 1] - 1
    svc_ends = list(accumulate(counts, initial=0))
    svc_runs = list(accumulate(runs, initial=0))
    held = [run_ends[j] for j in svc_runs]
    if held != svc_ends:
        k = next(k for k in range(1, len(held)) if held[k] != svc_ends[k]) - 1
        raise _bad(f"Service {digests[k][:12]}: {counts[k]} entries, but its runs hold {held[k + 1] - held[k]}")
    run_heads = [heads[t] for t in run_tables]
    firsts = [blobs[i] for i in run_ends[:-1]]
    lasts = [blobs[i - 1] for i in run_ends[1:]]
    if not (all(map(bytes.startswith, firsts, run_heads)) and all(map(bytes.startswith, lasts, run_heads))):
        k = next(k for k, h in enumerate(run_heads) if not (firsts[k].startswith(h) and lasts[k].startswith(h)))
        raise _bad(f"entries {run_ends[k]}..{run_ends[k + 1] - 1} are not all of table {names[run_tables[k]]}")
    # Services of one shape (the same runs) share one tables tuple: a few shapes, 5,000 Services.
    run_spans = list(map(slice, svc_runs, svc_runs[1:]))
    shapes = zip(map(tuple, map(run_tables.__getitem__, run_spans)), map(tuple, map(run_lengths.__getitem__, run_spans)))
    by_shape: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[str, ...]] = {}
    tables: list[tuple[str, ...]] = []
    for shape in shapes:
        made = by_shape.get(shape)
        if made is None:
            made = by_shape[shape] = tuple(chain.from_iterable(map(repeat, [names[t] for t in shape[0]], shape[1])))
        tables.append(made)
    return dict(zip(digests, zip(map(blobs.__getitem__, map(slice, svc_ends, svc_ends[1:])), tables)))
