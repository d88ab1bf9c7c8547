"""Audit commit signing and the keys trusted for audit records and intent, from Settings; each
checked now, so that a missing key, tool or file is one SettingsError before anything is
written or recorded."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..audit.errors import SignatureError
from ..audit.signing import GpgSigner, Signer, SshSigner, TrustedKeys
from ..audit.trust import audit_trust
from ..audit.verify import trusted_keys
from .settings import Settings, SettingsError


def build_signer(settings: Settings) -> Signer | None:
    """The audit commit Signer (None without --sign-commits), checked by signing a probe payload:
    a key that cannot sign (a passphrase, a wrong id) is refused here, not at the first record."""
    kind, key = settings.sign_commits, settings.signing_key
    gpg_home, passphrase = settings.gpg_home, settings.gpg_passphrase_file
    if kind is None:
        given = [f for f, v in (("--signing-key", key), ("--gpg-home", gpg_home), ("--gpg-passphrase-file", passphrase)) if v]
        if given:
            raise SettingsError(f"{', '.join(given)} given without --sign-commits ssh|gpg: nothing would be signed")
        return None
    if not settings.audit_repo:
        raise SettingsError(f"--sign-commits {kind} signs audit commits: give --audit-repo too")
    if not key:
        what = "the SSH private key file" if kind == "ssh" else "the GPG key id or fingerprint"
        raise SettingsError(f"--sign-commits {kind} needs --signing-key ({what})")
    signer: SshSigner | GpgSigner
    if kind == "ssh":
        if gpg_home or passphrase:
            raise SettingsError("--gpg-home and --gpg-passphrase-file are for --sign-commits gpg, not ssh")
        if shutil.which("ssh-keygen") is None:
            raise SettingsError("--sign-commits ssh: ssh-keygen is not installed or not on PATH (OpenSSH 8.1 or later signs commits)")
        path = Path(key)
        if not path.is_file():
            raise SettingsError(f"--signing-key {key}: no such key file" + ("" if not path.exists() else " (not a regular file)"))
        signer = SshSigner(path)
    else:
        if shutil.which("gpg") is None:
            raise SettingsError("--sign-commits gpg: gpg is not installed or not on PATH")
        if gpg_home and not Path(gpg_home).is_dir():
            raise SettingsError(f"--gpg-home {gpg_home}: no such directory")
        if passphrase and not Path(passphrase).is_file():
            raise SettingsError(f"--gpg-passphrase-file {passphrase}: no such file")
        signer = GpgSigner(key, Path(gpg_home) if gpg_home else None, Path(passphrase) if passphrase else None)
    try:
        signer.sign(b"p4kube: checking the audit signing key before anything is recorded\n")
    except SignatureError as e:
        raise SettingsError(f"--sign-commits {kind}: the key cannot sign: {e}") from e
    return signer


def audit_keys(settings: Settings, signer: Signer | None) -> TrustedKeys | None:
    """The keys audit records must be signed by (reconciler.audit.trust): the signing key's own
    plus --audit-allowed-signers / --audit-trust-gpg-home; None (no verification) when audit
    commits are not signed and no trust is given."""
    signers, home = settings.audit_allowed_signers, settings.audit_trust_gpg_home
    if (signers or home) and not settings.audit_repo:
        raise SettingsError("--audit-allowed-signers/--audit-trust-gpg-home verify the audit repository's records: give --audit-repo too")
    if signers and not Path(signers).is_file():
        raise SettingsError(f"--audit-allowed-signers {signers}: no such file (an SSH allowed-signers file)")
    if home and not Path(home).is_dir():
        raise SettingsError(f"--audit-trust-gpg-home {home}: no such directory")
    try:
        return audit_trust(signer, Path(signers) if signers else None, Path(home) if home else None)
    except (SignatureError, OSError) as e:
        raise SettingsError(f"--sign-commits: {e}") from e


def intent_trust(settings: Settings) -> TrustedKeys | None:
    """The keys intent commits must be signed by (None: not asked)."""
    signers, home = settings.verify_intent_signers, settings.verify_intent_gpg_home
    if signers and not Path(signers).is_file():
        raise SettingsError(f"--verify-intent-signers {signers}: no such file (an SSH allowed-signers file)")
    if home and not Path(home).is_dir():
        raise SettingsError(f"--verify-intent-gpg-home {home}: no such directory")
    return trusted_keys(signers, home)
