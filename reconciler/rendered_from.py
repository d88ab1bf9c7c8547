"""What a snapshot was rendered from, as one digest: lets `p4kube reconcile --once` skip reading
the recording and rendering when nothing that render reads has changed since the last apply.

render is a pure function of the config, the cluster state, the previous snapshot, the P4Info
digest, the intent commit, the clock (drains only) and the reconciler's own code. The audit
record of an applied snapshot S carries `Rendered-From: K`, the digest of those inputs but the
previous snapshot and the clock. When the last applied snapshot is S, its record carries K, and
this run's inputs digest to K again, then render(inputs, previous=S) is S: render is
level-triggered, so applied to its own output with the same inputs it changes nothing
(tests/test_rendered_from.py holds it to that). Not used when S has drains (their end depends on
the clock) or the config's algorithm is a plugin (code outside this package).

Only rendering is skipped: the switches are still read back in full and repaired (DESIGN.md
6.1, "the switches' own state decides"). Anything that does not match renders as before, so the
memo can make a run faster, never different.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from importlib import metadata
from pathlib import Path

from .intent.model import BUILTIN_ALGORITHMS, LoadBalancerConfig
from .snapshot import Snapshot

TRAILER = "Rendered-From"
_FORMAT = b"p4kube rendered-from 1\n"
_PACKAGE = Path(__file__).resolve().parent
# The libraries whose behaviour shapes what a recording reads as (the rest is our own code).
_READERS = ("orjson", "PyYAML", "ruamel.yaml")


@functools.cache
def code_digest() -> str:
    """sha256 of every file of this package (code, schemas, P4Info) and the readers' versions:
    an upgrade, or a local edit, renders again."""
    h = hashlib.sha256(_FORMAT)
    h.update(f"python {sys.version_info[0]}.{sys.version_info[1]}\n".encode())
    for name in _READERS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{name} {version}\n".encode())
    for path in sorted(p for p in _PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        data = path.read_bytes()
        h.update(f"{path.relative_to(_PACKAGE).as_posix()} {len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def inputs_digest(config: LoadBalancerConfig, recording: bytes, *, p4info_digest: str, intent_commit: str | None) -> str | None:
    """The digest of what render reads for `config` from a recorded cluster (its bytes as read),
    or None when the memo must not be used (a plugin algorithm)."""
    if config.algorithm not in BUILTIN_ALGORITHMS:
        return None
    h = hashlib.sha256(_FORMAT)
    for part in (code_digest(), repr(config), p4info_digest, intent_commit or "-", hashlib.sha256(recording).hexdigest()):
        h.update(part.encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def unchanged(previous: Snapshot | None, recorded: str | None, digest: str | None) -> bool:
    """Whether `previous` (the last applied snapshot, whose record says `recorded`) is what render
    would make of inputs digesting to `digest`."""
    return bool(previous is not None and digest and recorded == digest and not _draining(previous))


def _draining(snap: Snapshot) -> bool:
    return any(svc.drains for svc in snap.services)


__all__ = ["TRAILER", "code_digest", "inputs_digest", "unchanged"]
