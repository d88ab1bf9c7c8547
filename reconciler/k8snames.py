"""The API server's rules for object names (k8s.io/apimachinery/pkg/util/validation), for input
that claims to come from an API server but may not (a cluster recording in a pull request)."""

from __future__ import annotations

import re

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def dns1123_label(s: str) -> bool:
    """A namespace name."""
    return len(s) <= 63 and _DNS1123_LABEL.fullmatch(s) is not None


def dns1035_label(s: str) -> bool:
    """A Service name."""
    return len(s) <= 63 and _DNS1035_LABEL.fullmatch(s) is not None


def dns1123_subdomain(s: str) -> bool:
    """A Node name, or the name of most other objects (a LoadBalancerConfig's)."""
    return len(s) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(s) is not None


def object_name_problem(kind: str, namespace: str, name: str) -> str | None:
    """Why the API server would refuse this object's namespace or name, or None. Services take
    DNS-1035 labels, namespaces DNS-1123 labels, Nodes and EndpointSlices DNS-1123 subdomains."""
    if kind != "Node" and not dns1123_label(namespace):
        return "metadata.namespace is not a valid namespace name (DNS-1123 label)"
    if kind == "Service" and not dns1035_label(name):
        return "metadata.name is not a valid Service name (DNS-1035 label)"
    if kind != "Service" and not dns1123_subdomain(name):
        return f"metadata.name is not a valid {kind} name (DNS-1123 subdomain)"
    return None
