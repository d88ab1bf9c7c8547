"""JSON Schema validation of a LoadBalancerConfig document, reported at file:line:column.

schemas/loadbalancerconfig.schema.json is the single source of truth (DESIGN.md 3): the
structure and the defaults come from it; this module only turns jsonschema's errors into
Diagnostics that point at the offending key or value, and applies the schema's defaults.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from reconciler.diagnostics import Diagnostic
from reconciler.intent.yamlsafe import PathKey, YamlDocument, format_path
from reconciler.paths import LBCONFIG_SCHEMA_PATH

# Integers are integers: YAML's 64.0 or true must not pass for one (jsonschema's default
# "integer" accepts 1.0, and Python's bool is an int).
_TYPE_CHECKER = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _checker, x: isinstance(x, int) and not isinstance(x, bool)
).redefine("number", lambda _checker, x: isinstance(x, (int, float)) and not isinstance(x, bool))
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPE_CHECKER)

# How to describe a value of a given "format" in messages (the formats Kubernetes knows).
_FORMAT_HINTS = {
    "duration": 'a Go duration such as "300ms", "5s" or "1m30s" (units ns, us, ms, s, m, h; no spaces or signs)',
    "mac": 'a MAC address such as "aa:bb:cc:dd:ee:ff"',
    "cidr": 'an IPv4 CIDR such as "10.0.0.0/24"',
}


@lru_cache(maxsize=4)
def load_schema(path: Path = LBCONFIG_SCHEMA_PATH) -> dict[str, Any]:
    """The LoadBalancerConfig schema (checked to be a valid JSON Schema)."""
    with open(path, encoding="utf-8") as f:
        schema = json.load(f)
    _Validator.check_schema(schema)
    return schema


def validate_document(doc: YamlDocument, schema: dict[str, Any] | None = None) -> list[Diagnostic]:
    """Every schema violation in `doc`, each at the position of the key or value at fault."""
    schema = schema if schema is not None else load_schema()
    validator = _Validator(schema)
    out: dict[tuple[str, str], Diagnostic] = {}
    for error in validator.iter_errors(doc.data):
        for diag in _diagnostics(doc, error):
            out.setdefault((diag.field, diag.message), diag)  # `required` repeats per property
    return sorted(out.values())


def apply_defaults(data: Any, schema: dict[str, Any] | None = None) -> Any:
    """A copy of `data` with the schema's defaults filled in where a property is missing.

    As Kubernetes does for structural schemas: a default applies only where its parent
    object exists, and defaulted objects get their own properties' defaults in turn (so
    `healthCheck: {}` as a default yields every health-check default)."""
    schema = schema if schema is not None else load_schema()
    out = copy.deepcopy(data)
    _fill(out, schema)
    return out


def _fill(value: Any, schema: dict[str, Any]) -> None:
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _fill(value[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in props:
                    _fill(item, extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _fill(item, schema["items"])


def _diagnostics(doc: YamlDocument, e: ValidationError) -> Iterator[Diagnostic]:
    path: PathKey = tuple(e.absolute_path)
    kind = e.validator
    if kind == "additionalProperties" and isinstance(e.instance, dict):
        allowed = sorted(e.schema.get("properties", {}))
        for key in e.instance:
            if key not in allowed:
                at = doc.locate((*path, key), key=True)
                yield Diagnostic(doc.file, at.line, at.column, _unknown_field(key, allowed), format_path((*path, key)))
        return
    if kind == "required" and isinstance(e.instance, dict):
        at = doc.locate(path, key=True)
        for key in e.validator_value:
            if key not in e.instance:
                yield Diagnostic(doc.file, at.line, at.column, "required field is missing", format_path((*path, key)))
        return
    at = doc.locate(path)
    yield Diagnostic(doc.file, at.line, at.column, _message(e), format_path(path))


def _unknown_field(key: str, allowed: list[str]) -> str:
    msg = f'unknown field "{key}"'
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f'{msg}; did you mean "{close[0]}"?'
    if allowed:
        return f"{msg}; allowed fields: {', '.join(allowed)}"
    return msg


def _show(value: Any) -> str:
    """A value as the user would write it in YAML/JSON."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return json.dumps(value)


_TYPE_NAMES = {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}
_SCHEMA_TYPE_NAMES = {"object": "mapping", "array": "list"}


def _message(e: ValidationError) -> str:
    kind, want, got = e.validator, e.validator_value, e.instance
    hint = _FORMAT_HINTS.get(e.schema.get("format", ""))
    if kind == "type":
        types: list[str] = want if isinstance(want, list) else [want]
        wanted = " or ".join(_SCHEMA_TYPE_NAMES.get(t, t) for t in types)
        if hint:
            wanted = f"a {wanted} holding {hint}"
        got_name = _TYPE_NAMES.get(type(got), type(got).__name__)
        shown = "" if isinstance(got, (dict, list)) or got is None else f" {_show(got)}"
        return f"expected {wanted}, got {got_name}{shown}"
    if kind == "enum":
        return f"unsupported value {_show(got)}: must be one of {', '.join(str(v) for v in want)}"
    if kind == "pattern":
        if hint:
            return f"invalid value {_show(got)}: expected {hint}"
        return f"invalid value {_show(got)}: must match the pattern {want}"
    if kind == "minimum":
        return f"must be at least {want}, got {_show(got)}"
    if kind == "maximum":
        return f"must be at most {want}, got {_show(got)}"
    if kind == "minItems":
        return f"must have at least {want} item{'s' if want != 1 else ''}, got {len(got)}"
    if kind == "maxItems":
        return f"must have at most {want} item{'s' if want != 1 else ''}, got {len(got)}"
    if kind == "minLength":
        return "must not be empty" if want == 1 else f"must be at least {want} characters long"
    if kind == "maxLength":
        return f"must be at most {want} characters long, got {len(got)}"
    return e.message
