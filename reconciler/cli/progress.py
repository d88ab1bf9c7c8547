"""The progress line of a long apply or read-back: the library tells where it is
(reconciler.apply.Progress); this shows it on stderr once the operation has run for 2 s.

On a terminal, one line redrawn in place (a bar when the count of updates is known); otherwise
(CI logs, `kubectl logs`, a pipe) one plain line every 2 s, so a 40 s apply is never silent.
A thread does the ticking: the event loop may be busy encoding for seconds at a time.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from ..apply import Progress

# Tests shorten it (P4KUBE_PROGRESS_SECONDS) to see the lines without a slow apply.
DEFAULT_INTERVAL = 2.0
_BAR = 24
_STEPS = {"read": "reading back", "write": "writing", "verify": "verifying"}


def interval_from_env() -> float:
    try:
        return max(float(os.environ.get("P4KUBE_PROGRESS_SECONDS", DEFAULT_INTERVAL)), 0.01)
    except ValueError:
        return DEFAULT_INTERVAL


class ProgressLine:
    """A ProgressCallback (reconciler.apply) that prints, every `interval` seconds after the
    first, what it was last told. `stop()` ends it (and clears a terminal line)."""

    def __init__(self, out: TextIO, *, interval: float | None = None, tty: bool | None = None) -> None:
        self.out = out
        self.interval = interval if interval is not None else interval_from_env()
        self.tty = out.isatty() if tty is None else tty
        self._last: Progress | None = None
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._drawn = False
        self._thread = threading.Thread(target=self._tick, name="p4kube-progress", daemon=True)
        self._thread.start()

    def __call__(self, progress: Progress) -> None:
        with self._lock:
            self._last = progress

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                last = self._last
            if last is not None:
                self._show(last)

    def _show(self, p: Progress) -> None:
        text = describe(p, time.monotonic() - self._started)
        if self.tty:
            self.out.write("\r\x1b[2K" + text)
            self._drawn = True
        else:
            self.out.write(f"p4kube: {text}\n")
        self.out.flush()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._drawn:
            self.out.write("\r\x1b[2K")
            self.out.flush()


def describe(p: Progress, elapsed: float) -> str:
    """One line: "standby: writing [#######.........] 12000/35000 updates, 8 s"."""
    what = f"{p.switch}: {_STEPS.get(p.step, p.step)}"
    if p.step == "write" and p.total:
        filled = min(_BAR, _BAR * p.done // p.total)
        what += f" [{'#' * filled}{'.' * (_BAR - filled)}] {p.done}/{p.total} updates"
    return f"{what}, {elapsed:.0f} s"
