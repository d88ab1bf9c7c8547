"""What a snapshot was rendered from, as one digest: lets `p4kube reconcile --once` skip reading
the recording and rendering when nothing that render reads has changed since the last apply.

render is a pure function of the config, the cluster state, the previous snapshot, the P4Info
digest, the intent commit, the clock (drains only) and the reconciler's own code. The audit
record of an applied snapshot S carries `Rendered-From: K`, the digest of those inputs but the
previous snapshot and the clock, only when render(inputs, previous=S) was found to be S itself:
the command renders once more over its own output, incrementally, which re-renders only the
Services waiting for a value the first render released (render converges in two steps then: a
released VIP or id is free from the next version) and which equals a full render
(tests/test_render_properties.py). So when the last applied snapshot is S, its record carries K,
and this run's inputs digest to K again, rendering would give S: it is skipped. Not used when S
has drains (their end depends on the clock) or the config's algorithm is a plugin (code outside
this package). `Render-Issues` beside it counts what that render reported, said again when skipped.

Only rendering is skipped: the switches are still read back in full and repaired (DESIGN.md
6.1, "the switches' own state decides"). Anything that does not match renders as before, so the
memo can make a run faster, never different.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from .intent.model import BUILTIN_ALGORITHMS, LoadBalancerConfig
from .render import RenderIssue
from .snapshot import Snapshot
from .sources import code_digest

TRAILER = "Rendered-From"
ISSUES_TRAILER = "Render-Issues"
_FORMAT = b"p4kube rendered-from 1\n"


def inputs_digest(config: LoadBalancerConfig, recording: bytes, *, p4info_digest: str, intent_commit: str | None) -> str | None:
    """The digest of what render reads for `config` from a recorded cluster (its bytes as read),
    or None when the memo must not be used (a plugin algorithm)."""
    if not cacheable(config):
        return None
    h = hashlib.sha256(_FORMAT)
    for part in (code_digest(), repr(config), p4info_digest, intent_commit or "-", hashlib.sha256(recording).hexdigest()):
        h.update(part.encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def cacheable(config: LoadBalancerConfig) -> bool:
    """Whether what render makes of `config` depends on this package's code alone (code_digest
    covers it): not so for a plugin algorithm, whose code lives elsewhere."""
    return config.algorithm in BUILTIN_ALGORITHMS


def issues_summary(issues: Iterable[RenderIssue]) -> str:
    """The Render-Issues trailer's value: "none", or counts by severity ("2 errors, 49 warnings")."""
    counts: dict[str, int] = {}
    for issue in issues:
        counts[issue.severity] = counts.get(issue.severity, 0) + 1
    return ", ".join(f"{n} {sev}{'s' if n != 1 else ''}" for sev, n in sorted(counts.items())) or "none"


def unchanged(previous: Snapshot | None, recorded: str | None, digest: str | None) -> bool:
    """Whether `previous` (the last applied snapshot, whose record says `recorded`) is what render
    would make of inputs digesting to `digest`."""
    return bool(previous is not None and digest and recorded == digest and not _draining(previous))


def _draining(snap: Snapshot) -> bool:
    return any(svc.drains for svc in snap.services)


__all__ = ["ISSUES_TRAILER", "TRAILER", "cacheable", "inputs_digest", "issues_summary", "unchanged"]
