"""Intent from a Git checkout, followed with watchdog: any change under the directory (files,
or .git when HEAD or a ref moves) reloads it. Invalid intent is reported and ignored: the last
valid intent stays in force (bad input changes nothing)."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import AsyncIterator, Callable

from .. import watching
from ..changes import Broadcast
from ..diagnostics import Diagnostic, InputError
from .loader import load_intent
from .model import IntentSet

log = logging.getLogger("reconciler.intent")


class DirectoryIntent:
    """`gate(intent)`: "" to accept a valid intent, else why it is refused (signed-intent
    verification); a refused intent is never published: the last accepted one stays in force
    (at start, before any is accepted: no configs, nothing applied). `on_refused(intent, why)`
    is told once per refused (commit, dirty, content)."""

    def __init__(
        self,
        path: str | Path,
        on_invalid: Callable[[list[Diagnostic]], None] | None = None,
        *,
        gate: Callable[[IntentSet], str] | None = None,
        on_refused: Callable[[IntentSet, str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._gate = gate
        self._on_refused = on_refused
        self._refused: tuple[object, ...] | None = None
        loaded = load_intent([self.path])  # invalid at start: raises, the caller reports
        self._current = loaded
        if gate is not None:
            why = gate(loaded)
            if why:
                self._current = IntentSet((), None, False, loaded.root)
                self._refuse(loaded, why)
        self._on_invalid = on_invalid
        self._bus: Broadcast[IntentSet] = Broadcast()
        self._observer: object = None
        self._dirty = threading.Event()

    def current(self) -> IntentSet:
        return self._current

    def changes(self) -> AsyncIterator[IntentSet]:
        return self._bus.subscribe()

    def start(self) -> None:
        """Watch the directory (recursively, .git included) from a watchdog thread."""
        self._observer = watching.watch(self.path, self._poke, recursive=True)

    def stop(self) -> None:
        watching.stop(self._observer)
        self._observer = None

    def _poke(self) -> None:
        # Coalesce bursts (an editor's save, a git checkout) into one reload.
        if not self._dirty.is_set():
            self._dirty.set()
            asyncio.get_running_loop().call_soon(self.reload)

    def reload(self) -> IntentSet | None:
        """Read the intent again; publish it when it differs. Returns the new intent, if any."""
        self._dirty.clear()
        try:
            intent = load_intent([self.path])
        except InputError as e:
            log.error("intent in %s is invalid; keeping the last valid intent (commit %s):\n%s",
                      self.path, (self._current.commit or "none")[:12], e)
            if self._on_invalid is not None:
                self._on_invalid(e.diagnostics)
            return None
        if (intent.configs, intent.commit, intent.dirty) == (self._current.configs, self._current.commit, self._current.dirty):
            self._refused = None  # back to what is in force
            return None
        if self._gate is not None:
            why = self._gate(intent)
            if why:
                self._refuse(intent, why)
                return None
        log.info("intent changed in %s (commit %s%s)", self.path, (intent.commit or "none")[:12], ", dirty" if intent.dirty else "")
        self._current = intent
        self._bus.publish(intent)
        return intent


    def _refuse(self, intent: IntentSet, why: str) -> None:
        key = (intent.commit, intent.dirty, intent.configs)
        if key == self._refused:
            return
        self._refused = key
        log.error("%s; keeping the last accepted intent (commit %s)", why, (self._current.commit or "none")[:12])
        if self._on_refused is not None:
            self._on_refused(intent, why)


class StaticIntent:
    """An intent that never changes (tests, one-shot runs)."""

    def __init__(self, intent: IntentSet) -> None:
        self._intent = intent
        self._bus: Broadcast[IntentSet] = Broadcast()

    def current(self) -> IntentSet:
        return self._intent

    def changes(self) -> AsyncIterator[IntentSet]:
        return self._bus.subscribe()

    def replace(self, intent: IntentSet) -> None:
        self._intent = intent
        self._bus.publish(intent)
