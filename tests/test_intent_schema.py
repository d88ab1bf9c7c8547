"""The LoadBalancerConfig schema: valid, within Kubernetes' structural subset, self-consistent
defaults, and documented field by field in docs/intent.md."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from reconciler.intent.schema import apply_defaults, load_schema
from reconciler.intent.semantic import parse_duration
from reconciler.paths import REPO_ROOT

# What a CRD's openAPIV3Schema accepts (plus the root's $schema/$id/title, which the CRD
# generator drops). No $ref, anyOf/oneOf, propertyNames or patternProperties.
STRUCTURAL = {
    "type", "properties", "required", "items", "enum", "pattern", "minimum", "maximum",
    "minItems", "maxItems", "minLength", "maxLength", "default", "description", "format",
    "additionalProperties",
}  # fmt: skip
ROOT_ONLY = {"$schema", "$id", "title"}


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(documented path, subschema, required) for every property, as docs/intent.md names them."""
    for name, sub in schema.get("properties", {}).items():
        p = f"{path}.{name}" if path else name
        yield p, sub, name in schema.get("required", [])
        if sub.get("type") == "object":
            yield from nodes(sub, p)
        if sub.get("type") == "array" and sub["items"].get("type") == "object":
            yield from nodes(sub["items"], p + "[]")


def all_subschemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield schema
    for sub in schema.get("properties", {}).values():
        yield from all_subschemas(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from all_subschemas(schema[key])


def test_schema_is_valid_and_structural() -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema) <= STRUCTURAL | ROOT_ONLY
    for sub in all_subschemas(schema):
        if sub is not schema:
            assert set(sub) <= STRUCTURAL, sorted(set(sub) - STRUCTURAL)
        assert "type" in sub, sub  # structural: every node is typed
        if sub["type"] == "object" and "properties" in sub:
            assert sub.get("additionalProperties") is False, "unknown fields must be errors"


def test_every_field_is_described() -> None:
    for path, sub, _ in nodes(load_schema()):
        assert sub.get("description"), path


def test_defaults_validate_against_their_own_schema() -> None:
    for path, sub, _ in nodes(load_schema()):
        if "default" in sub:
            jsonschema.Draft202012Validator(sub).validate(apply_defaults(sub["default"], sub))
            if sub.get("format") == "duration":
                assert parse_duration(sub["default"]) is not None, path


def render_default(sub: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in sub:
        return "—"
    value = sub["default"]
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == {}:
        return "`{}`"
    return f"`{value}`"


def doc_rows() -> dict[str, list[str]]:
    text = (REPO_ROOT / "docs" / "intent.md").read_text(encoding="utf-8")
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^\| `([^`]+)` \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split(" | ")]
    return rows


def test_docs_list_every_field_with_its_default() -> None:
    rows = doc_rows()
    fields = list(nodes(load_schema()))
    for path, sub, required in fields:
        assert path in rows, f"docs/intent.md has no row for {path}"
        _type, default, _desc = rows[path]
        assert default == render_default(sub, required), path
        for value in sub.get("enum", []) if sub.get("type") == "string" and path not in ("apiVersion", "kind") else []:
            assert f"`{value}`" in rows[path][0], f"{path}: enum value {value} not documented"
    assert set(rows) == {p for p, _, _ in fields}, "docs/intent.md documents fields the schema lacks"


@pytest.mark.parametrize(
    "text, seconds",
    [("0", 0.0), ("0s", 0.0), ("300ms", 0.3), ("1m30s", 90.0), ("1.5h", 5400.0), (".5s", 0.5), ("1.s", 1.0),
     ("2h45m0.5s", 9900.5), ("100us", 1e-4), ("100\u00b5s", 1e-4), ("7ns", 7e-9)],
)  # fmt: skip
def test_schema_pattern_and_parser_agree_on_valid_durations(text: str, seconds: float) -> None:
    pattern = load_schema()["properties"]["spec"]["properties"]["updateInterval"]["pattern"]
    assert re.match(pattern, text)
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1 s", "5", "-1s", "+1s", "1d", "s", ".s", "1sm", "", "1S", "1h 2m", "１s"])
def test_schema_pattern_and_parser_agree_on_invalid_durations(text: str) -> None:
    pattern = load_schema()["properties"]["spec"]["properties"]["updateInterval"]["pattern"]
    assert not re.match(pattern, text)
    assert parse_duration(text) is None
