"""Which Services a LoadBalancerConfig serves, and how each Service port maps to backends."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..cluster.model import ENDPOINTSLICE_CONTROLLER, MANAGED_BY_LABEL, OPT_IN_ANNOTATION, ClusterState, Endpoint, Service, ServicePort
from ..intent.model import LoadBalancerConfig

OPT_IN_VALUES = ("enabled", "disabled")
# Start of the issue for an opt-in annotation value that is neither: status.py sends an Event for it.
INVALID_OPT_IN = f"annotation {OPT_IN_ANNOTATION}:"
# Start of the issue for a nodePort-mode Service whose externalTrafficPolicy is not Local (the
# replica weights do not hold): status.py sends an Event for it too.
CLUSTER_TRAFFIC_POLICY = "externalTrafficPolicy Cluster:"


@dataclass(frozen=True)
class Skip:
    """A Service (or port) left out of the snapshot, and why; reported, never silent."""

    reason: str
    severity: str = "warning"
    # A person's mistake rather than a decision: a Service in the last applied snapshot keeps
    # its entries from it (an error is never a removal) instead of leaving the switches.
    keep: bool = False


def invalid_opt_in(value: str) -> str:
    accepted = ", ".join(f'"{v}"' for v in OPT_IN_VALUES)
    return f"{INVALID_OPT_IN} {value!r} is not an accepted value ({accepted})"


def selection(config: LoadBalancerConfig, svc: Service) -> Skip | None:
    """None when the config serves `svc`, else why not (None severity means: not ours at all)."""
    if svc.opt_in is None or svc.opt_in == "disabled":
        return Skip("not opted in", severity="")
    sel = config.service_selector
    if sel.namespaces and svc.namespace not in sel.namespaces:
        return Skip("outside the config's serviceSelector.namespaces", severity="")
    labels = dict(svc.labels)
    if any(labels.get(k) != v for k, v in sel.match_labels):
        return Skip("does not match the config's serviceSelector.matchLabels", severity="")
    if svc.load_balancer_class is not None and svc.load_balancer_class not in sel.load_balancer_classes:
        return Skip(f"spec.loadBalancerClass {svc.load_balancer_class!r} is not claimed by this config", severity="")
    if svc.opt_in != "enabled":  # checked after the selector: only the configs it would match warn
        return Skip(invalid_opt_in(svc.opt_in), severity="warning", keep=True)
    if svc.type == "ExternalName":
        return Skip("type ExternalName has no endpoints to balance")
    if svc.type != "LoadBalancer" and not svc.external_ips:
        return Skip(f"type {svc.type} without spec.externalIPs has no address for the switch to match")
    return None


def entry_name(svc: Service, port: ServicePort) -> str:
    """Snapshot service name: namespace/name, plus :portName when the Service has several ports."""
    if len(svc.ports) == 1:
        return svc.key
    return f"{svc.key}:{port.name}"


def target_port(port: ServicePort, endpoint: Endpoint) -> int | None:
    """The endpoint's port for a Service port (podIP mode), by the EndpointSlice port name."""
    for name, number in endpoint.ports:
        if name == port.name:
            return number
    if isinstance(port.target_port, int):
        return port.target_port
    return None


def node_backends(cluster: ClusterState, svc: Service) -> tuple[dict[str, int], list[str]]:
    """Ready replicas per node for nodePort mode, and the nodes that cannot be used (no address)."""
    counts: dict[str, int] = {}
    for ep in cluster.endpoints.get(svc.key, ()):
        counts[ep.node] = counts.get(ep.node, 0) + 1
    unusable = sorted(
        node for node in counts if (n := cluster.nodes.get(node)) is None or not n.internal_ip
    )
    for node in unusable:
        del counts[node]
    return dict(sorted(counts.items())), unusable


def trusted_pod_backend(config: LoadBalancerConfig, endpoint: Endpoint) -> bool:
    """podIP mode: whether the switch may send traffic straight to `endpoint`.

    Anyone who may write an EndpointSlice can list any address for a Service (CVE-2021-25740),
    and in podIP mode nothing between the switch and that address checks it. So only endpoints
    the EndpointSlice controller wrote from Pods count, or addresses inside the config's
    podCIDRs (for slices written by another controller, or Services without a selector)."""
    if endpoint.managed:
        return True
    if not config.pod_cidrs:
        return False
    try:
        address = ipaddress.IPv4Address(endpoint.address)
    except ValueError:
        return False
    return any(address in net for net in config.pod_cidrs)


def untrusted_backends_issue(config: LoadBalancerConfig, addresses: list[str]) -> str:
    """The issue text for the endpoints trusted_pod_backend() refused (a few named, all counted)."""
    shown = ", ".join(a[:45] for a in addresses[:3]) + (f" and {len(addresses) - 3} more" if len(addresses) > 3 else "")
    why = f"not from an EndpointSlice labelled {MANAGED_BY_LABEL}={ENDPOINTSLICE_CONTROLLER} with a Pod targetRef"
    if config.pod_cidrs:
        why += f", nor inside spec.podCIDRs ({', '.join(str(n) for n in config.pod_cidrs)})"
    return f"{len(addresses)} endpoint(s) {shown}: {why}; left out (podIP mode sends traffic straight to backends)"
