"""What the switches hold, read from the audit repository, for planning a pull request.

Without it a plan has nothing to compare with and shows every Service as new. Read-only: a
local repository or a clone of a remote that follows it exactly; nothing is recorded. With
trust given (the same allowed-signers file or GnuPG home as `run`'s), a last record whose
signature does not verify is refused rather than planned against.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..audit.errors import AuditError
from ..audit.refusals import last_applied_trusted
from ..audit.repo import AuditRepo
from ..audit.trust import audit_trust
from ..snapshot import Snapshot


def previous_from_audit(
    location: str,
    configs: Iterable[str],
    *,
    branch: str = "main",
    workdir: str | None = None,
    allowed_signers: str | None = None,
    gpg_home: str | None = None,
) -> dict[str, Snapshot]:
    """The last applied snapshot of each of `configs` that has one (config key -> snapshot).

    Raises AuditError: the repository cannot be opened or read, or (with trust) a config's
    last applied record is not signed by a trusted key."""
    trust = audit_trust(None, Path(allowed_signers) if allowed_signers else None, Path(gpg_home) if gpg_home else None)
    audit = AuditRepo.open_or_init(location, branch=branch, workdir=workdir, read_only=True, trust=trust)
    out: dict[str, Snapshot] = {}
    for key in configs:
        snap, untrusted = last_applied_trusted(audit, key)
        if untrusted:
            raise AuditError(f"{key}: {untrusted}; not planned against")
        if snap is not None:
            out[key] = snap
    return out
