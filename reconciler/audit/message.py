"""Audit commit messages: a subject for people, git trailers for scripts.

    p4kube-system/p4kube-config v12 pending: 1 changed

    Services changed: web/frontend

    Config: p4kube-system/p4kube-config
    Snapshot-Version: 12
    Snapshot-Digest: sha256:...
    Intent-Commit: 0123abcd...            ("none" when the intent is not a commit)
    Cluster-Resource-Version: 48213       ("none" for a recording without one)
    Outcome: pending
    Reason: standby leaf-2 unreachable    (only when there is a reason)

`git interpret-trailers --parse` and `git log --format=%(trailers)` read the last paragraph.
Values are single lines (newlines become spaces) and never empty: git and libgit2 both misread
an empty trailer value as the start of a continuation, which would swallow the next trailer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

import pygit2

from ..snapshot import Snapshot
from .errors import AuditError

# interrupted: a pending record closed by the next start of the reconciler (close_interrupted):
# the process stopped (killed, crashed) before it could record an outcome
OUTCOMES = ("pending", "applied", "rolled-back", "degraded", "interrupted")
APPLIED_OUTCOMES = ("applied", "degraded")  # the switches hold the snapshot (degraded: one of them)

CONFIG, VERSION, DIGEST = "Config", "Snapshot-Version", "Snapshot-Digest"
INTENT, CLUSTER_RV, OUTCOME, REASON = "Intent-Commit", "Cluster-Resource-Version", "Outcome", "Reason"
STANDARD_TRAILERS = (CONFIG, VERSION, DIGEST, INTENT, CLUSTER_RV, OUTCOME, REASON)
NONE = "none"

_TRAILER_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_MAX_VALUE = 2000
_MAX_LISTED = 20


def one_line(value: str) -> str:
    """A trailer value: whitespace runs (including newlines) collapsed, bounded in length."""
    text = " ".join(str(value).split())
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


@dataclass(frozen=True)
class ChangeSummary:
    """Which Services a commit's tree change added, changed and removed (names)."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    blobs_written: int = 0

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


def check_outcome(outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise AuditError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")


def check_extra_trailers(extra: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for key, value in extra:
        if not _TRAILER_KEY.match(key):
            raise AuditError(f"trailer key {key!r}: use letters, digits and '-' (like Rollback-To)")
        if key.lower() in {k.lower() for k in STANDARD_TRAILERS}:
            raise AuditError(f"trailer {key!r} is written by record() itself")
        text = one_line(value)
        if not text:
            raise AuditError(f"trailer {key!r} has an empty value")
        out.append((key, text))
    return out


def build_message(
    snap: Snapshot,
    outcome: str,
    reason: str = "",
    extra_trailers: Sequence[tuple[str, str]] = (),
    change: ChangeSummary | None = None,
) -> str:
    check_outcome(outcome)
    extra = check_extra_trailers(extra_trailers)
    subject = f"{snap.config} v{snap.version} {outcome}"
    body: list[str] = []
    if change is not None and not change.empty:
        parts = [f"{len(v)} {k}" for k, v in (("added", change.added), ("changed", change.changed), ("removed", change.removed)) if v]
        subject += ": " + ", ".join(parts)
        for label, names in (("added", change.added), ("changed", change.changed), ("removed", change.removed)):
            if names:
                shown = ", ".join(names[:_MAX_LISTED]) + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")
                body.append(f"Services {label}: {shown}")
    trailers = [
        (CONFIG, snap.config),
        (VERSION, str(snap.version)),
        (DIGEST, snap.digest),
        (INTENT, snap.intent_commit or NONE),
        (CLUSTER_RV, one_line(snap.cluster_resource_version or "") or NONE),
        (OUTCOME, outcome),
    ]
    reason_line = one_line(reason)
    if reason_line:
        trailers.append((REASON, reason_line))
    trailers.extend(extra)
    paragraphs = [subject]
    if body:
        paragraphs.append("\n".join(body))
    paragraphs.append("\n".join(f"{k}: {v}" for k, v in trailers))
    return "\n\n".join(paragraphs) + "\n"


@dataclass(frozen=True)
class AuditEntry:
    """One commit of the audit branch, as `audit log` shows it."""

    commit: str
    time: datetime  # committer time, with the committer's offset
    author: str
    summary: str
    parents: tuple[str, ...]
    trailers: Mapping[str, str] = field(default_factory=dict)
    signed: bool = False

    @property
    def config(self) -> str | None:
        return self.trailers.get(CONFIG)

    @property
    def version(self) -> int | None:
        v = self.trailers.get(VERSION, "")
        return int(v) if v.isdigit() else None

    @property
    def digest(self) -> str | None:
        return self.trailers.get(DIGEST)

    @property
    def outcome(self) -> str | None:
        return self.trailers.get(OUTCOME)

    @property
    def reason(self) -> str:
        return self.trailers.get(REASON, "")

    @property
    def intent_commit(self) -> str | None:
        v = self.trailers.get(INTENT)
        return None if v in (None, NONE) else v

    @property
    def cluster_resource_version(self) -> str | None:
        v = self.trailers.get(CLUSTER_RV)
        return None if v in (None, NONE) else v

    @property
    def is_record(self) -> bool:
        """A commit written by record(): it names a config and an outcome."""
        return CONFIG in self.trailers and OUTCOME in self.trailers

    def to_json(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "time": self.time.isoformat(),
            "author": self.author,
            "summary": self.summary,
            "parents": list(self.parents),
            "config": self.config,
            "version": self.version,
            "digest": self.digest,
            "intentCommit": self.intent_commit,
            "clusterResourceVersion": self.cluster_resource_version,
            "outcome": self.outcome,
            "reason": self.reason,
            "signed": self.signed,
            "trailers": dict(self.trailers),
        }


def entry_from_commit(commit: Any) -> AuditEntry:
    """An AuditEntry from a pygit2 Commit (trailers parsed by libgit2, like git does)."""
    offset = timezone(timedelta(minutes=commit.commit_time_offset))
    author = commit.author
    try:
        trailers = dict(commit.message_trailers)
    except pygit2.GitError as e:  # a hand-written message libgit2 cannot parse: keep the commit, flag it
        trailers = {"X-Unreadable-Trailers": one_line(str(e))}
    signed = commit.gpg_signature[0] is not None
    return AuditEntry(
        commit=str(commit.id),
        time=datetime.fromtimestamp(commit.commit_time, tz=offset),
        author=f"{author.name} <{author.email}>",
        summary=commit.message.split("\n", 1)[0],
        parents=tuple(str(p) for p in commit.parent_ids),
        trailers=trailers,
        signed=signed,
    )
