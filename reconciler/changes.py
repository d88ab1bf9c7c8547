"""A small broadcast for asyncio: producers publish values, each subscriber's async iterator
receives every value published after it subscribed. Used by the intent and cluster sources."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Generic, TypeVar

T = TypeVar("T")


class Broadcast(Generic[T]):
    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[T]] = []

    def publish(self, value: T) -> None:
        for q in list(self._queues):
            q.put_nowait(value)

    async def subscribe(self) -> AsyncIterator[T]:
        q: asyncio.Queue[T] = asyncio.Queue()
        self._queues.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._queues.remove(q)
