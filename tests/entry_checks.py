"""Checks one snapshot entry, as a JSON document holds it, against the P4Info: the table and action
names, that the action is allowed in the table, that every match field and action parameter is
present exactly once and nothing else is, and that every value is well formed and fits its bit
width. Test-only: the reconciler checks snapshots by schema and encodes them with
reconciler/switch/codec.py, whose rules these checks apply (so a test can name every problem of a
hand-made entry at once)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from reconciler.p4info import ActionInfo, MatchFieldInfo, ParamInfo, PipelineInfo, TableInfo
from reconciler.switch.codec import prefix_value, scalar_value

# Entry keys a snapshot entry may carry besides the three that describe the table entry.
_ENTRY_KEYS = frozenset({"match", "action", "params"})
_ENTRY_OPTIONAL_KEYS = frozenset({"service"})


def decode_match_value(field: MatchFieldInfo, value: object) -> tuple[int, int | None]:
    """(value, prefix length or None) of a snapshot match value; ValueError says what is wrong."""
    if field.match_type == "EXACT":
        return scalar_value(field.bitwidth, value), None
    if field.match_type == "LPM":
        return prefix_value(field.bitwidth, value)
    raise ValueError(f"match type {field.match_type} has no snapshot encoding")


def decode_param_value(param: ParamInfo, value: object) -> int:
    """The int value of a snapshot action parameter; ValueError says what is wrong."""
    return scalar_value(param.bitwidth, value)


def check_table_entry(info: PipelineInfo, table: str, entry: object) -> list[str]:
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

    problems.extend(_section(table, entry, "match", lambda match: _check_match(tinfo, match)))

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

    problems.extend(_section(table, entry, "params", lambda params: _check_params(table, action, params)))
    return problems


def _section(
    table: str, entry: Mapping[str, object], key: str, check: Callable[[Mapping[str, object]], list[str]]
) -> list[str]:
    """The problems of the object at `key` ("match" or "params"), when the entry has one."""
    if key not in entry:
        return []
    value = entry[key]
    if not isinstance(value, Mapping):
        return [f"{table}: {key!r} must be an object, got {value!r}"]
    return check(value)


def _check_match(tinfo: TableInfo, match: Mapping[str, object]) -> list[str]:
    fields = ", ".join(f.name for f in tinfo.match_fields)
    return _check_values(
        match,
        {f.name: functools.partial(decode_match_value, f) for f in tinfo.match_fields},
        f"{tinfo.name}: match field",
        lambda name: f"{tinfo.name}: unknown match field {name!r} (fields: {fields})",
    )


def _check_params(table: str, action: ActionInfo, params: Mapping[str, object]) -> list[str]:
    names = ", ".join(p.name for p in action.params) or "none"
    return _check_values(
        params,
        {p.name: functools.partial(decode_param_value, p) for p in action.params},
        f"{table}: action {action.name} parameter",
        lambda name: f"{table}: action {action.name} has no parameter {name!r} (parameters: {names})",
    )


def _check_values(
    given: Mapping[str, object],
    decoders: Mapping[str, Callable[[object], object]],
    label: str,
    unknown: Callable[[str], str],
) -> list[str]:
    """Names in `given` that are not expected, expected names it lacks, and values that do not
    decode (match fields and action parameters alike)."""
    problems = [unknown(name) for name in given if name not in decoders]
    for name, decode in decoders.items():
        if name not in given:
            problems.append(f"{label} {name!r} is missing")
            continue
        try:
            decode(given[name])
        except ValueError as exc:
            problems.append(f"{label} {name!r}: {exc}")
    return problems
