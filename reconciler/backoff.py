"""Capped exponential backoff, for watches that fail and transactions that are retried."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Capped exponential backoff with jitter: initial * factor**n, capped at `maximum`, times a
    random factor in [1 - jitter, 1 + jitter] (so that many clients do not retry in step)."""

    def __init__(
        self,
        initial_s: float = 0.5,
        maximum_s: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if initial_s <= 0 or maximum_s < initial_s or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("need 0 < initial_s <= maximum_s, factor >= 1 and 0 <= jitter < 1")
        self.initial_s, self.maximum_s, self.factor, self.jitter = initial_s, maximum_s, factor, jitter
        self._rng = rng
        self._failures = 0

    @property
    def failures(self) -> int:
        """Attempts that failed since the last reset()."""
        return self._failures

    def next(self) -> float:
        """The delay before the next attempt, growing with each call until reset()."""
        base = min(self.maximum_s, self.initial_s * self.factor**self._failures)
        self._failures += 1
        return min(self.maximum_s, base * (1 - self.jitter + 2 * self.jitter * self._rng()))

    def reset(self) -> None:
        self._failures = 0


__all__ = ["Backoff"]
