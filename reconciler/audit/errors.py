"""Errors of the audit repository, each naming what failed and where.

    AuditError          any audit repository operation that cannot be done
      AuditUnavailable  the repository cannot be reached, opened or written right now: deleted,
                        permission denied, read-only, disk full, remote unreachable. Retrying
                        later (after someone fixes the cause) may succeed; nothing was recorded.
      AuditCorrupt      the repository's content is damaged: a missing or unreadable object,
                        a reference that points nowhere. Retrying does not help.
      PushError         the branch could not be pushed after every retry (the commit is local)
      SignatureError    a signing or verification tool failed to run

A snapshot that does not parse or does not match its digest raises snapshot.SnapshotError
(a data-integrity error too; the CLI reports both as one line).

describe_fault() turns an OSError or pygit2.GitError into one concrete line: the path, the
operating system's reason, and what explains it (owner and uid for "Permission denied", free
space for "No space left on device", ...).
"""

from __future__ import annotations

import errno as _errno
import os
import re
from pathlib import Path


class AuditError(Exception):
    """An audit repository operation that cannot be done: names the repository and the cause."""


class AuditUnavailable(AuditError):
    """The audit repository cannot be reached, opened or written right now (deleted, permission
    denied, read-only, disk full, remote unreachable); nothing was recorded."""

    def __init__(self, message: str, errno: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.path = path


class AuditCorrupt(AuditError):
    """The audit repository's content is damaged (a missing or unreadable object or reference)."""


class PushError(AuditError):
    """The audit branch could not be pushed after every retry; the commits stay local."""

    def __init__(self, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.commit = commit


class SignatureError(AuditError):
    """A signing or verification tool failed to run (not: a signature that does not verify)."""


# strerror texts libgit2 appends to its messages (it formats errno with strerror)
_STRERRORS = {
    _errno.EACCES: "Permission denied",
    _errno.EPERM: "Operation not permitted",
    _errno.EROFS: "Read-only file system",
    _errno.ENOSPC: "No space left on device",
    _errno.EDQUOT: "Disk quota exceeded",
    _errno.ENOENT: "No such file or directory",
    _errno.ENOTDIR: "Not a directory",
    _errno.EIO: "Input/output error",
    _errno.EISDIR: "Is a directory",
}
_QUOTED_PATH = re.compile(r"'(/[^']*)'")
_CORRUPT = re.compile(r"object not found|corrupt|invalid object|bad object|inflate|unknown object|failed to parse", re.I)


def fault_errno(e: BaseException) -> int | None:
    """The errno behind an OSError, or the one a libgit2 message names by its strerror text."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno
    text = str(e)
    for code, s in _STRERRORS.items():
        if s.lower() in text.lower():
            return code
    return None


def _fault_path(e: BaseException, fallback: str) -> str:
    if isinstance(e, OSError) and e.filename:
        return os.fsdecode(e.filename)
    m = _QUOTED_PATH.search(str(e))
    return m.group(1) if m else fallback


def _existing(path: str) -> Path | None:
    p = Path(path)
    for candidate in (p, *p.parents):
        try:
            candidate.lstat()
            return candidate
        except OSError:
            continue
    return None


def explain(code: int | None, path: str) -> str:
    """What on this machine explains the errno at `path`: ownership, free space, mounts."""
    try:
        if code in (_errno.EACCES, _errno.EPERM):
            where = _existing(path)
            if where is None:
                return ""
            # the directory a write needs, or the file itself when it exists
            target = where if where.is_dir() or where == Path(path) else where.parent
            st = target.stat()
            parts = [f"{target} owned by uid {st.st_uid} with mode {st.st_mode & 0o7777:04o}",
                     f"this process runs as uid {os.geteuid()}"]
            if code == _errno.EPERM and os.geteuid() == 0:
                parts.append("as root this usually means an immutable file or directory (lsattr; chattr -i)")
            return "; ".join(parts)
        if code in (_errno.ENOSPC, _errno.EDQUOT):
            where = _existing(path)
            if where is None:
                return ""
            vfs = os.statvfs(where)
            return f"{vfs.f_bavail * vfs.f_frsize} bytes free of {vfs.f_blocks * vfs.f_frsize} on the file system of {where}"
        if code == _errno.EROFS:
            return "the file system is mounted read-only"
        if code in (_errno.ENOENT, _errno.ENOTDIR):
            where = _existing(path)
            if where is not None and where != Path(path):
                kind = "a directory" if where.is_dir() else "a file, where a directory is expected"
                return f"{where} is {kind}; {Path(path).relative_to(where)} under it does not exist"
            return ""
    except (OSError, ValueError):
        return ""
    return ""


def describe_fault(e: BaseException, fallback_path: str) -> tuple[str, int | None, str]:
    """(one-line cause, errno, path) for an OSError or pygit2.GitError."""
    code = fault_errno(e)
    path = _fault_path(e, fallback_path)
    if isinstance(e, OSError):
        text = " ".join(str(e.strerror or e).split())
        if path not in text:
            text = f"{path}: {text}"
    else:
        text = " ".join(str(e).split()) or type(e).__name__
    if "not owned by current user" in text:  # libgit2's owner validation, as git's safe.directory
        code = _errno.EACCES
        why = "; ".join(filter(None, [
            explain(code, path),
            "libgit2 opens only repositories owned by the process's user: run as the owner, or list the "
            "path under [safe] directory in that user's git config",
        ]))
    else:
        why = explain(code, path)
    return (f"{text} ({why})" if why else text), code, path


def is_corruption(e: BaseException) -> bool:
    return isinstance(e, KeyError) or bool(_CORRUPT.search(str(e)))
