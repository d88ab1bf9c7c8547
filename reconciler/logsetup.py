"""Logging setup for the `p4kube` command: readable text, or JSON with one object per line.

Context travels as `extra=` fields (`log.info("applied", extra={"config": key, "version": 12})`):
the JSON form carries them as keys next to time, level, logger and message; the text form
appends them as key=value, so what a log line is about is searchable in both.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["DETAIL_LOGGERS", "FORMATS", "JsonFormatter", "TextFormatter", "default_level", "setup_logging"]

FORMATS = ("text", "json")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}
# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_MARK = "_p4kube_handler"
# Commands that keep running: an operator watches their log, so they speak at `info` unless told
# otherwise; one-shot commands print their result and log only what went wrong.
_LONG_RUNNING = frozenset({"run"})
# Loggers whose `info` records are the steps inside a transaction (each audit commit, each P4Runtime
# arbitration and pipeline check, each re-read of the cluster recording, each Kubernetes Event
# posted for a change already logged), not what it did: at a default `info` they would bury the one
# line per transaction, so then the handler shows only their warnings. `--log-level info` (said explicitly) or
# `debug` shows them.
DETAIL_LOGGERS = ("p4kube.audit", "reconciler.switch", "reconciler.cluster", "reconciler.kube.events")


def default_level(command: str | None) -> str:
    """The log level when the operator gives none: `info` for `run`, `warning` otherwise."""
    return "info" if command in _LONG_RUNNING else "warning"


class _Quiet(logging.Filter):
    """Drops records below `warning` from the named loggers and their children. A filter on our
    handler, not a level on the loggers: other handlers (pytest's capture, an embedding program's)
    still see every record, and nothing global is left behind."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names
        self.prefixes = tuple(n + "." for n in names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not (record.name in self.names or record.name.startswith(self.prefixes))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _time(record: logging.LogRecord) -> str:
    """RFC 3339 in UTC with milliseconds: sortable, and the same on every machine."""
    return datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's extra fields
    (values JSON cannot hold are written as their str()), exception and stack when present."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            doc.setdefault(key, value)  # an extra cannot overwrite the four fields above
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-01-02T03:04:05.678Z INFO reconciler.apply: message key=value ...`"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_time(record)} {record.levelname} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _text_value(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple, set, frozenset)) else str(value)
    return json.dumps(text, ensure_ascii=False) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    found = _LEVELS.get(level.lower())
    if found is None:
        raise ValueError(f"unknown log level {level!r}: use one of {', '.join(_LEVELS)}")
    return found


def setup_logging(level: str | int = "info", fmt: str = "text", stream: TextIO | None = None, *,
                  quiet: tuple[str, ...] = ()) -> logging.Handler:
    """Log to `stream` (default stderr) at `level` in `fmt` ("text" or "json"); the loggers in
    `quiet` (and their children) log only warnings and above.

    Replaces the handler a previous call installed (and only that one: handlers others added,
    such as pytest's capture, stay); returns the new handler."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use one of {', '.join(FORMATS)}")
    lvl = _level(level)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if quiet:
        handler.addFilter(_Quiet(quiet))
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(lvl)
    return handler
