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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s

from reconciler.cluster.model import FALLBACK_BY_ANNOTATION, FALLBACK_MARKER, OPT_IN_ANNOTATION, Service
from reconciler.kube.client import FIELD_MANAGER, MERGE_PATCH, TIME_FORMAT, KubeError, call_json
from reconciler.kube.events import EventRecorder, ObjectRef

log = logging.getLogger(__name__)

FALLBACK_REASON_ANNOTATION = "loadbalancer.k8s.io/p4kube-fallback-reason"
FALLBACK_TIME_ANNOTATION = "loadbalancer.k8s.io/p4kube-fallback-time"
PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
PROXY_NAME = "p4kube"
ENABLED, DISABLED = "enabled", "disabled"
MAX_REASON_CHARS = 1024
CONFLICT_RETRIES = 3

ServiceLike = Service | Mapping[str, Any]


# --- reading a Service, as a model object or as the API's dict ---------------------------------


def _meta(service: ServiceLike) -> tuple[str, str, dict[str, str], dict[str, str]]:
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
    _, _, ann, _ = _meta(service)
    return ann.get(OPT_IN_ANNOTATION) == DISABLED and ann.get(FALLBACK_BY_ANNOTATION) == FALLBACK_MARKER


def is_person_disabled(service: ServiceLike) -> bool:
    _, _, ann, _ = _meta(service)
    return ann.get(OPT_IN_ANNOTATION) == DISABLED and ann.get(FALLBACK_BY_ANNOTATION) != FALLBACK_MARKER


def has_proxy_label(service: ServiceLike) -> bool:
    """Whether p4kube holds the Service away from kube-proxy (the label with p4kube's name)."""
    _, _, _, labels = _meta(service)
    return labels.get(PROXY_NAME_LABEL) == PROXY_NAME


# --- the patches (pure) -----------------------------------------------------------------------


def fallback_patch(service: ServiceLike, reason: str, now: datetime) -> dict[str, Any] | None:
    """The merge patch that falls `service` back to kube-proxy, or None when it must not be
    touched (not opted in, disabled by a person) or already is fallen back."""
    _, _, ann, labels = _meta(service)
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
    _, _, ann, _ = _meta(service)
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
    _, _, ann, labels = _meta(service)
    if ann.get(OPT_IN_ANNOTATION) != ENABLED or PROXY_NAME_LABEL in labels:
        return None
    return {"metadata": {"labels": {PROXY_NAME_LABEL: PROXY_NAME}}}


def release_patch(service: ServiceLike) -> dict[str, Any] | None:
    """The patch that gives the Service back to kube-proxy, when p4kube's label is on it."""
    if not has_proxy_label(service):
        return None
    return {"metadata": {"labels": {PROXY_NAME_LABEL: None}}}


# --- doing it ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FallbackOutcome:
    service: str  # namespace/name
    action: str  # fell-back | recovered | took-from-kube-proxy | returned-to-kube-proxy | unchanged | gone | failed
    detail: str = ""

    @property
    def changed(self) -> bool:
        return self.action not in ("unchanged", "gone", "failed")


class Fallback:
    """Applies the patches above to live Services, with an Event for every change."""

    def __init__(
        self,
        api: k8s.ApiClient,
        events: EventRecorder,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._core = k8s.CoreV1Api(api)
        self._events = events
        self._now = now

    async def fall_back(self, service: ServiceLike | str, reason: str) -> FallbackOutcome:
        """Hand the Service to kube-proxy, marked as p4kube's automatic fallback."""
        return await self._change(
            service,
            lambda obj: fallback_patch(obj, reason, self._now()),
            "fell-back",
            ("Warning", "FellBackToKubeProxy", "FallBack"),
            lambda obj: f"p4kube stopped serving this Service from the switches and handed it to kube-proxy: {reason}",
            why_not=_why_no_fallback,
        )

    async def recover(self, service: ServiceLike | str) -> FallbackOutcome:
        """Undo an automatic fallback (only p4kube's own; a person's "disabled" stays)."""
        return await self._change(
            service,
            recover_patch,
            "recovered",
            ("Normal", "RecoveredFromFallback", "Recover"),
            lambda obj: "health returned: p4kube serves this Service from the switches again"
            + (f" (fallen back {_ann(obj, FALLBACK_TIME_ANNOTATION)}: {_ann(obj, FALLBACK_REASON_ANNOTATION)})" if is_auto_fallback(obj) else ""),
            why_not=lambda obj: "disabled by a person: left alone" if is_person_disabled(obj) else "no automatic fallback to undo",
        )

    async def take_from_kube_proxy(self, service: ServiceLike | str) -> FallbackOutcome:
        """podIP mode: label the Service so that kube-proxy ignores it. Call after the switches
        serve it, so that no moment is left with nobody serving the VIP."""
        return await self._change(
            service,
            take_patch,
            "took-from-kube-proxy",
            ("Normal", "TakenFromKubeProxy", "TakeOver"),
            lambda obj: f"p4kube serves this Service's endpoints directly (podIP mode); label {PROXY_NAME_LABEL}={PROXY_NAME} makes kube-proxy ignore it",
            why_not=_why_not_take,
        )

    async def return_to_kube_proxy(self, service: ServiceLike | str) -> FallbackOutcome:
        """Remove p4kube's proxy-name label (only when its value is p4kube's)."""
        return await self._change(
            service,
            release_patch,
            "returned-to-kube-proxy",
            ("Normal", "ReturnedToKubeProxy", "Release"),
            lambda obj: f"label {PROXY_NAME_LABEL} removed: kube-proxy serves this Service again",
            why_not=lambda obj: f"no {PROXY_NAME_LABEL}={PROXY_NAME} label to remove",
        )

    async def _change(
        self,
        service: ServiceLike | str,
        make_patch: Callable[[Mapping[str, Any]], dict[str, Any] | None],
        action: str,
        event: tuple[str, str, str],
        note: Callable[[Mapping[str, Any]], str],
        why_not: Callable[[Mapping[str, Any]], str],
    ) -> FallbackOutcome:
        key = service if isinstance(service, str) else "/".join(_meta(service)[:2])
        ns, _, name = key.partition("/")
        last: KubeError | None = None
        for _ in range(CONFLICT_RETRIES):
            try:
                # Decide on the object as it is now, not on a possibly stale cached copy.
                obj = await asyncio.to_thread(call_json, f"get Service {key}", self._core.read_namespaced_service, name, ns)
            except KubeError as e:
                if e.code == 404:
                    return FallbackOutcome(key, "gone", "the Service no longer exists")
                raise
            patch = make_patch(obj)
            if patch is None:
                return FallbackOutcome(key, "unchanged", why_not(obj))
            patch["metadata"]["resourceVersion"] = (obj.get("metadata") or {}).get("resourceVersion")
            try:
                updated = await asyncio.to_thread(
                    call_json,
                    f"patch Service {key}",
                    self._core.patch_namespaced_service,
                    name,
                    ns,
                    patch,
                    field_manager=FIELD_MANAGER,
                    _content_type=MERGE_PATCH,
                )
            except KubeError as e:
                if e.code == 409:  # changed since we read it: decide again on the new object
                    last = e
                    continue
                if e.code == 404:
                    return FallbackOutcome(key, "gone", "the Service no longer exists")
                raise
            etype, reason, act = event
            text = note(obj)
            uid = (updated.get("metadata") or {}).get("uid")
            await self._events.emit(ObjectRef.service(key, uid), etype, reason, act, text)  # type: ignore[arg-type]
            log.info("Service %s: %s (%s)", key, action, text)
            return FallbackOutcome(key, action, text)
        raise KubeError(f"patch Service {key}", 409, "Conflict", f"still conflicting after {CONFLICT_RETRIES} attempts: {last}")


def _ann(obj: ServiceLike, key: str) -> str:
    return _meta(obj)[2].get(key, "?")


def _why_no_fallback(obj: Mapping[str, Any]) -> str:
    if is_auto_fallback(obj):
        return "already fallen back"
    if is_person_disabled(obj):
        return "disabled by a person: left alone"
    return "not opted in to p4kube"


def _why_not_take(obj: Mapping[str, Any]) -> str:
    _, _, ann, labels = _meta(obj)
    if ann.get(OPT_IN_ANNOTATION) != ENABLED:
        return "not enabled for p4kube"
    value = labels.get(PROXY_NAME_LABEL)
    if value == PROXY_NAME:
        return "already taken from kube-proxy"
    return f"label {PROXY_NAME_LABEL}={value} belongs to another service proxy: left alone"
