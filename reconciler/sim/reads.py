"""Answer the entities of a ReadRequest from a pipeline, always in canonical form.

Wildcard table reads (table_id 0 or one table) never include default entries; those are read
with is_default_action (surprise 32). Tables are visited in P4Info order and entries in handle
order, as BMv2 does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finsy.proto import p4r

from reconciler.protowire import length_delimited, varint
from reconciler.sim.behavior import (
    INCORRECT_ENTITY,
    INVALID_ARGUMENT,
    INVALID_P4_ID,
    NOT_FOUND,
    OUT_OF_RANGE,
    REGISTER_READS_UNSUPPORTED,
    UNIMPLEMENTED,
    UNKNOWN,
    Behavior,
)
from reconciler.sim.bytestrings import encode
from reconciler.sim.parse import DEFAULT_KEY, UpdateError, match_key
from reconciler.sim.schema import (
    EXACT,
    LPM,
    OPTIONAL,
    RANGE,
    TERNARY,
    UNIT_BYTES,
    UNIT_PACKETS,
    P4Schema,
)
from reconciler.sim.tables import CounterState, DefaultEntry, Entry, PipelineState, TableState

Entities = Any  # the `entities` repeated field of a p4r.ReadResponse (protobuf has no public type)


@dataclass
class ReadOutcome:
    """Entities found, plus one (code, message) per request entity (None where it succeeded).
    Read with `encoded=True`, the entities are in `encoded` instead, each as its field of a
    serialized ReadResponse (tag, length, Entity), and `response` stays empty."""

    response: p4r.ReadResponse = field(default_factory=p4r.ReadResponse)
    errors: list[tuple[int, str] | None] = field(default_factory=list)
    encoded: list[bytes] | None = None

    @property
    def failed(self) -> bool:
        return any(e is not None for e in self.errors)


class EncodedEntities:
    """Collects entities as a ReadResponse's `entities` field would (add() gives a new message
    to fill in place), and also as bytes already serialized: a table entry's bytes are cached
    per entry (TableState.wire), so a large read costs a lookup per entry, not a message."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[bytes | p4r.Entity] = []

    def add(self) -> p4r.Entity:
        entity = p4r.Entity()
        self.items.append(entity)
        return entity

    def add_field(self, field: bytes) -> None:
        """An entity already serialized as its ReadResponse field (entity_field())."""
        self.items.append(field)

    def serialized(self) -> list[bytes]:
        return [i if isinstance(i, bytes) else _field(i.SerializeToString()) for i in self.items]


def entity_field(table_entry: bytes) -> bytes:
    """A serialized TableEntry as a ReadResponse's `entities` field (1) holding an Entity whose
    `table_entry` (2) it is."""
    return _field(b"\x12" + varint(len(table_entry)) + table_entry)


def _field(entity: bytes) -> bytes:
    return length_delimited(0x0A, entity)


def response_bytes(fields: list[bytes]) -> bytes:
    """A serialized ReadResponse holding `fields` (ReadOutcome.encoded), byte for byte what
    serializing the message would give."""
    return b"".join(fields)


def read_entities(
    state: PipelineState, behavior: Behavior, requests: list[p4r.Entity], encoded: bool = False
) -> ReadOutcome:
    """Spec mode tries every request (one error per request); BMv2 stops at the first error,
    keeping what it collected so far (surprise 30). `encoded`: the entities as bytes
    (ReadOutcome.encoded), the same bytes the message would serialize to."""
    reader = _Reader(state, behavior)
    outcome = ReadOutcome()
    collected = EncodedEntities() if encoded else None
    out: Any = collected if collected is not None else outcome.response.entities
    try:
        _read_all(reader, behavior, requests, out, outcome)
    finally:
        if collected is not None:
            outcome.encoded = collected.serialized()
    return outcome


def _read_all(reader: _Reader, behavior: Behavior, requests: list[p4r.Entity], out: Any, outcome: ReadOutcome) -> None:
    for request in requests:
        try:
            reader.read(request, out)
        except UpdateError as exc:
            outcome.errors.append((exc.code, exc.message))
            if behavior.bmv2:
                break
        else:
            outcome.errors.append(None)


class _Reader:
    __slots__ = ("state", "schema", "behavior")

    def __init__(self, state: PipelineState, behavior: Behavior) -> None:
        self.state = state
        self.schema = state.schema
        self.behavior = behavior

    # `out` is the ReadResponse's repeated entities field: entities are built in place
    # (Entities.add()), which halves the cost of large reads such as whole counter arrays.

    def read(self, entity: p4r.Entity, out: Entities) -> None:
        which = entity.WhichOneof("entity")
        if which == "table_entry":
            self.read_tables(entity.table_entry, out)
        elif which == "counter_entry":
            self.read_counters(entity.counter_entry, out)
        elif which == "direct_counter_entry":
            self.read_direct_counters(entity.direct_counter_entry, out)
        elif which == "register_entry":
            # As the recorded BMv2 (10-registers.txt) for any RegisterEntry; spec mode refuses
            # the same way rather than serve cells a real BMv2 never shows (docs/dataplane.md).
            raise UpdateError(UNIMPLEMENTED, REGISTER_READS_UNSUPPORTED)
        elif which is None:
            code = UNKNOWN if self.behavior.bmv2 else INVALID_ARGUMENT
            raise UpdateError(code, INCORRECT_ENTITY)
        else:
            raise UpdateError(UNIMPLEMENTED, f"{which} reads are not supported by this switch")

    # -- table entries ---------------------------------------------------------------------

    def read_tables(self, te: p4r.TableEntry, out: Entities) -> None:
        if te.table_id == 0:
            if not self.behavior.bmv2 and len(te.match):
                raise UpdateError(INVALID_ARGUMENT, "A match key needs a table_id")
            for each_table in self.state.tables.values():
                self.read_table(each_table, te, out)
            return
        table = self.state.tables.get(te.table_id)
        if table is None:
            raise UpdateError(INVALID_ARGUMENT, INVALID_P4_ID)
        self.read_table(table, te, out)

    def read_table(self, table: TableState, te: p4r.TableEntry, out: Entities) -> None:
        if te.is_default_action:
            if te.HasField("time_since_last_hit"):
                raise UpdateError(
                    INVALID_ARGUMENT,
                    "Default table entries do not support entry ageing, do not set "
                    "'time_since_last_hit' in your ReadRequest",
                )
            fill_default_entry(out.add().table_entry, self.schema, table)
            return
        if te.HasField("time_since_last_hit") and not table.info.idle_timeout:
            raise UpdateError(
                INVALID_ARGUMENT,
                "Do not set time_since_last_hit for a ReadRequest if the table does not support "
                "idle timeout; yes, that includes wildcard reads",
            )
        if len(te.match):
            key = match_key(table.info, te, self.behavior)
            hit = table.entries.get(key)
            # a missing entry read by full key is OK and empty (surprise 31)
            selected = [hit] if hit is not None else []
        else:
            selected = table.in_handle_order()
            if not self.behavior.bmv2 and te.priority:
                selected = [e for e in selected if e.priority == te.priority]
        if self.behavior.read_action_filter and te.HasField("action"):
            wanted = te.action.action.action_id
            selected = [e for e in selected if e.action_id == wanted]
        if not self.behavior.bmv2:
            if te.controller_metadata:
                selected = [e for e in selected if e.controller_metadata == te.controller_metadata]
            if te.metadata:
                selected = [e for e in selected if e.metadata == te.metadata]
        with_counters = te.HasField("counter_data") and bool(table.info.direct_counter_id)
        if isinstance(out, EncodedEntities) and not with_counters:
            wire = table.wire
            if len(wire) > 2 * len(table.entries) + 1024:  # deleted entries' bytes go
                table.wire = wire = {k: v for k, v in wire.items() if table.entries.get(k) is v[0]}
            for entry in selected:
                cached = wire.get(entry.key)
                if cached is None or cached[0] is not entry:  # first read of this very entry
                    message = p4r.TableEntry()
                    fill_table_entry(message, self.schema, table, entry)
                    cached = wire[entry.key] = (entry, entity_field(message.SerializeToString()))
                out.add_field(cached[1])
            return
        for entry in selected:
            fill_table_entry(out.add().table_entry, self.schema, table, entry, with_counters)

    # -- counters --------------------------------------------------------------------------

    def read_counters(self, ce: p4r.CounterEntry, out: Entities) -> None:
        if ce.counter_id == 0:
            for each_counter in self.state.counters.values():
                self.read_counter(each_counter, ce, out)
            return
        counter = self.state.counters.get(ce.counter_id)
        if counter is None:
            if ce.counter_id in self.schema.direct_counter_ids:
                raise UpdateError(
                    INVALID_ARGUMENT, "Cannot use CounterEntry with a direct counter"
                )
            raise UpdateError(INVALID_ARGUMENT, INVALID_P4_ID)
        self.read_counter(counter, ce, out)

    def read_counter(self, counter: CounterState, ce: p4r.CounterEntry, out: Entities) -> None:
        if ce.HasField("index"):
            index = ce.index.index
            if index < 0:
                raise UpdateError(
                    INVALID_ARGUMENT, "A negative number is not a valid index value"
                )
            if index >= counter.info.size:
                if self.behavior.bmv2:
                    # BMv2 has already added the entity (without data) when the read fails
                    partial = out.add().counter_entry
                    partial.counter_id = counter.info.id
                    partial.index.index = index
                    raise UpdateError(UNKNOWN, "Error when reading counter from target")
                raise UpdateError(
                    OUT_OF_RANGE, f"Index {index} is out of range (size {counter.info.size})"
                )
            _fill_counter(out.add().counter_entry, counter, index)
            return
        add = out.add
        for index in range(counter.info.size):
            _fill_counter(add().counter_entry, counter, index)

    def read_direct_counters(self, dce: p4r.DirectCounterEntry, out: Entities) -> None:
        te = dce.table_entry
        table = self.state.tables.get(te.table_id)
        if table is None:
            raise UpdateError(INVALID_ARGUMENT, INVALID_P4_ID)
        if not table.info.direct_counter_id:
            raise UpdateError(INVALID_ARGUMENT, "Table has no direct counters")
        if len(te.match):
            key = match_key(table.info, te, self.behavior)
            entry = table.entries.get(key) if key is not DEFAULT_KEY else None
            if entry is None:
                raise UpdateError(NOT_FOUND, "Cannot find match entry")
            entries = [entry]
        else:
            entries = table.in_handle_order()
        for entry in entries:
            direct = out.add().direct_counter_entry
            fill_table_entry(direct.table_entry, self.schema, table, entry)
            packets, nbytes = table.direct_counts.get(entry.key, (0, 0))
            direct.data.packet_count = packets
            direct.data.byte_count = nbytes


def _fill_counter(ce: p4r.CounterEntry, counter: CounterState, index: int) -> None:
    ce.counter_id = counter.info.id
    ce.index.index = index
    unit = counter.info.unit
    data = ce.data
    data.SetInParent()  # zero counts still come back as an empty `data {}`
    if unit != UNIT_BYTES:
        data.packet_count = counter.packets[index]
    if unit != UNIT_PACKETS:
        data.byte_count = counter.bytes[index]


def table_entry_entity(
    schema: P4Schema, table: TableState, entry: Entry, with_counters: bool = False
) -> p4r.Entity:
    """An Entity holding `entry` in canonical form."""
    entity = p4r.Entity()
    fill_table_entry(entity.table_entry, schema, table, entry, with_counters)
    return entity


def fill_table_entry(
    te: p4r.TableEntry, schema: P4Schema, table: TableState, entry: Entry,
    with_counters: bool = False,
) -> None:
    """Write `entry` into `te` in canonical form (shortest bytestrings, don't-cares omitted)."""
    info = table.info
    te.table_id = info.id
    for f, value in zip(info.fields, entry.key):
        if value is None:
            continue  # a don't-care field is omitted
        m = te.match.add()
        m.field_id = f.id
        kind = f.match_type
        if kind == EXACT:
            m.exact.value = encode(value)
        elif kind == LPM:
            m.lpm.value = encode(value[0])
            m.lpm.prefix_len = value[1]
        elif kind == TERNARY:
            m.ternary.value = encode(value[0])
            m.ternary.mask = encode(value[1])
        elif kind == RANGE:
            m.range.low = encode(value[0])
            m.range.high = encode(value[1])
        elif kind == OPTIONAL:
            m.optional.value = encode(value)
    _fill_action(schema, te.action.action, entry.action_id, entry.params)
    te.priority = entry.priority
    te.controller_metadata = entry.controller_metadata
    te.metadata = entry.metadata
    te.idle_timeout_ns = entry.idle_timeout_ns
    if with_counters:
        packets, nbytes = table.direct_counts.get(entry.key, (0, 0))
        te.counter_data.packet_count = packets
        te.counter_data.byte_count = nbytes


def default_entry_entity(schema: P4Schema, table: TableState) -> p4r.Entity:
    """An Entity holding the table's current default entry."""
    entity = p4r.Entity()
    fill_default_entry(entity.table_entry, schema, table)
    return entity


def fill_default_entry(te: p4r.TableEntry, schema: P4Schema, table: TableState) -> None:
    te.table_id = table.info.id
    default: DefaultEntry = table.default
    if default.action_id:
        _fill_action(schema, te.action.action, default.action_id, default.params)
    te.is_default_action = True
    te.controller_metadata = default.controller_metadata
    te.metadata = default.metadata


def _fill_action(
    schema: P4Schema, action: p4r.Action, action_id: int, params: tuple[int, ...]
) -> None:
    action.action_id = action_id
    info = schema.actions_by_id[action_id]
    for p, value in zip(info.params, params):
        param = action.params.add()
        param.param_id = p.id
        param.value = encode(value)
