"""The digest of this reconciler's own code, for what is kept between runs and used only by the
same code: the Rendered-From trailer (rendered_from.py), the render memo (render/memo.py) and
the pass cache (pass_cache.py). Another version, or a local edit, may decide otherwise."""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from importlib import metadata
from pathlib import Path

_FORMAT = b"p4kube code digest 1\n"
_PACKAGE = Path(__file__).resolve().parent
# The libraries whose behaviour shapes what a recording reads as (the rest is our own code;
# PyYAML's wheels carry their libyaml).
_READERS = ("orjson", "PyYAML", "ruamel.yaml", "ruamel.yaml.clib")


@functools.cache
def code_digest() -> str:
    """sha256 of every file of this package (code, schemas, P4Info), of the data directory when
    P4KUBE_HOME moves it, and the readers' versions: an upgrade, or a local edit, renders again."""
    h = hashlib.sha256(_FORMAT)
    h.update(f"python {sys.version_info[0]}.{sys.version_info[1]}\n".encode())
    for name in _READERS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{name} {version}\n".encode())
    roots = [_PACKAGE] + ([Path(os.environ["P4KUBE_HOME"])] if os.environ.get("P4KUBE_HOME") else [])
    for n, root in enumerate(roots):
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            data = path.read_bytes()
            h.update(f"{n} {path.relative_to(root).as_posix()} {len(data)}\n".encode())
            h.update(data)
    return h.hexdigest()


__all__ = ["code_digest"]
