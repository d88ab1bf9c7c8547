"""The LoadBalancerConfig CustomResourceDefinition, generated from schemas/ (never hand-kept).

DESIGN.md 3: the JSON Schema in schemas/loadbalancerconfig.schema.json is the single source of
truth; this module translates it into the structural openAPIV3Schema Kubernetes requires and
adds what only the cluster has (the status subresource, printer columns, list types).
deploy/base/crd.yaml is `crd_yaml()` written out, and a test keeps the two equal.

What the translation changes, and why (docs/deploy.md repeats this for users):
- `$schema`, `$id` and the root `title` are JSON-Schema bookkeeping the API server rejects.
- `additionalProperties: false` is dropped: a structural schema may not combine it with
  `properties`, and the API server prunes unknown fields anyway (with a Warning, or a 400 under
  fieldValidation=Strict, which kubectl uses by default). The strict "unknown fields are errors"
  rule stays in `p4kube validate` and in the reconciler's own validation of custom resources.
- `metadata` becomes `{type: object}`: the API server owns ObjectMeta and forbids anything
  else there (no description, no defaults, no restrictions beyond name/generateName).
- `apiVersion`/`kind` keep their type and description but lose their enum: the API server
  sets and checks them from the request path.
- Integer bounds the API server cannot represent are clamped. It holds `minimum`/`maximum`
  as float64 and, for an integer node, refuses a bound whose float64 value is not an int64
  (int32 under `format: int32`) -- "Maximum boundary value must be of type integer (default
  format)" (k8s.io/kube-openapi pkg/validation/validate, IsValueValidAgainstRange), reported
  against the node's `default` when it has one, and against every custom resource that sets the
  field otherwise. 2^63-1 itself rounds up to 2^63 in float64, so deviceId (uint64 in
  P4Runtime, maximum 2^64-1 in the JSON Schema) gets the largest exact float64 below 2^63:
  9223372036854774784. The JSON Schema keeps the full range for Git intent.
- `\\uXXXX` escapes in patterns become the literal characters: the API server compiles
  patterns with Go's RE2, which has no `\\u` escape (Python's re accepts both forms).
Any keyword without a translation here is an error, so a schema change can never be dropped
silently from the CRD.

What only the CRD adds: `categories` (`kubectl get p4kube`, `kubectl get all`) and CEL rules
(`x-kubernetes-validations`, CEL_RULES below) for the cross-field checks of the intent
validator that CEL can state exactly, so that the API server refuses such a custom resource at
create/update (422, the rule's message) instead of the reconciler reporting it as Stalled.
"""

from __future__ import annotations

import copy
import io
import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from .paths import LBCONFIG_SCHEMA_PATH

GROUP = "networking.p4kube.io"
VERSION = "v1alpha1"
KIND = "LoadBalancerConfig"
LIST_KIND = "LoadBalancerConfigList"
PLURAL = "loadbalancerconfigs"
SINGULAR = "loadbalancerconfig"
SHORT_NAMES = ("lbc",)
CRD_NAME = f"{PLURAL}.{GROUP}"

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
# The largest integer <= 2^63-1 that float64 holds exactly (2^63 - 2^10): the API server keeps
# bounds as float64 and checks that the float's shortest decimal form parses as an int64; 2^63-1
# becomes 2^63 ("9223372036854776000"), which does not, and neither does -2^63.
FLOAT64_EXACT_INT64_MAX = 2**63 - 2**10

CATEGORIES = ("p4kube", "all")

# Formats the API server knows (k8s.io/kube-openapi strfmt); others would only draw a warning
# and validate nothing, so the generator refuses them.
K8S_FORMATS = frozenset(
    {
        "bsonobjectid", "uri", "email", "hostname", "ipv4", "ipv6", "cidr", "mac", "uuid",
        "uuid3", "uuid4", "uuid5", "isbn", "isbn10", "isbn13", "creditcard", "ssn",
        "hexcolor", "rgbcolor", "byte", "password", "date", "duration", "datetime",
        "date-time", "int32", "int64", "float", "double",
    }
)  # fmt: skip

# Keywords copied as they are (OpenAPI v3 / JSONSchemaProps spellings match JSON Schema's).
_COPIED = ("description", "enum", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "required")

# Lists whose items are identified by a key: server-side apply merges them per item (so Argo CD
# or Flux applying one pool does not take the others), and the API server rejects duplicate
# keys. Each key must be a required property of the items (checked when generating).
SPEC_LIST_MAP_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("spec", "vipPools"): ("name",),
    ("spec", "switchConfig", "switches"): ("name",),
    ("spec", "switchConfig", "routes"): ("prefix",),
}

_DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# CEL rules (x-kubernetes-validations) for cross-field checks of the intent validator
# (reconciler/intent/semantic.py) that CEL states exactly. Each rule sits on the node it is
# about; the API server refuses a custom resource breaking one with 422 and the message
# (cause field: the node's path, plus fieldPath when given). Rules must hold for the node's
# `default` too (the API server checks that when the CRD is created), hence the has() guards on
# objects that default to {}. A `format: duration` string is a CEL duration on the server, so
# durations compare directly. All rules are O(1), or O(n) over switches (maxItems 2): their
# estimated cost is far below the per-rule (10^7) and per-CRD (10^8) limits.
#
# Not here, and why:
# - unique switch, pool and route keys: the list-maps (SPEC_LIST_MAP_KEYS) already make the API
#   server refuse duplicates ("Duplicate value"); a CEL rule would say it twice.
# - at most one standby: follows from exactly one primary, role in {primary, standby} and
#   maxItems 2 (checked when generating, so a schema change cannot void it silently).
# - overlapping VIP ranges, addresses (host:port), pipeline files: need parsing or other
#   objects; they stay in the reconciler.
HEALTH_CHECK_TIMEOUT_RULE = {
    "rule": "!has(self.timeout) || !has(self.interval) || self.timeout < self.interval",
    "message": "timeout must be shorter than interval",
    "fieldPath": ".timeout",
}
_DURATION_MAX_1H = {"rule": "self <= duration('1h')", "message": "must be at most 1h"}
CEL_RULES: dict[tuple[str, ...], tuple[dict[str, str], ...]] = {
    ("spec", "switchConfig", "switches"): (
        {
            "rule": "self.exists_one(s, s.role == 'primary')",
            "message": "exactly one switch must have role primary (the other one, if any, standby)",
        },
    ),
    ("spec", "switchConfig", "tls"): (
        {
            "rule": "has(self.certFile) == has(self.keyFile)",
            "message": "certFile and keyFile must be set together (a client certificate needs its key)",
        },
    ),
    ("spec", "updateInterval"): (_DURATION_MAX_1H,),
    ("spec", "connectionDrainTimeout"): (_DURATION_MAX_1H,),
    ("spec", "healthCheck", "interval"): (
        {"rule": "self > duration('0s')", "message": "must be longer than 0s"},
        _DURATION_MAX_1H,
    ),
    ("spec", "healthCheck", "timeout"): (
        {"rule": "self > duration('0s')", "message": "must be longer than 0s"},
        _DURATION_MAX_1H,
    ),
    ("spec", "healthCheck", "readBackInterval"): (_DURATION_MAX_1H,),
    # on the object, so that a default interval or timeout counts (the server defaults first)
    ("spec", "healthCheck"): (HEALTH_CHECK_TIMEOUT_RULE,),
}


class CRDGenerationError(ValueError):
    """The JSON Schema uses something the generator cannot express in a CRD: names the path."""


# --- the status subresource ---------------------------------------------------------------------


def _condition_schema() -> dict[str, Any]:
    """metav1.Condition, with the API's own limits (what `kubectl explain` shows for it)."""
    return {
        "type": "object",
        "description": "One aspect of the config's state (kstatus: Ready, Reconciling, Stalled).",
        "required": ["type", "status", "lastTransitionTime", "reason", "message"],
        "properties": {
            "type": {
                "type": "string",
                "description": "Ready: the switches hold the latest snapshot for this generation. "
                "Reconciling: a change is being rendered or applied. "
                "Stalled: the reconciler cannot make progress without a change (invalid intent, "
                "switches unreachable, rolled back); the message says why.",
                "maxLength": 316,
                "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
            },
            "status": {"type": "string", "description": "True, False or Unknown.", "enum": ["True", "False", "Unknown"]},
            "observedGeneration": {
                "type": "integer",
                "format": "int64",
                "description": "The metadata.generation this condition was set for.",
                "minimum": 0,
            },
            "lastTransitionTime": {
                "type": "string",
                "format": "date-time",
                "description": "When status last changed (not when the condition was last written).",
            },
            "reason": {
                "type": "string",
                "description": "A CamelCase word for programs (e.g. Applied, RolledBack, InvalidIntent).",
                "minLength": 1,
                "maxLength": 1024,
                "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
            },
            "message": {"type": "string", "description": "A sentence for people.", "maxLength": 32768},
        },
    }


def status_schema() -> dict[str, Any]:
    """The status the reconciler writes through the /status subresource (kstatus style)."""
    return {
        "type": "object",
        "description": "Written by the reconciler; read-only for users.",
        "properties": {
            "observedGeneration": {
                "type": "integer",
                "format": "int64",
                "description": "The metadata.generation the reconciler last acted on. Status is current only "
                "when it equals metadata.generation.",
                "minimum": 0,
            },
            "conditions": {
                "type": "array",
                "description": "Ready, Reconciling and Stalled, as kstatus (Flux, Argo CD, kubectl wait) reads them.",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": _condition_schema(),
            },
            "appliedVersion": {
                "type": "integer",
                "format": "int64",
                "description": "The version of the snapshot the switches hold (see `p4kube audit show VERSION`).",
                "minimum": 0,
            },
            "appliedDigest": {
                "type": "string",
                "description": "The digest of that snapshot.",
                "pattern": "^sha256:[0-9a-f]{64}$",
            },
            "switches": {
                "type": "array",
                "description": "Each switch of spec.switchConfig.switches and what it holds.",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {
                            "type": "string",
                            "description": "The switch's name in spec.switchConfig.switches.",
                            "maxLength": 63,
                            "pattern": _DNS_LABEL,
                        },
                        "role": {
                            "type": "string",
                            "description": "primary or standby.",
                            "enum": ["primary", "standby"],
                        },
                        "state": {
                            "type": "string",
                            "description": "What the switch holds, in one CamelCase word: e.g. InSync (the applied "
                            "snapshot, read back), Degraded (unreachable standby, to be re-synced), "
                            "RolledBack, Unreachable, Fenced (another reconciler is primary).",
                            "maxLength": 64,
                        },
                        "message": {"type": "string", "description": "Details for people.", "maxLength": 32768},
                        "lastWriteTime": {
                            "type": "string",
                            "format": "date-time",
                            "description": "When the reconciler last wrote to this switch.",
                        },
                    },
                },
            },
        },
    }


PRINTER_COLUMNS: tuple[dict[str, Any], ...] = (
    {"name": "Algorithm", "type": "string", "jsonPath": ".spec.algorithm"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Version", "type": "integer", "jsonPath": ".status.appliedVersion", "description": "Applied snapshot version"},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason', "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)


# --- translation ----------------------------------------------------------------------------


def _path_text(path: Sequence[str]) -> str:
    return ".".join(path).replace(".[]", "[]") or "(root)"


def _go_pattern(pattern: str, path: Sequence[str]) -> str:
    """The pattern in a form both Go's RE2 (the API server) and Python's re accept."""
    out = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), pattern)
    for construct, what in (("(?=", "lookahead"), ("(?!", "lookahead"), ("(?<=", "lookbehind"), ("(?<!", "lookbehind")):
        if construct in out:
            raise CRDGenerationError(f"{_path_text(path)}: pattern uses a {what}, which Go's RE2 does not support")
    if re.search(r"\\[1-9]", out):
        raise CRDGenerationError(f"{_path_text(path)}: pattern uses a back-reference, which Go's RE2 does not support")
    try:
        re.compile(out)
    except re.error as e:
        raise CRDGenerationError(f"{_path_text(path)}: invalid pattern {pattern!r}: {e}") from e
    return out


def representable_bound(value: Any, kind: str, fmt: str | None) -> bool:
    """Whether the API server accepts `value` as minimum/maximum of a node of type `kind`: it
    holds the bound as float64 and, for integers, requires that float's shortest decimal form to
    parse as an int64 (int32 under format int32). Numbers take any float64."""
    if kind != "integer":
        return True
    try:
        exact = Decimal(repr(float(value)))
    except (OverflowError, ValueError):
        return False
    if exact != exact.to_integral_value():
        return False
    low, high = (INT32_MIN, INT32_MAX) if fmt == "int32" else (INT64_MIN, INT64_MAX)
    return low <= int(exact) <= high


def _clamp_bounds(node: Mapping[str, Any], out: dict[str, Any], path: Sequence[str], notes: list[str]) -> None:
    fmt = node.get("format")
    high, low = (INT32_MAX, INT32_MIN) if fmt == "int32" else (FLOAT64_EXACT_INT64_MAX, -FLOAT64_EXACT_INT64_MAX)
    clamped = []
    for key, limit in (("maximum", high), ("minimum", low)):
        value = node.get(key)
        if value is None or representable_bound(value, "integer", fmt):
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise CRDGenerationError(f"{_path_text(path)}: {key} {value!r} of an integer must be an integer")
        out[key] = limit
        clamped.append(f"{key} {value} clamped to {limit}")
    if not clamped:
        return
    notes.append(f"{_path_text(path)}: {', '.join(clamped)} (the API server holds bounds as float64, integers as int64)")
    said = "; ".join(c.replace(" clamped to", " becomes") for c in clamped)
    desc = out.get("description", "")
    out["description"] = (desc + " " if desc else "") + (
        f"In a custom resource the {said}, the largest bound the API server can hold "
        "(as float64, for an int64); Git intent keeps the full range."
    )
    default = out.get("default")
    if isinstance(default, int) and not out.get("minimum", default) <= default <= out.get("maximum", default):
        raise CRDGenerationError(f"{_path_text(path)}: default {default} is outside the clamped bounds")


def _translate(node: Mapping[str, Any], path: tuple[str, ...], notes: list[str]) -> dict[str, Any]:
    if not isinstance(node, Mapping):
        raise CRDGenerationError(f"{_path_text(path)}: a schema must be an object, got {type(node).__name__}")
    kind = node.get("type")
    if not isinstance(kind, str):
        # Structural schemas need exactly one type on every node (no unions, no untyped nodes).
        raise CRDGenerationError(f"{_path_text(path)}: every node needs a single string `type` in a CRD, got {kind!r}")
    out: dict[str, Any] = {"type": kind}
    handled = {"type", "properties", "items", "additionalProperties", "pattern", "format", "default", *_COPIED}
    unknown = sorted(set(node) - handled)
    if unknown:
        raise CRDGenerationError(
            f"{_path_text(path)}: keyword(s) {', '.join(unknown)} have no CRD translation; "
            "extend reconciler/crd.py (and say how Kubernetes enforces them)"
        )
    for key in ("description", "format", "enum", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems"):
        if key in node:
            out[key] = copy.deepcopy(node[key])
    if "format" in node and node["format"] not in K8S_FORMATS:
        raise CRDGenerationError(f"{_path_text(path)}: format {node['format']!r} is unknown to Kubernetes")
    if "pattern" in node:
        out["pattern"] = _go_pattern(node["pattern"], path)
    if kind == "integer":
        _clamp_bounds(node, out, path, notes)
    if kind == "object":
        props = node.get("properties")
        extra = node.get("additionalProperties")
        if props is not None:
            out["properties"] = {name: _translate(sub, (*path, name), notes) for name, sub in props.items()}
            if "required" in node:
                missing = [r for r in node["required"] if r not in props]
                if missing:
                    raise CRDGenerationError(f"{_path_text(path)}: required names unknown properties {missing}")
                out["required"] = list(node["required"])
            if isinstance(extra, Mapping):
                raise CRDGenerationError(
                    f"{_path_text(path)}: properties and a schema for additionalProperties cannot be combined in a CRD"
                )
            # additionalProperties: false is implied: the API server prunes unknown fields.
        elif isinstance(extra, Mapping):
            out["additionalProperties"] = _translate(extra, (*path, "*"), notes)
        elif extra is False:
            raise CRDGenerationError(f"{_path_text(path)}: an object allowing no fields at all has no CRD form")
    elif "properties" in node or "additionalProperties" in node:
        raise CRDGenerationError(f"{_path_text(path)}: properties on a node of type {kind}")
    if kind == "array":
        if not isinstance(node.get("items"), Mapping):
            raise CRDGenerationError(f"{_path_text(path)}: an array needs a single `items` schema in a CRD")
        out["items"] = _translate(node["items"], (*path, "[]"), notes)
    elif "items" in node:
        raise CRDGenerationError(f"{_path_text(path)}: items on a node of type {kind}")
    if "required" in node and kind != "object":
        raise CRDGenerationError(f"{_path_text(path)}: required on a node of type {kind}")
    if "default" in node:
        out["default"] = copy.deepcopy(node["default"])
    return out


def _apply_list_map_keys(root: dict[str, Any]) -> None:
    for path, keys in SPEC_LIST_MAP_KEYS.items():
        node = _node_at(root, path, "SPEC_LIST_MAP_KEYS")
        items = node.get("items", {})
        if node.get("type") != "array" or items.get("type") != "object":
            raise CRDGenerationError(f"{'.'.join(path)}: a list-map needs an array of objects")
        for key in keys:
            prop = items.get("properties", {}).get(key)
            if prop is None or prop.get("type") not in ("string", "integer", "boolean", "number"):
                raise CRDGenerationError(f"{'.'.join(path)}: map key {key!r} must be a scalar property of the items")
            if key not in items.get("required", []) and "default" not in prop:
                raise CRDGenerationError(f"{'.'.join(path)}: map key {key!r} must be required or have a default")
        node["x-kubernetes-list-type"] = "map"
        node["x-kubernetes-list-map-keys"] = list(keys)


def _node_at(root: dict[str, Any], path: tuple[str, ...], table: str) -> dict[str, Any]:
    node = root
    for name in path:
        try:
            node = node["properties"][name]
        except KeyError:
            raise CRDGenerationError(f"{'.'.join(path)}: no such property ({table} is stale)") from None
    return node


_SELF_FIELD = re.compile(r"\bself\.([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()")  # self.field, not self.method(


def _apply_cel_rules(root: dict[str, Any]) -> None:
    for path, rules in CEL_RULES.items():
        node = _node_at(root, path, "CEL_RULES")
        for rule in rules:
            # A rule naming a field the node does not have would not compile on the API server.
            for name in _SELF_FIELD.findall(rule["rule"]):
                if name not in node.get("properties", {}):
                    raise CRDGenerationError(f"{'.'.join(path)}: CEL rule {rule['rule']!r} names unknown field {name!r}")
            if "duration(" in rule["rule"] and node.get("type") == "string" and node.get("format") != "duration":
                raise CRDGenerationError(f"{'.'.join(path)}: duration rule on a string without format duration")
        node["x-kubernetes-validations"] = [dict(r) for r in rules]
    switches = _node_at(root, ("spec", "switchConfig", "switches"), "CEL_RULES")
    roles = switches["items"]["properties"]["role"].get("enum")
    if switches.get("maxItems") != 2 or sorted(roles or ()) != ["primary", "standby"]:
        # "at most one standby" is implied only by exactly one primary among at most two switches.
        raise CRDGenerationError(
            "spec.switchConfig.switches: the CEL rules assume maxItems 2 and roles primary|standby; "
            "add a rule for at most one standby"
        )


def openapi_schema(json_schema: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The structural openAPIV3Schema for `json_schema`, and notes on what had to change."""
    if json_schema.get("type") != "object" or "properties" not in json_schema:
        raise CRDGenerationError("(root): the LoadBalancerConfig schema must be an object with properties")
    notes: list[str] = []
    root = {k: v for k, v in json_schema.items() if k not in ("$schema", "$id", "title", "required")}
    props = dict(root["properties"])
    if "status" in props:
        raise CRDGenerationError("status: the schema must not define status; the reconciler owns it (see crd.status_schema)")
    meta = props.pop("metadata", None)
    type_fields = {name: props.pop(name, None) for name in ("apiVersion", "kind")}
    root["properties"] = props
    out = _translate(root, (), notes)
    head: dict[str, Any] = {}
    for name, sub in type_fields.items():
        if sub is not None:
            if sub.get("type") != "string":
                raise CRDGenerationError(f"{name}: must be a string")
            head[name] = {"type": "string", **({"description": sub["description"]} if "description" in sub else {})}
    if meta is not None:
        head["metadata"] = {"type": "object"}  # the only form the API server allows (see module doc)
    out["properties"] = {**head, **out["properties"], "status": status_schema()}
    # apiVersion, kind and metadata are on every stored object: the API server sees to them.
    required = [r for r in json_schema.get("required", []) if r not in head]
    unknown = [r for r in required if r not in out["properties"]]
    if unknown:
        raise CRDGenerationError(f"(root): required names unknown properties {unknown}")
    if required:
        out["required"] = required
    _apply_list_map_keys(out)
    _apply_cel_rules(out)
    return out, notes


def load_json_schema(path: Path = LBCONFIG_SCHEMA_PATH) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def generate_crd(json_schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition for LoadBalancerConfig."""
    schema, _notes = openapi_schema(json_schema if json_schema is not None else load_json_schema())
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "p4kube", "app.kubernetes.io/part-of": "p4kube"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": LIST_KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                }
            ],
        },
    }


def _yaml() -> YAML:
    y = YAML(typ="rt", pure=True)
    y.default_flow_style = False
    y.width = 4096  # keep descriptions on one line: stable diffs, no folding differences
    y.indent(mapping=2, sequence=4, offset=2)
    y.allow_unicode = True
    y.representer.ignore_aliases = lambda _data: True  # shared sub-dicts must not become &anchors
    return y


def crd_yaml(json_schema: Mapping[str, Any] | None = None) -> str:
    """deploy/base/crd.yaml: the generated CRD as YAML, byte-for-byte deterministic."""
    schema = json_schema if json_schema is not None else load_json_schema()
    _, notes = openapi_schema(schema)
    header = [
        "# Generated by `p4kube crd` from schemas/loadbalancerconfig.schema.json: do not edit.",
        "# Regenerate with `p4kube crd --out deploy/base/crd.yaml` (tests/test_crd.py checks it is current).",
    ]
    if notes:
        header.append("# Changes the CRD form forces on the schema:")
        header += [f"#   {n}" for n in notes]
    buf = io.StringIO()
    _yaml().dump(generate_crd(schema), buf)
    return "\n".join(header) + "\n" + buf.getvalue()
