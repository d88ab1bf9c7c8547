"""The P4Info of p4/load_balancer.p4: load it, describe it, check snapshot table entries against it.

The P4Info text file is the contract with the switches (DESIGN.md 5): it must be exactly what
`p4c --target bmv2 --arch v1model --p4runtime-files` emits. This module reads it with protobuf
`text_format` into finsy's `p4.config.v1.P4Info`, turns it into small frozen descriptions that the
rest of the reconciler uses (no protobuf outside the switch layer), and validates the entries a
snapshot holds before anything is written to a switch.

It also reproduces how p4c numbers P4Runtime objects (Jenkins one-at-a-time hash of the fully
qualified name, 8-bit resource prefix, linear probing in sorted-name order) and names their aliases
(shortest unique dot-separated suffix), so tests can prove the committed P4Info is consistent.

Snapshot value encoding (schemas/snapshot.schema.json, "entry"), fixed by bit width so that every
value has exactly one spelling and snapshot digests are stable:
  - 32-bit exact fields and params: IPv4 dotted quad, "203.0.113.10";
  - 32-bit lpm fields: "10.0.0.0/24" (host bits zero; "0.0.0.0/0" is the default route);
  - 48-bit fields and params: lowercase MAC, "aa:bb:cc:dd:ee:ff";
  - every other width: a non-negative int that fits.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

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
    "assign_ids",
    "check_table_entry",
    "decode_match_value",
    "decode_param_value",
    "jenkins_one_at_a_time",
    "load_p4info",
    "p4info_digest",
    "pipeline_info",
    "pipeline_info_from_message",
    "shortest_unique_suffixes",
]

# The header p4c writes before the text-format message (p4RuntimeSerializer.cpp writeTextTo).
P4C_TEXT_HEADER = (
    "# proto-file: p4/config/v1/p4info.proto\n# proto-message: p4.config.v1.P4Info\n\n"
)

# Entry keys a snapshot entry may carry besides the three that describe the table entry.
_ENTRY_KEYS = frozenset({"match", "action", "params"})
_ENTRY_OPTIONAL_KEYS = frozenset({"service"})

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_PREFIX_RE = re.compile(r"^(0|[1-9][0-9]?)$")


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


def _lookup(items: Mapping[str, Any], name: str, kind: str) -> Any:
    try:
        return items[name]
    except KeyError:
        raise P4InfoError(
            f"no {kind} named {name!r} in the P4Info (known: {', '.join(items)})"
        ) from None


def _lookup_id(items: Iterable[Any], id_: int, kind: str) -> Any:
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

    def claim(id_: int, name: str, kind: str, names: Mapping[str, Any]) -> None:
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


# ---------------------------------------------------------------------------------------------
# p4c's ids and aliases


def jenkins_one_at_a_time(data: bytes) -> int:
    """Bob Jenkins' one-at-a-time hash on 32-bit unsigned arithmetic, as p4c computes it."""
    h = 0
    for byte in data:
        h = (h + byte) & 0xFFFFFFFF
        h = (h + (h << 10)) & 0xFFFFFFFF
        h ^= h >> 6
    h = (h + (h << 3)) & 0xFFFFFFFF
    h ^= h >> 11
    h = (h + (h << 15)) & 0xFFFFFFFF
    return h


def assign_ids(prefix: int, names: Iterable[str], taken: Iterable[int] = ()) -> dict[str, int]:
    """The ids p4c gives the resources of one type (`prefix`, e.g. p4i.P4Ids.TABLE).

    Each id is `prefix << 24 | hash(name) & 0xffffff`. On a collision with an id already
    assigned (`taken`, or an earlier name) p4c increments the hash, not the id, and tries again;
    names are processed in sorted order so the result is deterministic.
    """
    if not 0 < prefix <= 0xFF:
        raise ValueError(f"resource prefix {prefix} is not an 8-bit P4Runtime id prefix")
    used = set(taken)
    ids: dict[str, int] = {}
    for name in sorted(set(names), key=lambda n: n.encode()):
        value = start = jenkins_one_at_a_time(name.encode())
        while (candidate := (prefix << 24) | (value & 0xFFFFFF)) in used:
            value = (value + 1) & 0xFFFFFFFF
            if value == start:
                raise ValueError(f"no P4Runtime id left for {name!r} with prefix 0x{prefix:02x}")
        used.add(candidate)
        ids[name] = candidate
    return ids


def shortest_unique_suffixes(names: Iterable[str]) -> dict[str, str]:
    """p4c's default alias of each fully qualified name: its shortest unique '.'-suffix.

    `names` must be every symbol of the program (tables, actions, counters, ...), since p4c
    computes uniqueness across all of them.
    """
    unique = list(dict.fromkeys(names))
    # How many names end with each suffix (a suffix is a tuple of trailing components).
    counts: dict[tuple[str, ...], int] = {}
    for name in unique:
        parts = tuple(name.split("."))
        for i in range(len(parts)):
            counts[parts[i:]] = counts.get(parts[i:], 0) + 1
    aliases: dict[str, str] = {}
    for name in unique:
        parts = tuple(name.split("."))
        for length in range(1, len(parts) + 1):
            suffix = parts[len(parts) - length :]
            if counts[suffix] < 2 or length == len(parts):
                aliases[name] = ".".join(suffix)
                break
    return aliases


# ---------------------------------------------------------------------------------------------
# Snapshot values and entries


def decode_match_value(field: MatchFieldInfo, value: Any) -> tuple[int, int | None]:
    """(value, prefix length or None) of a snapshot match value; ValueError says what is wrong."""
    if field.match_type == "EXACT":
        return _decode_scalar(field.bitwidth, value), None
    if field.match_type == "LPM":
        if field.bitwidth != 32:
            raise ValueError(f"LPM on a {field.bitwidth}-bit field has no snapshot encoding")
        if not isinstance(value, str) or value.count("/") != 1:
            raise ValueError(f"expected an IPv4 prefix like '10.0.0.0/24', got {value!r}")
        address, prefix = value.split("/")
        number = _decode_ipv4(address)
        if not _PREFIX_RE.match(prefix) or int(prefix) > 32:
            raise ValueError(f"prefix length in {value!r} is not an integer from 0 to 32")
        prefix_len = int(prefix)
        host_mask = (1 << (32 - prefix_len)) - 1
        if number & host_mask:
            raise ValueError(f"{value!r} has host bits set beyond the /{prefix_len} prefix")
        return number, prefix_len
    raise ValueError(f"match type {field.match_type} has no snapshot encoding")


def decode_param_value(param: ParamInfo, value: Any) -> int:
    """The int value of a snapshot action parameter; ValueError says what is wrong."""
    return _decode_scalar(param.bitwidth, value)


def _decode_scalar(bitwidth: int, value: Any) -> int:
    if bitwidth == 32:
        if not isinstance(value, str):
            raise ValueError(f"expected an IPv4 address string like '10.0.0.1', got {value!r}")
        return _decode_ipv4(value)
    if bitwidth == 48:
        if not isinstance(value, str) or not _MAC_RE.match(value):
            raise ValueError(
                f"expected a lowercase MAC address like 'aa:bb:cc:dd:ee:ff', got {value!r}"
            )
        return int(value.replace(":", ""), 16)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{value} is negative")
    if value >= 1 << bitwidth:
        raise ValueError(f"{value} does not fit in {bitwidth} bits (max {(1 << bitwidth) - 1})")
    return value


def _decode_ipv4(text: str) -> int:
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a dotted-quad IPv4 address") from None
    if str(address) != text:  # e.g. surrounding whitespace: keep one spelling per value
        raise ValueError(f"{text!r} is not in canonical dotted-quad form ({address})")
    return int(address)


def check_table_entry(info: PipelineInfo, table: str, entry: Any) -> list[str]:
    """Problems with one snapshot entry of `table` (an empty list when it is fine).

    Checks the table and action names, that the action is allowed in the table, that every match
    field and action parameter is present exactly once and nothing else is, and that every value
    is well formed and fits its bit width (LPM prefixes with no host bits set).
    """
    if table not in info.tables:
        return [f"unknown table {table!r} (known: {', '.join(info.tables)})"]
    tinfo = info.tables[table]
    if not isinstance(entry, Mapping):
        return [f"{table}: an entry must be an object with match, action and params, got {entry!r}"]

    problems: list[str] = []
    for key in sorted(set(entry) - _ENTRY_KEYS - _ENTRY_OPTIONAL_KEYS):
        problems.append(
            f"{table}: unknown entry key {key!r} (allowed: action, match, params, service)"
        )
    for key in sorted(_ENTRY_KEYS - set(entry)):
        problems.append(f"{table}: entry has no {key!r}")

    match = entry.get("match")
    if "match" in entry:
        if not isinstance(match, Mapping):
            problems.append(f"{table}: 'match' must be an object, got {match!r}")
        else:
            problems.extend(_check_match(tinfo, match))

    action_name = entry.get("action")
    if "action" not in entry:
        return problems
    if not isinstance(action_name, str) or action_name not in info.actions:
        allowed = ", ".join(info.action_by_id(i).name for i in tinfo.action_ids)
        problems.append(f"{table}: unknown action {action_name!r} (table actions: {allowed})")
        return problems
    action = info.actions[action_name]
    if action.id not in tinfo.action_ids:
        allowed = ", ".join(info.action_by_id(i).name for i in tinfo.action_ids)
        problems.append(
            f"{table}: action {action_name} is not one of the table's actions ({allowed})"
        )
        return problems  # its params would only be checked against the wrong action
    if action.id in tinfo.default_only_action_ids:
        problems.append(f"{table}: action {action_name} may only be the table's default action")

    params = entry.get("params")
    if "params" in entry:
        if not isinstance(params, Mapping):
            problems.append(f"{table}: 'params' must be an object, got {params!r}")
        else:
            problems.extend(_check_params(table, action, params))
    return problems


def _check_match(tinfo: TableInfo, match: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    expected = [f.name for f in tinfo.match_fields]
    for name in match:
        if name not in expected:
            problems.append(
                f"{tinfo.name}: unknown match field {name!r} (fields: {', '.join(expected)})"
            )
    for field in tinfo.match_fields:
        if field.name not in match:
            problems.append(f"{tinfo.name}: match field {field.name!r} is missing")
            continue
        try:
            decode_match_value(field, match[field.name])
        except ValueError as exc:
            problems.append(f"{tinfo.name}: match field {field.name!r}: {exc}")
    return problems


def _check_params(table: str, action: ActionInfo, params: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    expected = [p.name for p in action.params]
    for name in params:
        if name not in expected:
            problems.append(
                f"{table}: action {action.name} has no parameter {name!r} "
                f"(parameters: {', '.join(expected) or 'none'})"
            )
    for param in action.params:
        if param.name not in params:
            problems.append(f"{table}: action {action.name} parameter {param.name!r} is missing")
            continue
        try:
            decode_param_value(param, params[param.name])
        except ValueError as exc:
            problems.append(f"{table}: action {action.name} parameter {param.name!r}: {exc}")
    return problems
