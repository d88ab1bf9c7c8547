"""Kubernetes Events about the objects the reconciler acts on (events.k8s.io/v1).

Why events.k8s.io/v1 and what it needs (fixture 11): eventTime is a MicroTime (exactly six
fractional digits), and type (Normal | Warning), reportingController, reportingInstance and
action are required; `note` is capped at 1 KiB by the API. The same Event reads back through
core/v1 (kubectl describe shows it), with note -> message and regarding -> involvedObject.

Repeats are folded as client-go's recorder does: the same (object, type, reason, action, note)
within `series_window_s` patches the existing Event's `series` {count, lastObservedTime}
instead of creating another Event; events.k8s.io Events are immutable apart from `series`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from kubernetes import client as k8s

from reconciler.kube.client import MERGE_PATCH, MICROTIME_FORMAT, KubeError, call_json

log = logging.getLogger(__name__)

REPORTING_CONTROLLER = "p4kube.io/reconciler"
MAX_NOTE_BYTES = 1024
EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class ObjectRef:
    """The object an Event is about."""

    kind: str
    namespace: str
    name: str
    api_version: str = "v1"
    uid: str | None = None

    @classmethod
    def service(cls, key: str, uid: str | None = None) -> ObjectRef:
        """A Service by its "namespace/name" key."""
        ns, _, name = key.partition("/")
        if not ns or not name:
            raise ValueError(f"expected a Service key namespace/name, got {key!r}")
        return cls("Service", ns, name, "v1", uid)

    def to_json(self) -> dict[str, str]:
        out = {"apiVersion": self.api_version, "kind": self.kind, "namespace": self.namespace, "name": self.name}
        if self.uid:
            out["uid"] = self.uid
        return out

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class RecordedEvent:
    """What the recorder did: for logs, metrics and tests."""

    regarding: ObjectRef
    type: EventType
    reason: str
    action: str
    note: str
    name: str  # the Event object's name
    count: int  # 1 for a new Event, n for the n-th of a series


def microtime(when: datetime) -> str:
    """A MicroTime as the API server requires it: UTC, exactly six fractional digits."""
    return when.astimezone(UTC).strftime(MICROTIME_FORMAT)


def _truncate(note: str) -> str:
    raw = note.encode("utf-8")
    if len(raw) <= MAX_NOTE_BYTES:
        return note
    return raw[: MAX_NOTE_BYTES - 3].decode("utf-8", "ignore") + "..."


def default_instance() -> str:
    """reportingInstance: the Pod name when set through the downward API, else the host name."""
    return os.environ.get("POD_NAME") or socket.gethostname() or "p4kube"


class EventRecorder:
    """Writes Events; never raises for a failed write (Events are best-effort), but logs it and
    returns None so the caller can count it."""

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        controller: str = REPORTING_CONTROLLER,
        instance: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
        series_window_s: float = 600.0,
    ) -> None:
        self._events = k8s.EventsV1Api(api)
        self.controller = controller
        self.instance = instance or default_instance()
        self._now = now
        self._clock = clock
        self._window = series_window_s
        # (regarding, type, reason, action, note) -> (event namespace, name, count, first seen)
        self._series: dict[tuple[ObjectRef, str, str, str, str], tuple[str, int, float]] = {}
        self.recorded: list[RecordedEvent] = []  # the last few, for inspection
        self.failures = 0
        self._lock = threading.Lock()  # emit_blocking runs in worker threads

    async def emit(self, regarding: ObjectRef, type: EventType, reason: str, action: str, note: str) -> RecordedEvent | None:
        """Record one Event about `regarding` (in its namespace)."""
        return await asyncio.to_thread(self.emit_blocking, regarding, type, reason, action, note)

    def emit_blocking(self, regarding: ObjectRef, type: EventType, reason: str, action: str, note: str) -> RecordedEvent | None:
        if type not in ("Normal", "Warning"):
            raise ValueError(f"Event type must be Normal or Warning, got {type!r}")
        with self._lock:  # one series decision at a time (Events are few; the lock is cheap)
            return self._emit(regarding, type, reason, action, note)

    def _emit(self, regarding: ObjectRef, type: EventType, reason: str, action: str, note: str) -> RecordedEvent | None:
        note = _truncate(note)
        key = (regarding, type, reason, action, note)
        now_wall = self._now()
        seen = self._series.get(key)
        try:
            if seen is not None and self._clock() - seen[2] < self._window:
                name, count, first = seen
                count += 1
                call_json(
                    f"patch Event {regarding.namespace}/{name}",
                    self._events.patch_namespaced_event,
                    name,
                    regarding.namespace,
                    {"series": {"count": count, "lastObservedTime": microtime(now_wall)}},
                    _content_type=MERGE_PATCH,
                )
                self._series[key] = (name, count, first)
                return self._note(RecordedEvent(regarding, type, reason, action, note, name, count))
            name = f"{regarding.name}.{time.time_ns():x}"
            body = {
                "apiVersion": "events.k8s.io/v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": regarding.namespace},
                "eventTime": microtime(now_wall),
                "type": type,
                "reason": reason,
                "action": action,
                "note": note,
                "regarding": regarding.to_json(),
                "reportingController": self.controller,
                "reportingInstance": self.instance,
            }
            call_json(f"create Event about {regarding}", self._events.create_namespaced_event, regarding.namespace, body)
        except KubeError as e:
            if seen is not None and e.code == 404:  # the Event expired (TTL): start a new one
                del self._series[key]
                return self._emit(regarding, type, reason, action, note)
            self.failures += 1
            log.warning("could not record %s Event %s on %s (%s): %s", type, reason, regarding, note, e)
            return None
        self._series[key] = (name, 1, self._clock())
        if len(self._series) > 4096:  # forget the oldest series: memory stays bounded
            for old in list(self._series)[:1024]:
                del self._series[old]
        return self._note(RecordedEvent(regarding, type, reason, action, note, name, 1))

    def _note(self, ev: RecordedEvent) -> RecordedEvent:
        self.recorded.append(ev)
        del self.recorded[:-200]
        log.info("Event %s %s on %s: %s", ev.type, ev.reason, ev.regarding, ev.note)
        return ev
