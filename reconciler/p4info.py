"""The P4Info of p4/load_balancer.p4: load it, describe it, check snapshot table entries against it.

The P4Info text file is the contract with the switches (DESIGN.md 5): it must be exactly what
`p4c --target bmv2 --arch v1model --p4runtime-files` emits. This module reads it with protobuf
`text_format` into finsy's `p4.config.v1.P4Info` and turns it into small frozen descriptions that
the rest of the reconciler uses (no protobuf outside the switch layer).

How snapshot values are spelled and encoded is reconciler/switch/codec.py's job; how p4c numbers
and names P4Runtime objects is reproduced in tests/p4c_ids.py, which proves the committed P4Info
consistent.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Protocol, TypeVar

from finsy.proto import p4i
from google.protobuf import text_format

from reconciler import paths

__all__ = [
    "ActionInfo",
    "CounterInfo",
    "MatchFieldInfo",
    "P4InfoError",
    "ParamInfo",
    "PipelineInfo",
    "TableInfo",
    "load_p4info",
    "p4info_digest",
    "pipeline_info",
    "pipeline_info_from_message",
]

# The header p4c writes before the text-format message (p4RuntimeSerializer.cpp writeTextTo).
P4C_TEXT_HEADER = (
    "# proto-file: p4/config/v1/p4info.proto\n# proto-message: p4.config.v1.P4Info\n\n"
)


class P4InfoError(ValueError):
    """The P4Info file is missing, unparsable or inconsistent, or a name is not in it."""


# ---------------------------------------------------------------------------------------------
# Descriptions


@dataclass(frozen=True)
class MatchFieldInfo:
    name: str
    id: int
    bitwidth: int
    match_type: str  # "EXACT", "LPM", "TERNARY", "RANGE", "OPTIONAL" (p4.config.v1 names)


@dataclass(frozen=True)
class ParamInfo:
    name: str
    id: int
    bitwidth: int


@dataclass(frozen=True)
class ActionInfo:
    name: str
    id: int
    params: tuple[ParamInfo, ...]

    def param(self, name: str) -> ParamInfo:
        for param in self.params:
            if param.name == name:
                return param
        raise P4InfoError(
            f"action {self.name} has no parameter {name!r} "
            f"(parameters: {', '.join(p.name for p in self.params) or 'none'})"
        )


@dataclass(frozen=True)
class TableInfo:
    name: str
    id: int
    match_fields: tuple[MatchFieldInfo, ...]
    action_ids: tuple[int, ...]  # in P4Info order (the order of the table's `actions` list)
    size: int
    default_action: str | None  # name of the initial default action
    default_only_action_ids: frozenset[int] = frozenset()  # action refs with @defaultonly scope

    def match_field(self, name: str) -> MatchFieldInfo:
        for field in self.match_fields:
            if field.name == name:
                return field
        raise P4InfoError(
            f"table {self.name} has no match field {name!r} "
            f"(fields: {', '.join(f.name for f in self.match_fields)})"
        )


@dataclass(frozen=True)
class CounterInfo:
    name: str
    id: int
    unit: str  # "PACKETS", "BYTES" or "BOTH"
    size: int


@dataclass(frozen=True)
class PipelineInfo:
    """Tables, actions and counters by fully qualified name (read-only mappings)."""

    tables: Mapping[str, TableInfo]
    actions: Mapping[str, ActionInfo]
    counters: Mapping[str, CounterInfo]

    def table(self, name: str) -> TableInfo:
        return _lookup(self.tables, name, "table")

    def action(self, name: str) -> ActionInfo:
        return _lookup(self.actions, name, "action")

    def counter(self, name: str) -> CounterInfo:
        return _lookup(self.counters, name, "counter")

    def table_by_id(self, id_: int) -> TableInfo:
        return _lookup_id(self.tables.values(), id_, "table")

    def action_by_id(self, id_: int) -> ActionInfo:
        return _lookup_id(self.actions.values(), id_, "action")

    def counter_by_id(self, id_: int) -> CounterInfo:
        return _lookup_id(self.counters.values(), id_, "counter")

    def table_actions(self, table: str) -> tuple[ActionInfo, ...]:
        """The actions a table may hold, in P4Info order."""
        return tuple(self.action_by_id(i) for i in self.table(table).action_ids)


class _Named(Protocol):
    @property
    def id(self) -> int: ...


_T = TypeVar("_T", bound=_Named)


def _lookup(items: Mapping[str, _T], name: str, kind: str) -> _T:
    try:
        return items[name]
    except KeyError:
        raise P4InfoError(
            f"no {kind} named {name!r} in the P4Info (known: {', '.join(items)})"
        ) from None


def _lookup_id(items: Iterable[_T], id_: int, kind: str) -> _T:
    for item in items:
        if item.id == id_:
            return item
    raise P4InfoError(f"no {kind} with id {id_} (0x{id_:08x}) in the P4Info")


# ---------------------------------------------------------------------------------------------
# Loading


def load_p4info(path: str | Path = paths.P4INFO_PATH) -> p4i.P4Info:
    """The P4Info message in the text file at `path`.

    Parsing is cached per path (and file modification); each call returns a fresh copy so a
    caller that mutates its message cannot change what others see.
    """
    msg = p4i.P4Info()
    msg.CopyFrom(_parse_cached(_file_key(path)))
    return msg


def pipeline_info(path: str | Path = paths.P4INFO_PATH) -> PipelineInfo:
    """The description of the P4Info at `path` (cached like `load_p4info`)."""
    return _pipeline_cached(_file_key(path))


def p4info_digest(msg: p4i.P4Info) -> str:
    """The "sha256:<hex>" digest of the deterministic serialization, as snapshots record it."""
    return "sha256:" + hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()


def _file_key(path: str | Path) -> tuple[str, int, int]:
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise P4InfoError(f"cannot read P4Info {resolved}: {exc.strerror}") from exc
    return (str(resolved), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _parse_cached(key: tuple[str, int, int]) -> p4i.P4Info:
    path = key[0]
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise P4InfoError(f"cannot read P4Info {path}: {(exc.strerror or str(exc)).lower()}") from exc
    except UnicodeDecodeError as exc:
        raise P4InfoError(f"{path}: not P4Info text format: not UTF-8 text") from exc
    try:
        return text_format.Parse(text, p4i.P4Info())
    except text_format.ParseError as exc:
        # Line and column only: the parser's own message quotes the file's tokens, and the
        # file may be anything (intent names it), so none of its content is echoed.
        where = f":{exc.GetLine()}:{exc.GetColumn()}" if exc.GetLine() is not None else ""
        raise P4InfoError(f"{path}{where}: not P4Info text format (protobuf text, as p4c --p4runtime-files writes it)") from exc


@functools.lru_cache(maxsize=16)
def _pipeline_cached(key: tuple[str, int, int]) -> PipelineInfo:
    msg = _parse_cached(key)
    try:
        return pipeline_info_from_message(msg)
    except P4InfoError as exc:
        raise P4InfoError(f"{key[0]}: {exc}") from exc


def pipeline_info_from_message(msg: p4i.P4Info) -> PipelineInfo:
    """Describe a P4Info message; raises P4InfoError on duplicate names or ids and dangling refs."""
    seen_ids: dict[int, str] = {}

    def claim(id_: int, name: str, kind: str, names: Mapping[str, object]) -> None:
        if name in names:
            raise P4InfoError(f"duplicate {kind} name {name!r}")
        if id_ in seen_ids:
            raise P4InfoError(f"{kind} {name!r} reuses id {id_} of {seen_ids[id_]!r}")
        seen_ids[id_] = name

    actions: dict[str, ActionInfo] = {}
    for action in msg.actions:
        claim(action.preamble.id, action.preamble.name, "action", actions)
        params = tuple(ParamInfo(p.name, p.id, p.bitwidth) for p in action.params)
        actions[action.preamble.name] = ActionInfo(action.preamble.name, action.preamble.id, params)
    action_names = {a.id: a.name for a in actions.values()}

    tables: dict[str, TableInfo] = {}
    for table in msg.tables:
        name = table.preamble.name
        claim(table.preamble.id, name, "table", tables)
        fields = tuple(
            MatchFieldInfo(
                f.name,
                f.id,
                f.bitwidth,
                p4i.MatchField.MatchType.Name(f.match_type) if f.match_type else f.other_match_type,
            )
            for f in table.match_fields
        )
        for ref in table.action_refs:
            if ref.id not in action_names:
                raise P4InfoError(f"table {name!r} refers to unknown action id {ref.id}")
        default: str | None = None
        if table.HasField("initial_default_action"):
            default_id = table.initial_default_action.action_id
            if default_id not in action_names:
                raise P4InfoError(f"table {name!r} has unknown default action id {default_id}")
            default = action_names[default_id]
        tables[name] = TableInfo(
            name=name,
            id=table.preamble.id,
            match_fields=fields,
            action_ids=tuple(ref.id for ref in table.action_refs),
            size=table.size,
            default_action=default,
            default_only_action_ids=frozenset(
                ref.id for ref in table.action_refs if ref.scope == p4i.ActionRef.DEFAULT_ONLY
            ),
        )

    counters: dict[str, CounterInfo] = {}
    for counter in msg.counters:
        claim(counter.preamble.id, counter.preamble.name, "counter", counters)
        counters[counter.preamble.name] = CounterInfo(
            counter.preamble.name,
            counter.preamble.id,
            p4i.CounterSpec.Unit.Name(counter.spec.unit),
            counter.size,
        )

    return PipelineInfo(
        MappingProxyType(tables), MappingProxyType(actions), MappingProxyType(counters)
    )
