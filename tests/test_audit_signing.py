"""Signed audit commits (SSH and GPG) and their verification; intent commit verification."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pygit2
import pytest
from helpers import needs_git, needs_gpg
from test_audit_support import Clock, allowed_signers, git, series, ssh_key

from reconciler.audit import (
    AuditRepo,
    GpgSigner,
    GpgVerifier,
    SignatureError,
    SshSigner,
    TrustedKeys,
    verify_history,
    verify_intent_commit,
)



@pytest.fixture
def keys(tmp_path):
    """Two SSH keys: 'reconciler' (trusted) and 'mallory' (not), and the allowed-signers file."""
    trusted, trusted_pub = ssh_key(tmp_path, "reconciler")
    other, _ = ssh_key(tmp_path, "mallory")
    signers = allowed_signers(tmp_path / "allowed_signers", ("reconciler@example.com", trusted_pub))
    return trusted, other, signers


def _gpg(home: Path, *args: str, input: bytes | None = None) -> bytes:
    p = subprocess.run(["gpg", "--homedir", str(home), "--batch", *args], input=input, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


@pytest.fixture
def gpg_homes():
    """(signing home with a secret key, trusted keyring with its public key, empty keyring);
    short paths under /tmp (gpg-agent's socket path is length-limited), agents stopped after."""
    homes = [Path(tempfile.mkdtemp(prefix="g", dir="/tmp")) for _ in range(3)]
    try:
        for h in homes:
            h.chmod(0o700)
        _gpg(homes[0], "--passphrase", "", "--quick-gen-key", "Audit Bot <audit@example.com>", "ed25519", "sign", "never")
        public = _gpg(homes[0], "--armor", "--export", "audit@example.com")
        _gpg(homes[1], "--import", input=public)
        _gpg(homes[2], "--list-keys")
        yield homes
    finally:
        for h in homes:
            subprocess.run(["gpgconf", "--homedir", str(h), "--kill", "all"], capture_output=True, timeout=30)
            shutil.rmtree(h, ignore_errors=True)


def test_ssh_signed_audit_commits_verify(tmp_path, keys) -> None:
    key, _, signers = keys
    s = series()
    audit = AuditRepo.open_or_init(tmp_path / "audit", signer=SshSigner(key), clock=Clock())
    audit.record(s.snap, "pending")
    audit.record(s.snap, "applied")
    assert all(e.signed for e in audit.history())
    report = verify_history(audit, TrustedKeys(allowed_signers=signers))
    assert report.ok, report.format()
    assert report.signatures == report.commits == 2


@needs_git
def test_git_verify_commit_accepts_our_ssh_signatures(tmp_path, keys) -> None:
    key, _, signers = keys
    audit = AuditRepo.open_or_init(tmp_path / "audit", signer=SshSigner(key), clock=Clock())
    audit.record(series().snap, "pending")
    out = git("-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", "-v", "main", cwd=tmp_path / "audit")
    del out  # verify-commit reports on stderr; git() asserted exit status 0


def test_unsigned_and_untrusted_commits_fail_verification(tmp_path, keys) -> None:
    _, other, signers = keys
    s = series()
    unsigned = AuditRepo.open_or_init(tmp_path / "a", clock=Clock())
    unsigned.record(s.snap, "pending")
    report = verify_history(unsigned, TrustedKeys(allowed_signers=signers))
    assert not report.ok and [f.message for f in report.failures] == ["signature: not signed"]
    assert verify_history(unsigned).ok  # without keys, signatures are not asked for

    foreign = AuditRepo.open_or_init(tmp_path / "b", signer=SshSigner(other), clock=Clock())
    foreign.record(s.snap, "pending")
    report = verify_history(foreign, TrustedKeys(allowed_signers=signers))
    assert [f.message for f in report.failures] == [f"signature: SSH signature by a key that is not in {signers}"]


def test_a_commit_changed_after_signing_fails(tmp_path, keys) -> None:
    key, _, signers = keys
    audit = AuditRepo.open_or_init(tmp_path / "a", signer=SshSigner(key), clock=Clock())
    cid = audit.record(series().snap, "pending")
    signature, payload = audit.repo[cid].gpg_signature
    forged = payload.decode().replace("Outcome: pending", "Outcome: applied")
    forged_id = audit.repo.create_commit_with_signature(forged, signature.decode())
    check = TrustedKeys(allowed_signers=signers).verify(audit.repo[forged_id].gpg_signature[1], signature)
    assert not check.ok and "does not verify for reconciler@example.com" in check.reason


def test_signer_failure_records_nothing(tmp_path) -> None:
    audit = AuditRepo.open_or_init(tmp_path / "a", signer=SshSigner(tmp_path / "missing-key"), clock=Clock())
    with pytest.raises(SignatureError, match="SSH signing with .*missing-key failed"):
        audit.record(series().snap, "pending")
    assert audit.head is None


@needs_gpg
def test_gpg_signed_audit_commits_verify(tmp_path, gpg_homes) -> None:
    signing, trusted, empty = gpg_homes
    s = series()
    audit = AuditRepo.open_or_init(tmp_path / "audit", signer=GpgSigner("audit@example.com", gpg_home=signing), clock=Clock())
    cid = audit.record(s.snap, "applied")
    signature, payload = audit.repo[cid].gpg_signature
    assert signature.startswith(b"-----BEGIN PGP SIGNATURE-----")
    good = GpgVerifier(trusted).verify(payload, signature)
    assert good.ok and "Audit Bot <audit@example.com>" in (good.signer or "")
    assert verify_history(audit, TrustedKeys(gpg_home=trusted)).ok
    unknown = GpgVerifier(empty).verify(payload, signature)
    assert not unknown.ok and f"which is not in {empty}" in unknown.reason
    bad = GpgVerifier(trusted).verify(payload.replace(b"applied", b"pending"), signature)
    assert not bad.ok and "bad signature" in bad.reason


# --- intent verification ------------------------------------------------------------------------


def _intent_repo(path: Path, sign=None) -> pygit2.Repository:  # type: ignore[no-untyped-def]
    """A checkout of an intent repository with one commit, signed by `sign` when given."""
    repo = pygit2.init_repository(str(path), initial_head="main")
    (path / "lbconfig.yaml").write_text("apiVersion: networking.p4kube.io/v1alpha1\nkind: LoadBalancerConfig\n")
    repo.index.add("lbconfig.yaml")
    repo.index.write()
    tree = repo.index.write_tree()
    who = pygit2.Signature("Dev", "dev@example.com", 1_700_000_000, 0)
    if sign is None:
        repo.create_commit("HEAD", who, who, "Scale web to 3 replicas\n", tree, [])
    else:
        content = repo.create_commit_string(who, who, "Scale web to 3 replicas\n", tree, [])
        oid = repo.create_commit_with_signature(content, sign.sign(content.encode()))
        repo.references.create("refs/heads/main", oid)
    return repo


def test_unsigned_intent_commit_is_refused(tmp_path, keys) -> None:
    _, _, signers = keys
    repo = _intent_repo(tmp_path / "intent")
    ok, why = verify_intent_commit(tmp_path / "intent", TrustedKeys(allowed_signers=signers))
    assert not ok
    head = str(repo.head.target)[:12]
    assert why == (
        f"intent commit {head} ('Scale web to 3 replicas' by Dev <dev@example.com>) is not signed; "
        "only commits signed by a trusted key are applied"
    )


def test_intent_signed_by_a_trusted_key_passes_and_others_are_refused(tmp_path, keys) -> None:
    trusted, other, signers = keys
    _intent_repo(tmp_path / "good", SshSigner(trusted))
    assert verify_intent_commit(tmp_path / "good", TrustedKeys(allowed_signers=signers)) == (True, "reconciler@example.com")
    _intent_repo(tmp_path / "bad", SshSigner(other))
    ok, why = verify_intent_commit(tmp_path / "bad", TrustedKeys(allowed_signers=signers))
    assert not ok and "refused: SSH signature by a key that is not in" in why
    ok, why = verify_intent_commit(tmp_path / "nowhere", TrustedKeys(allowed_signers=signers))
    assert not ok and "is not a Git checkout" in why


@needs_gpg
def test_intent_signature_of_the_wrong_kind_is_refused(tmp_path, keys, gpg_homes) -> None:
    _, _, signers = keys
    signing, trusted, _ = gpg_homes
    _intent_repo(tmp_path / "intent", GpgSigner("audit@example.com", gpg_home=signing))
    ok, why = verify_intent_commit(tmp_path / "intent", TrustedKeys(allowed_signers=signers))
    assert not ok and "gpg signature, but only SSH (allowed signers) keys are trusted" in why
    ok, who = verify_intent_commit(tmp_path / "intent", TrustedKeys(allowed_signers=signers, gpg_home=trusted))
    assert ok and "audit@example.com" in who
