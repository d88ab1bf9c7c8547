"""Structural schemas: which fields a kind has, their scalar types, and how lists and maps merge.

One description serves four jobs, as it does in kube-apiserver:
- decoding: unknown fields (Warning header or `fieldValidation=Strict` 400) and JSON type errors;
- server-side apply / managedFields: list types (atomic | map with keys | set), atomic maps/structs;
- strategic merge patch: the patch merge key of lists that merge (Service ports by `port`, ...);
- custom resources: built from the CRD's openAPIV3Schema (see crd.py).
Only the kinds this server serves are described, with the fields the API really has.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import gotime


@dataclass(frozen=True)
class Scalar:
    """A leaf: string | integer | number | boolean | int-or-string | time | microtime | quantity | any."""

    type: str = "string"


@dataclass(frozen=True)
class Struct:
    """An object with known fields. `atomic`: replaced as a whole by apply (structType=atomic)."""

    fields: Mapping[str, Node]
    atomic: bool = False
    preserve_unknown: bool = False  # x-kubernetes-preserve-unknown-fields: keep (and deduce) unknown keys


@dataclass(frozen=True)
class MapOf:
    """A string-keyed map (labels, annotations, selector)."""

    values: Node
    atomic: bool = False


@dataclass(frozen=True)
class ListOf:
    """A list. kind: atomic | map (keyed by `keys`) | set. `smp_key`: strategic-merge patchMergeKey."""

    item: Node
    kind: str = "atomic"
    keys: tuple[str, ...] = ()
    smp_key: str | None = None
    smp_merge_primitives: bool = False  # patchStrategy=merge on a list of scalars (finalizers)


@dataclass(frozen=True)
class Deduced:
    """Free-form JSON (RawExtension, preserve-unknown-fields): maps granular, lists atomic."""


Node = Scalar | Struct | MapOf | ListOf | Deduced

S = Scalar("string")
I = Scalar("integer")  # noqa: E741 - S, I, B mirror the schema type names
B = Scalar("boolean")
NUM = Scalar("number")
IOS = Scalar("int-or-string")
T = Scalar("time")
MT = Scalar("microtime")
Q = Scalar("quantity")
ANY = Deduced()


def obj(atomic: bool = False, **fields: Node) -> Struct:
    return Struct(fields, atomic=atomic)


def child(node: Node, key: str) -> Node | None:
    """The schema of field/entry `key` of a struct or map node (None: unknown field)."""
    if isinstance(node, Struct):
        sub = node.fields.get(key)
        if sub is None and node.preserve_unknown:
            return ANY
        return sub
    if isinstance(node, MapOf):
        return node.values
    if isinstance(node, Deduced):
        return ANY
    return None


def is_leaf(node: Node, value: Any) -> bool:
    """Whether apply/managedFields treat this value as one unit."""
    if isinstance(node, Scalar):
        return True
    if isinstance(node, (Struct, MapOf)):
        return node.atomic
    if isinstance(node, ListOf):
        return node.kind == "atomic"
    return not isinstance(value, dict)  # Deduced: maps granular, everything else atomic


# ---- ObjectMeta and the built-in kinds --------------------------------------------------------

OWNER_REFERENCE = obj(apiVersion=S, kind=S, name=S, uid=S, controller=B, blockOwnerDeletion=B)
OBJECT_REFERENCE = obj(atomic=True, kind=S, namespace=S, name=S, uid=S, apiVersion=S, resourceVersion=S, fieldPath=S)
OBJECT_META = obj(
    name=S,
    generateName=S,
    namespace=S,
    selfLink=S,
    uid=S,
    resourceVersion=S,
    generation=I,
    creationTimestamp=T,
    deletionTimestamp=T,
    deletionGracePeriodSeconds=I,
    labels=MapOf(S),
    annotations=MapOf(S),
    ownerReferences=ListOf(OWNER_REFERENCE, "map", ("uid",), smp_key="uid"),
    finalizers=ListOf(S, "set", smp_merge_primitives=True),
    managedFields=ListOf(ANY),
)


def root(**fields: Node) -> Struct:
    return Struct({"apiVersion": S, "kind": S, "metadata": OBJECT_META, **fields})


CONDITION = obj(type=S, status=S, observedGeneration=I, lastTransitionTime=T, reason=S, message=S)

SERVICE_PORT = obj(name=S, protocol=S, appProtocol=S, port=I, targetPort=IOS, nodePort=I)
SERVICE = root(
    spec=obj(
        ports=ListOf(SERVICE_PORT, "map", ("port", "protocol"), smp_key="port"),
        selector=MapOf(S, atomic=True),
        clusterIP=S,
        clusterIPs=ListOf(S),
        type=S,
        externalIPs=ListOf(S),
        sessionAffinity=S,
        loadBalancerIP=S,
        loadBalancerSourceRanges=ListOf(S),
        externalName=S,
        externalTrafficPolicy=S,
        healthCheckNodePort=I,
        publishNotReadyAddresses=B,
        sessionAffinityConfig=obj(clientIP=obj(timeoutSeconds=I)),
        ipFamilies=ListOf(S),
        ipFamilyPolicy=S,
        allocateLoadBalancerNodePorts=B,
        loadBalancerClass=S,
        internalTrafficPolicy=S,
        trafficDistribution=S,
    ),
    status=obj(
        loadBalancer=obj(
            ingress=ListOf(obj(ip=S, hostname=S, ipMode=S, ports=ListOf(obj(port=I, protocol=S, error=S))))
        ),
        conditions=ListOf(CONDITION, "map", ("type",), smp_key="type"),
    ),
)

ENDPOINT = obj(
    addresses=ListOf(S, "set"),
    conditions=obj(ready=B, serving=B, terminating=B),
    hostname=S,
    targetRef=OBJECT_REFERENCE,
    nodeName=S,
    zone=S,
    hints=obj(forZones=ListOf(obj(name=S)), forNodes=ListOf(obj(name=S))),
    deprecatedTopology=MapOf(S),
)
ENDPOINT_SLICE = root(
    addressType=S,
    endpoints=ListOf(ENDPOINT),
    ports=ListOf(obj(name=S, protocol=S, port=I, appProtocol=S)),
)

NODE_CONDITION = obj(type=S, status=S, lastHeartbeatTime=T, lastTransitionTime=T, reason=S, message=S)
NODE = root(
    spec=obj(
        podCIDR=S,
        podCIDRs=ListOf(S, "set", smp_merge_primitives=True),
        providerID=S,
        unschedulable=B,
        taints=ListOf(obj(key=S, value=S, effect=S, timeAdded=T)),
        configSource=ANY,
        externalID=S,
    ),
    status=obj(
        capacity=MapOf(Q),
        allocatable=MapOf(Q),
        phase=S,
        conditions=ListOf(NODE_CONDITION, "map", ("type",), smp_key="type"),
        addresses=ListOf(obj(type=S, address=S), "map", ("type",), smp_key="type"),
        daemonEndpoints=obj(kubeletEndpoint=obj(Port=I)),
        nodeInfo=obj(
            machineID=S,
            systemUUID=S,
            bootID=S,
            kernelVersion=S,
            osImage=S,
            containerRuntimeVersion=S,
            kubeletVersion=S,
            kubeProxyVersion=S,
            operatingSystem=S,
            architecture=S,
            swap=ANY,
        ),
        images=ListOf(ANY),
        volumesInUse=ListOf(S),
        volumesAttached=ListOf(ANY),
        config=ANY,
        runtimeHandlers=ListOf(ANY),
        features=ANY,
        declaredFeatures=ListOf(S),
    ),
)

LEASE = root(
    spec=obj(
        holderIdentity=S,
        leaseDurationSeconds=I,
        acquireTime=MT,
        renewTime=MT,
        leaseTransitions=I,
        strategy=S,
        preferredHolder=S,
    )
)

EVENT_SOURCE = obj(component=S, host=S)
EVENT_SERIES = obj(count=I, lastObservedTime=MT)
EVENT_CORE = root(
    involvedObject=OBJECT_REFERENCE,
    reason=S,
    message=S,
    source=EVENT_SOURCE,
    firstTimestamp=T,
    lastTimestamp=T,
    count=I,
    type=S,
    eventTime=MT,
    series=EVENT_SERIES,
    action=S,
    related=OBJECT_REFERENCE,
    reportingComponent=S,
    reportingInstance=S,
)
EVENT_V1 = root(
    eventTime=MT,
    series=EVENT_SERIES,
    reportingController=S,
    reportingInstance=S,
    action=S,
    reason=S,
    regarding=OBJECT_REFERENCE,
    related=OBJECT_REFERENCE,
    note=S,
    type=S,
    deprecatedSource=EVENT_SOURCE,
    deprecatedFirstTimestamp=T,
    deprecatedLastTimestamp=T,
    deprecatedCount=I,
)

NAMESPACE = root(
    spec=obj(finalizers=ListOf(S)),
    status=obj(phase=S, conditions=ListOf(CONDITION, "map", ("type",), smp_key="type")),
)

CRD_NAMES = obj(plural=S, singular=S, shortNames=ListOf(S), kind=S, listKind=S, categories=ListOf(S))
CRD = root(
    spec=obj(
        group=S,
        names=CRD_NAMES,
        scope=S,
        versions=ListOf(ANY),
        conversion=obj(strategy=S, webhook=ANY),
        preserveUnknownFields=B,
    ),
    status=obj(
        conditions=ListOf(CONDITION, "map", ("type",), smp_key="type"),
        acceptedNames=CRD_NAMES,
        storedVersions=ListOf(S),
    ),
)


# ---- decoding: unknown fields, type errors, timestamp normalization ---------------------------


class DecodeError(ValueError):
    """The body cannot be decoded into the kind (Go's json error text)."""


@dataclass
class DecodeResult:
    value: Any
    unknown: list[str] = field(default_factory=list)  # field paths like spec.ports[0].bogus


_JSON_TYPE = {bool: "bool", int: "number", float: "number", str: "string", list: "array", dict: "object"}
_GO_TYPE = {"string": "string", "integer": "int32", "number": "float64", "boolean": "bool"}


def _path_join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def decode(value: Any, node: Node, kind: str) -> DecodeResult:
    """Check `value` against the schema like Go's decoder: drop unknown fields (reporting them),
    fail on type mismatches, and normalize timestamps. Returns a new value."""
    result = DecodeResult(None)
    result.value = _decode(value, node, "", result.unknown, kind)
    return result


def _type_error(value: Any, gotype: str, path: str, kind: str) -> DecodeError:
    jt = _JSON_TYPE.get(type(value), "value")
    if jt == "number":
        jt = f"number {value}"
    go_path = ".".join(p.split("[")[0] for p in path.split("."))
    return DecodeError(f"json: cannot unmarshal {jt} into Go struct field {kind}.{go_path} of type {gotype}")


def _decode(value: Any, node: Node, path: str, unknown: list[str], kind: str) -> Any:
    if value is None:
        return None
    if isinstance(node, Deduced):
        return value
    if isinstance(node, Scalar):
        t = node.type
        if t == "string" and not isinstance(value, str):
            raise _type_error(value, "string", path, kind)
        if t == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise _type_error(value, "int32", path, kind)
        if t == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _type_error(value, "float64", path, kind)
        if t == "boolean" and not isinstance(value, bool):
            raise _type_error(value, "bool", path, kind)
        if t == "int-or-string" and (isinstance(value, bool) or not isinstance(value, (int, str))):
            raise _type_error(value, "intstr.IntOrString", path, kind)
        if t in ("time", "microtime"):
            if not isinstance(value, str):
                raise _type_error(value, "v1.Time", path, kind)
            try:
                return gotime.normalize_time(value) if t == "time" else gotime.normalize_micro(value)
            except gotime.TimeParseError as e:
                raise DecodeError(str(e)) from None
        return value
    if isinstance(node, ListOf):
        if not isinstance(value, list):
            raise _type_error(value, "[]" + _go_name(node.item), path, kind)
        return [_decode(v, node.item, f"{path}[{i}]", unknown, kind) for i, v in enumerate(value)]
    if isinstance(node, MapOf):
        if not isinstance(value, dict):
            raise _type_error(value, "map[string]" + _go_name(node.values), path, kind)
        return {k: _decode(v, node.values, _path_join(path, k), unknown, kind) for k, v in value.items()}
    assert isinstance(node, Struct)
    if not isinstance(value, dict):
        raise _type_error(value, "struct", path, kind)
    out: dict[str, Any] = {}
    for k, v in value.items():
        sub = node.fields.get(k)
        if sub is None:
            if node.preserve_unknown:
                out[k] = v
            else:
                unknown.append(_path_join(path, k))
            continue
        out[k] = _decode(v, sub, _path_join(path, k), unknown, kind)
    return out


def _go_name(node: Node) -> str:
    if isinstance(node, Scalar):
        return _GO_TYPE.get(node.type, "string")
    return "interface {}"


def unknown_field_warnings(paths: list[str]) -> list[str]:
    """Warning header values for unknown fields, sorted like the server sends them (fixture 10/6)."""
    return [f'unknown field "{p}"' for p in sorted(paths)]


def drop_nulls(value: Any) -> Any:
    """Go decodes JSON null into a zero value that `omitempty` then drops: remove null map entries."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value
