"""The LoadBalancerConfig CustomResourceDefinition, generated from schemas/ (never hand-kept).

DESIGN.md 3: the JSON Schema in schemas/loadbalancerconfig.schema.json is the single source of
truth; this module translates it into the structural openAPIV3Schema Kubernetes requires and
adds what only the cluster has (the status subresource, printer columns, list types).
deploy/crd.yaml is `crd_yaml()` written out, and a test keeps the two equal.

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
- Integer bounds outside int64 are clamped: Kubernetes decodes JSON integers as int64, so a
  deviceId above 2^63-1 (the P4Runtime field is uint64) cannot be stored in a custom resource.
- `\\uXXXX` escapes in patterns become the literal characters: the API server compiles
  patterns with Go's RE2, which has no `\\u` escape (Python's re accepts both forms).
Any keyword without a translation here is an error, so a schema change can never be dropped
silently from the CRD.
"""

from __future__ import annotations

import copy
import io
import json
import re
from collections.abc import Mapping, Sequence
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


def _clamp_int64(node: Mapping[str, Any], out: dict[str, Any], path: Sequence[str], notes: list[str]) -> None:
    clamped = []
    for key, limit in (("maximum", INT64_MAX), ("minimum", INT64_MIN)):
        value = node.get(key)
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            out[key] = limit
            clamped.append(f"{key} {value} clamped to {limit}")
    if not clamped:
        return
    notes.append(f"{_path_text(path)}: {', '.join(clamped)} (Kubernetes stores integers as int64)")
    said = "; ".join(c.replace(" clamped to", " becomes") for c in clamped)
    desc = out.get("description", "")
    out["description"] = (desc + " " if desc else "") + (
        f"In a custom resource the {said}, because Kubernetes stores integers as int64; "
        "Git intent keeps the full range."
    )
    default = out.get("default")
    if isinstance(default, int) and not INT64_MIN <= default <= INT64_MAX:
        raise CRDGenerationError(f"{_path_text(path)}: default {default} does not fit in int64")


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
        _clamp_int64(node, out, path, notes)
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
        node = root
        for name in path:
            try:
                node = node["properties"][name]
            except KeyError:
                raise CRDGenerationError(f"{'.'.join(path)}: no such property (SPEC_LIST_MAP_KEYS is stale)") from None
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
    """deploy/crd.yaml: the generated CRD as YAML, byte-for-byte deterministic."""
    schema = json_schema if json_schema is not None else load_json_schema()
    _, notes = openapi_schema(schema)
    header = [
        "# Generated by `p4kube crd` from schemas/loadbalancerconfig.schema.json: do not edit.",
        "# Regenerate with `p4kube crd --out deploy/crd.yaml` (tests/test_crd.py checks it is current).",
    ]
    if notes:
        header.append("# Changes the CRD form forces on the schema:")
        header += [f"#   {n}" for n in notes]
    buf = io.StringIO()
    _yaml().dump(generate_crd(schema), buf)
    return "\n".join(header) + "\n" + buf.getvalue()
