"""A P4Info indexed once per pipeline, so that the Write/Read hot path never re-parses it.

Everything the software switch knows about a program comes from here: table ids and names,
match fields (id, width, kind, position in the key), actions and their parameters, table sizes,
default actions, indirect counters, which tables have direct counters, and registers (bit<N>
cells that only the data plane reads and writes: tables.RegisterState).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from finsy.proto import p4i

from reconciler.sim.bytestrings import BytestringError, decode

EXACT = p4i.MatchField.EXACT
LPM = p4i.MatchField.LPM
TERNARY = p4i.MatchField.TERNARY
RANGE = p4i.MatchField.RANGE
OPTIONAL = p4i.MatchField.OPTIONAL
_KNOWN_MATCH_TYPES = frozenset({EXACT, LPM, TERNARY, RANGE, OPTIONAL})

SCOPE_TABLE_AND_DEFAULT = p4i.ActionRef.TABLE_AND_DEFAULT
SCOPE_TABLE_ONLY = p4i.ActionRef.TABLE_ONLY
SCOPE_DEFAULT_ONLY = p4i.ActionRef.DEFAULT_ONLY

UNIT_BYTES = p4i.CounterSpec.BYTES
UNIT_PACKETS = p4i.CounterSpec.PACKETS
UNIT_BOTH = p4i.CounterSpec.BOTH


class SchemaError(ValueError):
    """The P4Info cannot be realized (only raised when validating strictly)."""


@dataclass(frozen=True, slots=True, eq=False)
class MatchFieldInfo:
    id: int
    name: str
    bitwidth: int
    match_type: int
    position: int


@dataclass(frozen=True, slots=True, eq=False)
class ParamInfo:
    id: int
    name: str
    bitwidth: int
    position: int


@dataclass(frozen=True, slots=True, eq=False)
class ActionInfo:
    id: int
    name: str
    params: tuple[ParamInfo, ...]
    params_by_id: Mapping[int, ParamInfo]
    param_names: tuple[str, ...]


@dataclass(frozen=True, slots=True, eq=False)
class TableInfo:
    id: int
    name: str
    fields: tuple[MatchFieldInfo, ...]
    fields_by_id: Mapping[int, MatchFieldInfo]
    action_scopes: Mapping[int, int]  # action id -> ActionRef scope
    size: int
    initial_default: tuple[int, tuple[int, ...]]  # (action id, param values)
    const_default: bool
    is_const: bool
    implementation_id: int
    direct_counter_id: int
    idle_timeout: bool
    needs_priority: bool
    exact_only: bool  # every field EXACT: the key is a plain tuple of ints
    single_lpm: bool  # one LPM field: longest-prefix lookups are indexed


@dataclass(frozen=True, slots=True, eq=False)
class CounterInfo:
    id: int
    name: str
    size: int
    unit: int


@dataclass(frozen=True, slots=True, eq=False)
class RegisterInfo:
    id: int
    name: str
    size: int
    bitwidth: int  # bit<N> cells; 0 if the type_spec is not a plain bitstring


@dataclass(frozen=True, eq=False)
class P4Schema:
    p4info: p4i.P4Info
    tables: tuple[TableInfo, ...]  # P4Info order (wildcard reads follow it, as BMv2 does)
    tables_by_id: Mapping[int, TableInfo]
    tables_by_name: Mapping[str, TableInfo]
    actions_by_id: Mapping[int, ActionInfo]
    actions_by_name: Mapping[str, ActionInfo]
    counters: tuple[CounterInfo, ...]
    counters_by_id: Mapping[int, CounterInfo]
    counters_by_name: Mapping[str, CounterInfo]
    direct_counter_ids: frozenset[int] = field(default_factory=frozenset)
    registers: tuple[RegisterInfo, ...] = ()
    registers_by_id: Mapping[int, RegisterInfo] = field(default_factory=dict)

    def table(self, name: str) -> TableInfo:
        try:
            return self.tables_by_name[name]
        except KeyError:
            raise KeyError(f"no table named {name!r} in the pipeline") from None

    def counter(self, name: str) -> CounterInfo:
        try:
            return self.counters_by_name[name]
        except KeyError:
            raise KeyError(f"no counter named {name!r} in the pipeline") from None


def build_schema(p4info: p4i.P4Info, strict: bool) -> P4Schema:
    """Index `p4info`. With `strict`, reject what the target could not realize (spec mode);
    without it, accept what BMv2/PI accepts (unknown refs, duplicate ids: the last one wins)."""
    problems: list[str] = []
    seen_ids: dict[int, str] = {}

    def claim(obj_id: int, name: str) -> None:
        if obj_id == 0:
            problems.append(f"{name!r} has id 0")
        elif obj_id in seen_ids:
            problems.append(f"id {obj_id} is used by both {seen_ids[obj_id]!r} and {name!r}")
        else:
            seen_ids[obj_id] = name

    actions: dict[int, ActionInfo] = {}
    for action in p4info.actions:
        claim(action.preamble.id, action.preamble.name)
        params = tuple(
            ParamInfo(p.id, p.name, p.bitwidth, pos) for pos, p in enumerate(action.params)
        )
        actions[action.preamble.id] = ActionInfo(
            id=action.preamble.id,
            name=action.preamble.name,
            params=params,
            params_by_id={p.id: p for p in params},
            param_names=tuple(p.name for p in params),
        )

    direct_by_table: dict[int, int] = {}
    direct_ids: set[int] = set()
    for direct in p4info.direct_counters:
        claim(direct.preamble.id, direct.preamble.name)
        direct_by_table[direct.direct_table_id] = direct.preamble.id
        direct_ids.add(direct.preamble.id)

    tables: dict[int, TableInfo] = {}
    for table in p4info.tables:
        claim(table.preamble.id, table.preamble.name)
        info = _table_info(table, actions, direct_by_table, problems)
        tables[info.id] = info  # a duplicate id: the last definition wins, as in PI
    known_tables = set(tables)
    for table_id in direct_by_table:
        if table_id not in known_tables:
            problems.append(f"direct counter refers to unknown table id {table_id}")

    counters: dict[int, CounterInfo] = {}
    for counter in p4info.counters:
        claim(counter.preamble.id, counter.preamble.name)
        counters[counter.preamble.id] = CounterInfo(
            counter.preamble.id, counter.preamble.name, counter.size, counter.spec.unit
        )

    registers: dict[int, RegisterInfo] = {}
    for register in p4info.registers:
        claim(register.preamble.id, register.preamble.name)
        spec = register.type_spec
        width = spec.bitstring.bit.bitwidth if spec.WhichOneof("type_spec") == "bitstring" else 0
        registers[register.preamble.id] = RegisterInfo(
            register.preamble.id, register.preamble.name, register.size, width
        )

    if strict and problems:
        raise SchemaError("P4Info cannot be realized: " + "; ".join(problems))

    table_list = tuple(tables.values())
    counter_list = tuple(counters.values())
    return P4Schema(
        p4info=p4info,
        tables=table_list,
        tables_by_id=tables,
        tables_by_name={t.name: t for t in table_list},
        actions_by_id=actions,
        actions_by_name={a.name: a for a in actions.values()},
        counters=counter_list,
        counters_by_id=counters,
        counters_by_name={c.name: c for c in counter_list},
        direct_counter_ids=frozenset(direct_ids),
        registers=tuple(registers.values()),
        registers_by_id=registers,
    )


def _table_info(
    table: p4i.Table,
    actions: Mapping[int, ActionInfo],
    direct_by_table: Mapping[int, int],
    problems: list[str],
) -> TableInfo:
    name = table.preamble.name
    fields = tuple(
        MatchFieldInfo(mf.id, mf.name, mf.bitwidth, mf.match_type, pos)
        for pos, mf in enumerate(table.match_fields)
    )
    for mf in fields:
        if mf.match_type not in _KNOWN_MATCH_TYPES:
            problems.append(f"{name}: match field {mf.name!r} has an unsupported match type")
        if mf.bitwidth <= 0:
            problems.append(f"{name}: match field {mf.name!r} has no bitwidth")
    scopes = {ref.id: ref.scope for ref in table.action_refs}
    for action_id in scopes:
        if action_id not in actions:
            problems.append(f"{name}: action ref {action_id} names no action")
    default_id = table.initial_default_action.action_id or table.const_default_action_id
    default_params: tuple[int, ...] = ()
    if default_id:
        if default_id not in scopes:
            problems.append(f"{name}: default action {default_id} is not among its actions")
        action = actions.get(default_id)
        if action is not None:
            given = {arg.param_id: arg.value for arg in table.initial_default_action.arguments}
            values = []
            for param in action.params:
                try:
                    values.append(decode(given.get(param.id, b""), param.bitwidth, True))
                except BytestringError as exc:
                    problems.append(f"{name}: default argument {param.name!r}: {exc.message}")
                    values.append(0)
            default_params = tuple(values)
    kinds = [mf.match_type for mf in fields]
    return TableInfo(
        id=table.preamble.id,
        name=name,
        fields=fields,
        fields_by_id={mf.id: mf for mf in fields},
        action_scopes=scopes,
        size=table.size,
        initial_default=(default_id, default_params),
        const_default=table.const_default_action_id != 0,
        is_const=table.is_const_table,
        implementation_id=table.implementation_id,
        direct_counter_id=direct_by_table.get(table.preamble.id, 0),
        idle_timeout=table.idle_timeout_behavior != p4i.Table.NO_TIMEOUT,
        needs_priority=any(k in (TERNARY, RANGE, OPTIONAL) for k in kinds),
        exact_only=all(k == EXACT for k in kinds),
        single_lpm=kinds == [LPM],
    )
