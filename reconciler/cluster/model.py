"""What the reconciler needs from the cluster, as frozen dataclasses.

Only the fields render uses are kept: the model must stay small at 5,000 Services and
50,000 endpoints, and equal inputs must compare equal so that render can skip unchanged work.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

OPT_IN_ANNOTATION = "loadbalancer.k8s.io/p4kube"
# Set by p4kube's automatic fallback (with "disabled" above); a person's "disabled" lacks it.
FALLBACK_BY_ANNOTATION = "loadbalancer.k8s.io/p4kube-fallback-by"
FALLBACK_MARKER = "p4kube"
# A Service's own connection drain timeout (a Go duration): may shorten the config's, never lengthen it.
DRAIN_TIMEOUT_ANNOTATION = "p4kube.io/connection-drain-timeout"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# The label and value the EndpointSlice controller puts on the slices it writes from Pods; a
# slice without them was written by someone else (a person, another controller).
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
ENDPOINTSLICE_CONTROLLER = "endpointslice-controller.k8s.io"


@dataclass(frozen=True)
class ServicePort:
    name: str  # "" for a Service's single unnamed port
    port: int
    protocol: str  # "TCP" | "UDP" | "SCTP"
    target_port: int | str | None = None  # int, or a named container port
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str  # ClusterIP | NodePort | LoadBalancer | ExternalName
    ports: tuple[ServicePort, ...]
    annotations: tuple[tuple[str, str], ...] = ()  # sorted
    labels: tuple[tuple[str, str], ...] = ()  # sorted
    load_balancer_ip: str | None = None  # spec.loadBalancerIP (requested VIP)
    load_balancer_class: str | None = None
    ingress_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    external_ips: tuple[str, ...] = ()
    resource_version: str = ""
    external_traffic_policy: str = "Cluster"  # spec.externalTrafficPolicy: "Cluster" | "Local"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def annotation(self, name: str) -> str | None:
        for k, v in self.annotations:
            if k == name:
                return v
        return None

    @property
    def auto_fallback(self) -> bool:
        """Handed to kube-proxy by p4kube itself (not by a person): still p4kube's Service."""
        return self.opt_in == "disabled" and self.annotation(FALLBACK_BY_ANNOTATION) == FALLBACK_MARKER

    @property
    def opt_in(self) -> str | None:
        """The value of the opt-in annotation: "enabled", "disabled", other, or None."""
        return self.annotation(OPT_IN_ANNOTATION)


@dataclass(frozen=True)
class Endpoint:
    """One ready, non-terminating endpoint of a Service (others are dropped when read)."""

    address: str
    node: str
    # Port numbers by EndpointSlice port name (the Service port's name), for podIP mode.
    ports: tuple[tuple[str, int], ...] = ()
    pod: str | None = None
    # From a slice the EndpointSlice controller manages, with a Pod targetRef: what podIP mode
    # trusts as a backend (CVE-2021-25740: a hand-written slice can point anywhere). convert.py
    # always sets it from the object; objects built in memory (synthetic states) are trusted.
    managed: bool = True


_ENDPOINT_FIELDS = ("address", "node", "ports", "pod", "managed")
assert tuple(f.name for f in fields(Endpoint)) == _ENDPOINT_FIELDS and not hasattr(Endpoint, "__post_init__"), \
    "endpoint() sets exactly Endpoint's fields: change it with them"


def endpoint(address: str, node: str, ports: tuple[tuple[str, int], ...], pod: str | None, managed: bool) -> Endpoint:
    """Endpoint(address, node, ports, pod, managed), the same object, without the frozen
    dataclass's __init__ (an object.__setattr__ per field: three times the cost), for the
    50,000 endpoints of a 5,000-Service recording (convert.py)."""
    e = _new(Endpoint)
    d = e.__dict__
    d["address"], d["node"], d["ports"], d["pod"], d["managed"] = address, node, ports, pod, managed
    return e


_new = object.__new__


@dataclass(frozen=True)
class Node:
    name: str
    internal_ip: str | None
    ready: bool = True
    unschedulable: bool = False


class ClusterNotReady(RuntimeError):
    """The source has no whole cluster state yet (DESIGN.md 6.1: a source that has not finished
    listing is an error, never a partial state); the message says what it waits for."""


@dataclass(frozen=True)
class ClusterIssue:
    """Something in the cluster state that render cannot use, reported rather than guessed."""

    object: str  # e.g. "EndpointSlice payments/ledger-abc"
    message: str
    service: str | None = None  # "namespace/name" it affects, when known


@dataclass(frozen=True)
class ClusterState:
    """A consistent view of the cluster, keyed for render.

    `endpoints` maps a Service key ("namespace/name") to its ready endpoints in a stable order
    (sorted by address), merged over all of that Service's EndpointSlices.
    """

    services: dict[str, Service] = field(default_factory=dict)
    endpoints: dict[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    resource_version: str | None = None
    issues: tuple[ClusterIssue, ...] = ()

    def ready_replicas_per_node(self, service_key: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ep in self.endpoints.get(service_key, ()):
            counts[ep.node] = counts.get(ep.node, 0) + 1
        return dict(sorted(counts.items()))
