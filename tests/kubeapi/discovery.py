"""Discovery documents (fixture 12): legacy /api, /api/v1, /apis, /apis/<g>[/<v>] and the
aggregated form (apidiscovery.k8s.io/v2) clients ask for first. Built from the served types, so
custom resources appear once their CRD is established."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from .resources import ResourceType

AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
STATUS_VERBS = ["get", "patch", "update"]
VERSION_INFO = {
    "major": "1",
    "minor": "36",
    "emulationMajor": "1",
    "emulationMinor": "36",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "35",
    "gitVersion": "v1.36.2",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-11-22T09:38:40Z",
    "goVersion": "go1.26.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}
# Preferred order of the legacy group list (kube-apiserver lists built-in groups first).
_GROUP_ORDER = ("events.k8s.io", "apiextensions.k8s.io", "coordination.k8s.io", "discovery.k8s.io")


def wants_aggregated(accept: str) -> bool:
    return "as=APIGroupDiscoveryList" in accept.split(",")[0].replace(" ", "")


def _verbs(rt: ResourceType) -> list[str]:
    return list(rt.discovery_verbs or rt.verbs)


def resource_list(types: Iterable[ResourceType], group: str, version: str) -> dict[str, Any]:
    entries = []
    for rt in sorted(types, key=lambda t: t.resource):
        entry: dict[str, Any] = {
            "name": rt.resource,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": _verbs(rt),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        entry["storageVersionHash"] = rt.storage_version_hash
        entries.append(entry)
        for sub in rt.subresources:
            if sub == "status":
                entries.append(
                    {
                        "name": f"{rt.resource}/status",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": list(STATUS_VERBS),
                    }
                )
    out: dict[str, Any] = {"kind": "APIResourceList"}
    if group:
        out["apiVersion"] = "v1"
    out["groupVersion"] = f"{group}/{version}" if group else version
    out["resources"] = entries
    return out


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _ordered_groups(groups: dict[str, list[str]]) -> list[str]:
    names = [g for g in groups if g]
    return sorted(names, key=lambda g: (_GROUP_ORDER.index(g) if g in _GROUP_ORDER else len(_GROUP_ORDER), g))


def _group_entry(name: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{name}/{ver}", "version": ver} for ver in versions]
    return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}


def group_list(groups: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_entry(g, groups[g]) for g in _ordered_groups(groups)],
    }


def group(name: str, versions: list[str]) -> dict[str, Any]:
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(name, versions)}


def _aggregated_resource(rt: ResourceType) -> dict[str, Any]:
    kind = {"group": rt.group if rt.custom else "", "version": rt.version if rt.custom else "", "kind": rt.kind}
    entry: dict[str, Any] = {
        "resource": rt.resource,
        "responseKind": kind,
        "scope": "Namespaced" if rt.namespaced else "Cluster",
        "singularResource": rt.singular,
        "verbs": _verbs(rt),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    if rt.subresources:
        entry["subresources"] = [
            {"subresource": s, "responseKind": dict(kind), "verbs": list(STATUS_VERBS)} for s in rt.subresources
        ]
    return entry


def aggregated(types: Iterable[ResourceType], groups: dict[str, list[str]], core: bool) -> dict[str, Any]:
    by_gv: dict[tuple[str, str], list[ResourceType]] = {}
    for rt in types:
        by_gv.setdefault((rt.group, rt.version), []).append(rt)
    names = [""] if core else _ordered_groups(groups)
    items = []
    for g in names:
        versions = [
            {
                "version": ver,
                "resources": [
                    _aggregated_resource(rt) for rt in sorted(by_gv.get((g, ver), []), key=lambda t: t.resource)
                ],
                "freshness": "Current",
            }
            for ver in groups.get(g, [])
        ]
        items.append({"metadata": {"name": g} if g else {}, "versions": versions})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}


def etag(body: dict[str, Any]) -> str:
    return '"' + hashlib.sha512(json.dumps(body, sort_keys=True).encode()).hexdigest().upper() + '"'
