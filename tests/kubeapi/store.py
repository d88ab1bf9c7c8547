"""Object storage with etcd-like revisions and a kube-apiserver-like watch cache.

- One global revision counter shared by all kinds (resourceVersion is that revision, as a string).
- Each storage key (a resource type, e.g. `discovery.k8s.io/endpointslices`) keeps its event
  history: (revision, ADDED|MODIFIED|DELETED, object, previous object). Watches replay it;
  `resourceVersionMatch=Exact` lists and continue tokens rebuild the state at an older revision
  from it by undoing later events.
- Two independent horizons, as on a real server (fixture 05): the watch cache of a type (a watch
  from an older revision gets ERROR 410 `too old resource version: R (F)`) and etcd compaction
  (an Exact list or continue token from before it gets HTTP 410). Capacity trimming of a type's
  history moves both for that type.
All access happens under `lock`; `cond` wakes watchers on every commit and on shutdown.
"""

from __future__ import annotations

import bisect
import copy
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ObjKey = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class StoredEvent:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict[str, Any]  # the new state; for DELETED the last state carrying the deletion revision
    prev: dict[str, Any] | None


def obj_key(obj: dict[str, Any]) -> ObjKey:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


class Store:
    def __init__(self, *, initial_resource_version: int = 1, watch_cache_size: int = 10_000) -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.rv = initial_resource_version
        self.watch_cache_size = watch_cache_size
        self._objects: dict[str, dict[ObjKey, dict[str, Any]]] = {}
        self._history: dict[str, list[StoredEvent]] = {}
        self._history_rvs: dict[str, list[int]] = {}
        self._trimmed_upto: dict[str, int] = {}  # highest revision dropped from a type's history
        self._watch_expired: dict[str, int] = {}  # test hook: watch cache forgot up to here
        self._compacted = 0  # etcd compaction revision
        self.generation = 0  # bumps on every commit (cheap change detection for waiters)

    # ---- reads (callers hold the lock or accept a racy view) -----------------------------------

    def get(self, key: str, ns: str, name: str) -> dict[str, Any] | None:
        obj = self._objects.get(key, {}).get((ns, name))
        return copy.deepcopy(obj) if obj is not None else None

    def items(self, key: str, ns: str | None = None) -> list[dict[str, Any]]:
        objs = self._objects.get(key, {})
        keys = sorted(k for k in objs if ns is None or k[0] == ns)
        return [copy.deepcopy(objs[k]) for k in keys]

    def all_keys(self) -> list[str]:
        return list(self._objects)

    def latest_rv(self, key: str) -> int:
        """The newest revision of a type's history (what a watch-cache bookmark reports)."""
        rvs = self._history_rvs.get(key)
        return rvs[-1] if rvs else 0

    def watch_floor(self, key: str) -> int:
        return max(self._trimmed_upto.get(key, 0), self._watch_expired.get(key, 0))

    def trimmed_upto(self, key: str) -> int:
        """Highest revision dropped from the type's history by the capacity limit."""
        return self._trimmed_upto.get(key, 0)

    def list_floor(self, key: str) -> int:
        return max(self._trimmed_upto.get(key, 0), self._compacted)

    def events_after(self, key: str, rv: int) -> list[StoredEvent]:
        rvs = self._history_rvs.get(key, [])
        i = bisect.bisect_right(rvs, rv)
        return list(self._history.get(key, [])[i:])

    def snapshot(self, key: str, rv: int, ns: str | None = None) -> list[dict[str, Any]]:
        """The objects of a type as they were at revision `rv` (caller checked list_floor)."""
        state = {k: v for k, v in self._objects.get(key, {}).items()}
        for ev in reversed(self.events_after(key, rv)):
            k = obj_key(ev.obj)
            if ev.type == "ADDED":
                state.pop(k, None)
            elif ev.prev is not None:
                state[k] = ev.prev
        return [copy.deepcopy(state[k]) for k in sorted(state) if ns is None or k[0] == ns]

    # ---- writes ------------------------------------------------------------------------------

    def commit(self, key: str, obj: dict[str, Any] | None, *, delete: ObjKey | None = None) -> dict[str, Any]:
        """Store (or, with `delete`, remove) one object at the next revision; returns the stored
        object (for a delete: the last state stamped with the deletion revision)."""
        with self.lock:
            self.rv += 1
            rv = self.rv
            objs = self._objects.setdefault(key, {})
            if delete is not None:
                prev = objs.pop(delete)
                stored = copy.deepcopy(prev)
                stored.setdefault("metadata", {})["resourceVersion"] = str(rv)
                ev = StoredEvent(rv, "DELETED", stored, prev)
            else:
                assert obj is not None
                k = obj_key(obj)
                prev = objs.get(k)
                stored = copy.deepcopy(obj)
                stored.setdefault("metadata", {})["resourceVersion"] = str(rv)
                objs[k] = stored
                ev = StoredEvent(rv, "ADDED" if prev is None else "MODIFIED", stored, prev)
            self._history.setdefault(key, []).append(ev)
            self._history_rvs.setdefault(key, []).append(rv)
            self._trim(key)
            self.generation += 1
            self.cond.notify_all()
            return copy.deepcopy(stored)

    def _trim(self, key: str) -> None:
        history = self._history[key]
        excess = len(history) - self.watch_cache_size
        if excess > 0:
            self._trimmed_upto[key] = max(self._trimmed_upto.get(key, 0), history[excess - 1].rv)
            del history[:excess]
            del self._history_rvs[key][:excess]

    def drop_type(self, key: str) -> list[dict[str, Any]]:
        """Forget a whole type (its CRD went away); returns the objects it held."""
        with self.lock:
            objs = self._objects.pop(key, {})
            return [objs[k] for k in sorted(objs)]

    # ---- test hooks ----------------------------------------------------------------------------

    def compact(self, rv: int | None = None) -> int:
        """Like kube-apiserver's periodic etcd compaction: Exact lists and continue tokens from
        before `rv` (default: now) answer 410; watches are still served from the watch cache."""
        with self.lock:
            self._compacted = max(self._compacted, self.rv if rv is None else rv)
            return self._compacted

    def expire_watch_cache(self, keys: Iterable[str] | None = None, rv: int | None = None) -> int:
        """Make the watch cache of the given types (default all) forget history up to `rv`
        (default: now): watches from an older revision get ERROR 410."""
        with self.lock:
            floor = self.rv if rv is None else rv
            for key in keys if keys is not None else list(self._objects) + list(self._history):
                self._watch_expired[key] = max(self._watch_expired.get(key, 0), floor)
            return floor

    def wake_all(self) -> None:
        with self.lock:
            self.generation += 1
            self.cond.notify_all()
