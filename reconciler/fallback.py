"""kube-proxy fallback on Services, and its automatic undoing (DESIGN.md 6).

Falling back means: the Service's entries leave the switches (render skips a Service whose
opt-in annotation is not "enabled"), its VIP is routed to the nodes where kube-proxy serves it,
and where p4kube had taken the Service away from kube-proxy (podIP backend mode, by labelling
it `service.kubernetes.io/service-proxy-name: p4kube`) that label is removed, so kube-proxy
serves the Service again.

Who did it must stay visible on the object, because render cannot tell the two apart:
- automatic fallback writes `loadbalancer.k8s.io/p4kube: "disabled"` together with its own
  annotations: `...p4kube-fallback-by: "p4kube"` (the marker), `...-fallback-reason` and
  `...-fallback-time`. `recover()` undoes only that (marker present).
- a person's `"disabled"` carries no marker and is never touched. A person who wants to keep an
  automatic fallback for good removes the marker annotation: it is theirs from then on.

Every write is a JSON merge patch under field manager "p4kube" carrying the resourceVersion the
decision was made on, so a concurrent edit (a person disabling the Service at the same moment)
makes the write fail with 409 and the decision is taken again on the fresh object. Each change
is announced with an Event on the Service.

This module decides (pure patches of a Service); reconciler.kube.fallback sends them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from reconciler.cluster.model import (
    FALLBACK_BY_ANNOTATION,
    FALLBACK_MARKER,
    OPT_IN_ANNOTATION,
    Service,
)
from reconciler.kube.client import TIME_FORMAT

FALLBACK_REASON_ANNOTATION = "loadbalancer.k8s.io/p4kube-fallback-reason"
FALLBACK_TIME_ANNOTATION = "loadbalancer.k8s.io/p4kube-fallback-time"
PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
PROXY_NAME = "p4kube"
ENABLED, DISABLED = "enabled", "disabled"
MAX_REASON_CHARS = 1024

ServiceLike = Service | Mapping[str, Any]


# --- reading a Service, as a model object or as the API's dict ---------------------------------


def service_meta(service: ServiceLike) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """(namespace, name, annotations, labels) of a model Service or a Service dict."""
    if isinstance(service, Service):
        return service.namespace, service.name, dict(service.annotations), dict(service.labels)
    meta = service.get("metadata") or {}
    return (
        str(meta.get("namespace") or ""),
        str(meta.get("name") or ""),
        dict(meta.get("annotations") or {}),
        dict(meta.get("labels") or {}),
    )


def is_auto_fallback(service: ServiceLike) -> bool:
    """Whether the Service is disabled by p4kube's automatic fallback (still p4kube's to
    recover), as opposed to disabled by a person (never touched)."""
    _, _, ann, _ = service_meta(service)
    return ann.get(OPT_IN_ANNOTATION) == DISABLED and ann.get(FALLBACK_BY_ANNOTATION) == FALLBACK_MARKER


def is_person_disabled(service: ServiceLike) -> bool:
    _, _, ann, _ = service_meta(service)
    return ann.get(OPT_IN_ANNOTATION) == DISABLED and ann.get(FALLBACK_BY_ANNOTATION) != FALLBACK_MARKER


def has_proxy_label(service: ServiceLike) -> bool:
    """Whether p4kube holds the Service away from kube-proxy (the label with p4kube's name)."""
    _, _, _, labels = service_meta(service)
    return labels.get(PROXY_NAME_LABEL) == PROXY_NAME


# --- the patches (pure) -----------------------------------------------------------------------


def fallback_patch(service: ServiceLike, reason: str, now: datetime) -> dict[str, Any] | None:
    """The merge patch that falls `service` back to kube-proxy, or None when it must not be
    touched (not opted in, disabled by a person) or already is fallen back."""
    _, _, ann, labels = service_meta(service)
    if ann.get(OPT_IN_ANNOTATION) != ENABLED:
        return None
    text = " ".join(reason.split())[:MAX_REASON_CHARS] or "unspecified"
    patch: dict[str, Any] = {
        "metadata": {
            "annotations": {
                OPT_IN_ANNOTATION: DISABLED,
                FALLBACK_BY_ANNOTATION: FALLBACK_MARKER,
                FALLBACK_REASON_ANNOTATION: text,
                FALLBACK_TIME_ANNOTATION: now.astimezone(UTC).strftime(TIME_FORMAT),
            }
        }
    }
    if labels.get(PROXY_NAME_LABEL) == PROXY_NAME:
        patch["metadata"]["labels"] = {PROXY_NAME_LABEL: None}  # null deletes in a merge patch
    return patch


def recover_patch(service: ServiceLike) -> dict[str, Any] | None:
    """The merge patch that undoes an automatic fallback, or None when there is none to undo.

    Also clears p4kube's fallback annotations left on a Service a person re-enabled by hand."""
    _, _, ann, _ = service_meta(service)
    ours = [k for k in (FALLBACK_BY_ANNOTATION, FALLBACK_REASON_ANNOTATION, FALLBACK_TIME_ANNOTATION) if k in ann]
    if is_auto_fallback(service):
        annotations: dict[str, Any] = {OPT_IN_ANNOTATION: ENABLED}
    elif ann.get(OPT_IN_ANNOTATION) == ENABLED and ann.get(FALLBACK_BY_ANNOTATION) == FALLBACK_MARKER:
        annotations = {}
    else:
        return None
    annotations.update({k: None for k in ours})
    return {"metadata": {"annotations": annotations}}


def take_patch(service: ServiceLike) -> dict[str, Any] | None:
    """The patch that takes an opted-in Service from kube-proxy (podIP mode), or None."""
    _, _, ann, labels = service_meta(service)
    if ann.get(OPT_IN_ANNOTATION) != ENABLED or PROXY_NAME_LABEL in labels:
        return None
    return {"metadata": {"labels": {PROXY_NAME_LABEL: PROXY_NAME}}}


def release_patch(service: ServiceLike) -> dict[str, Any] | None:
    """The patch that gives the Service back to kube-proxy, when p4kube's label is on it."""
    if not has_proxy_label(service):
        return None
    return {"metadata": {"labels": {PROXY_NAME_LABEL: None}}}
