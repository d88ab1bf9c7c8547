"""The kube-proxy fallback writer: sends reconciler.fallback's patches to live Services (a JSON
merge patch under field manager "p4kube" at the resourceVersion the decision was made on, so a
concurrent edit fails with 409 and the decision is taken again), with an Event for each change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s

from ..cluster.model import OPT_IN_ANNOTATION
from ..fallback import (
    ENABLED,
    FALLBACK_REASON_ANNOTATION,
    FALLBACK_TIME_ANNOTATION,
    PROXY_NAME,
    PROXY_NAME_LABEL,
    ServiceLike,
    fallback_patch,
    is_auto_fallback,
    is_person_disabled,
    recover_patch,
    release_patch,
    service_meta,
    take_patch,
)
from .client import FIELD_MANAGER, MERGE_PATCH, KubeError, call_json
from .events import EventRecorder, EventType, ObjectRef

log = logging.getLogger("reconciler.fallback")  # the name it had before the writer moved here
CONFLICT_RETRIES = 3


# --- sending the patches of reconciler.fallback -------------------------------------------


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
        event: tuple[EventType, str, str],  # type, reason, action
        note: Callable[[Mapping[str, Any]], str],
        why_not: Callable[[Mapping[str, Any]], str],
    ) -> FallbackOutcome:
        key = service if isinstance(service, str) else "/".join(service_meta(service)[:2])
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
            await self._events.emit(ObjectRef.service(key, uid), etype, reason, act, text)
            log.info("Service %s: %s (%s)", key, action, text, extra={"service": key})
            return FallbackOutcome(key, action, text)
        raise KubeError(f"patch Service {key}", 409, "Conflict", f"still conflicting after {CONFLICT_RETRIES} attempts: {last}")


def _ann(obj: ServiceLike, key: str) -> str:
    return service_meta(obj)[2].get(key, "?")


def _why_no_fallback(obj: Mapping[str, Any]) -> str:
    if is_auto_fallback(obj):
        return "already fallen back"
    if is_person_disabled(obj):
        return "disabled by a person: left alone"
    return "not opted in to p4kube"


def _why_not_take(obj: Mapping[str, Any]) -> str:
    _, _, ann, labels = service_meta(obj)
    if ann.get(OPT_IN_ANNOTATION) != ENABLED:
        return "not enabled for p4kube"
    value = labels.get(PROXY_NAME_LABEL)
    if value == PROXY_NAME:
        return "already taken from kube-proxy"
    return f"label {PROXY_NAME_LABEL}={value} belongs to another service proxy: left alone"
