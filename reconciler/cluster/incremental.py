"""A ClusterState maintained event by event, telling which Services each event changed.

The live source feeds it one watch event at a time (or a whole relisted kind, diffed against
what it holds); render then redoes only the Services reported changed. The rules are exactly
those of `convert.assemble_state` (a test holds the two to the same output for the same
objects): converted per object with the shared converters, each EndpointSlice kept on its own
and the slices of one Service merged again only when one of them changes.

What counts as a change of a Service (the key is reported):
- the Service object itself changed, other than its resourceVersion (a status write by the
  reconciler that leaves the ingress equal is not a change);
- its merged ready endpoints changed (a label-only EndpointSlice update is not a change);
- a Node that one of its endpoints runs on was added, removed or changed (address, readiness);
- it was deleted (render must drop it).

Not thread-safe: one owner (the asyncio loop) applies events and takes snapshots.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.cluster.convert import (
    ConversionError,
    SliceEndpoints,
    endpoint_slice_from_dict,
    merge_slices,
    read_node,
    service_from_dict,
)
from reconciler.cluster.model import ClusterIssue, ClusterState, Endpoint, Node, Service

SERVICE = "Service"
ENDPOINT_SLICE = "EndpointSlice"
NODE = "Node"
KINDS = (SERVICE, ENDPOINT_SLICE, NODE)

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


def object_key(obj: Mapping[str, Any], *, namespaced: bool = True) -> str | None:
    """"namespace/name" (or "name" for cluster-scoped kinds); None when metadata lacks them."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return None
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    if not namespaced:
        return name
    ns = meta.get("namespace")
    if not isinstance(ns, str) or not ns:
        return None
    return f"{ns}/{name}"


class IncrementalState:
    """Services, EndpointSlices and Nodes, indexed so that one event costs work proportional
    to what it touches, not to the cluster's size."""

    def __init__(self) -> None:
        self._services: dict[str, Service] = {}
        self._slices: dict[str, SliceEndpoints] = {}
        self._slices_of: dict[str, dict[str, SliceEndpoints]] = {}  # Service key -> its slices
        self._endpoints: dict[str, tuple[Endpoint, ...]] = {}  # only existing Services, non-empty
        self._nodes: dict[str, Node] = {}
        self._nodes_of: dict[str, frozenset[str]] = {}  # Service key -> nodes of its endpoints
        self._services_on: dict[str, set[str]] = {}  # node name -> Service keys with endpoints there
        # Issues, kept where they arise so that one event replaces only its own.
        self._service_issues: dict[str, tuple[ClusterIssue, ...]] = {}  # per Service key (merge, nodes)
        self._object_issues: dict[tuple[str, str], tuple[ClusterIssue, ...]] = {}  # (kind, key)
        # Field managers that own a Service's status.loadBalancer (from managedFields), so that
        # the status writer clears only what it wrote, even after a restart.
        self._lb_status_managers: dict[str, frozenset[str]] = {}
        self._resource_version: str | None = None
        self._snapshot: ClusterState | None = None
        self._issues_cache: tuple[ClusterIssue, ...] | None = None

    # --- reading -----------------------------------------------------------------------------

    @property
    def resource_version(self) -> str | None:
        return self._resource_version

    def keys(self, kind: str) -> set[str]:
        """The keys held for one kind ("namespace/name", or the name for Nodes)."""
        if kind == SERVICE:
            return set(self._services)
        if kind == ENDPOINT_SLICE:
            return set(self._slices)
        if kind == NODE:
            return set(self._nodes)
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")

    def status_managers(self, service_key: str) -> frozenset[str]:
        """The field managers owning the Service's status.loadBalancer, per its managedFields."""
        return self._lb_status_managers.get(service_key, frozenset())

    def snapshot(self) -> ClusterState:
        """The current state. Cheap: the dicts are copied, the objects in them are shared, and
        the same snapshot is returned again until something changes."""
        if self._snapshot is None:
            self._snapshot = ClusterState(
                services=dict(self._services),
                endpoints=dict(self._endpoints),
                nodes=dict(self._nodes),
                resource_version=self._resource_version or None,
                issues=self._issues(),
            )
        return self._snapshot

    def _issues(self) -> tuple[ClusterIssue, ...]:
        if self._issues_cache is None:
            found: set[ClusterIssue] = set()
            for group in self._service_issues.values():
                found.update(group)
            for group in self._object_issues.values():
                found.update(group)
            self._issues_cache = tuple(sorted(found, key=lambda i: (i.object, i.message, i.service or "")))
        return self._issues_cache

    # --- writing -----------------------------------------------------------------------------

    def note_resource_version(self, rv: str | None) -> None:
        """Record the newest resourceVersion seen (an event's or a bookmark's)."""
        if rv and rv != self._resource_version:
            self._resource_version = rv
            self._snapshot = None

    def apply(self, kind: str, event_type: str, obj: Mapping[str, Any]) -> set[str]:
        """Apply one watch event (ADDED, MODIFIED or DELETED); returns the changed Service keys."""
        changed = self._apply(kind, event_type, obj)
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        if isinstance(meta, Mapping):
            self.note_resource_version(meta.get("resourceVersion"))
        return changed

    def _apply(self, kind: str, event_type: str, obj: Mapping[str, Any]) -> set[str]:
        if event_type not in (ADDED, MODIFIED, DELETED):
            raise ValueError(f"not a watch event type for objects: {event_type!r}")
        if kind == SERVICE:
            changed = self._apply_service(event_type, obj)
        elif kind == ENDPOINT_SLICE:
            changed = self._apply_slice(event_type, obj)
        elif kind == NODE:
            changed = self._apply_node(event_type, obj)
        else:
            raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        return changed

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]], resource_version: str | None = None) -> set[str]:
        """Replace everything held of `kind` with a fresh list (after a relist), and return the
        Services that differ from what was held: objects gone are deleted, the others applied
        (and reported only when they really changed)."""
        namespaced = kind != NODE
        # An object without a name cannot be held (the API never sends one): left out.
        objs = [o for o in objects if object_key(o, namespaced=namespaced) is not None]
        fresh = {object_key(o, namespaced=namespaced) for o in objs}
        changed: set[str] = set()
        for gone in self.keys(kind) - fresh:
            changed |= self._delete(kind, gone)
        for obj in objs:
            changed |= self._apply(kind, MODIFIED, obj)  # a list's items are older than the list's RV
        self.note_resource_version(resource_version)
        return changed

    def _delete(self, kind: str, key: str) -> set[str]:
        if kind == NODE:
            return self._apply_node(DELETED, {"metadata": {"name": key}})
        ns, _, name = key.partition("/")
        stub = {"metadata": {"namespace": ns, "name": name}}
        return self._apply_service(DELETED, stub) if kind == SERVICE else self._apply_slice(DELETED, stub)

    def _dirty(self, issues: bool = False) -> None:
        self._snapshot = None
        if issues:
            self._issues_cache = None

    def _set_object_issues(self, kind: str, key: str, issues: tuple[ClusterIssue, ...]) -> None:
        old = self._object_issues.get((kind, key), ())
        if old == issues:
            return
        if issues:
            self._object_issues[(kind, key)] = issues
        else:
            self._object_issues.pop((kind, key), None)
        self._dirty(issues=True)

    # --- Services ----------------------------------------------------------------------------

    def _apply_service(self, event_type: str, obj: Mapping[str, Any]) -> set[str]:
        key = object_key(obj)
        if key is None:
            raise ConversionError(("metadata",), "a Service event without metadata.namespace and metadata.name")
        svc: Service | None = None
        if event_type != DELETED:
            try:
                svc = service_from_dict(obj)
                self._set_object_issues(SERVICE, key, ())
            except ConversionError as e:
                # Unusable as given: left out (so render drops it) and reported.
                self._set_object_issues(SERVICE, key, (ClusterIssue(f"Service {key}", str(e), key),))
        else:
            self._set_object_issues(SERVICE, key, ())
        managers = _lb_status_managers(obj) if svc is not None else frozenset()
        if managers:
            self._lb_status_managers[key] = managers
        else:
            self._lb_status_managers.pop(key, None)
        old = self._services.get(key)
        if svc is None:
            if old is None:
                return set()
            del self._services[key]
            self._dirty()
            self._recompute(key)
            return {key}
        self._services[key] = svc
        self._dirty()
        if old is None:
            self._recompute(key)  # its slices' endpoints count from now on
            return {key}
        if old == dataclasses.replace(svc, resource_version=old.resource_version):
            return set()
        return {key}

    # --- EndpointSlices ------------------------------------------------------------------------

    def _apply_slice(self, event_type: str, obj: Mapping[str, Any]) -> set[str]:
        key = object_key(obj)
        if key is None:
            raise ConversionError(("metadata",), "an EndpointSlice event without metadata.namespace and metadata.name")
        old = self._slices.get(key)
        new: SliceEndpoints | None = None
        if event_type != DELETED:
            try:
                new = endpoint_slice_from_dict(obj)
            except ConversionError as e:
                what = f"EndpointSlice {key}"
                new = SliceEndpoints(what, None, issues=(ClusterIssue(what, f"{e}; its endpoints are ignored"),))
        if new == old:
            return set()
        if old is not None and old.service is not None:
            group = self._slices_of[old.service]
            del group[key]
            if not group:
                del self._slices_of[old.service]
        if new is None:
            self._slices.pop(key, None)
        else:
            self._slices[key] = new
            if new.service is not None:
                self._slices_of.setdefault(new.service, {})[key] = new
        self._set_object_issues(ENDPOINT_SLICE, key, new.issues if new is not None else ())
        changed: set[str] = set()
        for svc in {s.service for s in (old, new) if s is not None and s.service is not None}:
            if self._recompute(svc):
                changed.add(svc)
        return changed

    def _recompute(self, key: str) -> bool:
        """Merge the slices of Service `key` again; True when its endpoints changed."""
        slices = self._slices_of.get(key, {})
        issues: list[ClusterIssue] = []
        merged: tuple[Endpoint, ...] = ()
        if key in self._services:
            merged, merge_issues = merge_slices(slices.values())
            issues.extend(merge_issues)
            for node in sorted({ep.node for ep in merged if ep.node not in self._nodes}):
                count = sum(1 for ep in merged if ep.node == node)
                issues.append(
                    ClusterIssue(
                        f"Service {key}",
                        f"{count} ready endpoint(s) on node {node}, which is not in the node list; "
                        "kept, but the node's address is unknown",
                        key,
                    )
                )
        else:
            for sl in slices.values():
                if sl.endpoints:
                    issues.append(ClusterIssue(sl.object, f"names Service {key}, which does not exist; ignored", key))
        new_issues = tuple(issues)
        if self._service_issues.get(key, ()) != new_issues:
            if new_issues:
                self._service_issues[key] = new_issues
            else:
                self._service_issues.pop(key, None)
            self._dirty(issues=True)
        # The node index follows the merged endpoints.
        nodes = frozenset(ep.node for ep in merged)
        before = self._nodes_of.get(key, frozenset())
        if nodes != before:
            for n in before - nodes:
                holders = self._services_on[n]
                holders.discard(key)
                if not holders:
                    del self._services_on[n]
            for n in nodes - before:
                self._services_on.setdefault(n, set()).add(key)
            if nodes:
                self._nodes_of[key] = nodes
            else:
                self._nodes_of.pop(key, None)
        old = self._endpoints.get(key, ())
        if old == merged:
            return False
        if merged:
            self._endpoints[key] = merged
        else:
            del self._endpoints[key]
        self._dirty()
        return True

    # --- Nodes -------------------------------------------------------------------------------

    def _apply_node(self, event_type: str, obj: Mapping[str, Any]) -> set[str]:
        name = object_key(obj, namespaced=False)
        if name is None:
            raise ConversionError(("metadata",), "a Node event without metadata.name")
        node: Node | None = None
        issues: tuple[ClusterIssue, ...] = ()
        if event_type != DELETED:
            try:
                node, issues = read_node(obj)  # the first IPv4 InternalIP, or None and an issue
            except ConversionError as e:
                issues = (ClusterIssue(f"Node {name}", f"{e}; the node is left out"),)
        self._set_object_issues(NODE, name, issues)
        old = self._nodes.get(name)
        if node == old:
            return set()
        if node is None:
            del self._nodes[name]
        else:
            self._nodes[name] = node
        self._dirty()
        affected = set(self._services_on.get(name, ()))
        if (old is None) != (node is None):
            for key in affected:  # the "node not in the node list" issues flip
                self._recompute(key)
        return affected


def _lb_status_managers(obj: Mapping[str, Any]) -> frozenset[str]:
    managed = (obj.get("metadata") or {}).get("managedFields")
    if not isinstance(managed, list):
        return frozenset()
    out = set()
    for entry in managed:
        if not isinstance(entry, Mapping) or entry.get("subresource") != "status":
            continue
        fields = entry.get("fieldsV1")
        status = fields.get("f:status") if isinstance(fields, Mapping) else None
        if isinstance(status, Mapping) and "f:loadBalancer" in status and isinstance(entry.get("manager"), str):
            out.add(entry["manager"])
    return frozenset(out)


def state_from_lists(
    services: Iterable[Mapping[str, Any]],
    endpoint_slices: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    resource_version: str | None = None,
) -> IncrementalState:
    """An IncrementalState loaded with three lists as the API returns them."""
    state = IncrementalState()
    state.replace(NODE, nodes)
    state.replace(SERVICE, services)
    state.replace(ENDPOINT_SLICE, endpoint_slices)
    state.note_resource_version(resource_version)
    return state
