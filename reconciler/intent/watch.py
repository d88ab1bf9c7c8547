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
    def __init__(self, path: str | Path, on_invalid: Callable[[list[Diagnostic]], None] | None = None) -> None:
        self.path = Path(path)
        self._current = load_intent([self.path])  # invalid at start: raises, the caller reports
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
            return None
        log.info("intent changed in %s (commit %s%s)", self.path, (intent.commit or "none")[:12], ", dirty" if intent.dirty else "")
        self._current = intent
        self._bus.publish(intent)
        return intent


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
