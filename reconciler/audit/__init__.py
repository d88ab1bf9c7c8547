"""The audit repository (DESIGN.md 6, docs/audit.md): snapshots and transaction outcomes as Git
commits, with history, show, diff and verify; signing; intent verification.

    layout.py       snapshot <-> the files of a config directory
    index.py        the snapshot index: a restart's last applied snapshot without reading every file
    trees.py        incremental Git trees, per-config merge
    message.py      commit messages and trailers, AuditEntry
    repo.py         AuditRepo: record, last_applied, history, snapshot_at
    push.py         remote: credentials, push with retry, non-fast-forward resolution
    signing.py      SSH/GPG signing and verification
    verify.py       audit verify; intent commit verification
    trust.py        records trusted only when signed by a trusted key (UntrustedRecord)
    maintenance.py  packing loose objects
"""

from .errors import AuditCorrupt, AuditError, AuditUnavailable, PushError, SignatureError
from .layout import files_to_document, files_to_snapshot, read_files, snapshot_to_files
from .message import APPLIED_OUTCOMES, OUTCOMES, AuditEntry
from .push import Credentials, PushResult, RemoteRewritten, RetryPolicy
from .repo import AuditRepo, Identity
from .signing import GpgSigner, GpgVerifier, SignatureCheck, SshSigner, SshVerifier, TrustedKeys
from .trust import UntrustedRecord, audit_trust
from .verify import VerifyReport, verify_history, verify_intent_commit

__all__ = [
    "APPLIED_OUTCOMES",
    "OUTCOMES",
    "AuditEntry",
    "AuditCorrupt",
    "AuditError",
    "AuditUnavailable",
    "AuditRepo",
    "Credentials",
    "GpgSigner",
    "GpgVerifier",
    "Identity",
    "PushError",
    "PushResult",
    "RemoteRewritten",
    "RetryPolicy",
    "SignatureCheck",
    "SignatureError",
    "SshSigner",
    "SshVerifier",
    "TrustedKeys",
    "UntrustedRecord",
    "audit_trust",
    "VerifyReport",
    "files_to_document",
    "files_to_snapshot",
    "read_files",
    "snapshot_to_files",
    "verify_history",
    "verify_intent_commit",
]
