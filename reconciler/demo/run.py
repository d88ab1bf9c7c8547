"""`run_demo`, the demo's one entry point: the work directory, the loop's log records held back
while the narration speaks for them, and the exit code."""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from ..audit.errors import AuditError
from ..diagnostics import InputError
from .errors import DemoFailed
from .narrator import Narrator
from .scenario import DemoReport, play


def run_demo(
    workdir: str | None = None,
    out: TextIO = sys.stdout,
    err: TextIO | None = None,
    *,
    on_report: Callable[[DemoReport], None] | None = None,
) -> int:
    """Run the demo; 0 when every step did what it says, else 1 with the reason on `err`.

    Without `workdir` the intent and audit repositories go to a new /tmp/p4kube-demo-* directory,
    which is kept (the audit repository is for `p4kube audit log`) and named at the end."""
    err = err or sys.stderr
    try:
        work = _prepare_workdir(workdir)
    except DemoFailed as e:
        print(f"p4kube demo: {e}", file=err)
        return 1
    narrator = Narrator(out)
    with _held_logs() as logs:
        try:
            report = asyncio.run(play(work, narrator))
        except (DemoFailed, InputError, AuditError, OSError) as e:
            print(f"\np4kube demo FAILED: {e}", file=err)
            for line in logs:
                print("  log: " + line.replace("\n", "\n       "), file=err)
            print(f"  what it wrote so far is in {work}", file=err)
            return 1
    if on_report is not None:
        on_report(report)
    return 0


def _prepare_workdir(workdir: str | None) -> Path:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="p4kube-demo-"))
    work = Path(workdir).resolve()
    for name in ("intent", "audit.git"):
        if (work / name).exists():
            raise DemoFailed(
                f"{work / name} already exists (an earlier demo?): pass an empty or new --workdir, or remove it"
            )
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DemoFailed(f"cannot create --workdir {work}: {e.strerror or e}") from e
    return work


@contextmanager
def _held_logs() -> Iterator[list[str]]:
    """The loop logs every rollback and fallback as a warning; the demo narrates them instead.
    Unless the user asked for logs (--log-level info or debug), hold the project's log records
    and show the warnings only if the demo fails."""
    if logging.getLogger().getEffectiveLevel() < logging.WARNING:
        yield []
        return
    held: list[str] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                held.append(f"{record.levelname.lower()} {record.name}: {record.getMessage()}")

    handler = Hold()
    loggers = [logging.getLogger(name) for name in ("reconciler", "p4kube", "finsy")]
    saved = [(lg, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
    try:
        yield held
    finally:
        for lg, propagate in saved:
            lg.removeHandler(handler)
            lg.propagate = propagate


__all__ = ["run_demo"]
