"""Audit records are trusted only when verified (docs/audit.md "Trusting the history").

Anyone who can push to the audit remote can write a commit that says "applied"; a reconciler
that believed it would write that snapshot to both switches at its next start. With trust
configured, AuditRepo.snapshot_of verifies the signature of every record commit it reads a
snapshot from (the last applied one at start and after a leader change, `rollback --to`,
anything pulled from the remote) and raises UntrustedRecord instead of returning it.

The trusted keys are the reconciler's own signing key (its public half, derived from the key)
plus the operator's: --audit-allowed-signers FILE (SSH) and --audit-trust-gpg-home DIR (GPG).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path

import pygit2

from .errors import AuditError, SignatureError
from .signing import GpgSigner, SignatureCheck, SshSigner, TrustedKeys, commit_signature

OWN_PRINCIPAL = "p4kube-audit-signer"


class UntrustedRecord(AuditError):
    """A record commit whose signature does not verify against the trusted keys: its snapshot
    is not what the switches are taken to hold, nor a target for rollback."""

    def __init__(self, message: str, commit: str, reason: str) -> None:
        super().__init__(message)
        self.commit = commit
        self.reason = reason


def check_commit(commit: pygit2.Commit, trusted: TrustedKeys) -> SignatureCheck:
    """Whether the commit carries a good signature by one of the trusted keys."""
    sig = commit_signature(commit)
    if sig is None:
        return SignatureCheck(False, None, "not signed")
    signature, payload = sig
    return trusted.verify(payload, signature)


def _ssh_public_key(key_file: Path) -> str:
    """The public key of an SSH signing key: derived from the private key (not read from a
    .pub file beside it, which could say anything), or the file itself when it is the public
    key (the private half in ssh-agent)."""
    text = key_file.read_text(errors="replace").strip()
    if text.startswith(("ssh-", "ecdsa-", "sk-")):
        return text.splitlines()[0]
    p = subprocess.run(["ssh-keygen", "-y", "-f", str(key_file)], capture_output=True, timeout=30, check=False,
                       stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise SignatureError(f"cannot derive the public key of {key_file} to verify the audit history with "
                             f"(a passphrase?): give its .pub as --signing-key, or --audit-allowed-signers")
    return p.stdout.decode().strip()


def audit_trust(signer: object | None, allowed_signers: Path | None, gpg_home: Path | None) -> TrustedKeys | None:
    """The keys audit records must be signed by: the signer's own plus the operator's files;
    None when there is neither a signer nor a trust file (an unsigned history, as before)."""
    signers_file = allowed_signers
    if isinstance(signer, SshSigner):
        own = _ssh_public_key(Path(signer.key_file))
        extra = Path(allowed_signers).read_text() if allowed_signers is not None else ""
        tmp = Path(tempfile.mkdtemp(prefix="p4kube-audit-trust-"))
        signers_file = tmp / "allowed_signers"
        signers_file.write_text(extra.rstrip("\n") + ("\n" if extra.strip() else "") + f"{OWN_PRINCIPAL} {own}\n")
        trusted = TrustedKeys(signers_file, gpg_home)
        weakref.finalize(trusted, shutil.rmtree, tmp, True)  # removed with the object (or at exit)
        return trusted
    if isinstance(signer, GpgSigner) and gpg_home is None:
        # The GnuPG home holding the reconciler's own secret key: its keys are the trusted ones.
        home = signer.gpg_home
        if home is None:
            import os

            home = Path(os.environ.get("GNUPGHOME") or Path.home() / ".gnupg")
        gpg_home = home
    if signers_file is None and gpg_home is None:
        return None
    return TrustedKeys(signers_file, gpg_home)


def untrusted(commit: pygit2.Commit, what: str, check: SignatureCheck) -> UntrustedRecord:
    short = str(commit.id)[:12]
    return UntrustedRecord(
        f"audit record {short} ({what}) is not trusted: {check.reason}; its snapshot is neither taken as what "
        f"the switches hold nor applied",
        str(commit.id), check.reason,
    )
