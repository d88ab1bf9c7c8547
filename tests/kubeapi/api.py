"""The API operations (get, list, create, update, patch, apply, delete) over the store.

The write path follows kube-apiserver's order: decode (400 on bad JSON, types, Strict unknown
fields; Warning headers otherwise) -> defaulting -> managedFields (Update or Apply) -> status
subresource rules -> registry preparation and allocation -> validation (422) -> preconditions and
storage (404/409) -> a write that changes nothing keeps the resourceVersion and is not stored.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import errors as E
from . import gotime, managed
from . import schema as sc
from . import validation as v
from .builtins import builtin_types
from .crd import CRDBehavior, custom_resource_types, established_status, is_established
from .errors import ApiError, Cause
from .patch import (
    PatchError,
    PatchFormatError,
    json_patch,
    merge_patch,
    strategic_merge,
)
from .resources import ResourceType, WriteContext
from .selectors import parse_field_selector, parse_label_selector
from .store import Store

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
SMP = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
_META_ORDER = (
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
)
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"

CRD_TYPE = ResourceType(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    "CustomResourceDefinition",
    False,
    sc.CRD,
    CRDBehavior(),
    "customresourcedefinition",
    ("crd", "crds"),
    ("api-extensions",),
    ("status",),
)


@dataclass
class Result:
    code: int
    body: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    custom: bool = False  # serialize with sorted keys (custom resources)


def manager_name(query: Mapping[str, str], user_agent: str) -> str:
    return query.get("fieldManager") or (user_agent.split("/", 1)[0] if user_agent else "unknown")[:128]


def _order_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out = {k: meta[k] for k in _META_ORDER if k in meta}
    out.update({k: val for k, val in meta.items() if k not in out})
    for k in ("labels", "annotations"):
        if k in out and not out[k]:
            del out[k]
    return out


def continue_token(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\x00"}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def parse_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        return int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError) as e:
        raise E.bad_request(f"continue key is not valid: {e}") from None


def _json_error_text(raw: bytes, err: json.JSONDecodeError) -> str:
    if err.pos >= len(raw.decode("utf-8", "replace").rstrip()):
        return "unexpected end of JSON input"
    ch = err.doc[err.pos] if err.pos < len(err.doc) else ""
    return f"invalid character '{ch}' looking for beginning of value"


def _summary(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    if not text:
        return "<empty>"
    if text.startswith("{"):
        return text[:30] + " ..." if len(text) > 30 else text
    return raw[:30].hex() + (" ..." if len(raw) > 30 else "")


class Api:
    def __init__(self, store: Store, *, bootstrap: bool = True) -> None:
        self.store = store
        # Validating admission (admission.py), called with (operation, rt, ns, name, subresource,
        # object, oldObject) in API form after validation, before storage; None: no admission.
        self.admission: Any = None
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        for rt in [*builtin_types(), CRD_TYPE]:
            self.register(rt)
        if bootstrap:
            self._bootstrap()

    # ---- registry ------------------------------------------------------------------------------

    def register(self, rt: ResourceType) -> None:
        # Copy-on-write: request threads iterate `types` without the lock.
        self.types = {**self.types, (rt.group, rt.version, rt.resource): rt}

    def _unregister(self, group: str, plural: str) -> None:
        self.types = {
            k: rt for k, rt in self.types.items() if not (rt.custom and rt.group == group and rt.resource == plural)
        }

    def lookup(self, group: str, version: str, resource: str) -> ResourceType | None:
        return self.types.get((group, version, resource))

    def group_versions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for g, ver, _r in self.types:
            if ver not in out.setdefault(g, []):
                out[g].append(ver)
        return out

    def type_for_kind(self, api_version: str, kind: str) -> ResourceType | None:
        for rt in self.types.values():
            if rt.api_version == api_version and rt.kind == kind:
                return rt
        return None

    def crd_changed(self, crd: dict[str, Any]) -> None:
        if not is_established(crd):
            name = crd["metadata"]["name"]
            status = established_status(crd, gotime.now_time())
            self.internal_write(
                CRD_TYPE, "", name, lambda o: o.__setitem__("status", status), "status", "kube-apiserver"
            )
            crd = self.store.get(CRD_TYPE.storage_key, "", name) or crd
        group = crd["spec"]["group"]
        plural = crd["spec"]["names"]["plural"]
        self._unregister(group, plural)
        for rt in custom_resource_types(crd):
            self.register(rt)

    def crd_removed(self, crd: dict[str, Any]) -> None:
        group = crd["spec"]["group"]
        plural = crd["spec"]["names"]["plural"]
        key = f"{group}/{plural}"
        for obj in self.store.items(key):
            self.store.commit(key, None, delete=(obj["metadata"].get("namespace", ""), obj["metadata"]["name"]))
        self._unregister(group, plural)

    def _bootstrap(self) -> None:
        ns_type = self.lookup("", "v1", "namespaces")
        svc_type = self.lookup("", "v1", "services")
        assert ns_type and svc_type
        for ns in ("default", "kube-node-lease", "kube-public", "kube-system"):
            if self.store.get(ns_type.storage_key, "", ns) is None:
                self.create(ns_type, "", json.dumps({"metadata": {"name": ns}}).encode(), {}, "kube-apiserver/v1.36.2")
        if self.store.get(svc_type.storage_key, "default", "kubernetes") is None:
            body = {
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {"component": "apiserver", "provider": "kubernetes"},
                },
                "spec": {
                    "ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 6443}],
                    "clusterIP": "10.96.0.1",
                    "sessionAffinity": "None",
                    "type": "ClusterIP",
                    "ipFamilyPolicy": "SingleStack",
                    "internalTrafficPolicy": "Cluster",
                },
            }
            self.create(svc_type, "default", json.dumps(body).encode(), {}, "kube-apiserver/v1.36.2")

    # ---- rendering -----------------------------------------------------------------------------

    def render(self, rt: ResourceType, stored: dict[str, Any], *, in_list: bool = False) -> dict[str, Any]:
        obj = rt.behavior.from_storage(copy.deepcopy(stored))
        obj = rt.behavior.shape(obj)
        body: dict[str, Any] = {}
        if not in_list or rt.custom:
            body["kind"] = rt.kind
            body["apiVersion"] = rt.api_version
        body["metadata"] = _order_meta(obj.get("metadata") or {})
        for k, val in obj.items():
            if k not in ("kind", "apiVersion", "metadata"):
                body[k] = val
        return body

    def bookmark(self, rt: ResourceType, rv: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        obj = copy.deepcopy(rt.zero_object())
        obj = rt.behavior.shape(obj) if not rt.custom else obj
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if annotations:
            meta["annotations"] = annotations
        body: dict[str, Any] = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}
        body.update({k: val for k, val in obj.items() if k != "metadata"})
        return body

    # ---- decoding ------------------------------------------------------------------------------

    def _parse_json(self, rt: ResourceType, raw: bytes) -> Any:
        try:
            return json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            text = _json_error_text(raw, e) if isinstance(e, json.JSONDecodeError) else str(e)
            raise E.bad_request(
                f"the object provided is unrecognized (must be of type {rt.kind}): couldn't get version/kind; "
                f"json parse error: {text} ({_summary(raw)})"
            ) from None

    def _check_kind(self, rt: ResourceType, obj: Any, raw: bytes) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise E.bad_request(
                f"the object provided is unrecognized (must be of type {rt.kind}): couldn't get version/kind; "
                f"json parse error: json: cannot unmarshal {type(obj).__name__} into Go value of type struct "
                f'{{ APIVersion string "json:\\"apiVersion,omitempty\\""; Kind string "json:\\"kind,omitempty\\"" }} '
                f"({_summary(raw)})"
            )
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        if rt.custom and not kind:
            raise E.bad_request(f"Object 'Kind' is missing in '{raw.decode('utf-8', 'replace')}'")
        if kind and kind != rt.kind:
            version = (api_version or "").split("/")[-1] or rt.version
            other = self.type_for_kind(api_version or "", kind)
            source = (
                f"{(other.group + '.') if other and other.group else ''}{version}.{kind}"
                if other
                else f"{version}.{kind}"
            )
            raise E.bad_request(
                f'{kind} in version "{version}" cannot be handled as a {rt.kind}: converting ({source}) to '
                f"({rt.group.split('.')[0] if rt.group else 'core'}.{rt.kind}): unknown conversion"
            )
        if api_version and api_version != rt.api_version:
            raise E.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version ({rt.api_version})"
            )
        obj["kind"], obj["apiVersion"] = rt.kind, rt.api_version
        return obj

    def _decode(
        self,
        rt: ResourceType,
        obj: dict[str, Any],
        query: Mapping[str, str],
        *,
        in_patch: bool = False,
        patched_json: str = "",
    ) -> tuple[dict[str, Any], list[str]]:
        """Type-check, normalize and prune against the schema; return (object, warnings)."""
        try:
            if rt.custom:
                result = sc.DecodeResult(obj)
                result.value = _prune(obj, rt.schema, "", result.unknown)
            else:
                result = sc.decode(obj, rt.schema, rt.kind)
        except sc.DecodeError as e:
            if in_patch:
                raise self._patch_decode_error(patched_json, str(e)) from None
            raise E.bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {e}') from None
        mode = query.get("fieldValidation", "Warn") or "Warn"
        if mode not in ("Ignore", "Warn", "Strict"):
            raise E.bad_request(f"fieldValidation: unsupported value {mode!r}")
        value = sc.drop_nulls(result.value) if not rt.custom else result.value
        if result.unknown and mode == "Strict":
            listed = ", ".join(f'unknown field "{p}"' for p in sorted(result.unknown))
            raise E.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: strict decoding error: {listed}'
            )
        warnings = sc.unknown_field_warnings(result.unknown) if mode == "Warn" else []
        return value, warnings

    @staticmethod
    def _patch_decode_error(patched_json: str, err: str) -> ApiError:
        cause = Cause("FieldValueInvalid", f"Invalid value: {json.dumps(patched_json)}: {err}", "patch")
        return ApiError(422, "Invalid", f' "" is invalid: patch: {cause.message}', {"causes": [cause.to_dict()]})

    # ---- reads ---------------------------------------------------------------------------------

    def get(self, rt: ResourceType, ns: str, name: str) -> Result:
        with self.store.lock:
            stored = self.store.get(rt.storage_key, ns, name)
        if stored is None:
            raise E.not_found(rt.resource, rt.error_group, name)
        return Result(200, self.render(rt, stored), custom=rt.custom)

    def _sort_key(self, rt: ResourceType, ns: str, obj: dict[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        if rt.namespaced and not ns:
            return f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        return str(meta.get("name", ""))

    def list(self, rt: ResourceType, ns: str, query: Mapping[str, str]) -> Result:
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), rt.behavior.field_selectors)
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise E.bad_request(f"limit: invalid value {query.get('limit')!r}") from None
        token, rv, rvm = query.get("continue"), query.get("resourceVersion"), query.get("resourceVersionMatch")
        if rvm and rvm not in ("Exact", "NotOlderThan"):
            raise E.invalid_options(
                "ListOptions", [v.not_supported("resourceVersionMatch", rvm, ["Exact", "NotOlderThan", ""])]
            )
        if rvm and not rv:
            raise E.invalid_options(
                "ListOptions",
                [
                    v.forbidden(
                        "resourceVersionMatch", "resourceVersionMatch is forbidden unless resourceVersion is provided"
                    )
                ],
            )
        if rvm == "Exact" and rv == "0":
            raise E.invalid_options(
                "ListOptions",
                [
                    v.forbidden(
                        "resourceVersionMatch", 'resourceVersionMatch "exact" is forbidden for resourceVersion "0"'
                    )
                ],
            )
        if token and rv:
            raise E.bad_request("specifying resource version is not allowed when using continue")
        key = rt.storage_key
        start = ""
        with self.store.lock:
            current = self.store.rv
            if token:
                token_rv, start = parse_continue(token)
                if token_rv == -1:
                    objs, list_rv = self.store.items(key), current
                elif token_rv < self.store.list_floor(key):
                    raise E.expired_continue(continue_token(-1, start.rstrip("\x00")))
                else:
                    objs, list_rv = self.store.snapshot(key, token_rv), token_rv
            elif rv and rv != "0":
                try:
                    want = int(rv)
                except ValueError:
                    raise E.bad_request(f"invalid resource version: {rv!r}") from None
                if want > current:
                    raise E.too_large_resource_version(want, current)
                if rvm == "Exact":
                    if want < self.store.list_floor(key):
                        raise E.expired_list()
                    objs, list_rv = self.store.snapshot(key, want), want
                else:
                    objs, list_rv = self.store.items(key), current
            else:
                objs, list_rv = self.store.items(key), current
        selected = []
        for stored in objs:
            meta = stored.get("metadata") or {}
            if ns and meta.get("namespace") != ns:
                continue
            api_obj = rt.behavior.shape(rt.behavior.from_storage(copy.deepcopy(stored)))
            if not labels.matches(meta.get("labels")) or not fields.matches(api_obj, rt.behavior.field_selectors):
                continue
            k = self._sort_key(rt, ns, stored)
            if start and k < start:
                continue
            selected.append((k, stored))
        selected.sort(key=lambda x: x[0])
        list_meta: dict[str, Any] = {}
        if rt.custom:
            list_meta["continue"] = ""
        list_meta["resourceVersion"] = str(list_rv)
        page = selected
        if limit > 0 and len(selected) > limit:
            page = selected[:limit]
            list_meta["continue"] = continue_token(list_rv, page[-1][0])
            if labels.empty and fields.empty:
                list_meta["remainingItemCount"] = len(selected) - limit
        items = [self.render(rt, stored, in_list=True) for _, stored in page]
        if rt.custom:
            body = {"apiVersion": rt.api_version, "items": items, "kind": rt.list_kind, "metadata": list_meta}
        else:
            body = {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": list_meta, "items": items}
        return Result(200, body, custom=rt.custom)

    # ---- writes --------------------------------------------------------------------------------

    def _ctx(self, query: Mapping[str, str], subresource: str = "") -> WriteContext:
        dry = query.get("dryRun")
        if dry and dry != "All":
            raise E.bad_request(f'dryRun: Unsupported value: "{dry}": supported values: "All"')
        return WriteContext(self.store, dry_run=bool(dry), subresource=subresource)

    def _reset_paths(self, rt: ResourceType, subresource: str) -> list[managed.Path]:
        if not rt.has_status:
            return []
        if subresource == "status":
            paths: list[managed.Path] = [
                ("f:" + k,) for k in rt.schema.fields if k not in ("status", "metadata", "apiVersion", "kind")
            ]
            if rt.behavior.status_resets_metadata:
                paths.append(("f:metadata",))
            if rt.custom:
                paths.append(("f:spec",))
            return paths
        return [("f:status",)]

    def _namespace_exists(self, ns: str) -> bool:
        return self.store.get("/namespaces", "", ns) is not None

    def create(self, rt: ResourceType, ns: str, raw: bytes, query: Mapping[str, str], user_agent: str) -> Result:
        obj = self._check_kind(rt, self._parse_json(rt, raw), raw)
        obj, warnings = self._decode(rt, obj, query)
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise E.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        ctx = self._ctx(query)
        with _carry(warnings), self.store.lock:
            if rt.namespaced and not self._namespace_exists(ns):
                raise E.not_found("namespaces", "", ns)
            rt.behavior.default(obj)
            obj = rt.behavior.shape(obj)
            entries = managed.update(
                [],
                _strip_mf(rt.zero_object()),
                _strip_mf(obj),
                rt.schema,
                manager=manager_name(query, user_agent),
                api_version=rt.api_version,
                subresource="",
                reset=self._reset_paths(rt, ""),
                now=gotime.now_time(),
            )
            result = self._store_new(rt, ns, obj, entries, ctx)
        return Result(201, result, warnings, custom=rt.custom)

    def _store_new(
        self, rt: ResourceType, ns: str, obj: dict[str, Any], entries: list[managed.Entry], ctx: WriteContext
    ) -> dict[str, Any]:
        """Registry part of a create (lock held): name generation, status reset, allocation,
        validation, existence check, storage."""
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = str(meta["generateName"]) + "".join(random.choice(_NAME_CHARS) for _ in range(5))
        _set_managed(meta, entries)
        storage = rt.behavior.to_storage(obj)
        smeta = storage.setdefault("metadata", {})
        for k in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            smeta.pop(k, None)
        smeta["uid"] = str(uuid.uuid4())
        smeta["creationTimestamp"] = gotime.now_time()
        if rt.behavior.generation != "none":
            smeta["generation"] = 1
        else:
            smeta.pop("generation", None)
        if rt.has_status and not rt.behavior.keeps_status_on_create:
            storage.pop("status", None)
        causes = rt.behavior.prepare_create(storage, ctx)
        storage = rt.behavior.to_storage(rt.behavior.shape(rt.behavior.from_storage(storage)))
        name = smeta.get("name") or ""
        if causes:
            raise E.invalid(rt.kind, rt.error_group, name, causes)
        causes = rt.behavior.validate(rt.behavior.from_storage(copy.deepcopy(storage)), None, ctx)
        if causes:
            raise E.invalid(rt.kind, rt.error_group, name, causes)
        if self.store.get(rt.storage_key, ns if rt.namespaced else "", name) is not None:
            raise E.already_exists(rt.resource, rt.error_group, name)
        if self.admission is not None:
            self.admission("CREATE", rt, ns, name, "", self.render(rt, storage), None)
        if ctx.dry_run:
            return self.render(rt, storage)
        stored = self.store.commit(rt.storage_key, storage)
        rt.behavior.after_commit(stored, self)
        return self.render(rt, stored)

    def _finish_update(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        live_stored: dict[str, Any],
        new: dict[str, Any],
        entries: list[managed.Entry],
        subresource: str,
        ctx: WriteContext,
    ) -> dict[str, Any]:
        """Registry part of an update (lock held): subresource rules, allocation, generation,
        validation, no-op detection, storage. `new` is in the request's API version."""
        live = rt.behavior.shape(rt.behavior.from_storage(copy.deepcopy(live_stored)))
        if rt.has_status:
            if subresource == "status":
                for k in list(new):
                    if k not in ("metadata", "status", "kind", "apiVersion"):
                        del new[k]
                for k, val in live.items():
                    if k not in ("metadata", "status", "kind", "apiVersion"):
                        new[k] = copy.deepcopy(val)
                if rt.behavior.status_resets_metadata:
                    new["metadata"] = copy.deepcopy(live.get("metadata") or {})
            elif "status" in live:
                new["status"] = copy.deepcopy(live["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        live_meta = live.get("metadata") or {}
        for k in (
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "generation",
            "deletionTimestamp",
            "resourceVersion",
        ):
            if k in live_meta:
                meta[k] = live_meta[k]
            else:
                meta.pop(k, None)
        _set_managed(meta, entries)
        storage = rt.behavior.to_storage(new)
        causes = rt.behavior.prepare_update(storage, live_stored, ctx)
        storage = rt.behavior.to_storage(rt.behavior.shape(rt.behavior.from_storage(storage)))
        if causes:
            raise E.invalid(rt.kind, rt.error_group, name, causes)
        if rt.behavior.generation != "none" and _generation_changes(rt, storage, live_stored):
            storage["metadata"]["generation"] = int(live_stored["metadata"].get("generation") or 0) + 1
        causes = rt.behavior.validate(
            rt.behavior.from_storage(copy.deepcopy(storage)), rt.behavior.from_storage(copy.deepcopy(live_stored)), ctx
        )
        if causes:
            raise E.invalid(rt.kind, rt.error_group, name, causes)
        if self.admission is not None:  # like the real server, also for a write that changes nothing
            self.admission("UPDATE", rt, ns, name, subresource, self.render(rt, storage), self.render(rt, live_stored))
        if _same(storage, live_stored) or ctx.dry_run:
            return self.render(rt, live_stored if _same(storage, live_stored) else storage)
        stored = self.store.commit(rt.storage_key, storage)
        rt.behavior.after_commit(stored, self)
        return self.render(rt, stored)

    def update(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        subresource: str,
        raw: bytes,
        query: Mapping[str, str],
        user_agent: str,
    ) -> Result:
        obj = self._check_kind(rt, self._parse_json(rt, raw), raw)
        obj, warnings = self._decode(rt, obj, query)
        meta = obj.setdefault("metadata", {})
        if meta.get("name") != name:
            raise E.bad_request(
                f"the name of the object ({meta.get('name', '')}) does not match the name on the URL ({name})"
            )
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise E.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = ns
        ctx = self._ctx(query, subresource)
        with _carry(warnings), self.store.lock:
            live_stored = self.store.get(rt.storage_key, ns, name)
            if live_stored is None:
                if subresource or not rt.behavior.allow_create_on_update:
                    raise E.not_found(rt.resource, rt.error_group, name)
                return self.create(rt, ns, raw, query, user_agent)
            rv = meta.get("resourceVersion")
            if rv:
                if rv != live_stored["metadata"].get("resourceVersion"):
                    raise E.conflict_modified(rt.resource, rt.error_group, name)
            elif not rt.behavior.allow_unconditional_update:
                raise E.ApiError(
                    422,
                    "Invalid",
                    f'{rt.kind}.{rt.group} "{name}" is invalid: metadata.resourceVersion: Invalid value: 0x0: '
                    "must be specified for an update",
                    {
                        "name": name,
                        "group": rt.group,
                        "kind": rt.kind,
                        "causes": [
                            {
                                "reason": "FieldValueInvalid",
                                "message": "Invalid value: 0x0: must be specified for an update",
                                "field": "metadata.resourceVersion",
                            }
                        ],
                    },
                )
            live = rt.behavior.shape(rt.behavior.from_storage(copy.deepcopy(live_stored)))
            rt.behavior.default(obj)
            obj = rt.behavior.shape(obj)
            entries = self._base_entries(obj, live, subresource)
            entries = managed.update(
                entries,
                _strip_mf(live),
                _strip_mf(obj),
                rt.schema,
                manager=manager_name(query, user_agent),
                api_version=rt.api_version,
                subresource=subresource,
                reset=self._reset_paths(rt, subresource),
                now=gotime.now_time(),
            )
            body = self._finish_update(rt, ns, name, live_stored, obj, entries, subresource, ctx)
        return Result(200, body, warnings, custom=rt.custom)

    @staticmethod
    def _base_entries(new: dict[str, Any], live: dict[str, Any], subresource: str) -> list[managed.Entry]:
        """Entries a write starts from: those sent in the body (main resource only), else live's."""
        sent = (new.get("metadata") or {}).get("managedFields")
        if sent and not subresource:
            return managed.decode_managed(sent)
        return managed.decode_managed((live.get("metadata") or {}).get("managedFields"))

    def patch(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        subresource: str,
        raw: bytes,
        content_type: str,
        query: Mapping[str, str],
        user_agent: str,
    ) -> Result:
        ct = content_type.split(";")[0].strip().lower()
        if ct == APPLY:
            return self.apply(rt, ns, name, subresource, raw, query)
        if ct not in (MERGE, JSON_PATCH, SMP):
            raise E.unsupported_media_type()
        if ct == SMP and rt.custom:
            raise E.unsupported_patch_type((JSON_PATCH, MERGE, APPLY))
        if query.get("force"):
            raise E.invalid_options("PatchOptions", [v.forbidden("force", "may not be specified for non-apply patch")])
        try:
            patch_doc = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise E.bad_request(f"error decoding patch: {e}") from None
        ctx = self._ctx(query, subresource)
        with self.store.lock:
            live_stored = self.store.get(rt.storage_key, ns, name)
            if live_stored is None:
                raise E.not_found(rt.resource, rt.error_group, name)
            live_doc = self.render(rt, live_stored)
            try:
                if ct == MERGE:
                    patched = merge_patch(live_doc, patch_doc)
                elif ct == JSON_PATCH:
                    patched = json_patch(live_doc, patch_doc)
                else:
                    patched = strategic_merge(live_doc, patch_doc, rt.schema)
            except PatchFormatError as e:
                raise E.bad_request(str(e)) from None
            except PatchError:
                raise ApiError(
                    422, "Invalid", "the server rejected our request due to an error in our request", {}
                ) from None
            if not isinstance(patched, dict):
                raise self._patch_decode_error(json.dumps(patched), "json: cannot unmarshal into object")
            sent_rv = (patched.get("metadata") or {}).get("resourceVersion")
            if sent_rv and sent_rv != live_stored["metadata"].get("resourceVersion"):
                raise E.conflict_modified(rt.resource, rt.error_group, name)
            patched_json = json.dumps(patched, separators=(",", ":"), ensure_ascii=False)
            obj, warnings = self._decode(rt, patched, query, in_patch=True, patched_json=patched_json)
            meta = obj.setdefault("metadata", {})
            meta["name"] = name
            if rt.namespaced:
                meta["namespace"] = ns
            live = rt.behavior.shape(rt.behavior.from_storage(copy.deepcopy(live_stored)))
            rt.behavior.default(obj)
            obj = rt.behavior.shape(obj)
            entries = self._base_entries(obj, live, subresource)
            entries = managed.update(
                entries,
                _strip_mf(live),
                _strip_mf(obj),
                rt.schema,
                manager=manager_name(query, user_agent),
                api_version=rt.api_version,
                subresource=subresource,
                reset=self._reset_paths(rt, subresource),
                now=gotime.now_time(),
            )
            body = self._finish_update(rt, ns, name, live_stored, obj, entries, subresource, ctx)
        return Result(200, body, warnings, custom=rt.custom)

    def apply(
        self, rt: ResourceType, ns: str, name: str, subresource: str, raw: bytes, query: Mapping[str, str]
    ) -> Result:
        manager = query.get("fieldManager")
        if not manager:
            raise E.invalid_options("PatchOptions", [v.required("fieldManager", "is required for apply patch")])
        force = (query.get("force") or "").lower() in ("true", "1")
        try:
            config = yaml.safe_load(raw.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise E.bad_request(f"error decoding YAML: {e}") from None
        if not isinstance(config, dict):
            raise E.bad_request("error decoding YAML: the applied configuration is not an object")
        if not config.get("apiVersion") or not config.get("kind"):
            raise E.bad_request(f"invalid object type: {config.get('apiVersion', '')}, Kind={config.get('kind', '')}")
        config = self._check_kind(rt, config, raw)
        config, warnings = self._decode(rt, config, query)
        cmeta = config.setdefault("metadata", {})
        if cmeta.get("name") and cmeta["name"] != name:
            raise E.bad_request(f"the name of the object ({cmeta['name']}) does not match the name on the URL ({name})")
        if rt.namespaced and cmeta.get("namespace") and cmeta["namespace"] != ns:
            raise E.bad_request("the namespace of the provided object does not match the namespace sent on the request")
        ctx = self._ctx(query, subresource)
        with _carry(warnings), self.store.lock:
            live_stored = self.store.get(rt.storage_key, ns, name)
            if live_stored is None:
                if subresource:
                    raise E.not_found(rt.resource, rt.error_group, name)
                if rt.namespaced and not self._namespace_exists(ns):
                    raise E.not_found("namespaces", "", ns)
                live = _strip_mf(rt.zero_object())
                live.setdefault("metadata", {}).update({"name": name, **({"namespace": ns} if rt.namespaced else {})})
                base: list[managed.Entry] = []
            else:
                live = rt.behavior.shape(rt.behavior.from_storage(copy.deepcopy(live_stored)))
                base = managed.decode_managed((live.get("metadata") or {}).get("managedFields"))
            merged, entries, _changed = managed.apply(
                base,
                _strip_mf(live),
                _strip_mf(config),
                rt.schema,
                manager=manager,
                api_version=rt.api_version,
                subresource=subresource,
                reset=self._reset_paths(rt, subresource),
                force=force,
                now=gotime.now_time(),
            )
            merged.setdefault("metadata", {})["name"] = name
            if rt.namespaced:
                merged["metadata"]["namespace"] = ns
            merged["kind"], merged["apiVersion"] = rt.kind, rt.api_version
            rt.behavior.default(merged)
            merged = rt.behavior.shape(merged)
            if live_stored is None:
                body = self._store_new(rt, ns, merged, entries, ctx)
                return Result(201, body, warnings, custom=rt.custom)
            body = self._finish_update(rt, ns, name, live_stored, merged, entries, subresource, ctx)
        return Result(200, body, warnings, custom=rt.custom)

    def internal_write(self, rt: ResourceType, ns: str, name: str, mutate: Any, subresource: str, manager: str) -> None:
        """A write made by the server itself (controllers), through the normal update path."""
        with self.store.lock:
            live_stored = self.store.get(rt.storage_key, ns, name)
            if live_stored is None:
                return
            live = rt.behavior.shape(rt.behavior.from_storage(copy.deepcopy(live_stored)))
            new = copy.deepcopy(live)
            mutate(new)
            entries = managed.update(
                managed.decode_managed((live.get("metadata") or {}).get("managedFields")),
                _strip_mf(live),
                _strip_mf(new),
                rt.schema,
                manager=manager,
                api_version=rt.api_version,
                subresource=subresource,
                reset=self._reset_paths(rt, subresource),
                now=gotime.now_time(),
            )
            self._finish_update(rt, ns, name, live_stored, new, entries, subresource, WriteContext(self.store))

    def delete(self, rt: ResourceType, ns: str, name: str, raw: bytes, query: Mapping[str, str]) -> Result:
        opts: dict[str, Any] = {}
        if raw.strip():
            try:
                parsed = json.loads(raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise E.bad_request(f"error decoding DeleteOptions: {e}") from None
            opts = parsed if isinstance(parsed, dict) else {}
        ctx = self._ctx({"dryRun": query.get("dryRun", "") or ("All" if opts.get("dryRun") else "")})
        with self.store.lock:
            live = self.store.get(rt.storage_key, ns, name)
            if live is None:
                raise E.not_found(rt.resource, rt.error_group, name)
            pre = opts.get("preconditions") or {}
            uid = live["metadata"].get("uid", "")
            if pre.get("uid") and pre["uid"] != uid:
                raise E.conflict_uid(rt.kind, rt.error_group, name, pre["uid"], uid)
            if pre.get("resourceVersion") and pre["resourceVersion"] != live["metadata"].get("resourceVersion"):
                raise E.conflict_rv_precondition(
                    rt.kind, rt.error_group, name, pre["resourceVersion"], live["metadata"].get("resourceVersion", "")
                )
            if ctx.dry_run:
                stored = live
            else:
                if rt.resource == "namespaces" and not rt.group:
                    self._empty_namespace(name)
                stored = self.store.commit(rt.storage_key, None, delete=(ns if rt.namespaced else "", name))
                rt.behavior.after_delete(stored, self)
        if rt.behavior.delete_returns_object:
            body = self.render(rt, stored)
            if rt.resource in ("namespaces", "customresourcedefinitions"):
                body["metadata"]["deletionTimestamp"] = gotime.now_time()
            return Result(200, body, custom=rt.custom)
        details: dict[str, Any] = {"name": name}
        if rt.error_group:
            details["group"] = rt.error_group
        details["kind"] = rt.resource
        details["uid"] = uid
        return Result(
            200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
        )

    def _empty_namespace(self, ns: str) -> None:
        for rt in list(self.types.values()):
            if not rt.namespaced:
                continue
            for obj in self.store.items(rt.storage_key, ns):
                self.store.commit(rt.storage_key, None, delete=(ns, obj["metadata"]["name"]))

    def delete_collection(self, rt: ResourceType, ns: str, query: Mapping[str, str]) -> Result:
        listed = self.list(rt, ns, {k: val for k, val in query.items() if k in ("labelSelector", "fieldSelector")})
        deleted = []
        with self.store.lock:
            for item in listed.body["items"]:
                meta = item["metadata"]
                if self.store.get(rt.storage_key, meta.get("namespace", ""), meta["name"]) is not None:
                    stored = self.store.commit(rt.storage_key, None, delete=(meta.get("namespace", ""), meta["name"]))
                    deleted.append(self.render(rt, stored, in_list=True))
        body = {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self.store.rv)},
            "items": deleted,
        }
        return Result(200, body, custom=rt.custom)

    # ---- seeding (tests) -----------------------------------------------------------------------

    def load(self, obj: dict[str, Any], manager: str = "kubectl") -> dict[str, Any]:
        """Store an object as given (status, clusterIPs, nodePorts kept), creating its namespace if
        needed. For loading recorded cluster state; bypasses admission, allocation and validation."""
        rt = self.type_for_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if rt is None:
            raise ValueError(f"no served type for apiVersion {obj.get('apiVersion')!r} kind {obj.get('kind')!r}")
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace") or ("default" if rt.namespaced else "")
        with self.store.lock:
            if rt.namespaced:
                meta["namespace"] = ns
                if not self._namespace_exists(ns):
                    nst = self.lookup("", "v1", "namespaces")
                    assert nst is not None
                    self.create(nst, "", json.dumps({"metadata": {"name": ns}}).encode(), {}, manager)
            value, _ = self._decode(rt, obj, {"fieldValidation": "Ignore"})
            value = rt.behavior.shape(value)
            vmeta = value.setdefault("metadata", {})
            for k in ("resourceVersion", "selfLink"):
                vmeta.pop(k, None)
            vmeta.setdefault("uid", str(uuid.uuid4()))
            vmeta.setdefault("creationTimestamp", gotime.now_time())
            if rt.behavior.generation != "none":
                vmeta.setdefault("generation", 1)
            if not vmeta.get("managedFields"):
                entries = managed.update(
                    [],
                    _strip_mf(rt.zero_object()),
                    _strip_mf(value),
                    rt.schema,
                    manager=manager,
                    api_version=rt.api_version,
                    subresource="",
                    reset=[],
                    now=gotime.now_time(),
                )
                vmeta["managedFields"] = managed.encode_managed(entries)
            stored = self.store.commit(rt.storage_key, rt.behavior.to_storage(value))
            rt.behavior.after_commit(stored, self)
            return self.render(rt, stored)


def _set_managed(meta: dict[str, Any], entries: list[managed.Entry]) -> None:
    encoded = managed.encode_managed(entries)
    if encoded:
        meta["managedFields"] = encoded
    else:
        meta.pop("managedFields", None)


@contextmanager
def _carry(warnings: list[str]) -> Iterator[None]:
    """Unknown-field warnings go out with an error response too (fixture 10/7)."""
    try:
        yield
    except ApiError as e:
        e.warnings = tuple(e.warnings) + tuple(warnings)
        raise


def _strip_mf(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    meta = out.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _generation_changes(rt: ResourceType, new: dict[str, Any], old: dict[str, Any]) -> bool:
    ignore = {"metadata"}
    if rt.behavior.generation == "spec" and rt.has_status:
        ignore.add("status")
    if rt.behavior.generation == "always":
        a, b = _strip_mf(new), _strip_mf(old)
        for o in (a, b):
            o["metadata"].pop("resourceVersion", None)
            o["metadata"].pop("generation", None)
        return not _same(a, b)

    def strip(o: dict[str, Any]) -> dict[str, Any]:
        return {k: val for k, val in o.items() if k not in ignore}

    return not _same(strip(new), strip(old))


def _prune(value: Any, node: sc.Node, path: str, unknown: list[str]) -> Any:
    """Custom resources: drop fields the schema does not know (the server's pruning)."""
    if isinstance(node, (sc.Deduced, sc.Scalar)) or value is None:
        return value
    if isinstance(node, sc.ListOf):
        if not isinstance(value, list):
            return value
        return [_prune(item, node.item, f"{path}[{i}]", unknown) for i, item in enumerate(value)]
    if isinstance(node, sc.MapOf):
        if not isinstance(value, dict):
            return value
        return {k: _prune(val, node.values, f"{path}.{k}" if path else k, unknown) for k, val in value.items()}
    if not isinstance(value, dict):
        return value
    out = {}
    for k, val in value.items():
        sub = node.fields.get(k)
        p = f"{path}.{k}" if path else k
        if sub is None:
            if node.preserve_unknown:
                out[k] = val
            else:
                unknown.append(p)
            continue
        out[k] = _prune(val, sub, p, unknown)
    return out
