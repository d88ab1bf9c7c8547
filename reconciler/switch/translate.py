"""Snapshot entries <-> P4Runtime messages, and a snapshot diff -> ordered WriteRequests. Pure.

Values use the snapshot spelling fixed by bit width and go on the wire as canonical bytestrings
(both in reconciler/switch/codec.py); an LPM field with prefix length 0 is left out of the entry
altogether, as the specification requires (BMv2 rejects prefix_len 0).

Why our own encoder rather than finsy's P4TableEntry.encode: a 5,000-Service snapshot holds
~330,000 entries and the first apply (and every rollback to it) encodes all of them. finsy builds
a P4TableEntry/P4TableMatch/P4TableAction per entry and parses each value string on every call;
bench/bench_encode.py measures both on the same snapshot (numbers in its docstring). Here each
(table, action) pair is compiled once per P4Info into id/width lookups, and value strings are
parsed once (IPv4, MAC and prefix strings repeat across entries).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Never, TypeVar, cast

from finsy.proto import p4r

from reconciler.diff import Update
from reconciler.p4info import PipelineInfo, TableInfo
from reconciler.snapshot import Entry, Value
from reconciler.switch.codec import INTEGER_PARAMS, Encoder, LpmEncoder, lpm_encoder, scalar_decoder, scalar_encoder

__all__ = [
    "TranslationError",
    "check_election_base",
    "describe_update",
    "election_id_proto",
    "entry_to_proto",
    "proto_to_entry",
    "split_election_id",
    "updates_to_requests",
    "wire_election_id",
    "write_counts",
]

UPDATE_TYPES = {"INSERT": p4r.Update.INSERT, "MODIFY": p4r.Update.MODIFY, "DELETE": p4r.Update.DELETE}
_UPDATE_NAMES: dict[int, str] = {v: k for k, v in UPDATE_TYPES.items()}
_MAX_U128 = (1 << 128) - 1


class TranslationError(ValueError):
    """An entry or message that does not fit the P4Info; the message names table and field."""


ELECTION_BASE_LIMIT = 1 << 64  # the base election id (a leader term) is the high 64 bits


def check_election_base(base: int) -> int:
    """Validate a base election id (the Lease term, or --election-id): 1 .. 2**64-1."""
    if isinstance(base, bool) or not isinstance(base, int):
        raise TranslationError(f"election id must be an integer, got {base!r}")
    if not 0 < base < ELECTION_BASE_LIMIT:
        raise TranslationError(
            f"election id {base} is not in 1 .. 2**64-1: it is the high 64 bits of the 128-bit "
            "P4Runtime election id (the low 64 bits count fenced sessions within one term)"
        )
    return base


def wire_election_id(base: int, counter: int) -> int:
    """The 128-bit P4Runtime election id of a session: (base << 64) | counter.

    `base` is the controller's term (Lease transitions + 1, or --election-id) and `counter`
    grows with every session the process opens in that term, so a session opened to fence a
    timed-out Write has a strictly higher id than the one that sent it, and still a lower one
    than any session of the next term (base + 1). Compare wire ids as 128-bit integers."""
    check_election_base(base)
    if not 0 <= counter < 1 << 64:
        raise TranslationError(f"fencing counter {counter} does not fit in 64 bits")
    return (base << 64) | counter


def split_election_id(election_id: int) -> tuple[int, int]:
    """(base, counter) of a wire election id: the inverse of wire_election_id."""
    return election_id >> 64, election_id & 0xFFFFFFFFFFFFFFFF


def election_id_proto(election_id: int) -> p4r.Uint128:
    """The 128-bit election id as a p4.v1.Uint128 (0 is refused: BMv2 treats it as "no id")."""
    if isinstance(election_id, bool) or not isinstance(election_id, int):
        raise TranslationError(f"election id must be an integer, got {election_id!r}")
    if not 0 < election_id <= _MAX_U128:
        raise TranslationError(f"election id {election_id} is not in 1 .. 2**128-1")
    high, low = split_election_id(election_id)
    return p4r.Uint128(high=high, low=low)


# --- per-P4Info compiled lookups --------------------------------------------------------------

_EXACT, _LPM = 0, 1
EXACT, LPM = _EXACT, _LPM  # a compiled table's `kinds` (switch/wire.py builds on them)


class _ActionCodec:
    __slots__ = ("name", "id", "params", "encoders", "param_ids", "decoders", "widths", "default_only")

    def __init__(self, info: PipelineInfo, name: str, default_only: bool) -> None:
        action = info.action(name)
        self.name, self.id, self.default_only = name, action.id, default_only
        self.params = tuple(p.name for p in action.params)
        self.param_ids = tuple(p.id for p in action.params)
        self.encoders: tuple[Encoder, ...] = tuple(
            scalar_encoder(p.bitwidth, integer=p.name in INTEGER_PARAMS) for p in action.params
        )
        self.decoders: dict[int, tuple[int, int, Callable[[int], Value]]] = {
            p.id: (i, p.bitwidth, scalar_decoder(p.bitwidth, integer=p.name in INTEGER_PARAMS))
            for i, p in enumerate(action.params)
        }
        self.widths = tuple(p.bitwidth for p in action.params)


class _TableCodec:
    __slots__ = ("name", "id", "fields", "field_ids", "kinds", "exact", "lpm", "decoders", "actions",
                 "actions_by_id")

    def __init__(self, info: PipelineInfo, table: TableInfo) -> None:
        self.name, self.id = table.name, table.id
        self.fields = tuple(f.name for f in table.match_fields)
        self.field_ids = tuple(f.id for f in table.match_fields)
        # Per field: its kind, and the encoder of that kind in `exact` or `lpm` (the other slot
        # refuses), so that the hot loop needs no type test.
        kinds: list[int] = []
        exact: list[Encoder] = []
        lpm: list[LpmEncoder] = []
        for f in table.match_fields:
            refuse = _unsupported(f.match_type)
            if f.match_type == "EXACT":
                kinds.append(_EXACT)
                exact.append(scalar_encoder(f.bitwidth))
                lpm.append(refuse)
            elif f.match_type == "LPM":
                kinds.append(_LPM)
                exact.append(refuse)
                try:
                    lpm.append(lpm_encoder(f.bitwidth))
                except ValueError as exc:
                    raise TranslationError(str(exc)) from None
            else:
                kinds.append(-1)  # no snapshot spelling: refused when an entry uses the table
                exact.append(refuse)
                lpm.append(refuse)
        self.kinds, self.exact, self.lpm = tuple(kinds), tuple(exact), tuple(lpm)
        self.decoders: dict[int, tuple[int, int, int, Callable[[int], Value]]] = {
            f.id: (i, kinds[i], f.bitwidth, scalar_decoder(f.bitwidth)) for i, f in enumerate(table.match_fields)
        }
        self.actions: dict[str, _ActionCodec] = {}
        for action_id in table.action_ids:
            action = info.action_by_id(action_id)
            self.actions[action.name] = _ActionCodec(info, action.name, action_id in table.default_only_action_ids)
        self.actions_by_id = {a.id: a for a in self.actions.values()}

    def encoder(self, index: int) -> Callable[[object], object]:
        """The encoder of field `index`, whatever its kind (the slow path of error messages)."""
        return self.exact[index] if self.kinds[index] == _EXACT else self.lpm[index]


def _unsupported(match_type: str) -> Callable[[object], Never]:
    def refuse(v: object) -> Never:
        raise ValueError(f"{match_type} match fields have no snapshot encoding")

    return refuse


class _Codec:
    __slots__ = ("tables", "tables_by_id")

    def __init__(self, info: PipelineInfo) -> None:
        self.tables = {name: _TableCodec(info, t) for name, t in info.tables.items()}
        self.tables_by_id = {t.id: t for t in self.tables.values()}

    def table(self, name: str) -> _TableCodec:
        try:
            return self.tables[name]
        except KeyError:
            raise TranslationError(f"table {name!r} is not in the P4Info (tables: {', '.join(self.tables)})") from None


T = TypeVar("T")


def per_info(cache: dict[int, tuple[PipelineInfo, T]], info: PipelineInfo, make: Callable[[PipelineInfo], T]) -> T:
    """make(info), kept in `cache` for the next call with the same P4Info. PipelineInfo is not
    hashable (it holds mapping proxies): a few are kept by identity, each with a strong reference
    to its info so that its id cannot be reused while the entry lives."""
    hit = cache.get(id(info))
    if hit is not None and hit[0] is info:
        return hit[1]
    made = make(info)
    if len(cache) >= 8:
        cache.pop(next(iter(cache)))
    cache[id(info)] = (info, made)
    return made


_CODECS: dict[int, tuple[PipelineInfo, _Codec]] = {}


def compiled(info: PipelineInfo) -> _Codec:
    """The per-P4Info compiled lookups (ids, kinds and value encoders per table and action)
    that entry_to_proto uses; switch/wire.py encodes bytes with the same encoders."""
    return _codec(info)


def _codec(info: PipelineInfo) -> _Codec:
    return per_info(_CODECS, info, _Codec)


# --- entry -> proto ---------------------------------------------------------------------------


def entry_to_proto(info: PipelineInfo, e: Entry, *, key_only: bool = False) -> p4r.TableEntry:
    """The P4Runtime TableEntry for a snapshot entry (ids from the P4Info, canonical bytes);
    with `key_only`, without the action (for DELETE and for reads by key)."""
    te = p4r.TableEntry()
    _fill(_codec(info), te, e, with_action=not key_only)
    return te


def _fill(codec: _Codec, te: p4r.TableEntry, e: Entry, with_action: bool) -> None:
    table = codec.tables.get(e.table)
    if table is None:
        codec.table(e.table)  # raises the error naming the known tables
        raise AssertionError("unreachable")
    key = e.key
    if len(key) != len(table.fields):
        raise TranslationError(
            f"{e.table}: entry key has {len(key)} value(s), the table matches on {len(table.fields)} "
            f"({', '.join(table.fields)})"
        )
    action = table.actions.get(e.action)
    if action is None or action.default_only:
        allowed = ", ".join(a.name for a in table.actions.values() if not a.default_only)
        why = "may only be the table's default action" if action else "is not one of the table's actions"
        raise TranslationError(f"{e.table}: action {e.action!r} {why} ({allowed})")
    args = e.args
    if len(args) != len(action.params):
        raise TranslationError(
            f"{e.table}: action {e.action} takes {len(action.params)} parameter(s) "
            f"({', '.join(action.params) or 'none'}), the entry has {len(args)}"
        )
    try:
        te.table_id = table.id
        match = te.match
        for field_id, kind, exact, encode_lpm, v in zip(table.field_ids, table.kinds, table.exact, table.lpm, key):
            if kind == _EXACT:
                fm = match.add()
                fm.field_id = field_id
                fm.exact.value = exact(v)
            else:
                lpm = encode_lpm(v)
                if lpm is not None:  # /0: the field is omitted (P4Runtime 9.1.1)
                    fm = match.add()
                    fm.field_id = field_id
                    fm.lpm.value, fm.lpm.prefix_len = lpm
        if with_action:
            act = te.action.action
            act.action_id = action.id
            params = act.params
            for param_id, encode, v in zip(action.param_ids, action.encoders, args):
                p = params.add()
                p.param_id = param_id
                p.value = encode(v)
    except ValueError:
        raise _explain(table, action, e) from None


def _explain(table: _TableCodec, action: _ActionCodec, e: Entry) -> TranslationError:
    """The slow path after a failed encode: find which value is wrong and say so."""
    for index, (name, v) in enumerate(zip(table.fields, e.key)):
        try:
            table.encoder(index)(v)
        except ValueError as exc:
            return TranslationError(f"{e.table}: match field {name!r}: {exc}")
    for name, encode, v in zip(action.params, action.encoders, e.args):
        try:
            encode(v)
        except ValueError as exc:
            return TranslationError(f"{e.table}: action {e.action} parameter {name!r}: {exc}")
    return TranslationError(f"{e.table}: cannot encode entry {e!r}")


# --- proto -> entry ---------------------------------------------------------------------------


def proto_to_entry(info: PipelineInfo, te: p4r.TableEntry) -> Entry:
    """The snapshot entry a read-back TableEntry stands for (service=None).

    Bytestrings may be padded (the specification lets a target accept both forms); a value that
    does not fit its bit width, an unknown id, a missing field or a default entry is an error.
    """
    codec = _codec(info)
    table = codec.tables_by_id.get(te.table_id)
    if table is None:
        raise TranslationError(f"read-back entry has table id {te.table_id}, which is not in the P4Info")
    if te.is_default_action:
        raise TranslationError(f"{table.name}: a default entry is not a snapshot entry")
    key = _decode_key(table, te)
    if te.action.WhichOneof("type") != "action":
        raise TranslationError(f"{table.name}: read-back entry has no direct action")
    act = te.action.action
    action = table.actions_by_id.get(act.action_id)
    if action is None:
        raise TranslationError(f"{table.name}: read-back entry has action id {act.action_id}, not one of the table's")
    args: list[Value | None] = [None] * len(action.params)
    for p in act.params:
        hit = action.decoders.get(p.param_id)
        if hit is None or args[hit[0]] is not None:
            raise TranslationError(f"{table.name}: action {action.name}: unexpected parameter id {p.param_id}")
        index, bitwidth, decode = hit
        args[index] = decode(_fit(p.value, bitwidth, table.name, f"{action.name}.{action.params[index]}"))
    missing = [action.params[i] for i, a in enumerate(args) if a is None]
    if missing:
        raise TranslationError(f"{table.name}: action {action.name} lacks parameter(s) {', '.join(missing)}")
    return Entry(table.name, key, action.name, cast("tuple[Value, ...]", tuple(args)))  # no None left: checked above


def _decode_key(table: _TableCodec, te: p4r.TableEntry) -> tuple[Value, ...]:
    key: list[Value | None] = [None] * len(table.fields)
    for fm in te.match:
        hit = table.decoders.get(fm.field_id)
        if hit is None:
            raise TranslationError(f"{table.name}: read-back entry has unknown match field id {fm.field_id}")
        index, kind, bitwidth, decode = hit
        name = table.fields[index]
        if key[index] is not None:
            raise TranslationError(f"{table.name}: match field {name!r} appears twice")
        which = fm.WhichOneof("field_match_type")
        if kind == _EXACT and which == "exact":
            key[index] = decode(_fit(fm.exact.value, bitwidth, table.name, name))
        elif kind == _LPM and which == "lpm":
            value, plen = _fit(fm.lpm.value, bitwidth, table.name, name), fm.lpm.prefix_len
            if not 0 < plen <= bitwidth or value & ((1 << (bitwidth - plen)) - 1):
                raise TranslationError(f"{table.name}: match field {name!r}: invalid prefix {value:#x}/{plen}")
            key[index] = f"{decode(value)}/{plen}"
        else:
            raise TranslationError(f"{table.name}: match field {name!r} came back as {which}, not as in the P4Info")
    for index, kind in enumerate(table.kinds):
        if key[index] is None:
            if kind != _LPM:
                raise TranslationError(f"{table.name}: read-back entry lacks match field {table.fields[index]!r}")
            key[index] = "0.0.0.0/0"  # an omitted LPM field is the /0 wildcard
    return cast("tuple[Value, ...]", tuple(key))  # every None was filled or refused above


def describe_update(info: PipelineInfo, update: p4r.Update) -> str:
    """ "INSERT MyIngress.vip_table ('203.0.113.10', 80, 6)": an update for error messages."""
    kind = _UPDATE_NAMES.get(update.type, str(update.type))
    which = update.entity.WhichOneof("entity")
    if which != "table_entry":
        return f"{kind} {which}"
    te = update.entity.table_entry
    table = _codec(info).tables_by_id.get(te.table_id)
    if table is None:
        return f"{kind} table id {te.table_id}"
    try:
        key = _decode_key(table, te)
    except TranslationError as exc:
        return f"{kind} {table.name} (undecodable key: {exc})"
    return f"{kind} {table.name} {key!r}"


def _fit(data: bytes, bitwidth: int, table: str, what: str) -> int:
    value = int.from_bytes(data, "big")
    if value >> bitwidth:
        raise TranslationError(f"{table}: {what}: value 0x{data.hex()} does not fit in {bitwidth} bits")
    return value


# --- diff -> write requests -------------------------------------------------------------------


def updates_to_requests(
    info: PipelineInfo,
    phases: Sequence[Sequence[Update]],
    *,
    device_id: int,
    election_id: int,
    batch_size: int,
) -> list[list[p4r.WriteRequest]]:
    """One list of WriteRequests per phase (empty for an empty phase), each request holding at
    most `batch_size` updates, atomicity CONTINUE_ON_ERROR (the only mode real targets accept).

    A phase must be completely written before the next one starts: P4Runtime may apply the
    updates of one request in any order, so dependent updates sit in different phases
    (reconciler/diff.py). DELETE updates carry only the key.
    """
    if batch_size < 1:
        raise TranslationError(f"batch size must be at least 1, got {batch_size}")
    if device_id < 0 or device_id >= 1 << 64:
        raise TranslationError(f"device id {device_id} does not fit in 64 bits")
    eid = election_id_proto(election_id)
    codec = _codec(info)
    out: list[list[p4r.WriteRequest]] = []
    for phase in phases:
        requests: list[p4r.WriteRequest] = []
        for start in range(0, len(phase), batch_size):
            req = p4r.WriteRequest(
                device_id=device_id, election_id=eid, atomicity=p4r.WriteRequest.CONTINUE_ON_ERROR
            )
            updates = req.updates
            for u in phase[start : start + batch_size]:
                try:
                    kind = UPDATE_TYPES[u.kind]
                except KeyError:
                    raise TranslationError(f"unknown update kind {u.kind!r}") from None
                pu = updates.add()
                pu.type = kind
                _fill(codec, pu.entity.table_entry, u.entry, with_action=kind != p4r.Update.DELETE)
            requests.append(req)
        out.append(requests)
    return out


def write_counts(info: PipelineInfo, requests: Iterable[p4r.WriteRequest]) -> dict[str, dict[str, int]]:
    """Updates per table and kind in `requests`, e.g. {"MyIngress.backend_table": {"INSERT": 64}}
    (what is actually sent, for logs, plans and metrics)."""
    codec = _codec(info)
    raw: dict[tuple[int, int], int] = {}
    for req in requests:
        for u in req.updates:
            k = (u.entity.table_entry.table_id, u.type)
            raw[k] = raw.get(k, 0) + 1
    out: dict[str, dict[str, int]] = {}
    for (table_id, kind), count in raw.items():
        table = codec.tables_by_id.get(table_id)
        name = table.name if table is not None else f"table id {table_id}"
        out.setdefault(name, {})[_UPDATE_NAMES.get(kind, str(kind))] = count
    return {t: dict(sorted(kinds.items())) for t, kinds in sorted(out.items())}
