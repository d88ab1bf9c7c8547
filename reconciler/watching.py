"""Follow files with watchdog and hand the news to the asyncio loop (DESIGN.md 2: blocking
libraries hand events to the loop, nothing blocks it)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

_QUIET = ("opened", "closed_no_write")  # reading a file is not a change


def watch(
    directory: str | Path,
    on_change: Callable[[], None],
    *,
    recursive: bool = True,
    name: str | None = None,
) -> Any:
    """Start a watchdog observer on `directory`; every change (of the file `name`, when given)
    calls `on_change` on the running asyncio loop. Returns the observer: stop() and join() it."""
    loop = asyncio.get_running_loop()

    class _Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.event_type in _QUIET:
                return
            if name is not None:
                # An atomic replace (write a temp file, rename it) names the file as dest_path.
                names = {Path(str(event.src_path)).name, Path(str(getattr(event, "dest_path", "") or "")).name}
                if name not in names:
                    return
            loop.call_soon_threadsafe(on_change)

    observer = Observer()
    observer.schedule(_Handler(), str(directory), recursive=recursive)
    observer.daemon = True
    observer.start()
    return observer


def stop(observer: Any) -> None:
    if observer is not None:
        observer.stop()
        observer.join(timeout=5)
