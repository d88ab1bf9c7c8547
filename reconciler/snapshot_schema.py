"""The snapshot schema's checks: a compiled validator decides, jsonschema explains (issue 13).

schemas/snapshot.schema.json is checked by jsonschema-rs (compiled from Rust: a 5,000-Service
document of 348,000 entries in ~0.16 s of CPU, where jsonschema takes about a minute and
fastjsonschema ~2.8 s; bench/bench_schema.py). Only when it refuses something is python-jsonschema
run, and only on the parts that fail, to say where and why ("path: message", the text users and
tests know): so a valid document costs the compiled check alone, and an invalid one costs its
failing Services and entries, not a minute.

The two validators must agree on what the schema means; tests/test_snapshot_schema_incremental.py
checks that over random mutations. One place where python-jsonschema departs from the standard
is aligned here: JSON Schema patterns are ECMA-262 regular expressions, whose "$" matches only at
the end of the string, while Python's re.search lets "$" match before a final newline (so
"default/web\\n" passed as a name). The reference validator's "pattern" keyword anchors "$" at the
very end, as jsonschema-rs does.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Iterable, Iterator

import jsonschema
import jsonschema_rs

from .paths import SNAPSHOT_SCHEMA_PATH

Loc = tuple[str | int, ...]  # a location in an instance: keys and indices
PARTS = ("service", "entry")  # $defs that are checked on their own


@lru_cache(maxsize=None)
def schema() -> dict[str, Any]:
    """The snapshot schema as shipped (schemas/snapshot.schema.json)."""
    loaded: dict[str, Any] = json.loads(SNAPSHOT_SCHEMA_PATH.read_text())
    return loaded


def _part_schema(part: str | None) -> dict[str, Any]:
    """The whole schema, or a schema for one $defs entry (same $id, so references resolve alike)."""
    s = schema()
    if part is None:
        return s
    if part not in s["$defs"]:
        raise ValueError(f"snapshot schema has no $defs/{part}")
    return {"$schema": s["$schema"], "$id": s["$id"], "$ref": f"#/$defs/{part}", "$defs": s["$defs"]}


# --- the compiled validator (decides) -----------------------------------------------------------


def _no_remote(uri: str) -> Any:
    """The snapshot schema is self-contained: any reference outside it is refused, never fetched."""
    raise ValueError(f"snapshot schema references {uri!r}, which is not fetched")


@lru_cache(maxsize=None)
def compiled(part: str | None = None) -> Any:
    """A jsonschema-rs validator for the whole schema or one $defs part (built once)."""
    return jsonschema_rs.validator_for(_part_schema(part), retriever=_no_remote)


def is_valid(instance: Any, part: str | None = None) -> bool:
    return bool(compiled(part).is_valid(instance))


# --- the reference validator (explains) -----------------------------------------------------------


def _ecma_anchors(pattern: str) -> str:
    """`pattern` with each unescaped "$" outside a character class as "\\Z": ECMA-262's "$" (no
    multiline flag) matches only at the end of the input; Python's also before a final newline."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "$":
            c = r"\Z"
        out.append(c)
        i += 1
    return "".join(out)


@lru_cache(maxsize=256)
def _compile_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(_ecma_anchors(pattern))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    # jsonschema's own "pattern" keyword, but with ECMA-262 "$" (see the module docstring).
    if validator.is_type(instance, "string") and not _compile_pattern(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=None)
def reference(part: str | None = None) -> jsonschema.protocols.Validator:
    """The python-jsonschema validator whose errors explain a refusal (built once)."""
    s = schema()
    base = jsonschema.validators.validator_for(s)
    base.check_schema(s)
    cls = jsonschema.validators.extend(base, {"pattern": _pattern})
    validator: jsonschema.protocols.Validator = cls(_part_schema(part), format_checker=base.FORMAT_CHECKER)
    return validator


def explain(instance: Any, part: str | None = None, at: Loc = ()) -> list[tuple[Loc, str]]:
    """Every violation of `instance` (a document, or a `part`) as (path, message), the path
    prefixed with `at`, in the reference validator's order."""
    return [(at + tuple(e.absolute_path), e.message) for e in reference(part).iter_errors(instance)]


def format_path(path: Iterable[Any]) -> str:
    """services[3].backends[0].port; "(document)" for the root."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def formatted(found: list[tuple[Loc, str]]) -> list[str]:
    """"path: message" lines sorted by path (stable: one location's errors keep their order)."""
    found = sorted(found, key=lambda pm: [str(p) for p in pm[0]])
    return [f"{format_path(p)}: {m}" for p, m in found]


# --- checks -----------------------------------------------------------------------------------


def errors(instance: Any, part: str | None = None) -> list[str]:
    """Violations of the schema (or of one $defs `part`) as sorted "path: message" strings; empty
    when valid. The compiled validator decides; the reference one explains what it refuses."""
    if is_valid(instance, part):
        return []
    if part is None:
        return formatted(document_violations(instance))
    return formatted(explain(instance, part))


def document_violations(doc: Any) -> list[tuple[Loc, str]]:
    """What the reference validator says of the whole document, computed piecewise: the
    document with its services and table entries taken out (the header, and each table's type and
    name), then only the services and entries that the compiled validator refuses. Every keyword
    of the schema applies either to the header or inside one service or entry, so the union is
    what a check of the whole document yields, in minutes less at 5,000 Services."""
    if not isinstance(doc, dict):
        return explain(doc)
    services, tables = doc.get("services"), doc.get("tables")
    head = dict(doc)
    if isinstance(services, list):
        head["services"] = []
    if isinstance(tables, dict):
        head["tables"] = {t: [] if isinstance(es, list) else es for t, es in tables.items()}
    found = explain(head)
    if isinstance(services, list):
        svc_ok = compiled("service").is_valid
        for i, s in enumerate(services):
            if not svc_ok(s):
                found += explain(s, "service", ("services", i))
    if isinstance(tables, dict):
        entry_ok = compiled("entry").is_valid
        for t, es in tables.items():
            if isinstance(es, list):
                for j, e in enumerate(es):
                    if not entry_ok(e):
                        found += explain(e, "entry", ("tables", t, j))
    return found
