"""Signed intent (--verify-intent-signers) against the audit history: whether an intent may be
applied, and the record of one that may not."""

from __future__ import annotations

from pathlib import Path

from ..intent.model import IntentSet
from ..snapshot import Snapshot
from .reopening import ReopeningAudit
from .repo import AuditRepo
from .signing import TrustedKeys
from .trust import UntrustedRecord
from .verify import verify_intent_commit


def last_applied_trusted(audit: AuditRepo, config: str) -> tuple[Snapshot | None, str]:
    """(the last applied snapshot, "") or, when its record's signature does not verify, (None,
    why): the switches' content is then unaccounted for, as with no record at all."""
    try:
        return audit.last_applied(config), ""
    except UntrustedRecord as e:
        return None, str(e)


def check_signed_intent(intent: IntentSet, root: str | Path, trusted: TrustedKeys) -> str:
    """"" when `intent` (an IntentSet read from the checkout at `root`) may be applied under
    `trusted`, else why not (one line). What is rendered is checked, not just HEAD: the commit
    the intent was read at must be signed by a trusted key, and the files read must be exactly
    that commit's (IntentSet.dirty: a local edit on top of a signed commit is not signed).
    SignatureError (ssh-keygen or gpg missing) propagates: it is not the intent's fault."""
    if intent.commit is None:
        return f"intent at {root} refused: not read from a Git commit; only commits signed by a trusted key are applied"
    ok, detail = verify_intent_commit(root, trusted, ref=intent.commit)
    if not ok:
        return f"intent at {root} refused: {detail}"
    if intent.dirty:
        return (
            f"intent at {root} refused: the checkout has uncommitted changes on top of signed commit "
            f"{intent.commit[:12]} (signed by {detail}); what would be applied is not what was signed: "
            f"commit and sign the change, or discard it (git checkout -- . / git clean)"
        )
    return ""


def refused_intent_id(intent: IntentSet) -> str:
    """The Refused-Intent-Commit trailer's value: the commit, with -dirty for local edits on top."""
    return (intent.commit or "none") + ("-dirty" if intent.dirty else "")


def record_refusal(audit: AuditRepo | ReopeningAudit, config: str, held: Snapshot, message: str, refused: str) -> bool:
    """Record refused intent in the audit repository, against `held` (what the switches keep),
    once per refused commit: True when recorded, False when the newest record of the config
    already refuses the same commit (a loop or a cron job retrying records attempts, not ticks)."""
    newest = audit.newest_entry(config)
    if newest is not None and newest.trailers.get("Refused-Intent-Commit") == refused:
        return False
    audit.record(held, "rolled-back", reason=message[:900], extra_trailers=(("Refused-Intent-Commit", refused),))
    return True
