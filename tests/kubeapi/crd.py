"""CustomResourceDefinitions and the custom resources they serve (fixture 10).

A CRD is validated like apiextensions does for the parts the fixtures exercise (name =
plural.group, one storage version, `x-kubernetes-preserve-unknown-fields: false` rejected), answers
201 with empty status, then is "established" by the server (conditions NamesAccepted and
Established, written by manager kube-apiserver on /status) and its versions are served.

Custom resources are driven entirely by the installed schema: unknown fields are pruned (and
reported as warnings, or rejected with fieldValidation=Strict), defaults applied, and the object
validated with jsonschema against openAPIV3Schema, with causes worded as kube-apiserver words them,
then against the schema's CEL rules. celrules.py holds what apiextensions refuses in a schema
beyond its shape (defaults, bounds it cannot hold, rules that do not compile) and says where each
rule comes from in kube-apiserver.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import jsonschema

from . import celrules, gotime
from . import schema as sc
from . import validation as v
from .errors import Cause
from .resources import Behavior, ResourceType, WriteContext
from .schema import ANY, IOS, ListOf, MapOf, Node, Scalar, Struct

CR_VERBS = ("delete", "deletecollection", "get", "list", "patch", "create", "update", "watch")


# ---- the CRD object itself ------------------------------------------------------------------


def _storage_version(crd: dict[str, Any]) -> str | None:
    for ver in (crd.get("spec") or {}).get("versions") or []:
        if ver.get("storage"):
            return ver.get("name")
    return None


def _walk_props(props: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(props, dict):
        return
    yield path, props
    for name, sub in (props.get("properties") or {}).items():
        yield from _walk_props(sub, f"{path}.properties[{name}]")
    items = props.get("items")
    if isinstance(items, dict):
        yield from _walk_props(items, f"{path}.items")
    ap = props.get("additionalProperties")
    if isinstance(ap, dict):
        yield from _walk_props(ap, f"{path}.additionalProperties")


class CRDBehavior(Behavior):
    zero: ClassVar[Mapping[str, Any]] = {
        "metadata": {},
        "spec": {"group": "", "names": {"plural": "", "kind": ""}, "scope": "", "versions": None},
        "status": {"conditions": None, "acceptedNames": {"plural": "", "kind": ""}, "storedVersions": None},
    }
    generation = "spec"
    delete_returns_object = True
    status_resets_metadata = True

    def shape(self, obj: dict[str, Any]) -> dict[str, Any]:
        status = obj.setdefault("status", {})
        status.setdefault("conditions", None)
        status.setdefault("acceptedNames", {"plural": "", "kind": ""})
        status.setdefault("storedVersions", None)
        return obj

    def default(self, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        names = spec.setdefault("names", {})
        if names.get("kind"):
            names.setdefault("singular", str(names["kind"]).lower())
            names.setdefault("listKind", f"{names['kind']}List")
        spec.setdefault("conversion", {"strategy": "None"})

    def prepare_create(self, obj: dict[str, Any], ctx: WriteContext) -> list[Cause]:
        storage = _storage_version(obj)
        obj["status"] = {
            "conditions": None,
            "acceptedNames": {"plural": "", "kind": ""},
            "storedVersions": [storage] if storage else None,
        }
        return []

    def prepare_update(self, new: dict[str, Any], old: dict[str, Any], ctx: WriteContext) -> list[Cause]:
        storage = _storage_version(new)
        stored = list((new.get("status") or {}).get("storedVersions") or [])
        if storage and storage not in stored:
            stored.append(storage)
            new.setdefault("status", {})["storedVersions"] = stored
        return []

    def validate(self, obj: dict[str, Any], old: dict[str, Any] | None, ctx: WriteContext) -> list[Cause]:
        causes = super().validate(obj, old, ctx)
        spec = obj.get("spec") or {}
        names = spec.get("names") or {}
        group, plural, kind = spec.get("group") or "", names.get("plural") or "", names.get("kind") or ""
        name = (obj.get("metadata") or {}).get("name")
        if name and name != f"{plural}.{group}":
            causes.append(v.invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
        if not group:
            causes.append(v.required("spec.group"))
        elif "." not in group:
            causes.append(v.invalid("spec.group", group, "should be a domain with at least one dot"))
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            causes.append(v.not_supported("spec.scope", spec.get("scope"), ["Cluster", "Namespaced"]))
        if not plural:
            causes.append(v.required("spec.names.plural"))
        if not kind:
            causes.append(v.required("spec.names.kind"))
        versions = spec.get("versions") or []
        if not versions or sum(1 for ver in versions if ver.get("storage")) != 1:
            causes.append(
                v.invalid("spec.versions", versions, "must have exactly one version marked as storage version")
            )
        schemas = [(ver.get("schema") or {}).get("openAPIV3Schema") for ver in versions]
        shared = len(versions) == 1 or all(s == schemas[0] for s in schemas)
        for i, props in enumerate(schemas):
            if props is None:
                continue
            if shared and i > 0:
                break
            base = "spec.validation.openAPIV3Schema" if shared else f"spec.versions[{i}].schema.openAPIV3Schema"
            for path, node in _walk_props(props, base):
                if node.get("x-kubernetes-preserve-unknown-fields") is False:
                    causes.append(
                        v.invalid(f"{path}.x-kubernetes-preserve-unknown-fields", False, "must be true or undefined")
                    )
            if props.get("type") not in (None, "object"):
                causes.append(v.invalid(f"{base}.type", props.get("type"), "must be object at the root"))
            # Defaults (pruned, valid, bounds the server can hold, CEL rules) and the rules themselves.
            causes += celrules.crd_schema_causes(props, base, schema_causes)
        causes += celrules.category_causes(names)
        return causes

    def after_commit(self, obj: dict[str, Any], api: Any) -> None:
        api.crd_changed(obj)

    def after_delete(self, obj: dict[str, Any], api: Any) -> None:
        api.crd_removed(obj)


def established_status(crd: dict[str, Any], now: str) -> dict[str, Any]:
    names = copy.deepcopy((crd.get("spec") or {}).get("names") or {})
    status = copy.deepcopy(crd.get("status") or {})
    status["conditions"] = [
        {
            "type": "NamesAccepted",
            "status": "True",
            "lastTransitionTime": now,
            "reason": "NoConflicts",
            "message": "no conflicts found",
        },
        {
            "type": "Established",
            "status": "True",
            "lastTransitionTime": now,
            "reason": "InitialNamesAccepted",
            "message": "the initial names have been accepted",
        },
    ]
    status["acceptedNames"] = names
    return status


def is_established(crd: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Established" and c.get("status") == "True"
        for c in (crd.get("status") or {}).get("conditions") or []
    )


# ---- custom resources -----------------------------------------------------------------------


def props_to_node(props: Any) -> Node:
    if not isinstance(props, dict):
        return ANY
    if props.get("x-kubernetes-int-or-string"):
        return IOS
    t = props.get("type")
    preserve = bool(props.get("x-kubernetes-preserve-unknown-fields"))
    if t == "object" or "properties" in props or "additionalProperties" in props:
        ap = props.get("additionalProperties")
        if isinstance(ap, dict) and "properties" not in props:
            return MapOf(props_to_node(ap), atomic=props.get("x-kubernetes-map-type") == "atomic")
        fields = {k: props_to_node(p) for k, p in (props.get("properties") or {}).items()}
        if props.get("x-kubernetes-embedded-resource"):
            fields = {"apiVersion": sc.S, "kind": sc.S, "metadata": sc.OBJECT_META, **fields}
        if not fields and (preserve or ap is True):
            return Struct({}, preserve_unknown=True)
        return Struct(fields, atomic=props.get("x-kubernetes-map-type") == "atomic", preserve_unknown=preserve)
    if t == "array":
        kind = props.get("x-kubernetes-list-type") or "atomic"
        keys = tuple(props.get("x-kubernetes-list-map-keys") or ())
        return ListOf(props_to_node(props.get("items")), kind, keys)
    if t in ("string", "integer", "number", "boolean"):
        return Scalar(t)
    return ANY


def root_node(props: Any) -> Struct:
    node = props_to_node(props or {"type": "object"})
    fields = dict(node.fields) if isinstance(node, Struct) else {}
    fields.update({"apiVersion": sc.S, "kind": sc.S, "metadata": sc.OBJECT_META})
    preserve = isinstance(node, Struct) and node.preserve_unknown or isinstance(node, sc.Deduced)
    return Struct(fields, preserve_unknown=preserve)


def apply_defaults(obj: Any, props: Any) -> None:
    """Structural-schema defaulting: fill `default` of absent properties of present objects."""
    if not isinstance(props, dict):
        return
    if isinstance(obj, dict):
        for name, sub in (props.get("properties") or {}).items():
            if name not in obj and isinstance(sub, dict) and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                apply_defaults(obj[name], sub)
        ap = props.get("additionalProperties")
        if isinstance(ap, dict) and "properties" not in props:
            for val in obj.values():
                apply_defaults(val, ap)
    elif isinstance(obj, list) and isinstance(props.get("items"), dict):
        for item in obj:
            apply_defaults(item, props["items"])


def _draft4(props: Any) -> Any:
    """openAPIV3Schema -> a JSON schema jsonschema's Draft 4 validator checks the same way."""
    if isinstance(props, list):
        return [_draft4(p) for p in props]
    if not isinstance(props, dict):
        return props
    out = {k: _draft4(val) for k, val in props.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if props.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if props.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if "properties" in out and isinstance(out["properties"], dict):
        out["properties"] = {k: _draft4(p) for k, p in props["properties"].items()}
    return out


_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=gotime.TimeParseError)
def _is_datetime(value: object) -> bool:
    if isinstance(value, str):
        gotime.go_parse(value, gotime.RFC3339)
    return True


_GO_TYPE_NAMES = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    dict: "object",
    list: "array",
    type(None): "null",
}


def _field(path: Iterator[Any] | Any) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def schema_causes(obj: dict[str, Any], props: Any) -> list[Cause]:
    if not isinstance(props, dict):
        return []
    validator = jsonschema.Draft4Validator(_draft4(props), format_checker=_FORMATS)
    causes: list[Cause] = []
    for err in validator.iter_errors(obj):
        path = _field(err.absolute_path)
        kw, val, inst = err.validator, err.validator_value, err.instance
        if kw == "required":
            missing = ast.literal_eval(err.message.rsplit(" is a required property", 1)[0])
            causes.append(v.required(f"{path}.{missing}" if path else str(missing)))
        elif kw == "enum":
            causes.append(v.not_supported(path, inst, [str(x) if not isinstance(x, str) else x for x in val]))
        elif kw == "type":
            actual = _GO_TYPE_NAMES.get(type(inst), "unknown")
            want = val if isinstance(val, str) else ",".join(val)
            causes.append(
                Cause(
                    "FieldValueTypeInvalid",
                    f'Invalid value: "{actual}": {path} in body must be of type {want}: "{actual}"',
                    path,
                )
            )
        elif kw == "maximum":
            rel = "less than" if (err.schema.get("exclusiveMaximum") is True) else "less than or equal to"
            causes.append(v.invalid(path, inst, f"{path} in body should be {rel} {val}"))
        elif kw == "minimum":
            rel = "greater than" if (err.schema.get("exclusiveMinimum") is True) else "greater than or equal to"
            causes.append(v.invalid(path, inst, f"{path} in body should be {rel} {val}"))
        elif kw == "maxLength":
            causes.append(v.too_long(path, val))
        elif kw == "minLength":
            causes.append(v.invalid(path, inst, f"{path} in body should be at least {val} chars long"))
        elif kw == "pattern":
            causes.append(v.invalid(path, inst, f"{path} in body should match '{val}'"))
        elif kw == "maxItems":
            causes.append(Cause("FieldValueTooMany", f"Too many: {len(inst)}: must have at most {val} items", path))
        elif kw == "minItems":
            causes.append(v.invalid(path, inst, f"{path} in body should have at least {val} items"))
        elif kw == "format":
            causes.append(v.invalid(path, inst, f"{path} in body must be of type {val}: {v.go_value(inst)}"))
        elif kw == "uniqueItems":
            causes.append(v.duplicate(path, inst))
        else:
            causes.append(v.invalid(path, inst, f"{path} in body {err.message}"))
    causes += _list_map_duplicates(obj, props, "")
    return causes


def _list_map_duplicates(obj: Any, props: Any, path: str) -> list[Cause]:
    if not isinstance(props, dict):
        return []
    causes: list[Cause] = []
    if isinstance(obj, dict):
        for name, sub in (props.get("properties") or {}).items():
            if name in obj:
                causes += _list_map_duplicates(obj[name], sub, f"{path}.{name}" if path else name)
    elif isinstance(obj, list):
        keys = props.get("x-kubernetes-list-map-keys")
        if props.get("x-kubernetes-list-type") == "map" and keys:
            seen = set()
            for i, item in enumerate(obj):
                if isinstance(item, dict):
                    k = tuple(repr(item.get(key)) for key in keys)
                    if k in seen:
                        causes.append(v.duplicate(f"{path}[{i}]", {key: item.get(key) for key in keys}))
                    seen.add(k)
        for i, item in enumerate(obj):
            causes += _list_map_duplicates(item, props.get("items"), f"{path}[{i}]")
    return causes


class CustomResourceBehavior(Behavior):
    zero: ClassVar[Mapping[str, Any]] = {}
    generation = "spec"
    allow_unconditional_update = False
    status_resets_metadata = True

    def __init__(self, props: Any) -> None:
        self.props = props

    def default(self, obj: dict[str, Any]) -> None:
        apply_defaults(obj, self.props)

    def validate(self, obj: dict[str, Any], old: dict[str, Any] | None, ctx: WriteContext) -> list[Cause]:
        causes = super().validate(obj, old, ctx)
        found = schema_causes(obj, self.props) + celrules.cr_range_causes(obj, self.props)
        return causes + found + celrules.cr_cel_causes(obj, old, self.props, found)


def custom_resource_types(crd: dict[str, Any]) -> list[ResourceType]:
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    storage = _storage_version(crd)
    out = []
    for ver in spec.get("versions") or []:
        if not ver.get("served"):
            continue
        props = (ver.get("schema") or {}).get("openAPIV3Schema")
        subresources = tuple(k for k in ("status", "scale") if k in (ver.get("subresources") or {}))
        out.append(
            ResourceType(
                group,
                ver["name"],
                names.get("plural", ""),
                names.get("kind", ""),
                spec.get("scope") == "Namespaced",
                root_node(props),
                CustomResourceBehavior(props),
                names.get("singular") or str(names.get("kind", "")).lower(),
                tuple(names.get("shortNames") or ()),
                tuple(names.get("categories") or ()),
                subresources,
                storage=f"{group}/{names.get('plural', '')}",
                custom=True,
                discovery_verbs=CR_VERBS,
                extra={
                    "listKind": names.get("listKind") or f"{names.get('kind', '')}List",
                    "storageGVK": f"{group}/{storage}/{names.get('kind', '')}",
                },
            )
        )
    return out
