"""LoadBalancerConfig custom resources as the loop's intent source."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..changes import Broadcast
from ..intent.model import IntentSet
from .intent_source import CRIntentSource


class CRIntentProvider:
    """reconciler.kube.intent_source as an IntentProvider (valid configs only; invalid CRs are
    reported through their status by the source's owner)."""

    def __init__(self, source: CRIntentSource) -> None:
        self.source = source
        self._bus: Broadcast[IntentSet] = Broadcast()

    def current(self) -> IntentSet:
        return self.source.current().intent

    def changes(self) -> AsyncIterator[IntentSet]:
        return self._map()

    async def _map(self) -> AsyncIterator[IntentSet]:
        async for cr in self.source.changes():
            yield cr.intent

