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
        self._write_delays: list[float] = []  # one per upcoming Write RPC
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

    def delay_writes(self, seconds: float, count: int = 1) -> None:
        """Delay each of the next `count` Write RPCs by `seconds` (Reads are not delayed).

        The delay is served *before* the Write is authorized: it models a request queued in the
        target, which checks the election id when it processes the request, not when it
        arrives (P4Runtime 5.x). A client whose Write timed out can therefore fence it by
        arbitrating with a higher election id before the switch gets to it."""
        if seconds < 0 or count < 0:
            raise ValueError(f"delay and count must be >= 0, not {seconds}, {count}")
        with self._lock:
            self._write_delays = [seconds] * count

    def take_write_delay(self) -> float:
        with self._lock:
            return self._write_delays.pop(0) if self._write_delays else 0.0

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
            self._write_delays = []
            self._crash_after = None
