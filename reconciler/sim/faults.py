"""Faults the software switch injects on request, for reliability tests. Thread-safe.

The test arms a fault through the SoftwareSwitch (in-process); the gRPC handlers consult this
object on every request. Nothing here is reachable over P4Runtime.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    message: str


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refusals = 0
        self._refusal = Refusal(grpc.StatusCode.UNAVAILABLE, "refused by fault injection")
        self._delay = 0.0
        self._crash_after: int | None = None

    def refuse_writes(self, count: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
                      message: str = "refused by fault injection") -> None:
        """Refuse the next `count` Write RPCs with `code`, applying nothing."""
        if count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        if code == grpc.StatusCode.OK:
            raise ValueError("a refusal needs a non-OK status code")
        with self._lock:
            self._refusals = count
            self._refusal = Refusal(code, message)

    def take_refusal(self) -> Refusal | None:
        with self._lock:
            if self._refusals <= 0:
                return None
            self._refusals -= 1
            return self._refusal

    def set_delay(self, seconds: float) -> None:
        """Delay every Write and Read by `seconds` (0 turns it off)."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, not {seconds}")
        with self._lock:
            self._delay = seconds

    @property
    def delay(self) -> float:
        with self._lock:
            return self._delay

    def crash_after(self, updates: int) -> None:
        """The next Write applies its first `updates` updates, then the server dies."""
        if updates < 0:
            raise ValueError(f"updates must be >= 0, not {updates}")
        with self._lock:
            self._crash_after = updates

    def take_crash(self) -> int | None:
        with self._lock:
            armed, self._crash_after = self._crash_after, None
            return armed

    def clear(self) -> None:
        with self._lock:
            self._refusals = 0
            self._delay = 0.0
            self._crash_after = None
