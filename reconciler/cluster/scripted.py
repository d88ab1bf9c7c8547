"""A cluster state held in memory and changed by its owner: the demo's "recorded cluster with
churn", a recording followed on disk, and tests. It also takes kube-proxy fallback the way a
cluster does (annotations on the Service), so the loop runs unchanged without an API server."""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timezone
from typing import AsyncIterator

from ..changes import Broadcast
from .model import ClusterState, Service

log = logging.getLogger("reconciler.cluster")

from ..fallback import fallback_patch, recover_patch  # noqa: E402 - the same patches as on a live cluster


def changed_keys(old: ClusterState, new: ClusterState) -> frozenset[str]:
    """Service keys whose render inputs differ: the Service, its endpoints, or a node under them."""
    keys = {k for k in old.services.keys() | new.services.keys() if old.services.get(k) != new.services.get(k)}
    keys |= {k for k in old.endpoints.keys() | new.endpoints.keys() if old.endpoints.get(k) != new.endpoints.get(k)}
    moved = {n for n in old.nodes.keys() | new.nodes.keys() if old.nodes.get(n) != new.nodes.get(n)}
    if moved:
        for k, eps in new.endpoints.items():
            if any(ep.node in moved for ep in eps):
                keys.add(k)
        for k, eps in old.endpoints.items():
            if any(ep.node in moved for ep in eps):
                keys.add(k)
    return frozenset(keys)


class ScriptedCluster:
    def __init__(self, state: ClusterState) -> None:
        self._state = state
        self._bus: Broadcast[frozenset[str]] = Broadcast()

    def snapshot(self) -> ClusterState:
        return self._state

    def changes(self) -> AsyncIterator[frozenset[str]]:
        return self._bus.subscribe()

    def replace(self, state: ClusterState) -> frozenset[str]:
        keys = changed_keys(self._state, state)
        self._state = state
        if keys:
            self._bus.publish(keys)
        return keys

    def _patch(self, key: str, patch: dict | None) -> bool:
        """Apply a metadata merge patch (None deletes a key) to the Service, as the API would."""
        svc = self._state.services.get(key)
        if svc is None or patch is None:
            return False
        meta = patch.get("metadata", {})

        def merged(pairs: tuple[tuple[str, str], ...], changes: dict) -> tuple[tuple[str, str], ...]:
            out = dict(pairs)
            for k, v in changes.items():
                if v is None:
                    out.pop(k, None)
                else:
                    out[k] = v
            return tuple(sorted(out.items()))

        new = dataclasses.replace(
            svc,
            annotations=merged(svc.annotations, meta.get("annotations", {})),
            labels=merged(svc.labels, meta.get("labels", {})),
        )
        if new == svc:
            return False
        self.replace(dataclasses.replace(self._state, services={**self._state.services, key: new}))
        return True

    # FallbackWriter, with the same patches reconciler.fallback sends to a live cluster
    async def fall_back(self, service: str, reason: str) -> bool:
        svc = self._state.services.get(service)
        if svc is None:
            return False
        log.warning("%s: falling back to kube-proxy: %s", service, reason)
        return self._patch(service, fallback_patch(svc, reason, datetime.now(timezone.utc)))

    async def recover(self, service: str) -> bool:
        svc = self._state.services.get(service)
        if svc is None:
            return False
        log.info("%s: recovered from fallback", service)
        return self._patch(service, recover_patch(svc))


def is_auto_fallback(svc: Service) -> bool:
    return svc.auto_fallback
