"""Limits for untrusted input files other than the intent (the intent's are in
reconciler.intent.yamlsafe): the cluster recording, which a pull request's author may control in
CI, and the least-connections JSON.

Bounded in size (checked while reading, never by trusting stat()), in nesting depth (a parser or a
later walk must never recurse without bound: a 100,000-deep flow list used to take ruamel 30 s and
then crash the process) and in alias expansion (see reconciler.cluster.recorded).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from reconciler.diagnostics import Diagnostic

# A 10,000-Service recording with 100,000 endpoints is 27 MB as YAML and 69 MB as kubectl's
# indented JSON (reconciler.cluster.synthetic); real recordings carry managedFields on top.
RECORDING_MAX_BYTES_ENV = "P4KUBE_MAX_RECORDING_BYTES"
DEFAULT_RECORDING_MAX_BYTES = 256 << 20
# kubectl's deepest path in a List (items[].metadata.managedFields[].fieldsV1...) is about 15.
RECORDING_MAX_DEPTH = 100
# kubectl never writes anchors; a hand-written file may, but aliases must not multiply the data.
RECORDING_MAX_ALIAS_NODES = 1_000_000
CONNECTIONS_MAX_BYTES = 16 << 20
CONNECTIONS_MAX_DEPTH = 8


class TooLarge(Exception):
    """A file over its size limit; `size` is its size on disk when known."""

    def __init__(self, size: int | None, limit: int) -> None:
        super().__init__(f"{size} > {limit}")
        self.size, self.limit = size, limit

    def message(self, setting: str | None = None) -> str:
        got = f"{self.size} bytes" if self.size is not None else "more than that"
        how = f" (set {setting} to raise it)" if setting else ""
        return f"file too large: {got}, the limit is {self.limit} bytes{how}"


def recording_max_bytes() -> int:
    """The cluster recording's size limit: P4KUBE_MAX_RECORDING_BYTES, else 256 MiB."""
    raw = os.environ.get(RECORDING_MAX_BYTES_ENV, "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return DEFAULT_RECORDING_MAX_BYTES


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """The file's bytes; TooLarge when it holds more than `limit` (OSError as open/read raise).
    One byte past the limit is read, so a file growing while it is read cannot slip through."""
    with open(path, "rb") as f:
        raw = f.read(limit + 1)
        if len(raw) > limit:
            raise TooLarge(_size(f), limit)
    return raw


def _size(f: Any) -> int | None:
    try:
        return os.fstat(f.fileno()).st_size
    except OSError:
        return None


# A JSON string (escapes included) or one bracket; everything else is skipped.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def json_too_deep(text: str, limit: int) -> tuple[int, int] | None:
    """Line and column (1-based) of the first bracket nesting deeper than `limit`, outside
    strings, or None. Linear; used where the json module gave up (RecursionError)."""
    depth = 0
    for m in _JSON_TOKEN.finditer(text):
        token = m.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                start = m.start()
                return text.count("\n", 0, start) + 1, start - (text.rfind("\n", 0, start) + 1) + 1
        elif token in "]}":
            depth -= 1
    return None


def json_depth(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests at most `limit` containers deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return False
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return True


def load_json(text: str, file: str, max_depth: int, *, strict: bool = True) -> Any:
    """json.loads, but nesting deeper than `max_depth` raises DeepInput (with the line and
    column where it gets too deep) instead of RecursionError. With strict=False the depth is
    only checked where the json module itself gives up (about 1000 levels, Python's recursion
    limit): checking every document would double the load time of a big recording."""
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
    else:
        if not strict or json_depth(value, max_depth):
            return value
    where = json_too_deep(text, max_depth) or (1, 1)
    raise DeepInput(Diagnostic(file, where[0], where[1], f"JSON nests deeper than {max_depth} levels; refused"))


class DeepInput(ValueError):
    """Input nested deeper than its limit; carries the diagnostic to show."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(str(diagnostic))
        self.diagnostic = diagnostic
