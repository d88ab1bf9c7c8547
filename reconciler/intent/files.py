"""Files named by intent, found only by name in a directory the operator configures.

Intent (a Git repository, a custom resource) is untrusted input: a path in it must not reach
any file of the reconciler's pod (a ServiceAccount token pushed as p4_device_config to a
switch of the intent's choosing). So p4Info and deviceConfig are names inside --pipeline-dir,
and caFile/certFile/keyFile names inside --tls-dir: plain relative components, resolved with
symlinks followed and required to stay inside the resolved directory, a regular file, and
under a size cap. Messages name the field and the value as written (truncated), never what
the file holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.diagnostics import Diagnostic, clip

# The JSON Schema's `pattern` for these fields (schemas/loadbalancerconfig.schema.json): one or
# more components of letters, digits, '_', '.', '+', '-', none starting with '.' (so no "..",
# ".", hidden files), separated by single '/'; never absolute.
NAME_PATTERN = r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*(/[A-Za-z0-9_+-][A-Za-z0-9_.+-]*)*$"
_NAME = re.compile(NAME_PATTERN)

MiB = 1024 * 1024


@dataclass(frozen=True)
class FileKind:
    """One intent field that names a file: which operator directory holds it, and its cap."""

    field: str  # as in intent: deviceConfig, p4Info, caFile, ...
    flag: str  # the operator's option naming the directory
    max_bytes: int
    example: str


DEVICE_CONFIG = FileKind("deviceConfig", "--pipeline-dir", 256 * MiB, "load_balancer.json")
P4INFO = FileKind("p4Info", "--pipeline-dir", 16 * MiB, "load_balancer.p4info.txtpb")
CA_FILE = FileKind("caFile", "--tls-dir", 1 * MiB, "ca.crt")
CERT_FILE = FileKind("certFile", "--tls-dir", 1 * MiB, "tls.crt")
KEY_FILE = FileKind("keyFile", "--tls-dir", 1 * MiB, "tls.key")
PIPELINE_KINDS = (P4INFO, DEVICE_CONFIG)
TLS_KINDS = (CA_FILE, CERT_FILE, KEY_FILE)
BY_FIELD = {k.field: k for k in (*PIPELINE_KINDS, *TLS_KINDS)}


class FileRefError(Exception):
    """A named file that cannot be used; the message names the field and the name."""

    def __init__(self, message: str, kind: FileKind | None = None) -> None:
        super().__init__(message)
        self.kind = kind


def shown(value: str) -> str:
    """`value` as echoed in a message: quoted, control characters escaped, at most ~80 chars."""
    return repr(clip(value))[1:-1].join('""')


@dataclass(frozen=True)
class OperatorDirs:
    """The directories named by the operator's flags (None: not configured)."""

    pipeline_dir: Path | None = None
    tls_dir: Path | None = None

    def for_kind(self, kind: FileKind) -> Path | None:
        return self.pipeline_dir if kind.flag == "--pipeline-dir" else self.tls_dir

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OperatorDirs:
        pipeline, tls = getattr(args, "pipeline_dir", None), getattr(args, "tls_dir", None)
        return cls(Path(pipeline) if pipeline else None, Path(tls) if tls else None)


def name_problem(value: str, kind: FileKind) -> str | None:
    """Why `value` is not a plain relative name for `kind`, or None."""
    if _NAME.match(value):
        return None
    if value.startswith("/"):
        base = value.rstrip("/").rsplit("/", 1)[-1] or kind.example
        return (f"absolute path {shown(value)} is not allowed: files are found by name in the operator's "
                f"{kind.flag}; name it relative to {kind.flag}, e.g. {kind.field}: {shown(base)[1:-1]}")
    if any(part in ("..", ".") for part in value.split("/")):
        return f"{shown(value)} may not contain '.' or '..' components: name a file inside {kind.flag}"
    return (f"invalid file name {shown(value)}: use components of letters, digits, '_', '.', '+', '-' "
            f"(not starting with '.') separated by '/', relative to {kind.flag}, e.g. {kind.example}")


def resolve(directory: Path | None, value: str, kind: FileKind) -> Path:
    """The real path of the file `value` names inside `directory`; FileRefError when it is not
    a plain name, no directory is configured, or it is missing, outside, not regular or too big."""
    problem = name_problem(value, kind)
    if problem:
        raise FileRefError(f"{kind.field}: {problem}", kind)
    if directory is None:
        raise FileRefError(f"{kind.field}: {shown(value)} names a file in {kind.flag}, which is not set: "
                           f"give {kind.flag} DIR (the directory holding it)", kind)
    try:
        root = directory.resolve(strict=True)
    except OSError as e:
        raise FileRefError(f"{kind.field}: {kind.flag} {shown(str(directory))}: {(e.strerror or str(e)).lower()}", kind) from None
    try:
        target = (root / value).resolve(strict=True)
    except OSError:
        raise FileRefError(f"{kind.field}: file not found: {shown(value)} in {kind.flag} {shown(str(directory))}", kind) from None
    if not target.is_relative_to(root):  # a symlink inside the directory pointing out of it
        raise FileRefError(f"{kind.field}: {shown(value)} leads outside {kind.flag} (through a symbolic link): refused", kind)
    st = target.stat()
    if not stat.S_ISREG(st.st_mode):
        raise FileRefError(f"{kind.field}: {shown(value)} is not a regular file", kind)
    if st.st_size > kind.max_bytes:
        raise FileRefError(f"{kind.field}: {shown(value)} is {st.st_size} bytes, over the limit of {kind.max_bytes // MiB} MiB", kind)
    return target


def read_named(directory: Path | None, value: str, kind: FileKind) -> bytes:
    """The bytes of the file `value` names inside `directory` (checked as `resolve` does)."""
    path = resolve(directory, value, kind)
    try:
        # O_NOFOLLOW/O_NONBLOCK: the resolved path was a regular file a moment ago; never follow a
        # link or hang on a FIFO swapped in since.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise FileRefError(f"{kind.field}: cannot read {shown(value)}: {(e.strerror or str(e)).lower()}", kind) from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise FileRefError(f"{kind.field}: {shown(value)} is not a regular file", kind)
        data = f.read(kind.max_bytes + 1)
    if len(data) > kind.max_bytes:
        raise FileRefError(f"{kind.field}: {shown(value)} is over the limit of {kind.max_bytes // MiB} MiB", kind)
    return data


_FIELD_PATHS = {
    "spec.switchConfig.p4Info": P4INFO,
    "spec.switchConfig.deviceConfig": DEVICE_CONFIG,
    "spec.switchConfig.tls.caFile": CA_FILE,
    "spec.switchConfig.tls.certFile": CERT_FILE,
    "spec.switchConfig.tls.keyFile": KEY_FILE,
}


def explain_file_names(diags: list[Diagnostic], data: Any) -> list[Diagnostic]:
    """The schema's diagnostics, with a file-name field's bare "must match the pattern" replaced
    by what is wrong and how to migrate (an absolute path: name it relative to the flag's dir)."""
    # Here, not at the top: the CLI imports this module to parse its flags, and yamlsafe pulls in
    # ruamel, which `p4kube --help` must not pay for.
    from .yamlsafe import value_at

    out = []
    for d in diags:
        kind = _FIELD_PATHS.get(d.field or "")
        value = value_at(data, *(d.field or "").split("."))
        problem = name_problem(value, kind) if kind is not None and isinstance(value, str) and value else None
        if problem and "pattern" in d.message:
            d = dataclasses.replace(d, message=problem)
        out.append(d)
    return out
