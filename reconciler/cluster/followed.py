"""A cluster recording followed on disk (`p4kube run --cluster FILE`), read only when whole.

`kubectl get services,endpointslices,nodes -A -o yaml > FILE` rewrites the file in chunks, and
every chunk is a change event. A YAML cut at an item or document boundary can still parse (as a
shorter cluster), so a parse that succeeds is not enough (DESIGN.md 6.1: a half-written recording
is an error, never a removal). On a change the file is looked at once it has been quiet for
`settle_s`, and again `settle_s` later; only when both looks saw the same content (size, mtime_ns
and a SHA-256 of the bytes) and the bytes read as a whole cluster (recorded.load_cluster_bytes)
does the state change. A file that is still changing, unreadable or invalid keeps the last good
state; what is wrong is in `error` and logged once per distinct problem.

Everything but the watchdog observer runs on the asyncio loop (watchdog hands its events over
with call_soon_threadsafe, reconciler.watching), so the counters need no locks. Tests wait on
`wait_for(predicate)`, `wait_looked(n)` or `wait_loaded(n)` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..diagnostics import Diagnostic, InputError
from ..inputlimits import RECORDING_MAX_BYTES_ENV, TooLarge, recording_max_bytes
from .recorded import load_cluster_bytes
from .scripted import ScriptedCluster

log = logging.getLogger("reconciler.cluster")

# (size, mtime_ns, sha256 hex) of the bytes read, or ("unreadable", message) when the read failed.
Fingerprint = tuple[Any, ...]

# A file that has not settled for this long (and at least 20 looks) is reported in `error`.
_CHANGING_REPORT_S = 30.0


class FollowedRecording(ScriptedCluster):
    """A recording on disk, re-read when it changes and has settled; changed Service keys are
    emitted through `changes()` like any cluster source.

        cluster = FollowedRecording("cluster.yaml")     # InputError when not a whole cluster
        cluster.start()                                  # in the running loop
        ...
        cluster.stop()

    Counters (since construction): `looks` (reads of the file after a change), `settled`
    (looks that found the content unchanged since the previous look, whatever came of it),
    `loads` (states taken from the file after the first). `error` is the current problem, or None.
    """

    def __init__(self, path: str | os.PathLike[str], *, settle_s: float = 0.5) -> None:
        if settle_s < 0:
            raise ValueError("settle_s must not be negative")
        self.path = Path(path)
        self.settle_s = settle_s
        for _ in range(3):  # a read torn by a writer is tried again, then refused
            raw, fingerprint = self._read()
            if fingerprint[0] != "torn":
                break
        if raw is None or fingerprint[0] == "torn":
            problem = fingerprint[1] if raw is None else "the file changed while it was read (being written?)"
            raise InputError([Diagnostic(str(self.path), 1, 1, str(problem))])
        super().__init__(load_cluster_bytes(raw, str(self.path)))  # InputError when not whole
        self.error: str | None = None
        self.looks = 0
        self.settled = 0
        self.loads = 0
        self._loaded = fingerprint  # what the current state was read from
        self._last_look: Fingerprint | None = None  # the previous look, while settling
        self._changing_since: float | None = None
        self._logged: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._observer: Any = None
        self._waiters: list[asyncio.Future[None]] = []

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Follow the file (call in the running loop)."""
        from .. import watching

        self._loop = asyncio.get_running_loop()
        self._observer = watching.watch(self.path.parent, self.reload, recursive=False, name=self.path.name)
        # Changed between the first read and the observer's start: that change had no event.
        try:
            st = os.stat(self.path)
            if self._loaded[:2] != (st.st_size, st.st_mtime_ns):
                self.reload()
        except OSError:
            self.reload()

    def reload(self) -> None:
        """A change event: look at the file once it has been quiet for `settle_s`."""
        self._schedule()

    def stop(self) -> None:
        from .. import watching

        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        watching.stop(self._observer)
        self._observer = None

    # --- waiting (for tests and callers that must know) ------------------------------------------

    async def wait_for(self, predicate: Callable[[FollowedRecording], bool], timeout: float = 10.0) -> None:
        """Until predicate(self) holds, checked after every look; TimeoutError after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.path}: not reached within {timeout}s "
                    f"(looks={self.looks}, settled={self.settled}, loads={self.loads}, error={self.error!r})"
                )
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)

    async def wait_loaded(self, n: int, timeout: float = 10.0) -> None:
        """Until the file has been loaded `n` times since construction."""
        await self.wait_for(lambda s: s.loads >= n, timeout)

    async def wait_looked(self, n: int, timeout: float = 10.0) -> None:
        """Until the file has been looked at `n` times since construction."""
        await self.wait_for(lambda s: s.looks >= n, timeout)

    async def wait_settled(self, n: int, timeout: float = 10.0) -> None:
        """Until `n` looks since construction found the file settled (loaded, invalid or unchanged)."""
        await self.wait_for(lambda s: s.settled >= n, timeout)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # --- the settling ---------------------------------------------------------------------------

    def _schedule(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(self.settle_s, self._look)

    def _read(self) -> tuple[bytes | None, Fingerprint]:
        try:
            with open(self.path, "rb") as f:
                before = os.fstat(f.fileno())
                limit = recording_max_bytes()
                # One byte past the limit: an oversized file is refused without reading it all.
                raw = f.read(limit + 1)
                after = os.fstat(f.fileno())
        except OSError as e:
            return None, ("unreadable", f"cannot read the file: {e.strerror or e}")
        if len(raw) > limit:
            return None, ("unreadable", TooLarge(after.st_size, limit).message(RECORDING_MAX_BYTES_ENV))
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(raw) != after.st_size:
            # Written to while being read: a look that can never match the next one.
            return raw, ("torn", after.st_size, after.st_mtime_ns, len(raw))
        return raw, (after.st_size, after.st_mtime_ns, hashlib.sha256(raw).hexdigest())

    def _look(self) -> None:
        self._timer = None
        try:
            self._look_once()
        finally:
            self._wake()

    def _look_once(self) -> None:
        raw, fingerprint = self._read()
        self.looks += 1
        previous, self._last_look = self._last_look, fingerprint
        if fingerprint != previous or fingerprint[0] == "torn":
            # First look since a change, or it changed since the last look: look again later.
            self._still_changing()
            self._schedule()
            return
        self.settled += 1
        self._last_look = None
        self._changing_since = None
        if fingerprint == self._loaded:
            self._set_error(None)  # back to what the state was read from (or only touched)
            return
        if raw is None:
            self._set_error(f"{self.path}:1:1: {fingerprint[1]}")
            return
        try:
            state = load_cluster_bytes(raw, str(self.path))
        except InputError as e:
            self._set_error(str(e))
            return
        keys = self.replace(state)
        self._loaded = fingerprint
        self.loads += 1
        self._set_error(None)
        log.info(
            "cluster recording %s loaded: %d services, %d nodes; %d service(s) changed",
            self.path, len(state.services), len(state.nodes), len(keys),
        )

    def _still_changing(self) -> None:
        loop = self._loop
        now = loop.time() if loop is not None else 0.0
        if self._changing_since is None:
            self._changing_since = now
            log.info("cluster recording %s changed; reading it once it has been unchanged for %.2fs", self.path, self.settle_s)
            return
        waited = now - self._changing_since
        if waited >= max(_CHANGING_REPORT_S, 20 * self.settle_s):
            self._set_error(
                f"{self.path}: still changing after {waited:.0f}s (never unchanged for {self.settle_s:.2f}s); "
                "keeping the last good state"
            )

    def _set_error(self, error: str | None) -> None:
        self.error = error
        if error is None:
            if self._logged is not None:
                log.info("cluster recording %s is whole again", self.path)
            self._logged = None
            return
        if error != self._logged:
            log.error("cluster recording %s is not a whole cluster; keeping the last good state:\n%s", self.path, error)
            self._logged = error


__all__ = ["FollowedRecording"]
