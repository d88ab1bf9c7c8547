"""Watch streams, as kube-apiserver's watch cache serves them (fixtures 04 and 05).

- The answer is always HTTP 200 with one JSON event per chunk; failures after the start arrive as
  a single ERROR event carrying a Status, then the stream ends (410 Expired `too old resource
  version: R (F)` when the history from R is gone; 504 when R is in the future).
- `resourceVersion` unset or "0" (without sendInitialEvents/resourceVersionMatch) is served as
  sendInitialEvents=true: synthetic ADDED events for the current objects, then live events; with
  allowWatchBookmarks a BOOKMARK annotated `k8s.io/initial-events-end: "true"` ends the initial
  part (the documented behaviour on healthy clusters, see README surprise 5).
- Bookmarks only with allowWatchBookmarks, carrying the type's newest revision and only when it is
  newer than the revision the watch started from; sent `bookmark_lead` seconds before the
  timeout (kube-apiserver: 2 s) and every `bookmark_interval` seconds (1 min).
- MODIFIED events of objects that enter or leave the selector become ADDED or DELETED.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import errors as E
from . import validation as v
from .api import Api
from .resources import ResourceType
from .selectors import (
    FieldSelector,
    LabelSelector,
    parse_field_selector,
    parse_label_selector,
)

_POLL = 0.25  # seconds between checks whether the client closed the stream


@dataclass(frozen=True)
class WatchOptions:
    bookmark_lead: float = 2.0
    bookmark_interval: float = 60.0
    default_timeout: float = 1800.0
    too_large_wait: float = 3.0
    # False reproduces the recorded cluster (etcd 3.4, no RequestWatchProgress): watches that ask for
    # initial events with bookmarks fail at once (ERROR 500); RV-less ones fail after too_large_wait
    # (ERROR 504 ResourceVersionTooLarge) unless the type's last write is the newest revision.
    watch_list: bool = True


@dataclass(frozen=True)
class WatchRequest:
    rt: ResourceType
    namespace: str
    labels: LabelSelector
    fields: FieldSelector
    start_rv: int | None  # None: start from the current state (initial events)
    rv_unset: bool
    send_initial: bool
    bookmarks: bool
    timeout: float


def parse_watch(rt: ResourceType, ns: str, query: Mapping[str, str], opts: WatchOptions) -> WatchRequest:
    """Validate the watch options (422/400 before the stream starts)."""
    labels = parse_label_selector(query.get("labelSelector"))
    fields = parse_field_selector(query.get("fieldSelector"), rt.behavior.field_selectors)
    rv = query.get("resourceVersion", "")
    rvm = query.get("resourceVersionMatch", "")
    sie_raw = query.get("sendInitialEvents")
    send_initial = None if sie_raw is None else sie_raw.lower() in ("true", "1")
    if send_initial is not None and rvm != "NotOlderThan":
        raise E.invalid_options(
            "ListOptions",
            [
                v.forbidden(
                    "resourceVersionMatch", "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
                )
            ],
        )
    if rvm and send_initial is None:
        raise E.invalid_options(
            "ListOptions",
            [
                v.forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                )
            ],
        )
    if send_initial is None and rv in ("", "0"):
        send_initial = True  # kube-apiserver >= 1.32 defaulting of legacy watches
    try:
        start = int(rv) if rv not in ("", "0") else None
    except ValueError:
        raise E.bad_request(f"invalid resource version: {rv!r}") from None
    try:
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else opts.default_timeout
    except ValueError:
        raise E.bad_request(f"timeoutSeconds: invalid value {query.get('timeoutSeconds')!r}") from None
    bookmarks = (query.get("allowWatchBookmarks") or "").lower() in ("true", "1")
    return WatchRequest(rt, ns, labels, fields, start, rv == "", bool(send_initial), bookmarks, timeout)


def _status_event(err: E.ApiError) -> dict[str, Any]:
    return {"type": "ERROR", "object": err.status()}


def too_old(requested: int, floor: int) -> E.ApiError:
    return E.ApiError(410, "Expired", f"too old resource version: {requested} ({floor})")


class WatchStream:
    """Produces the events of one watch; `events()` blocks until the next one or the end."""

    def __init__(self, api: Api, req: WatchRequest, opts: WatchOptions, stopped: Callable[[], bool]) -> None:
        self.api, self.req, self.opts, self.stopped = api, req, opts, stopped
        self.started = time.monotonic()
        self.deadline = self.started + req.timeout

    def _matches(self, api_obj: dict[str, Any]) -> bool:
        meta = api_obj.get("metadata") or {}
        if self.req.namespace and meta.get("namespace") != self.req.namespace:
            return False
        return self.req.labels.matches(meta.get("labels")) and self.req.fields.matches(
            api_obj, self.req.rt.behavior.field_selectors
        )

    def _api(self, stored: dict[str, Any]) -> dict[str, Any]:
        rt = self.req.rt
        return rt.behavior.shape(rt.behavior.from_storage(copy.deepcopy(stored)))

    def _next_bookmark(self, now: float) -> float | None:
        when = now + self.opts.bookmark_interval
        pre = self.deadline - self.opts.bookmark_lead
        when = min(when, pre)
        return when if when >= now else None

    def open(self) -> None:
        """Fix the starting point (under the store lock): the watch sees every change committed
        after this returns. Failures become the single ERROR event of the stream."""
        store, rt, req = self.api.store, self.req.rt, self.req
        key = rt.storage_key
        self._head: list[dict[str, Any]] = []
        self._failed = False
        with store.lock:
            if not self.opts.watch_list and req.send_initial and not self._legacy_storage_ok():
                return
            if req.start_rv is not None:
                floor = store.watch_floor(key)
                if req.start_rv < floor:
                    self._fail(too_old(req.start_rv, floor))
                    return
                limit = time.monotonic() + min(self.opts.too_large_wait, max(0.0, self.deadline - time.monotonic()))
                while store.rv < req.start_rv and not self.stopped():
                    remaining = limit - time.monotonic()
                    if remaining <= 0:
                        self._fail(E.too_large_resource_version(req.start_rv, store.rv))
                        return
                    store.cond.wait(remaining)
            if req.send_initial:
                cursor = store.rv
                for stored in store.items(key):
                    if self._matches(self._api(stored)):
                        self._head.append({"type": "ADDED", "object": self.api.render(rt, stored)})
                if req.start_rv is not None:
                    cursor = max(cursor, req.start_rv)
            else:
                cursor = req.start_rv if req.start_rv is not None else store.rv
        if req.send_initial and req.bookmarks:
            self._head.append(
                {"type": "BOOKMARK", "object": self.api.bookmark(rt, cursor, {"k8s.io/initial-events-end": "true"})}
            )
        self._cursor = cursor

    def _legacy_storage_ok(self) -> bool:
        """etcd 3.4 mode (lock held): what the recorded kube-apiserver could not do (fixture 04/7-12)."""
        store, key = self.api.store, self.req.rt.storage_key
        if self.req.bookmarks:
            self._fail(
                E.ApiError(
                    500,
                    "InternalError",
                    "a watch stream was requested by the client but the required "
                    "storage feature RequestWatchProgress is disabled",
                )
            )
            return False
        if not self.req.rv_unset:
            return True  # resourceVersion=0: served from the watch cache as it is
        wanted = store.rv  # a consistent start: the cache must reach the current revision
        limit = time.monotonic() + self.opts.too_large_wait
        while store.latest_rv(key) < wanted and not self.stopped():
            remaining = limit - time.monotonic()
            if remaining <= 0:
                self._fail(E.too_large_resource_version(wanted, store.latest_rv(key)))
                return False
            store.cond.wait(min(remaining, _POLL))
        return True

    def _fail(self, err: E.ApiError) -> None:
        self._head = [_status_event(err)]
        self._failed = True

    def events(self) -> Iterator[dict[str, Any]]:
        if not hasattr(self, "_head"):
            self.open()
        store, rt, req = self.api.store, self.req.rt, self.req
        key = rt.storage_key
        yield from self._head
        if self._failed:
            return
        cursor = start_rv = self._cursor
        next_bookmark = self._next_bookmark(time.monotonic()) if req.bookmarks else None
        while True:
            with store.cond:
                while True:
                    if self.stopped():
                        return
                    pending = store.events_after(key, cursor)
                    now = time.monotonic()
                    if pending or now >= self.deadline or (next_bookmark is not None and now >= next_bookmark):
                        break
                    wake = self.deadline if next_bookmark is None else min(self.deadline, next_bookmark)
                    # wake up now and then to notice a client that went away
                    store.cond.wait(min(max(0.001, wake - now), _POLL))
                lost = store.trimmed_upto(key)
                bookmark_rv = store.latest_rv(key)
            if cursor < lost:  # the watcher fell behind the watch cache window
                yield _status_event(too_old(cursor, store.watch_floor(key)))
                return
            for ev in pending:
                cursor = ev.rv
                out = self._convert(ev.type, ev.obj, ev.prev)
                if out is not None:
                    yield out
            now = time.monotonic()
            if next_bookmark is not None and now >= next_bookmark:
                if bookmark_rv > start_rv:
                    yield {"type": "BOOKMARK", "object": self.api.bookmark(rt, max(bookmark_rv, cursor))}
                next_bookmark = self._next_bookmark(now)
            if now >= self.deadline and not pending:
                return

    def _convert(self, etype: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any] | None:
        rt = self.req.rt
        new_match = self._matches(self._api(obj))
        if etype == "MODIFIED" and prev is not None:
            old_match = self._matches(self._api(prev))
            if new_match and not old_match:
                etype = "ADDED"
            elif old_match and not new_match:
                gone = copy.deepcopy(prev)
                gone["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]
                return {"type": "DELETED", "object": self.api.render(rt, gone)}
            elif not new_match:
                return None
        elif not new_match:
            return None
        return {"type": etype, "object": self.api.render(rt, obj)}
