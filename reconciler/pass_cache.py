"""What one `p4kube reconcile --once` leaves for the next: the render memo and the encoded
entries of the snapshot it left on the switches, in files beside the audit repository.

A fresh process would otherwise render all Services and encode all their entries again (at
5,000 Services, 348,137 entries per switch: two of a run's five seconds) to learn that one
Service changed. With this file it renders only the Services whose inputs changed
(render/memo.py) and encodes only the Services whose fragment it has not encoded before
(switch/encoded_memo.py). `p4kube run` keeps the same things in memory.

A shortcut, never a source of truth (DESIGN.md 6.1):
- the snapshot still comes from the audit repository (or --state), and both switches are still
  read back in full and compared byte for byte with what that snapshot encodes to;
- a file is used only by the same reconciler code, P4Info and config it was made with, and
  the render memo only when its snapshot is the one last applied; a sha256 of the whole file is
  checked before any of it is used. Anything that does not match is said in one log line and the run
  renders and encodes everything, as without the file;
- written whole to a temporary file and renamed: a reader sees the old file or the new one.

It lives in the audit repository's git directory (`p4kube-cache/`, which git neither tracks nor
sends), or in the --state directory without one. Its trust is that of that directory.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import orjson


_MAGIC = b"p4kube pass cache 1\n"
DIR_NAME = "p4kube-cache"
PARTS = ("render", "encoded")
# A header is a few hundred bytes; anything longer is not one of ours.
_MAX_HEADER = 64 * 1024
_DIGEST_LINE = 65  # 64 hex digits and a newline
# Far above what 5,000 Services need (~22 MB): a larger file is refused unread.
MAX_BYTES = 1 << 30
STALE_SECONDS = 3600


@dataclass(frozen=True)
class CacheKey:
    """What every part of the file depends on: another value of any of these, and nothing in it
    is used. `code`: sources.code_digest() (the reconciler's own files and its readers)."""

    config: str
    p4info: str
    code: str


@dataclass(frozen=True)
class Stored:
    """One part as read back: the digest of the snapshot it was made for (the render memo's
    base; the snapshot whose entries were encoded), and its bytes."""

    snapshot: str
    data: bytes


class CacheUnusable(Exception):
    """The file is missing, damaged, or made by other code, P4Info, config or format; the message
    says which; `warn`: worth a warning (damaged, unreadable), not a normal miss."""

    def __init__(self, message: str, *, warn: bool = False) -> None:
        super().__init__(message)
        self.warn = warn


def cache_file(directory: str | Path, config: str, part: str) -> Path:
    """The file of `part` ("render" or "encoded") of `config` (namespace/name) under `directory`
    (the audit repository's git directory, or --state's). Two files: the small render memo is
    written by every pass that renders, the encoded entries (tens of MB) only when they no
    longer cover the snapshot."""
    if part not in PARTS:
        raise ValueError(f"unknown pass cache part {part!r}")
    return Path(directory) / DIR_NAME / f"{config.replace('/', '__')}.{part}"


def load(path: Path, key: CacheKey) -> Stored:
    """The part at `path` when it was made for `key` and is whole. Raises CacheUnusable."""
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_BYTES:
                raise CacheUnusable(f"{path}: over {MAX_BYTES >> 20} MiB: not one of ours", warn=True)
            data = f.read()
    except FileNotFoundError:
        raise CacheUnusable(f"{path}: none yet") from None
    except OSError as e:
        raise CacheUnusable(f"{path}: cannot read: {e.strerror}", warn=True) from None
    if not data.startswith(_MAGIC):
        raise CacheUnusable(f"{path}: not a p4kube pass cache of this format")
    # Line 2: the sha256 of all that follows, so that no byte of it is taken unchecked.
    body_at = len(_MAGIC) + _DIGEST_LINE
    if len(data) < body_at or data[body_at - 1:body_at] != b"\n" or \
            hashlib.sha256(memoryview(data)[body_at:]).hexdigest().encode() != data[len(_MAGIC):body_at - 1]:
        raise CacheUnusable(f"{path}: damaged (checksum)", warn=True)
    end = data.find(b"\n", body_at, body_at + _MAX_HEADER)
    if end < 0:
        raise CacheUnusable(f"{path}: damaged (no header)", warn=True)
    try:
        header = orjson.loads(data[body_at:end])
        made_for = CacheKey(str(header["config"]), str(header["p4info"]), str(header["code"]))
        snapshot = str(header["snapshot"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CacheUnusable(f"{path}: damaged (header)", warn=True) from None
    for field, why in (("config", "another config"), ("p4info", "another P4Info"), ("code", "another version of the reconciler")):
        if getattr(made_for, field) != getattr(key, field):
            raise CacheUnusable(f"{path}: made for {why}")
    return Stored(snapshot, data[end + 1:])


def store(path: Path, key: CacheKey, part: Stored) -> None:
    """Write `part` to `path` atomically (temporary file, rename). Raises OSError. Not fsynced:
    a file torn by a crash fails its checksum and costs one full render, never a wrong one."""
    header = orjson.dumps({"config": key.config, "p4info": key.p4info, "code": key.code, "snapshot": part.snapshot}) + b"\n"
    h = hashlib.sha256(header)
    h.update(part.data)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    # Created as the umask says (mkstemp's 0600 would lock out the other writers of a shared
    # audit repository), under a name no other writer picks.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + h.hexdigest().encode() + b"\n" + header)
            f.write(part.data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _remove_stale(path: Path) -> None:
    """Temporary files of `path` left by a writer that died before its rename (an hour old: a
    live writer takes seconds)."""
    horizon = time.time() - STALE_SECONDS
    for tmp in path.parent.glob(f".{path.name}.*"):
        try:
            if tmp.stat().st_mtime < horizon:
                tmp.unlink()
        except OSError:
            pass  # another writer's, or gone already


__all__ = ["DIR_NAME", "PARTS", "CacheKey", "CacheUnusable", "Stored", "cache_file", "load", "store"]
