"""Resource types and the per-kind rules the generic API code consults.

A ResourceType is one served group/version/resource. Its Behavior holds what differs per kind in
kube-apiserver's registry strategies: defaulting, allocation on create, what a write through the
main resource or `/status` may change, validation, generation rules, delete response shape,
version conversion (events.k8s.io/v1 Events are stored as core/v1 Events).
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from . import validation as v
from .errors import Cause
from .schema import Struct
from .selectors import META_FIELDS, FieldGetter

if TYPE_CHECKING:
    from .store import Store

DEFAULT_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass
class WriteContext:
    """What a behavior may look at while preparing a write."""

    store: Store
    dry_run: bool = False
    subresource: str = ""


class Behavior:
    """Registry strategy of one kind. Subclasses override what differs."""

    zero: ClassVar[Mapping[str, Any]] = {"metadata": {}}  # the empty object (managedFields baseline, bookmarks)
    delete_returns_object = False
    allow_create_on_update = False
    allow_unconditional_update = True
    generation = "none"  # none | always | spec
    keeps_status_on_create = False
    status_resets_metadata = False
    name_rule = staticmethod(v.dns_subdomain_errors)
    field_selectors: ClassVar[Mapping[str, FieldGetter]] = META_FIELDS

    # Versions: the API form of the request vs the stored form.
    def to_storage(self, obj: dict[str, Any]) -> dict[str, Any]:
        return obj

    def from_storage(self, obj: dict[str, Any]) -> dict[str, Any]:
        return obj

    def shape(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Fields Go always prints (non-omitempty zero values)."""
        return obj

    def default(self, obj: dict[str, Any]) -> None:
        """Defaulting on decode (request version), before managedFields are computed."""

    def prepare_create(self, obj: dict[str, Any], ctx: WriteContext) -> list[Cause]:
        """Registry PrepareForCreate + allocation (storage form). Returns allocation errors."""
        return []

    def prepare_update(self, new: dict[str, Any], old: dict[str, Any], ctx: WriteContext) -> list[Cause]:
        return []

    def validate(self, obj: dict[str, Any], old: dict[str, Any] | None, ctx: WriteContext) -> list[Cause]:
        return v.validate_meta(obj.get("metadata") or {}, self.name_rule)

    def after_commit(self, obj: dict[str, Any], api: Any) -> None:
        """Controllers reacting to a write (CRD establishing)."""

    def after_delete(self, obj: dict[str, Any], api: Any) -> None:
        """Controllers reacting to a delete (CRD cleanup)."""


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    resource: str  # plural
    kind: str
    namespaced: bool
    schema: Struct
    behavior: Behavior
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    storage: str = ""  # storage key; defaults to group/resource
    custom: bool = False  # a custom resource: sorted keys, items keep kind/apiVersion, no SMP
    verbs: tuple[str, ...] = DEFAULT_VERBS
    discovery_verbs: tuple[str, ...] = ()  # order as discovery prints it, when it differs
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> tuple[str, str]:
        return (self.group, self.version)

    @property
    def error_group(self) -> str:
        """The group errors name: events.k8s.io Events share core Event storage, so errors say `events`."""
        return str(self.extra.get("errorGroup", self.group))

    @property
    def list_kind(self) -> str:
        return str(self.extra.get("listKind") or f"{self.kind}List")

    @property
    def storage_key(self) -> str:
        return self.storage or f"{self.group}/{self.resource}"

    @property
    def storage_version_hash(self) -> str:
        storage_gvk = str(self.extra.get("storageGVK") or f"{self.group}/{self.version}/{self.kind}")
        return base64.b64encode(hashlib.sha256(storage_gvk.encode()).digest()[:8]).decode()

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def zero_object(self) -> dict[str, Any]:
        obj = copy.deepcopy(dict(self.behavior.zero))
        return obj
