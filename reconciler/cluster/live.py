"""The live cluster source: list then watch Services, EndpointSlices and Nodes.

One reflector thread per kind runs the blocking official client and hands what it reads to the
asyncio loop (`loop.call_soon_threadsafe`); the loop alone owns the IncrementalState, so no
locks are needed around it. How each reflector behaves, and why (the fixture numbers refer to
/work/shared/fixtures/kube-api):

- List with `limit`/`continue` pages and no resourceVersion: a consistent (quorum) read, never
  RV "0", which may answer from a stale cache and so go back in time. A continue token that
  expired (HTTP 410) restarts the list from scratch, keeping it consistent (fixture 05).
- Watch from the list's resourceVersion with allowWatchBookmarks and a server-side
  timeoutSeconds (randomized so that reflectors do not reconnect in lock-step); the client-side
  read timeout is longer, so a server that vanished without closing is noticed. Never a watch
  without a resourceVersion: kube-apiserver >= 1.32 turns that into a WatchList request, which
  fails on servers without etcd progress notifications (fixture 04, surprise 5).
- Every event and bookmark moves the resume point; a stream the server closes at its timeout is
  simply reopened from there (bookmarks may never come on a quiet kind: surprise 3).
- "Too old resource version" arrives as an ERROR event (code 410, reason Expired) inside an
  HTTP 200 stream, not as an HTTP 410 (surprise 1): the reflector relists, and the loop diffs
  the fresh list against what it held, so every change made meanwhile is reported.
- Transport errors, other ERROR events (500, 504 with retryAfterSeconds) and HTTP errors on
  opening a watch: wait with capped exponential backoff and jitter, then resume from the last
  resourceVersion (or relist if the server says it is too old).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s
from kubernetes.watch.watch import iter_resp_lines

from reconciler.cluster.convert import ConversionError
from reconciler.cluster.incremental import ENDPOINT_SLICE, KINDS, NODE, SERVICE, IncrementalState
from reconciler.backoff import Backoff
from reconciler.cluster.model import ClusterNotReady, ClusterState
from reconciler.kube.client import CALL_ERRORS, TRANSPORT_ERRORS, KubeError, call_json, error_from_exception, error_from_status

log = logging.getLogger(__name__)

EXPIRED = 410


# --- what a reflector hands over ---------------------------------------------------------------


@dataclass(frozen=True)
class Relisted:
    kind: str
    objects: list[dict[str, Any]]
    resource_version: str | None


@dataclass(frozen=True)
class WatchEvent:
    kind: str
    type: str  # ADDED | MODIFIED | DELETED
    object: dict[str, Any]


@dataclass(frozen=True)
class Bookmark:
    kind: str
    resource_version: str


@dataclass(frozen=True)
class Problem:
    """Something that went wrong; the reflector recovers by itself, this is for reports."""

    kind: str
    error: KubeError
    action: str  # "retry in 1.2s", "relist", ...


Item = Relisted | WatchEvent | Bookmark | Problem


@dataclass(frozen=True)
class Collection:
    """How to list and watch one kind through a generated API method.

    `call(**kwargs)` is the list method with everything but the list options bound, e.g.
    functools.partial(CoreV1Api(api).list_service_for_all_namespaces)."""

    kind: str
    call: Callable[..., Any]


def cluster_collections(api: k8s.ApiClient, namespace: str | None = None) -> list[Collection]:
    """Services and EndpointSlices (of one namespace, or all) and Nodes."""
    core, discovery = k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api)
    # list calls taking the same keywords (watch, resource_version, ...) for either scope
    services: Callable[..., Any]
    slices: Callable[..., Any]
    if namespace is None:
        services = core.list_service_for_all_namespaces
        slices = discovery.list_endpoint_slice_for_all_namespaces
    else:
        services = functools.partial(core.list_namespaced_service, namespace)
        slices = functools.partial(discovery.list_namespaced_endpoint_slice, namespace)

    return [Collection(SERVICE, services), Collection(ENDPOINT_SLICE, slices), Collection(NODE, core.list_node)]


# --- the reflector -------------------------------------------------------------------------------


@dataclass
class ReflectorStats:
    lists: int = 0
    relists_expired: int = 0  # relists forced by 410 Expired (watch or continue token)
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    errors: int = 0
    last_error: str | None = None


class Reflector:
    """List-then-watch of one Collection in a thread of its own, handing Items to `deliver`
    (called in that thread; it must be thread-safe)."""

    def __init__(
        self,
        collection: Collection,
        deliver: Callable[[Item], None],
        *,
        page_size: int = 500,
        watch_timeout_s: int = 300,
        connect_timeout_s: float = 10.0,
        read_slack_s: float = 30.0,
        backoff: Backoff | None = None,
        wait: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_watch_s: float = 1.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.collection = collection
        self.kind = collection.kind
        self._deliver = deliver
        self._page_size = page_size
        self._watch_timeout_s = watch_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._read_slack_s = read_slack_s
        self._backoff = backoff or Backoff()
        self._stop = threading.Event()
        # How to wait between attempts. Tests inject a gate; the default returns early on stop.
        self._wait = wait or (lambda s: self._stop.wait(s) and None)
        self._clock = clock
        self._min_watch_s = min_watch_s
        self._rng = rng
        self._resp: Any = None
        self._resp_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.stats = ReflectorStats()

    # lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"reflector-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and unblock a read it is waiting in."""
        self._stop.set()
        with self._resp_lock:
            resp = self._resp
        if resp is not None:
            _shutdown(resp)

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # the loop

    def _run(self) -> None:
        rv: str | None = None
        try:
            while not self._stop.is_set():
                if rv is None:
                    try:
                        objects, rv = self._list()
                    except KubeError as e:
                        self._problem(e, self._backoff.next())
                        continue
                    self._deliver(Relisted(self.kind, objects, rv))
                    if rv is None:  # a server that gives no list RV cannot be watched safely
                        self._problem(KubeError(f"list {self.kind}s", None, "NoResourceVersion", "the list carried no metadata.resourceVersion"), self._backoff.next())
                        continue
                rv, delay = self._watch(rv)
                if delay:
                    self._wait(delay)
        except _Stopped:
            pass
        except Exception as e:  # a bug: say so loudly, and tell the source the reflector is dead
            log.exception("reflector for %s stopped by an unexpected error", self.kind)
            self.stats.last_error = f"crashed: {e!r}"
            try:
                self._deliver(Problem(self.kind, KubeError(f"reflector for {self.kind}", None, "Crashed", repr(e)), "stopped"))
            except Exception:
                log.exception("could not report the crash of the %s reflector", self.kind)
            raise

    def _problem(self, error: KubeError, delay: float, *, action: str | None = None) -> None:
        self.stats.errors += 1
        self.stats.last_error = str(error)
        what = action or f"retry in {delay:.2f}s"
        log.warning("%s: %s; %s", self.kind, error, what)
        self._deliver(Problem(self.kind, error, what))
        if delay:
            self._wait(delay)

    def _list(self) -> tuple[list[dict[str, Any]], str | None]:
        """All objects and the list's resourceVersion, following continue tokens."""
        while True:
            objects: list[dict[str, Any]] = []
            token: str | None = None
            rv: str | None = None
            try:
                while True:
                    self._check_stop()
                    kwargs: dict[str, Any] = {"limit": self._page_size, "_request_timeout": (self._connect_timeout_s, 60.0)}
                    if token:
                        kwargs["_continue"] = token
                    page = call_json(f"list {self.kind}s", self.collection.call, **kwargs)
                    items = page.get("items") or []
                    objects.extend(i for i in items if isinstance(i, dict))
                    meta = page.get("metadata") or {}
                    rv = meta.get("resourceVersion") or rv
                    token = meta.get("continue") or None
                    if not token:
                        break
            except KubeError as e:
                if e.code == EXPIRED and token:
                    # The continue token outlived the server's compaction: a fresh consistent
                    # list, not the "inconsistent" remainder token the Status offers.
                    self.stats.relists_expired += 1
                    self._problem(e, 0.0, action="restart the list")
                    continue
                raise
            self.stats.lists += 1
            self._backoff.reset()
            return objects, rv

    def _watch(self, rv: str) -> tuple[str | None, float]:
        """One watch stream from `rv`: (the resume point or None to relist, delay before the next)."""
        self._check_stop()
        timeout = int(self._watch_timeout_s * (1 + self._rng()))
        started = self._clock()
        delivered = 0
        what = f"watch {self.kind}s from resourceVersion {rv}"
        try:
            resp = self.collection.call(
                watch=True,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _preload_content=False,
                _request_timeout=(self._connect_timeout_s, timeout + self._read_slack_s),
            )
        except CALL_ERRORS as e:
            err = error_from_exception(what, e)
            if err.code == EXPIRED:
                self.stats.relists_expired += 1
                self._problem(err, 0.0, action="relist")
                return None, 0.0
            return self._failed(err, rv)
        self.stats.watches += 1
        with self._resp_lock:
            self._resp = resp
        try:
            if self._stop.is_set():
                raise _Stopped
            for event in self._events(resp):
                etype = event.get("type")
                obj = event.get("object")
                if not isinstance(obj, dict):
                    continue
                if etype == "ERROR":
                    err = error_from_status(what, obj)
                    if err.code == EXPIRED:
                        self.stats.relists_expired += 1
                        self._problem(err, 0.0, action="relist")
                        return None, 0.0
                    return self._failed(err, rv)
                meta = obj.get("metadata") or {}
                new_rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
                if etype == "BOOKMARK":
                    if new_rv:
                        rv = new_rv
                        self.stats.bookmarks += 1
                        self._deliver(Bookmark(self.kind, new_rv))
                        delivered += 1
                    continue
                if etype in ("ADDED", "MODIFIED", "DELETED"):
                    self.stats.events += 1
                    self._deliver(WatchEvent(self.kind, etype, obj))
                    delivered += 1
                    if new_rv:
                        rv = new_rv
                else:
                    log.warning("%s: ignoring a watch event of unknown type %r", self.kind, etype)
        except _Stopped:
            raise
        except CALL_ERRORS as e:
            if self._stop.is_set():
                raise _Stopped from None
            return self._failed(error_from_exception(what, e), rv)
        finally:
            with self._resp_lock:
                self._resp = None
            _close(resp)
        if self._stop.is_set():
            raise _Stopped
        if delivered or self._clock() - started >= self._min_watch_s:
            self._backoff.reset()
            return rv, 0.0  # the server ended the stream at its timeout: reopen at once
        # Closed at once with nothing in it: not a timeout. Back off so as not to spin.
        return self._failed(KubeError(what, None, "StreamClosed", "the server closed the watch at once"), rv)

    def _failed(self, err: KubeError, rv: str) -> tuple[str, float]:
        delay = max(self._backoff.next(), err.retry_after_s or 0.0)
        self._problem(err, 0.0, action=f"resume from resourceVersion {rv} in {delay:.2f}s")
        return rv, delay

    def _events(self, resp: Any) -> Iterator[dict[str, Any]]:
        for line in iter_resp_lines(resp):
            if self._stop.is_set():
                raise _Stopped
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                log.warning("%s: skipping a watch line that is not JSON: %.200s", self.kind, line)
                continue
            if isinstance(event, dict):
                yield event

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped


class _Stopped(Exception):
    pass


def _shutdown(resp: Any) -> None:
    """Unblock a thread reading `resp` (urllib3 >= 2.3 has shutdown(); else the socket)."""
    try:
        shutdown = getattr(resp, "shutdown", None)
        if shutdown is not None:
            shutdown()
            return
        sock = getattr(getattr(resp, "connection", None), "sock", None)
        if sock is not None:
            import socket

            sock.shutdown(socket.SHUT_RDWR)
    except OSError as e:  # already closed: nothing left to unblock
        log.debug("shutting down a watch response: %s", e)


def _close(resp: Any) -> None:
    try:
        resp.close()
        resp.release_conn()
    except TRANSPORT_ERRORS as e:  # OSError among them
        log.debug("closing a watch response: %s", e)


# --- the source the controller uses ---------------------------------------------------------------


@dataclass
class SourceStats:
    relists: int = 0  # lists applied after the first one of a kind
    events: int = 0
    problems: list[str] = field(default_factory=list)  # the last few, newest last

    def note(self, problem: str) -> None:
        self.problems.append(problem)
        del self.problems[:-20]


class LiveClusterSource:
    """Cluster state kept current from the API, with the Services each change touched.

        source = LiveClusterSource(api)
        await source.start()
        await source.wait_synced(timeout=30)
        async for changed in source.changes():       # sets of Service keys
            renderer.render(config, source.snapshot(), previous, changed=changed, ...)

    The first set `changes()` yields after the initial lists is every Service key. Until then
    `snapshot()` raises ClusterNotReady: a source that has not finished listing is no cluster."""

    def __init__(
        self,
        api: k8s.ApiClient | None = None,
        *,
        namespace: str | None = None,
        collections: list[Collection] | None = None,
        reflector_options: dict[str, Any] | None = None,
        state: IncrementalState | None = None,
    ) -> None:
        if collections is None:
            if api is None:
                raise ValueError("give an ApiClient or the collections to watch")
            collections = cluster_collections(api, namespace)
        self.state = state or IncrementalState()
        self.stats = SourceStats()
        self._collections = collections
        self._options = reflector_options or {}
        self._reflectors: list[Reflector] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listed: set[str] = set()
        self._synced = asyncio.Event()
        self._pending: set[str] = set()
        self._subscribers: list[_Subscriber] = []
        self._callbacks: list[Callable[[frozenset[str]], None]] = []
        self._closed = False

    # lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for coll in self._collections:
            opts = dict(self._options)
            if isinstance(opts.get("backoff"), Backoff):  # each reflector backs off on its own
                opts["backoff"] = copy.copy(opts["backoff"])
            r = Reflector(coll, self._from_thread, **opts)
            self._reflectors.append(r)
            r.start()

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Stop the reflectors and wait for their threads; ends every `changes()` iterator."""
        self._closed = True
        for r in self._reflectors:
            r.stop()
        for r in self._reflectors:
            if not await asyncio.to_thread(r.join, timeout_s):
                log.error("reflector for %s did not stop within %.1fs", r.kind, timeout_s)
        for sub in self._subscribers:
            sub.event.set()

    async def __aenter__(self) -> LiveClusterSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # reading

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Until every kind has been listed once; TimeoutError names the kinds still missing."""
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"cluster state not listed within {timeout}s: {self._waiting_for()}") from None

    def snapshot(self) -> ClusterState:
        """The current state; ClusterNotReady until every kind's first list has been applied
        (a state missing a kind would read as a cluster without Services, or Nodes)."""
        if not self.synced:
            raise ClusterNotReady(f"cluster state not listed yet: {self._waiting_for()}")
        return self.state.snapshot()

    def _waiting_for(self) -> str:
        missing = [c.kind for c in self._collections if c.kind not in self._listed]
        problems = "; ".join(self.stats.problems[-3:]) or "no error reported"
        return f"waiting for the first list of {', '.join(missing) or 'nothing'} ({problems})"

    @property
    def reflectors(self) -> list[Reflector]:
        return list(self._reflectors)

    def on_change(self, callback: Callable[[frozenset[str]], None]) -> None:
        """Call `callback(changed)` in the loop after each applied change (after the first sync)."""
        self._callbacks.append(callback)

    async def changes(self) -> AsyncIterator[frozenset[str]]:
        """Sets of changed Service keys, coalesced: what piled up while the consumer was busy
        comes as one set. Ends when the source is closed."""
        sub = _Subscriber()
        self._subscribers.append(sub)
        try:
            if self.synced:
                sub.pending.update(self.state.keys(SERVICE))
                sub.event.set()
            while True:
                await sub.event.wait()
                sub.event.clear()
                if sub.pending:
                    batch = frozenset(sub.pending)
                    sub.pending.clear()
                    yield batch
                elif self._closed:
                    return
        finally:
            self._subscribers.remove(sub)

    # applying (in the loop)

    def _from_thread(self, item: Item) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise _Stopped
        try:
            loop.call_soon_threadsafe(self._apply, item)
        except RuntimeError as e:  # the loop closed under us: the reflector ends
            raise _Stopped from e

    def _apply(self, item: Item) -> None:
        changed: set[str] = set()
        if isinstance(item, Relisted):
            if item.kind in self._listed:
                self.stats.relists += 1
            changed = self.state.replace(item.kind, item.objects, item.resource_version)
            self._listed.add(item.kind)
        elif isinstance(item, WatchEvent):
            self.stats.events += 1
            try:
                changed = self.state.apply(item.kind, item.type, item.object)
            except ConversionError as e:
                self.stats.note(f"{item.kind} event ignored: {e}")
                log.warning("ignoring a %s %s event: %s", item.kind, item.type, e)
        elif isinstance(item, Bookmark):
            self.state.note_resource_version(item.resource_version)
        elif isinstance(item, Problem):
            self.stats.note(f"{item.kind}: {item.error} ({item.action})")
        if not self.synced:
            if all(c.kind in self._listed for c in self._collections):
                self._synced.set()
                self._notify(self.state.keys(SERVICE) | self._pending)
                self._pending.clear()
            else:
                self._pending |= changed
            return
        if changed:
            self._notify(changed)

    def _notify(self, changed: set[str]) -> None:
        frozen = frozenset(changed)
        for sub in self._subscribers:
            sub.pending |= frozen
            sub.event.set()
        for cb in self._callbacks:
            try:
                cb(frozen)
            except Exception:
                log.exception("a cluster change callback failed")


@dataclass
class _Subscriber:
    pending: set[str] = field(default_factory=set)
    event: asyncio.Event = field(default_factory=asyncio.Event)


__all__ = [
    "KINDS",
    "Backoff",
    "Bookmark",
    "ClusterNotReady",
    "Collection",
    "LiveClusterSource",
    "Problem",
    "Reflector",
    "Relisted",
    "WatchEvent",
    "cluster_collections",
]
