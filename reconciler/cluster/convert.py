"""Kubernetes objects (plain dicts, camelCase keys, as the API returns them) -> the cluster model.

Shared by the recorded-file source and the live watch source, so nothing here reads files or
talks to the API. Objects from a typed list (ServiceList, ...) have no `kind`/`apiVersion` on
their items; the converters therefore never require them.

Malformed objects (a missing metadata.name, a port that is not a number) raise ConversionError
naming the field; things that are well-formed but unusable (an endpoint without nodeName, an
IPv6 slice) become ClusterIssues and never guesses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import ipaddress
from dataclasses import dataclass
from typing import Any

from reconciler.cluster.model import (
    ENDPOINTSLICE_CONTROLLER,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    ClusterIssue,
    ClusterState,
    Endpoint,
    Node,
    Service,
    ServicePort,
    endpoint,
)

ENDPOINTSLICE_API_VERSION = "discovery.k8s.io/v1"
# kubectl apply's copy of the whole object: large, a duplicate of fields already read, and of no
# use to render, so it is not kept in the model's annotations.
LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"
_PROTOCOLS = ("TCP", "UDP", "SCTP")

Path = tuple[str | int, ...]


class ConversionError(ValueError):
    """An object that does not have the shape the Kubernetes API gives it.

    `path` is where in the object the problem is (("spec", "ports", 0, "port")), so that a file
    reader can turn it into a line and column.
    """

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{format_path(path)}: {message}" if path else message)


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# --- small typed accessors: each names the field it rejects -------------------------------------


def _map(obj: Mapping[str, Any], key: str, path: Path) -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConversionError(path + (key,), f"expected a mapping, got {_type(value)}")
    return value


def _list(obj: Mapping[str, Any], key: str, path: Path) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConversionError(path + (key,), f"expected a list, got {_type(value)}")
    return value


def _str(obj: Mapping[str, Any], key: str, path: Path, default: str | None = None) -> str | None:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConversionError(path + (key,), f"expected a string, got {_type(value)}")
    return value


def _required_str(obj: Mapping[str, Any], key: str, path: Path) -> str:
    value = _str(obj, key, path)
    if not value:
        raise ConversionError(path + (key,), "is required")
    return value


def _int(obj: Mapping[str, Any], key: str, path: Path) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int in Python; `port: true` is still a wrong type.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConversionError(path + (key,), f"expected an integer, got {_type(value)}")
    return value


def _bool(obj: Mapping[str, Any], key: str, path: Path) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ConversionError(path + (key,), f"expected true or false, got {_type(value)}")
    return value


def _type(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _string_pairs(
    obj: Mapping[str, Any], key: str, path: Path, drop: str = ""
) -> tuple[tuple[str, str], ...]:
    pairs = []
    for k, v in _map(obj, key, path).items():
        if k == drop:
            continue
        if not isinstance(v, str):
            raise ConversionError(path + (key, str(k)), f"expected a string, got {_type(v)}")
        pairs.append((str(k), v))
    return tuple(sorted(pairs))


def object_name(obj: Mapping[str, Any], *, namespaced: bool = True) -> tuple[str, str]:
    """(namespace, name) of an object; ConversionError when metadata.name (or namespace) is absent."""
    if not isinstance(obj, Mapping):
        raise ConversionError((), f"expected an object (a mapping), got {_type(obj)}")
    meta = _map(obj, "metadata", ())
    name = _required_str(meta, "name", ("metadata",))
    namespace = _required_str(meta, "namespace", ("metadata",)) if namespaced else ""
    return namespace, name


# --- Service -------------------------------------------------------------------------------------


def service_from_dict(obj: Mapping[str, Any]) -> Service:
    """A v1 Service as the API returns it -> model.Service."""
    namespace, name = object_name(obj)
    meta = _map(obj, "metadata", ())
    spec = _map(obj, "spec", ())
    status = _map(obj, "status", ())
    ports = []
    for i, p in enumerate(_list(spec, "ports", ("spec",))):
        at: Path = ("spec", "ports", i)
        if not isinstance(p, Mapping):
            raise ConversionError(at, f"expected a mapping, got {_type(p)}")
        port = _int(p, "port", at)
        if port is None:
            raise ConversionError(at + ("port",), "is required")
        protocol = _str(p, "protocol", at, "TCP")
        if protocol not in _PROTOCOLS:
            raise ConversionError(at + ("protocol",), f"must be one of {', '.join(_PROTOCOLS)}")
        target = p.get("targetPort")
        if target is not None and (isinstance(target, bool) or not isinstance(target, int | str)):
            raise ConversionError(at + ("targetPort",), "expected a number or a port name")
        ports.append(
            ServicePort(
                name=_str(p, "name", at, "") or "",
                port=port,
                protocol=protocol,
                target_port=target,
                node_port=_int(p, "nodePort", at),
            )
        )
    ingress_ips = []
    lb = _map(status, "loadBalancer", ("status",))
    for i, ing in enumerate(_list(lb, "ingress", ("status", "loadBalancer"))):
        at = ("status", "loadBalancer", "ingress", i)
        if not isinstance(ing, Mapping):
            raise ConversionError(at, f"expected a mapping, got {_type(ing)}")
        ip = _str(ing, "ip", at)
        if ip:  # hostname-only ingress (cloud LBs) carries no IP
            ingress_ips.append(ip)
    external_ips = []
    for i, ip in enumerate(_list(spec, "externalIPs", ("spec",))):
        if not isinstance(ip, str):
            raise ConversionError(("spec", "externalIPs", i), f"expected a string, got {_type(ip)}")
        external_ips.append(ip)
    # Kubernetes defaults it to Cluster (older clusters called that Global).
    policy = "Local" if _str(spec, "externalTrafficPolicy", ("spec",)) == "Local" else "Cluster"
    return Service(
        namespace=namespace,
        name=name,
        type=_str(spec, "type", ("spec",), "ClusterIP") or "ClusterIP",
        ports=tuple(ports),
        annotations=_string_pairs(meta, "annotations", ("metadata",), drop=LAST_APPLIED_ANNOTATION),
        labels=_string_pairs(meta, "labels", ("metadata",)),
        load_balancer_ip=_str(spec, "loadBalancerIP", ("spec",)) or None,
        load_balancer_class=_str(spec, "loadBalancerClass", ("spec",)) or None,
        ingress_ips=tuple(ingress_ips),
        external_ips=tuple(external_ips),
        resource_version=_str(meta, "resourceVersion", ("metadata",), "") or "",
        external_traffic_policy=policy,
    )


# --- Node ----------------------------------------------------------------------------------------


def node_from_dict(obj: Mapping[str, Any]) -> Node:
    """A v1 Node -> model.Node (read_node without the issues)."""
    return read_node(obj)[0]


def read_node(obj: Mapping[str, Any]) -> tuple[Node, tuple[ClusterIssue, ...]]:
    """A v1 Node -> model.Node, and what is wrong with its addresses.

    internal_ip is the first IPv4 InternalIP address, whatever the order of the addresses (a
    dual-stack node may list its IPv6 InternalIP first; the switch pipeline is IPv4-only). A node
    without one gets None and an issue naming its addresses: render leaves its replicas out in
    nodePort mode and says so. ready follows the Ready condition when there is one ("True" only;
    "False" and "Unknown" are not ready). A node with no Ready condition at all counts as ready:
    its kubelet has not reported yet or the object was created by hand (the recorded fixture's
    nodes are such), and whether replicas on it serve is already decided by the EndpointSlice
    conditions, which the node lifecycle controller flips when a node really goes away.
    """
    _, name = object_name(obj, namespaced=False)
    spec = _map(obj, "spec", ())
    status = _map(obj, "status", ())
    internal_ip = None
    addresses: list[tuple[str, str]] = []
    for i, addr in enumerate(_list(status, "addresses", ("status",))):
        at: Path = ("status", "addresses", i)
        if not isinstance(addr, Mapping):
            raise ConversionError(at, f"expected a mapping, got {_type(addr)}")
        kind, address = _str(addr, "type", at) or "", _str(addr, "address", at) or ""
        addresses.append((kind, address))
        if internal_ip is None and kind == "InternalIP" and _is_ipv4(address):
            internal_ip = address
    ready = True
    for i, cond in enumerate(_list(status, "conditions", ("status",))):
        at = ("status", "conditions", i)
        if not isinstance(cond, Mapping):
            raise ConversionError(at, f"expected a mapping, got {_type(cond)}")
        if _str(cond, "type", at) == "Ready":
            ready = _str(cond, "status", at) == "True"
            break
    node = Node(
        name=name,
        internal_ip=internal_ip,
        ready=ready,
        unschedulable=bool(_bool(spec, "unschedulable", ("spec",))),
    )
    issues: tuple[ClusterIssue, ...] = ()
    if internal_ip is None:
        if any(kind == "InternalIP" for kind, _ in addresses):
            listed = ", ".join(f"{kind} {address or '(empty)'}" for kind, address in addresses)
            issues = (
                ClusterIssue(
                    f"Node {name}",
                    f"has no IPv4 InternalIP address (its addresses: {listed}); the switch pipeline "
                    "is IPv4-only, so the node's address is unknown",
                ),
            )
        else:
            issues = (ClusterIssue(f"Node {name}", NO_INTERNAL_IP),)
    return node, issues


NO_INTERNAL_IP = "has no InternalIP address"


def _is_ipv4(address: str) -> bool:
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return True


# --- EndpointSlice -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceEndpoints:
    """What one EndpointSlice contributes: its Service and its usable endpoints, in slice order.

    `service` is None when the slice names no Service (it then contributes nothing).
    """

    object: str  # "EndpointSlice namespace/name"
    service: str | None
    endpoints: tuple[Endpoint, ...] = ()
    issues: tuple[ClusterIssue, ...] = ()
    managed: bool = False  # labelled as the EndpointSlice controller's own

    @property
    def merge_order(self) -> tuple[bool, str]:
        """Controller-managed slices first, then by name: a hand-written slice repeating a pod's
        address cannot decide the node (or, in podIP mode, the trust) of the real endpoint."""
        return (not self.managed, self.object)


def endpoint_slice_from_dict(obj: Mapping[str, Any]) -> SliceEndpoints:
    """A discovery.k8s.io/v1 EndpointSlice -> the replicas it holds.

    An endpoint is one replica (addresses[0]: the API says all addresses of an endpoint are
    fungible and the EndpointSlice controller writes exactly one). It counts when it is ready
    and not terminating; a missing `ready` means ready and a missing `terminating` means not
    terminating, as the API reference states for EndpointConditions
    (https://kubernetes.io/docs/reference/kubernetes-api/service-resources/endpoint-slice-v1/:
    "ready ... A nil value should be interpreted as 'true'"; "terminating ... A nil value
    indicates an unknown state. Consumers should interpret this unknown state to mean that the
    endpoint is not terminating"). The recorded API server keeps unset conditions as `{}`.
    A counting endpoint without nodeName is skipped and reported: its node is not guessed.
    An endpoint is `managed` (trusted as a pod backend in podIP mode) only when the slice carries
    the EndpointSlice controller's managed-by label and the endpoint a Pod targetRef.
    """
    namespace, name = object_name(obj)
    what = f"EndpointSlice {namespace}/{name}"
    meta = _map(obj, "metadata", ())
    labels = _map(meta, "labels", ("metadata",))
    svc_name = labels.get(SERVICE_NAME_LABEL)
    api_version = _str(obj, "apiVersion", ())
    if api_version is not None and api_version != ENDPOINTSLICE_API_VERSION:
        svc = f"{namespace}/{svc_name}" if isinstance(svc_name, str) and svc_name else None
        return SliceEndpoints(
            what,
            None,
            issues=(
                ClusterIssue(
                    what,
                    f"apiVersion {api_version} is not read (only {ENDPOINTSLICE_API_VERSION}); "
                    "its endpoints are ignored",
                    svc,
                ),
            ),
        )
    if not isinstance(svc_name, str) or not svc_name:
        return SliceEndpoints(
            what,
            None,
            issues=(ClusterIssue(what, f"has no {SERVICE_NAME_LABEL} label; its endpoints are ignored"),),
        )
    service = f"{namespace}/{svc_name}"
    managed = labels.get(MANAGED_BY_LABEL) == ENDPOINTSLICE_CONTROLLER
    address_type = _str(obj, "addressType", ())
    if address_type != "IPv4":
        # The data plane matches IPv4 only; a dual-stack Service's IPv6 slice lists the same
        # pods again, so counting it would also double the replicas.
        return SliceEndpoints(
            what,
            service,
            issues=(
                ClusterIssue(
                    what,
                    f"addressType {address_type} is not used (the switch pipeline is IPv4-only); "
                    "its endpoints are ignored",
                    service,
                ),
            ),
        )

    ports = []
    for i, p in enumerate(_list(obj, "ports", ())):
        at: Path = ("ports", i)
        if not isinstance(p, Mapping):
            raise ConversionError(at, f"expected a mapping, got {_type(p)}")
        number = _int(p, "port", at)
        if number is not None:  # a nil port means "all ports": nothing to dial in podIP mode
            ports.append((_str(p, "name", at, "") or "", number))
    slice_ports = tuple(sorted(ports))

    endpoints: list[Endpoint] = []
    issues: list[ClusterIssue] = []
    for i, ep in enumerate(_list(obj, "endpoints", ())):
        fast = _plain_endpoint(ep)
        if fast is not None:  # the usual shape, every type as the checks below require
            if fast:  # () when not ready or terminating
                endpoints.append(endpoint(fast[0], fast[1], slice_ports, fast[2], managed and fast[2] is not None))
            continue
        at = ("endpoints", i)
        if not isinstance(ep, Mapping):
            raise ConversionError(at, f"expected a mapping, got {_type(ep)}")
        addresses = _list(ep, "addresses", at)
        if not addresses or not isinstance(addresses[0], str) or not addresses[0]:
            raise ConversionError(at + ("addresses",), "must hold at least one address string")
        address = addresses[0]
        conditions = _map(ep, "conditions", at)
        ready = _bool(conditions, "ready", at + ("conditions",))
        terminating = _bool(conditions, "terminating", at + ("conditions",))
        if ready is False or terminating is True:
            continue
        node = _str(ep, "nodeName", at)
        if not node:
            issues.append(
                ClusterIssue(
                    what,
                    f"endpoint {address} has no nodeName; it is not counted",
                    service,
                )
            )
            continue
        target = _map(ep, "targetRef", at)
        pod = None
        if _str(target, "kind", at + ("targetRef",)) == "Pod":
            pod = _str(target, "name", at + ("targetRef",))
        endpoints.append(Endpoint(address=address, node=node, ports=slice_ports, pod=pod, managed=managed and pod is not None))
    return SliceEndpoints(what, service, tuple(endpoints), tuple(issues), managed)


def _plain_endpoint(ep: Any) -> tuple[()] | tuple[str, str, str | None] | None:
    """An endpoint of the usual shape, read without building error paths (50,000 at 5,000
    Services): (address, node, pod) when it counts, () when it does not (not ready, or
    terminating). None when any field is not exactly the plain type the full reading accepts, or
    it has no nodeName: the full reading in endpoint_slice_from_dict then decides and words it."""
    if ep.__class__ is not dict:
        return None
    addresses, conditions, node, target = ep.get("addresses"), ep.get("conditions"), ep.get("nodeName"), ep.get("targetRef")
    if addresses.__class__ is not list or not addresses or addresses[0].__class__ is not str or not addresses[0]:
        return None
    if conditions is None:
        ready = terminating = None
    elif conditions.__class__ is dict:
        ready, terminating = conditions.get("ready"), conditions.get("terminating")
        if not (ready is None or ready is True or ready is False) or not (
            terminating is None or terminating is True or terminating is False
        ):
            return None
    else:
        return None
    if ready is False or terminating is True:
        return ()
    if node.__class__ is not str or not node:
        return None
    if target is None:
        return (addresses[0], node, None)
    if target.__class__ is not dict:
        return None
    kind = target.get("kind")
    if kind != "Pod" or kind.__class__ is not str:
        return (addresses[0], node, None) if kind is None or kind.__class__ is str else None
    pod = target.get("name")
    if pod is not None and pod.__class__ is not str:
        return None
    return (addresses[0], node, pod)


def merge_slices(slices: Iterable[SliceEndpoints]) -> tuple[tuple[Endpoint, ...], list[ClusterIssue]]:
    """The endpoints of one Service over all its slices: deduplicated by address, sorted by address.

    The same address can sit in two slices for a moment while the EndpointSlice controller moves
    endpoints between them; it is one replica. Slices are taken controller-managed first, then in
    object-name order, so the copy that wins is deterministic and a hand-written slice never
    overrides the controller's copy; copies that disagree on the node are reported.
    """
    by_address: dict[str, tuple[Endpoint, str]] = {}
    issues: list[ClusterIssue] = []
    for sl in sorted(slices, key=lambda s: s.merge_order):
        for ep in sl.endpoints:
            seen = by_address.get(ep.address)
            if seen is None:
                by_address[ep.address] = (ep, sl.object)
            elif seen[0].node != ep.node:
                issues.append(
                    ClusterIssue(
                        sl.object,
                        f"endpoint {ep.address} is on node {ep.node} here but on "
                        f"{seen[0].node} in {seen[1]}; counted once, on {seen[0].node}",
                        sl.service,
                    )
                )
    merged = tuple(by_address[a][0] for a in sorted(by_address))
    return merged, issues


# --- the whole state -----------------------------------------------------------------------------


def assemble_state(
    services: Iterable[Service],
    slices: Iterable[SliceEndpoints],
    nodes: Iterable[Node],
    resource_version: str | None = None,
    issues: Iterable[ClusterIssue] = (),
) -> ClusterState:
    """Join converted objects into a ClusterState, reporting what does not fit together.

    Endpoints on a node missing from the node list are kept (the replica exists; the switch
    needs the node's IP only in nodePort mode, and render reports it there) and reported here.
    Slices of a Service that is not in the list are reported and contribute nothing.
    """
    svc_map = {s.key: s for s in sorted(services, key=lambda s: s.key)}
    node_map = {n.name: n for n in sorted(nodes, key=lambda n: n.name)}
    found: list[ClusterIssue] = list(issues)
    per_service: dict[str, list[SliceEndpoints]] = {}
    for sl in slices:
        found.extend(sl.issues)
        if sl.service is None:
            continue
        if sl.service not in svc_map:
            if sl.endpoints:
                found.append(
                    ClusterIssue(
                        sl.object,
                        f"names Service {sl.service}, which does not exist; ignored",
                        sl.service,
                    )
                )
            continue
        per_service.setdefault(sl.service, []).append(sl)
    endpoints: dict[str, tuple[Endpoint, ...]] = {}
    for key in sorted(per_service):
        merged, merge_issues = merge_slices(per_service[key])
        found.extend(merge_issues)
        if not merged:
            continue
        endpoints[key] = merged
        missing = sorted({ep.node for ep in merged if ep.node not in node_map})
        for name in missing:
            count = sum(1 for ep in merged if ep.node == name)
            found.append(
                ClusterIssue(
                    f"Service {key}",
                    f"{count} ready endpoint(s) on node {name}, which is not in the node list; "
                    "kept, but the node's address is unknown",
                    key,
                )
            )
    reported = {i.object for i in found}
    for node in node_map.values():
        if node.internal_ip is None and f"Node {node.name}" not in reported:
            found.append(ClusterIssue(f"Node {node.name}", NO_INTERNAL_IP))
    return ClusterState(
        services=svc_map,
        endpoints=endpoints,
        nodes=node_map,
        resource_version=resource_version or None,
        issues=tuple(sorted(set(found), key=lambda i: (i.object, i.message, i.service or ""))),
    )


def state_from_objects(
    services: Iterable[Mapping[str, Any]],
    endpoint_slices: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    resource_version: str | None = None,
) -> ClusterState:
    """Convenience for callers holding the three lists as the API returned them."""
    read = [read_node(o) for o in nodes]
    return assemble_state(
        [service_from_dict(o) for o in services],
        [endpoint_slice_from_dict(o) for o in endpoint_slices],
        [node for node, _ in read],
        resource_version,
        issues=[i for _, issues in read for i in issues],
    )
