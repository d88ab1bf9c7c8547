"""Signing audit commits and verifying commit signatures, as git does it.

SSH: `ssh-keygen -Y sign -n git` (the key file may be a public key whose private half is in
ssh-agent), verified with `ssh-keygen -Y find-principals` then `-Y verify` against an
allowed-signers file (the format of git's gpg.ssh.allowedSignersFile). GPG: `gpg --detach-sign
--armor`, verified with `gpg --verify` against a keyring directory: every public key in that
directory is trusted, as with Flux's spec.verify secret of public keys.

The signed payload is the commit object without its gpgsig header, exactly what `git
verify-commit` checks, so commits signed here verify with git and the other way round.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from .errors import SignatureError

if TYPE_CHECKING:
    import pygit2

SignatureKind = Literal["ssh", "gpg", "x509", "unknown"]
_TIMEOUT = 30.0  # seconds: a signing tool waiting for a passphrase must not hang the reconciler


class Signer(Protocol):
    @property
    def kind(self) -> str: ...  # read-only: SshSigner and GpgSigner fix theirs

    def sign(self, payload: bytes) -> str:
        """An ASCII-armored detached signature of payload."""
        ...


def signature_kind(signature: bytes) -> SignatureKind:
    head = signature.lstrip()[:40]
    if head.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        return "ssh"
    if head.startswith(b"-----BEGIN PGP SIGNATURE-----"):
        return "gpg"
    if head.startswith(b"-----BEGIN SIGNED MESSAGE-----"):
        return "x509"
    return "unknown"


def _run(argv: list[str], payload: bytes | None, what: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(argv, input=payload, capture_output=True, timeout=_TIMEOUT, env=env, check=False)
    except FileNotFoundError as e:
        raise SignatureError(f"{what}: {argv[0]} is not installed or not on PATH") from e
    except subprocess.TimeoutExpired as e:
        raise SignatureError(f"{what}: {argv[0]} did not finish within {_TIMEOUT:.0f} s (waiting for a passphrase?)") from e


def _stderr(p: subprocess.CompletedProcess[bytes]) -> str:
    return " ".join(p.stderr.decode(errors="replace").split()) or f"exit status {p.returncode}"


@dataclass(frozen=True)
class SshSigner:
    key_file: Path  # private key, or public key with the private key in ssh-agent
    namespace: str = "git"
    program: str = "ssh-keygen"
    kind: str = "ssh"

    def sign(self, payload: bytes) -> str:
        p = _run([self.program, "-Y", "sign", "-n", self.namespace, "-f", str(self.key_file)], payload, "SSH signing")
        if p.returncode != 0 or not p.stdout.startswith(b"-----BEGIN SSH SIGNATURE-----"):
            raise SignatureError(f"SSH signing with {self.key_file} failed: {_stderr(p)}")
        return p.stdout.decode()


@dataclass(frozen=True)
class GpgSigner:
    key_id: str  # key id, fingerprint or user id
    gpg_home: Path | None = None
    passphrase_file: Path | None = None
    program: str = "gpg"
    kind: str = "gpg"

    def sign(self, payload: bytes) -> str:
        argv = [self.program, "--batch", "--no-tty", "--yes"]
        if self.gpg_home is not None:
            argv += ["--homedir", str(self.gpg_home)]
        if self.passphrase_file is not None:
            argv += ["--pinentry-mode", "loopback", "--passphrase-file", str(self.passphrase_file)]
        argv += ["--local-user", self.key_id, "--detach-sign", "--armor"]
        p = _run(argv, payload, "GPG signing")
        if p.returncode != 0 or b"-----BEGIN PGP SIGNATURE-----" not in p.stdout:
            raise SignatureError(f"GPG signing with key {self.key_id} failed: {_stderr(p)}")
        return p.stdout.decode()


@dataclass(frozen=True)
class SignatureCheck:
    ok: bool
    signer: str | None  # SSH principal, or GPG "KEYID user id"
    reason: str  # why it failed, or what verified it

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class SshVerifier:
    allowed_signers: Path
    namespace: str = "git"
    program: str = "ssh-keygen"

    def verify(self, payload: bytes, signature: bytes) -> SignatureCheck:
        if not Path(self.allowed_signers).is_file():
            raise SignatureError(f"allowed signers file {self.allowed_signers} does not exist")
        with tempfile.TemporaryDirectory(prefix="p4kube-sig-") as tmp:
            sig = Path(tmp) / "commit.sig"
            sig.write_bytes(signature)
            p = _run([self.program, "-Y", "find-principals", "-f", str(self.allowed_signers), "-s", str(sig)], None, "SSH verification")
            principals = [line for line in p.stdout.decode(errors="replace").splitlines() if line.strip()]
            if p.returncode != 0 or not principals:
                return SignatureCheck(False, None, f"SSH signature by a key that is not in {self.allowed_signers}")
            principal = principals[0].strip()
            v = _run(
                [self.program, "-Y", "verify", "-f", str(self.allowed_signers), "-I", principal, "-n", self.namespace, "-s", str(sig)],
                payload,
                "SSH verification",
            )
            if v.returncode != 0:
                return SignatureCheck(False, principal, f"SSH signature does not verify for {principal}: {_stderr(v)}")
            return SignatureCheck(True, principal, f"good SSH signature by {principal}")


@dataclass(frozen=True)
class GpgVerifier:
    gpg_home: Path  # a keyring directory: every public key in it is trusted
    program: str = "gpg"

    def verify(self, payload: bytes, signature: bytes) -> SignatureCheck:
        if not Path(self.gpg_home).is_dir():
            raise SignatureError(f"GPG home {self.gpg_home} does not exist")
        with tempfile.TemporaryDirectory(prefix="p4kube-sig-") as tmp:
            sig = Path(tmp) / "commit.sig"
            sig.write_bytes(signature)
            argv = [self.program, "--batch", "--no-tty", "--homedir", str(self.gpg_home), "--status-fd", "1", "--verify", str(sig), "-"]
            p = _run(argv, payload, "GPG verification", env={**os.environ, "LC_ALL": "C"})
        status = [line.split(" ", 2)[1:] for line in p.stdout.decode(errors="replace").splitlines() if line.startswith("[GNUPG:] ")]
        codes = {s[0]: (s[1] if len(s) > 1 else "") for s in status if s}
        for bad, why in (
            ("BADSIG", "bad signature (the commit was changed after signing)"),
            ("EXPKEYSIG", "signed by an expired key"),
            ("REVKEYSIG", "signed by a revoked key"),
            ("EXPSIG", "the signature has expired"),
        ):
            if bad in codes:
                return SignatureCheck(False, codes[bad] or None, f"GPG: {why}: {codes[bad]}".rstrip(": "))
        if "ERRSIG" in codes:
            key = codes["ERRSIG"].split(" ", 1)[0]
            return SignatureCheck(False, key or None, f"GPG signature by key {key}, which is not in {self.gpg_home}")
        if p.returncode == 0 and "GOODSIG" in codes and "VALIDSIG" in codes:
            return SignatureCheck(True, codes["GOODSIG"], f"good GPG signature by {codes['GOODSIG']}")
        return SignatureCheck(False, None, f"GPG signature does not verify: {_stderr(p)}")


@dataclass(frozen=True)
class TrustedKeys:
    """The keys whose signatures are accepted: an SSH allowed-signers file and/or a GPG keyring."""

    allowed_signers: Path | None = None
    gpg_home: Path | None = None

    def __post_init__(self) -> None:
        if self.allowed_signers is None and self.gpg_home is None:
            raise ValueError("TrustedKeys needs an allowed-signers file or a GPG home (or both)")

    def verify(self, payload: bytes, signature: bytes) -> SignatureCheck:
        kind = signature_kind(signature)
        if kind == "ssh" and self.allowed_signers is not None:
            return SshVerifier(self.allowed_signers).verify(payload, signature)
        if kind == "gpg" and self.gpg_home is not None:
            return GpgVerifier(self.gpg_home).verify(payload, signature)
        trusted = " and ".join(
            k for k, v in (("SSH (allowed signers)", self.allowed_signers), ("GPG (keyring)", self.gpg_home)) if v is not None
        )
        return SignatureCheck(False, None, f"{kind} signature, but only {trusted} keys are trusted")


def commit_signature(commit: pygit2.Commit) -> tuple[bytes, bytes] | None:
    """(signature, signed payload) of a pygit2 Commit, or None when it is not signed."""
    signature, payload = commit.gpg_signature
    if signature is None:
        return None
    return signature, payload
