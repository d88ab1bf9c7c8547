"""What apiextensions refuses in a CRD's schema beyond its shape, and the CEL rules
(`x-kubernetes-validations`) it evaluates on custom resources.

Reproduced from the behaviour of kube-apiserver (the Go sources were read, not copied; paths
under kubernetes/kubernetes staging/src/k8s.io/ unless said otherwise):

1. Bounds the server cannot represent (k8s.io/kube-openapi pkg/validation/validate/values.go,
   IsValueValidAgainstRange, called by numberValidator in validator.go). `minimum`, `maximum`
   and `multipleOf` are float64 in JSONSchemaProps. For a node of type integer the float's
   shortest decimal form must parse as an int64 (int32 / uint32 / uint64 under that format);
   for `format: float` as a float32. Otherwise the number validator fails with
   "<Maximum boundary|Minimum boundary|MultipleOf> value must be of type integer (default format) in <path>"
   ("... with format <f> in <path>" when a format is set). 2^63-1 fails: as float64 it is 2^63.
   - At CRD create/update the error comes from validating the node's `default`
     (apiextensions-apiserver pkg/apiserver/schema/defaulting/validation.go): a plain error,
     so apiserver/validation/validation.go (kubeOpenAPIResultToFieldErrors) reports it as
     `field.Invalid(<node>.default, "", err)`: cause field
     `spec.validation.openAPIV3Schema.properties[spec]...properties[deviceId].default`, message
     `Invalid value: "": Maximum boundary value must be of type integer (default format) in `
     (the default is validated on its own, at path "").
   - On a custom resource setting such a field (no default, so the CRD got in): every create or
     update fails, cause field `<nil>` (the validator runs with a nil field path), message
     `Invalid value: "": Maximum boundary value must be of type integer (default format) in spec.x[0].y`.
2. Defaults (same defaulting/validation.go): a default must not have unknown fields
   (`Invalid value: ...: must not have unknown fields`), must validate against its node's schema
   (errors under `<node>.default`), and, only if that passes, must satisfy the node's CEL rules.
3. CEL rules in the schema (apis/apiextensions/validation/validation.go): `rule is not specified`,
   `message must be non-empty if specified`, `message must not contain line breaks`, an
   unsupported `reason`, and rules that do not compile (here: celpy's parser, plus cel-go's type
   check of `self.<field>` against the node's properties: `undefined field`). The cost estimator
   (per rule 10^7, per CRD 10^8, "estimated rule cost exceeds budget by factor of ...") is NOT
   reproduced: reconciler/crd.py keeps its rules O(1) or O(maxItems).
4. names.categories must be DNS-1035 labels (ValidateCustomResourceDefinitionNames).
5. CEL on custom resources (apiextensions-apiserver pkg/apiserver/schema/cel/validation.go and
   customresource/strategy.go): after the schema, every rule of every present node is evaluated
   with `self` typed from the schema (a `format: duration` string is a CEL duration, date-time a
   timestamp: apiserver/pkg/cel/common/schemas.go). A false rule gives
   `field.Invalid(<node path>[+fieldPath], value, message)`, the value omitted for objects and
   arrays ("Invalid value: <message>"), or the rule's `reason` (Forbidden / Required /
   Duplicate). An evaluation error gives `Invalid value: "<type>": <error> evaluating rule:
   <message or rule>`. Rules are skipped when the schema validation already found a type error
   ("some validation rules were not checked because the object was invalid; ..."). Rules using
   `oldSelf` run on updates only, correlated through object properties (not list items here).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import Any

import celpy
from celpy import celtypes

from . import gotime
from . import validation as v
from .errors import Cause

INT64 = (-(2**63), 2**63 - 1)
_RANGES = {"int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1)}
FLOAT32_MAX = 3.4028234663852886e38
REASONS = ["FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired"]
BLOCKING = "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"


# ---- 1. bounds ----------------------------------------------------------------------------------


def _go_number_text(value: Any) -> str:
    """How Go writes the number before re-parsing it: an int64 exactly, anything else as the
    shortest float64 form in plain notation (strconv.FormatFloat(f, 'f', -1, 64))."""
    if isinstance(value, int) and INT64[0] <= value <= INT64[1]:
        return str(value)
    f = float(value)
    if not math.isfinite(f):
        return repr(f)
    d = Decimal(repr(f))
    return str(int(d)) if d == d.to_integral_value() else format(d.normalize(), "f")


def _in_range(value: Any, kind: str, fmt: str) -> bool:
    text = _go_number_text(value)
    if kind == "integer":
        try:
            number = int(text)
        except ValueError:
            return False
        low, high = _RANGES.get(fmt, INT64)
        return low <= number <= high
    if fmt in ("float", "float32"):
        try:
            return abs(Decimal(text)) <= Decimal(FLOAT32_MAX)
        except InvalidOperation:
            return False
    return True  # float64: no check (nothing beyond float64 is supported)


def _range_message(prefix: str, kind: str, fmt: str, path: str) -> str:
    if fmt:
        return f"{prefix} value must be of type {kind} with format {fmt} in {path}"
    return f"{prefix} value must be of type {kind} (default format) in {path}"


def range_errors(value: Any, node: dict[str, Any], path: str) -> list[str]:
    """The number validator's range errors for `value` at a node (kube-openapi's order)."""
    kind, fmt = node.get("type"), node.get("format") or ""
    if kind not in ("integer", "number") or isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    out = []
    if not _in_range(value, kind, fmt):
        out.append(_range_message("Checked", kind, fmt, path))
    for key, prefix in (("multipleOf", "MultipleOf"), ("minimum", "Minimum boundary"), ("maximum", "Maximum boundary")):
        bound = node.get(key)
        if isinstance(bound, (int, float)) and not isinstance(bound, bool) and not _in_range(float(bound), kind, fmt):
            out.append(_range_message(prefix, kind, fmt, path))
    return out


def _field(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _walk_values(value: Any, node: Any, path: str) -> Iterator[tuple[Any, dict[str, Any], str]]:
    """(value, schema node, kube-openapi path) for `value` and everything under it."""
    if not isinstance(node, dict) or value is None:
        return
    yield value, node, path
    if isinstance(value, dict):
        props = node.get("properties") or {}
        ap = node.get("additionalProperties")
        for k, sub in value.items():
            if k in props:
                yield from _walk_values(sub, props[k], _field(path, k))
            elif isinstance(ap, dict):
                yield from _walk_values(sub, ap, _field(path, k))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            yield from _walk_values(item, node["items"], _field(path, i))


def value_range_errors(value: Any, node: dict[str, Any]) -> list[str]:
    return [msg for val, sub, path in _walk_values(value, node, "") for msg in range_errors(val, sub, path)]


def cr_range_causes(obj: dict[str, Any], props: Any) -> list[Cause]:
    """Custom resources: an unrepresentable bound fails every object that sets the field."""
    if not isinstance(props, dict):
        return []
    return [Cause("FieldValueInvalid", f'Invalid value: "": {msg}', "<nil>") for msg in value_range_errors(obj, props)]


# ---- CEL ----------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def go_duration(text: str) -> dt.timedelta:
    """Go's time.ParseDuration (what strfmt.ParseDuration tries first)."""
    s, sign = text, 1
    if s[:1] in ("+", "-"):
        sign, s = (-1 if s[0] == "-" else 1), s[1:]
    if s == "0":
        return dt.timedelta(0)
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    pos, total = 0, Decimal(0)
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos or m.group(1) in ("", "."):
            raise ValueError(f'time: invalid duration "{text}"')
        total += Decimal(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f'time: invalid duration "{text}"')
    return dt.timedelta(microseconds=int(sign * total / 1000))


def to_cel(value: Any, node: Any) -> Any:
    """The value as the API server hands it to CEL, typed from the schema."""
    if not isinstance(node, dict):
        return celpy.json_to_cel(value)
    if node.get("x-kubernetes-int-or-string"):
        return celtypes.IntType(value) if isinstance(value, int) else celtypes.StringType(value)
    kind = node.get("type")
    if isinstance(value, dict):
        props = node.get("properties")
        ap = node.get("additionalProperties")
        out = {}
        for k, sub in value.items():
            if sub is None:
                continue
            sub_node = (props or {}).get(k) if props is not None else (ap if isinstance(ap, dict) else None)
            out[celtypes.StringType(k)] = to_cel(sub, sub_node)
        return celtypes.MapType(out)
    if isinstance(value, list):
        return celtypes.ListType([to_cel(item, node.get("items")) for item in value])
    if kind == "string" and isinstance(value, str):
        fmt = node.get("format")
        if fmt == "duration":
            return celtypes.DurationType(go_duration(value))
        if fmt in ("date-time", "date"):
            return celtypes.TimestampType(gotime.go_parse(value, gotime.RFC3339) if fmt == "date-time" else value)
        return celtypes.StringType(value)
    if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return celtypes.IntType(value)
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return celtypes.DoubleType(value)
    return celpy.json_to_cel(value)


_ENV = celpy.Environment()
_SELF_FIELD = re.compile(r"\bself\.([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()")


@functools.lru_cache(maxsize=256)
def _program(rule: str) -> Any:
    return _ENV.program(_ENV.compile(rule))


def compile_error(rule: str, node: dict[str, Any]) -> str | None:
    """Why the rule would not compile on the API server, or None."""
    try:
        _program(rule)
    except (celpy.CELParseError, celpy.CELEvalError, ValueError, TypeError) as e:
        lines = str(e).splitlines()
        column = len(lines[1]) - len(lines[1].lstrip()) if len(lines) > 1 else 0
        return f"compilation failed: ERROR: <input>:1:{column}: Syntax error: {lines[0] if lines else e}"
    if node.get("type") == "object" and "properties" in node:
        for m in _SELF_FIELD.finditer(rule):
            if m.group(1) not in node["properties"]:
                return f"compilation failed: ERROR: <input>:1:{m.start(1)}: undefined field '{m.group(1)}'"
    return None


def _evaluate(rule: str, self_value: Any, old_value: Any) -> Any:
    activation = {"self": self_value}
    if old_value is not None:
        activation["oldSelf"] = old_value
    result = _program(rule).evaluate(activation)
    if isinstance(result, celpy.CELEvalError):
        raise result
    return result


_NO_MEMBER = re.compile(r"no such member in mapping: '([^']*)'")


def _eval_error_text(e: Exception) -> str:
    """cel-go's wording for the common runtime errors (celpy words them its own way)."""
    text = str(e.args[0]) if isinstance(e, celpy.CELEvalError) and e.args else str(e)
    m = _NO_MEMBER.search(text)
    return f"no such key: {m.group(1)}" if m else text


def _rule_error_string(rule: dict[str, Any]) -> str:
    return (rule.get("message") or "").strip() or str(rule.get("rule", "")).strip()


def _failure(path: str, rule: dict[str, Any], value: Any, node: dict[str, Any]) -> Cause:
    field_path = str(rule.get("fieldPath") or "").strip()
    if field_path:
        path = path + field_path if path else field_path.lstrip(".")
    message = (rule.get("message") or "").strip() or f"failed rule: {str(rule.get('rule', '')).strip()}"
    omit = node.get("type") in ("object", "array")
    reason = rule.get("reason") or "FieldValueInvalid"
    if reason == "FieldValueForbidden":
        return Cause(reason, f"Forbidden: {message}", path)
    if reason == "FieldValueRequired":
        return Cause(reason, f"Required value: {message}", path)
    if reason == "FieldValueDuplicate":
        return Cause(reason, "Duplicate value" if omit else f"Duplicate value: {v.go_value(value)}", path)
    if omit:
        return Cause("FieldValueInvalid", f"Invalid value: {message}", path)
    return v.invalid(path, value, message)


def _old_child(old: Any, key: Any) -> Any:
    return old.get(key) if isinstance(old, dict) and isinstance(key, str) else None


def cel_causes(value: Any, node: Any, path: str, old: Any = None) -> list[Cause]:
    """Evaluate every rule of every node present in `value` (pkg/apiserver/schema/cel)."""
    if not isinstance(node, dict) or value is None:
        return []
    causes: list[Cause] = []
    for rule in node.get("x-kubernetes-validations") or []:
        text = str(rule.get("rule", ""))
        if "oldSelf" in text and old is None:
            continue  # transition rules run only against a correlated old value
        try:
            ok = _evaluate(text, to_cel(value, node), to_cel(old, node) if old is not None else None)
        except (celpy.CELEvalError, ValueError, TypeError, KeyError, gotime.TimeParseError) as e:
            kind = node.get("type") or "object"
            detail = f"{_eval_error_text(e)} evaluating rule: {_rule_error_string(rule)}"
            causes.append(v.invalid(path, kind, detail))
            continue
        if ok is not True and ok != celtypes.BoolType(True):
            causes.append(_failure(path, rule, value, node))
    if isinstance(value, dict):
        props = node.get("properties") or {}
        ap = node.get("additionalProperties")
        for k, sub in value.items():
            sub_node = props.get(k) if k in props else (ap if isinstance(ap, dict) and not props else None)
            causes += cel_causes(sub, sub_node, _field(path, k), _old_child(old, k))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            causes += cel_causes(item, node.get("items"), _field(path, i))
    return causes


def cr_cel_causes(obj: dict[str, Any], old: dict[str, Any] | None, props: Any, schema_causes: list[Cause]) -> list[Cause]:
    if not isinstance(props, dict):
        return []
    if any(c.reason == "FieldValueTypeInvalid" for c in schema_causes):
        return [Cause("FieldValueInvalid", f"Invalid value: null: {BLOCKING}", "<nil>")]
    return cel_causes(obj, props, "", old)


# ---- 2-4. the CRD's schema ----------------------------------------------------------------------


def _unknown_fields(value: Any, node: Any) -> bool:
    if not isinstance(node, dict) or node.get("x-kubernetes-preserve-unknown-fields"):
        return False
    if isinstance(value, dict):
        props = node.get("properties")
        ap = node.get("additionalProperties")
        for k, sub in value.items():
            if props is not None and k in props:
                if _unknown_fields(sub, props[k]):
                    return True
            elif isinstance(ap, dict) and props is None:
                if _unknown_fields(sub, ap):
                    return True
            elif ap is not True:
                return True
    elif isinstance(value, list):
        return any(_unknown_fields(item, node.get("items")) for item in value)
    return False


def _prefixed(causes: list[Cause], prefix: str) -> list[Cause]:
    out = []
    for c in causes:
        field = prefix if not c.field else (f"{prefix}{c.field}" if c.field.startswith("[") else f"{prefix}.{c.field}")
        out.append(Cause(c.reason, c.message, field))
    return out


def default_causes(path: str, node: dict[str, Any], schema_causes: Any) -> list[Cause]:
    """ValidateDefaults for one node with a `default`."""
    default = node["default"]
    at = f"{path}.default"
    causes: list[Cause] = []
    if _unknown_fields(default, node):
        causes.append(v.invalid(at, default, "must not have unknown fields"))
    found = [Cause("FieldValueInvalid", f'Invalid value: "": {msg}', at) for msg in value_range_errors(default, node)]
    found += _prefixed(schema_causes(default, node), at) if not found else []
    if found:
        return causes + found
    return causes + cel_causes(default, node, at)


def walk_schema(props: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(props, dict):
        return
    yield path, props
    for name, sub in (props.get("properties") or {}).items():
        yield from walk_schema(sub, f"{path}.properties[{name}]")
    if isinstance(props.get("items"), dict):
        yield from walk_schema(props["items"], f"{path}.items")
    if isinstance(props.get("additionalProperties"), dict):
        yield from walk_schema(props["additionalProperties"], f"{path}.additionalProperties")


def rule_causes(path: str, node: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    for i, rule in enumerate(node.get("x-kubernetes-validations") or []):
        at = f"{path}.x-kubernetes-validations[{i}]"
        text, message = str(rule.get("rule") or ""), rule.get("message")
        if not text.strip():
            causes.append(v.required(f"{at}.rule", "rule is not specified"))
            continue
        if isinstance(message, str) and message and not message.strip():
            causes.append(v.invalid(f"{at}.message", message, "message must be non-empty if specified"))
        elif isinstance(message, str) and re.search(r"[\n\r]", message.strip()):
            causes.append(v.invalid(f"{at}.message", message, "message must not contain line breaks"))
        elif re.search(r"[\n\r]", text.strip()) and not (message or "").strip():
            causes.append(v.required(f"{at}.message", "message must be specified if rule contains line breaks"))
        if rule.get("reason") is not None and rule["reason"] not in REASONS:
            causes.append(v.not_supported(f"{at}.reason", rule["reason"], REASONS))
        error = compile_error(text, node)
        if error:
            causes.append(v.invalid(f"{at}.rule", rule, error))
    return causes


def crd_schema_causes(props: Any, base: str, schema_causes: Any) -> list[Cause]:
    """Defaults, bounds and CEL rules of one openAPIV3Schema (schema_causes: crd.schema_causes)."""
    causes: list[Cause] = []
    for path, node in walk_schema(props, base):
        if "default" in node:
            causes += default_causes(path, node, schema_causes)
        causes += rule_causes(path, node)
    return causes


def category_causes(names: Any) -> list[Cause]:
    causes = []
    for i, category in enumerate((names or {}).get("categories") or []):
        errs = v.dns1035_errors(str(category))
        if errs:
            causes.append(v.invalid(f"spec.names.categories[{i}]", category, ",".join(errs)))
    return causes
