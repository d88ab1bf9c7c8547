"""ValidatingAdmissionPolicies (admissionregistration.k8s.io/v1), the subset deploy/ uses,
evaluated the way kube-apiserver does (read in kubernetes/kubernetes staging/src/k8s.io/apiserver
pkg/admission/plugin/policy/validating/ and .../policy/generic/; not copied):

- a policy applies to a request when a `matchConstraints.resourceRules` entry matches its group,
  version, operation and resource ("services" is the main resource only, "services/status" the
  subresource, "*" anything), then every `matchConditions` expression is true (one false: the
  policy is skipped; an error: failurePolicy);
- each binding of the policy (`policyName`) with `validationActions` containing Deny enforces
  it; its `paramRef` (name + namespace) names the object seen as `params`; none found with
  `parameterNotFoundAction: Deny` is an error ("no params found ...");
- `validations` run in order with `object`, `oldObject` (null on CREATE), `request`
  (operation, userInfo.username/groups, namespace, name, resource, subResource) and `params`;
  a false one denies with its `message` (or "failed expression: <expression>"), an error is
  handled by failurePolicy (Fail: denied with "expression '<e>' resulted in error: <err>");
- a denial is 422 Invalid (a validation's `reason` changes it) with the message
  `<resource> "<name>" is forbidden: ValidatingAdmissionPolicy '<p>' with binding '<b>' denied
  request: <message>` and that last part as the single cause (dispatcher.go, NewForbidden).

Kubernetes' CEL IP/CIDR library (apiserver/pkg/cel/library/ip.go, cidr.go; 1.31+) is added to
cel-python: isIP, ip, isCIDR, cidr, <cidr>.containsIP(ip or string).

Not modeled (refused when a policy or binding uses them, rather than ignored): namespaceSelector,
objectSelector, excludeResourceRules, matchPolicy Exact, paramRef.selector, messageExpression,
variables, auditAnnotations, the Warn and Audit actions, `authorizer`, `namespaceObject`, the
cost budget, and ConfigMaps as an API resource (params are handed to the server directly).
"""

from __future__ import annotations

import contextvars
import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes

from .errors import ApiError
from .rbac import User

POLICY = "ValidatingAdmissionPolicy"
BINDING = "ValidatingAdmissionPolicyBinding"
CODES = {"Invalid": 422, "Forbidden": 403, "Unauthorized": 401, "RequestEntityTooLarge": 413}

# The user of the request being served (set by the server for each request thread).
current_user: contextvars.ContextVar[User | None] = contextvars.ContextVar("current_user", default=None)


# ---- Kubernetes' IP and CIDR CEL library ---------------------------------------------------------


class _Cidr:
    def __init__(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        self.network = network


def _parse_ip(text: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    value = str(text)
    if "%" in value:  # zones are refused by the Kubernetes library
        raise ValueError(f"IP address with zone value is not allowed: {value}")
    addr = ipaddress.ip_address(value)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise ValueError(f"IPv4-mapped IPv6 address is not allowed: {value}")
    return addr


def _is_ip(text: Any) -> celtypes.BoolType:
    try:
        _parse_ip(text)
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _ip(text: Any) -> Any:
    try:
        return _parse_ip(text)
    except ValueError as e:
        return celpy.CELEvalError(f"network address parse error during conversion from string: {e}")


def _parse_cidr(text: Any) -> _Cidr:
    value = str(text)
    if "/" not in value:
        raise ValueError(f"network address parse error during conversion from string: {value}")
    return _Cidr(ipaddress.ip_network(value, strict=False))


def _is_cidr(text: Any) -> celtypes.BoolType:
    try:
        _parse_cidr(text)
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _cidr(text: Any) -> Any:
    try:
        return _parse_cidr(text)
    except ValueError as e:
        return celpy.CELEvalError(f"network address parse error during conversion from string: {e}")


def _contains_ip(cidr: Any, ip: Any) -> Any:
    if not isinstance(cidr, _Cidr):
        return celpy.CELEvalError("no such overload: containsIP")
    try:
        addr = ip if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else _parse_ip(ip)
    except ValueError as e:
        return celpy.CELEvalError(f"network address parse error during conversion from string: {e}")
    return celtypes.BoolType(addr.version == cidr.network.version and addr in cidr.network)


FUNCTIONS = {"isIP": _is_ip, "ip": _ip, "isCIDR": _is_cidr, "cidr": _cidr, "containsIP": _contains_ip}
_ENV = celpy.Environment()


@functools.lru_cache(maxsize=256)
def _program(expression: str) -> Any:
    return _ENV.program(_ENV.compile(expression), functions=FUNCTIONS)


class _EvalError(Exception):
    pass


def _evaluate(expression: str, activation: Mapping[str, Any]) -> bool:
    try:
        result = _program(expression).evaluate(dict(activation))
    except (celpy.CELEvalError, TypeError, ValueError, KeyError) as e:
        raise _EvalError(str(e.args[0]) if e.args else str(e)) from None
    if isinstance(result, celpy.CELEvalError):
        raise _EvalError(str(result.args[0]) if result.args else str(result))
    if not isinstance(result, celtypes.BoolType):
        raise _EvalError(f"expression must evaluate to bool, got {type(result).__name__}")
    return bool(result)


# ---- policies and bindings -----------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What admission sees of a write."""

    operation: str  # CREATE | UPDATE | DELETE
    group: str
    version: str
    resource: str
    subresource: str
    namespace: str
    name: str
    obj: dict[str, Any] | None
    old: dict[str, Any] | None
    user: User


def _refuse_unsupported(what: str, obj: Mapping[str, Any], keys: Iterable[str]) -> None:
    for key in keys:
        if key in obj and obj[key] not in (None, {}, []):
            raise ValueError(f"{what}: {key} is not modeled by tests/kubeapi/admission.py")


def _rule_matches(rule: Mapping[str, Any], req: Request) -> bool:
    def has(values: Any, value: str) -> bool:
        return "*" in (values or []) or value in (values or [])

    resource = req.resource + (f"/{req.subresource}" if req.subresource else "")
    resources = rule.get("resources") or []
    res_ok = (
        "*" in resources
        or resource in resources
        or (req.subresource and (f"{req.resource}/*" in resources or f"*/{req.subresource}" in resources))
    )
    return bool(res_ok) and has(rule.get("apiGroups"), req.group) and has(rule.get("apiVersions"), req.version) and has(rule.get("operations"), req.operation)


class AdmissionPolicies:
    """The policies, bindings and param objects a test installs; `admit` raises the denial."""

    def __init__(self, objects: Iterable[Mapping[str, Any]] = ()) -> None:
        self.policies: dict[str, Mapping[str, Any]] = {}
        self.bindings: list[Mapping[str, Any]] = []
        self.params: dict[tuple[str, str, str], Mapping[str, Any]] = {}  # (kind, namespace, name)
        self.add(objects)

    def add(self, objects: Iterable[Mapping[str, Any]]) -> None:
        for obj in objects:
            kind = obj.get("kind")
            if kind == POLICY:
                spec, what = obj["spec"], f"{kind} {obj['metadata']['name']}"
                _refuse_unsupported(what, spec, ("variables", "auditAnnotations"))
                _refuse_unsupported(what, spec.get("matchConstraints") or {}, ("namespaceSelector", "objectSelector", "excludeResourceRules"))
                if (spec.get("matchConstraints") or {}).get("matchPolicy", "Equivalent") != "Equivalent":
                    raise ValueError(f"{what}: matchPolicy Exact is not modeled")
                for v in spec.get("validations") or []:
                    _refuse_unsupported(what, v, ("messageExpression",))
                self.policies[obj["metadata"]["name"]] = obj
            elif kind == BINDING:
                spec, what = obj["spec"], f"{kind} {obj['metadata']['name']}"
                _refuse_unsupported(what, spec, ("matchResources",))
                _refuse_unsupported(what, spec.get("paramRef") or {}, ("selector",))
                if set(spec.get("validationActions") or []) - {"Deny"}:
                    raise ValueError(f"{what}: validation actions other than Deny are not modeled")
                self.bindings.append(obj)
            elif obj.get("metadata"):
                meta = obj["metadata"]
                self.params[(str(kind), meta.get("namespace", ""), meta["name"])] = obj

    def remove_param(self, kind: str, namespace: str, name: str) -> None:
        self.params.pop((kind, namespace, name), None)

    def admit(self, req: Request) -> None:
        for policy in self.policies.values():
            spec = policy["spec"]
            rules = (spec.get("matchConstraints") or {}).get("resourceRules") or []
            if not any(_rule_matches(r, req) for r in rules):
                continue
            for binding in self.bindings:
                if binding["spec"].get("policyName") == policy["metadata"]["name"]:
                    self._admit_one(policy, binding, req)

    def _params(self, policy: Mapping[str, Any], binding: Mapping[str, Any], req: Request) -> Any:
        kind = policy["spec"].get("paramKind")
        if not kind:
            return None
        ref = binding["spec"].get("paramRef") or {}
        namespace = ref.get("namespace") or req.namespace
        found = self.params.get((kind.get("kind", ""), namespace, ref.get("name", "")))
        if found is None:
            if ref.get("parameterNotFoundAction") == "Deny":
                raise _EvalError("failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction")
            return None  # Allow: evaluated with params null
        return celpy.json_to_cel(dict(found))

    def _admit_one(self, policy: Mapping[str, Any], binding: Mapping[str, Any], req: Request) -> None:
        spec = policy["spec"]
        fail = spec.get("failurePolicy", "Fail") == "Fail"
        try:
            params = self._params(policy, binding, req)
        except _EvalError as e:
            if fail:
                self._deny(policy, binding, req, str(e), "")
            return
        activation = {
            "object": celpy.json_to_cel(req.obj),
            "oldObject": celpy.json_to_cel(req.old),
            "params": params if params is not None else celpy.json_to_cel(None),
            "request": celpy.json_to_cel(
                {
                    "operation": req.operation,
                    "userInfo": {"username": req.user.name, "groups": list(req.user.groups)},
                    "namespace": req.namespace,
                    "name": req.name,
                    "resource": {"group": req.group, "version": req.version, "resource": req.resource},
                    "subResource": req.subresource,
                }
            ),
        }
        for cond in spec.get("matchConditions") or []:
            try:
                if not _evaluate(cond["expression"], activation):
                    return
            except _EvalError as e:
                if fail:
                    self._deny(policy, binding, req, f"expression '{cond['expression']}' resulted in error: {e}", "")
                return
        for validation in spec.get("validations") or []:
            expression = validation["expression"]
            try:
                ok = _evaluate(expression, activation)
            except _EvalError as e:
                if fail:
                    self._deny(policy, binding, req, f"expression '{expression}' resulted in error: {e}", "")
                continue
            if not ok:
                message = (validation.get("message") or "").strip() or f"failed expression: {expression.strip()}"
                self._deny(policy, binding, req, message, validation.get("reason") or "")

    @staticmethod
    def _deny(policy: Mapping[str, Any], binding: Mapping[str, Any], req: Request, message: str, reason: str) -> None:
        text = f"ValidatingAdmissionPolicy '{policy['metadata']['name']}' with binding '{binding['metadata']['name']}' denied request: {message}"
        reason = reason or "Invalid"
        qualified = f"{req.resource}.{req.group}" if req.group else req.resource
        details: dict[str, Any] = {"name": req.name}
        if req.group:
            details["group"] = req.group
        details["kind"] = req.resource
        details["causes"] = [{"message": text}]
        raise ApiError(CODES.get(reason, 422), reason, f'{qualified} "{req.name}" is forbidden: {text}', details)
