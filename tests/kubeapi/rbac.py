"""Bearer-token authentication, an RBAC authorizer, and the request log.

Roles, ClusterRoles, RoleBindings and ClusterRoleBindings are given as plain objects (for example
the product's shipped RBAC YAML). Evaluation follows the RBAC rules of kube-apiserver: a request is
allowed when any rule of any role bound to the user (or one of its groups, or its service account)
matches its verb, API group, resource (`services/status` for a subresource), resource name and
namespace. Members of `system:masters` may do anything; every authenticated user may read the
discovery and health endpoints (the bootstrap roles system:discovery and system:public-info-viewer).
Denials answer 403 with the server's message format (fixture 08/16-17).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import errors as E


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Attributes:
    """What a request does, in the authorizer's terms."""

    user: User
    verb: str  # get list watch create update patch delete deletecollection | http method (non-resource)
    resource_request: bool
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""


@dataclass(frozen=True)
class RequestRecord:
    """One entry of the request log."""

    method: str
    path: str
    user: str
    verb: str
    group: str
    version: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    allowed: bool

    @property
    def permission(self) -> tuple[str, str, str]:
        """(group, resource[/subresource], verb): how an RBAC rule names this request."""
        res = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return (self.group, res, self.verb)


_PUBLIC_PATHS = (
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/version",
    "/version/",
    "/healthz",
    "/healthz/*",
    "/livez",
    "/livez/*",
    "/readyz",
    "/readyz/*",
    "/openapi/*",
)


def _path_matches(patterns: Iterable[str], path: str) -> bool:
    for p in patterns:
        if p == "*" or p == path or (p.endswith("*") and path.startswith(p[:-1])):
            return True
    return False


def _rule_matches(rule: Mapping[str, Any], attrs: Attributes) -> bool:
    verbs = rule.get("verbs") or []
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    if not attrs.resource_request:
        return _path_matches(rule.get("nonResourceURLs") or [], attrs.path)
    if rule.get("nonResourceURLs") and not rule.get("resources"):
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and attrs.group not in groups:
        return False
    combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    resources = rule.get("resources") or []
    if not any(r == "*" or r == combined or (attrs.subresource and r == f"*/{attrs.subresource}") for r in resources):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def _flatten(objects: Iterable[Any]) -> Iterable[Mapping[str, Any]]:
    for obj in objects:
        if isinstance(obj, Mapping):
            if obj.get("kind") == "List":
                yield from _flatten(obj.get("items") or [])
            else:
                yield obj


class Authorizer:
    def __init__(self, objects: Sequence[Mapping[str, Any]] = (), *, allow_all: bool = False) -> None:
        self.allow_all = allow_all
        self._lock = threading.Lock()
        self.cluster_roles: dict[str, list[Mapping[str, Any]]] = {}
        self.roles: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        self.cluster_bindings: list[Mapping[str, Any]] = []
        self.bindings: list[Mapping[str, Any]] = []
        self.add(objects)

    def add(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """Load RBAC objects (Lists are flattened; other kinds are ignored)."""
        with self._lock:
            for obj in _flatten(objects):
                kind = obj.get("kind")
                meta = obj.get("metadata") or {}
                if kind == "ClusterRole":
                    self.cluster_roles[meta.get("name", "")] = list(obj.get("rules") or [])
                elif kind == "Role":
                    self.roles[(meta.get("namespace", "default"), meta.get("name", ""))] = list(obj.get("rules") or [])
                elif kind == "ClusterRoleBinding":
                    self.cluster_bindings.append(obj)
                elif kind == "RoleBinding":
                    self.bindings.append(obj)

    @staticmethod
    def _subject_matches(subjects: Any, user: User, binding_ns: str) -> bool:
        for s in subjects or []:
            kind, name = s.get("kind"), s.get("name")
            if kind == "User" and name == user.name:
                return True
            if kind == "Group" and name in user.groups:
                return True
            if (
                kind == "ServiceAccount"
                and user.name == f"system:serviceaccount:{s.get('namespace') or binding_ns}:{name}"
            ):
                return True
        return False

    def _rules_of(self, ref: Mapping[str, Any], ns: str) -> list[Mapping[str, Any]]:
        if ref.get("kind") == "ClusterRole":
            return self.cluster_roles.get(ref.get("name", ""), [])
        return self.roles.get((ns, ref.get("name", "")), [])

    def allowed(self, attrs: Attributes) -> bool:
        if self.allow_all or "system:masters" in attrs.user.groups:
            return True
        if not attrs.resource_request and attrs.verb == "get" and _path_matches(_PUBLIC_PATHS, attrs.path):
            return True
        with self._lock:
            for b in self.cluster_bindings:
                if self._subject_matches(b.get("subjects"), attrs.user, "") and any(
                    _rule_matches(r, attrs) for r in self._rules_of(b.get("roleRef") or {}, "")
                ):
                    return True
            if attrs.resource_request and attrs.namespace:
                for b in self.bindings:
                    ns = (b.get("metadata") or {}).get("namespace", "default")
                    if ns != attrs.namespace or not self._subject_matches(b.get("subjects"), attrs.user, ns):
                        continue
                    if any(_rule_matches(r, attrs) for r in self._rules_of(b.get("roleRef") or {}, ns)):
                        return True
        return False


def forbidden(attrs: Attributes) -> E.ApiError:
    user = attrs.user.name
    if not attrs.resource_request:
        return E.forbidden(f'forbidden: User "{user}" cannot {attrs.verb} path "{attrs.path}"', {})
    what = E.qualified(attrs.resource, attrs.group)
    subject = f'{what} "{attrs.name}"' if attrs.name else what
    res = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    message = f'{subject} is forbidden: User "{user}" cannot {attrs.verb} resource "{res}" in API group "{attrs.group}" {scope}'
    details: dict[str, Any] = {}
    if attrs.name:
        details["name"] = attrs.name
    if attrs.group:
        details["group"] = attrs.group
    details["kind"] = attrs.resource
    return E.forbidden(message, details)


class Authenticator:
    """Bearer tokens -> users. Values are a user name or (name, groups)."""

    def __init__(self, tokens: Mapping[str, Any], *, anonymous: bool = False) -> None:
        self.tokens: dict[str, User] = {}
        for token, who in tokens.items():
            if isinstance(who, User):
                self.tokens[token] = who
            elif isinstance(who, str):
                self.tokens[token] = User(who, ("system:authenticated",))
            else:
                name, groups = who
                self.tokens[token] = User(name, tuple(groups) + ("system:authenticated",))
        self.anonymous = anonymous

    def authenticate(self, authorization: str | None) -> User:
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip() in self.tokens:
                return self.tokens[token.strip()]
            raise E.unauthorized()
        if self.anonymous:
            return User("system:anonymous", ("system:unauthenticated",))
        raise E.unauthorized()
