"""Signing wired to the commands: `--sign-commits ssh|gpg` on reconcile, rollback and run signs
every audit commit (checked with `git verify-commit` and `p4kube audit verify`), and
`--verify-intent-signers` on reconcile and run applies only intent whose commit is signed by a
trusted key and whose checkout holds exactly that commit. Real keys made here (ssh-keygen, gpg),
real Git repositories, two software switches over gRPC on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import needs_gpg, needs_ssh
from test_reconcile_audit import CONFIG, MULTI, entries_of, switch_entries

from reconciler.audit.repo import AuditRepo
from reconciler.cli import build_parser, main
from reconciler.controller import Controller
from reconciler.cli.run import build_runtime



def ssh_key(tmp: Path, name: str) -> tuple[Path, Path]:
    """An ed25519 key without passphrase, and an allowed-signers file trusting it."""
    key = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    signers = tmp / f"{name}.allowed_signers"
    signers.write_text(f"{name}@example.com {key.with_suffix('.pub').read_text().strip()}\n")
    return key, signers


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd), "GIT_AUTHOR_NAME": "dev",
           "GIT_AUTHOR_EMAIL": "dev@example.com", "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.com"}
    p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, f"git {' '.join(args)}: {p.stderr}"
    return p.stdout


def intent_checkout(path: Path, ports: tuple[int, int], sign_with: Path | None, *, buckets: int = 64) -> str:
    """The multi-service intent in a Git checkout, pointed at the switches, committed (signed
    with the SSH key `sign_with` when given); returns the commit."""
    path.mkdir(parents=True)
    write_intent(path, ports, buckets)
    shutil.copy(MULTI / "sim-device-config.json", path)
    git(path, "init", "-q", "-b", "main")
    return commit(path, "intent", sign_with)


def write_intent(path: Path, ports: tuple[int, int], buckets: int) -> None:
    text = (MULTI / "lbconfig.yaml").read_text()
    text = text.replace("127.0.0.1:9559", f"127.0.0.1:{ports[1]}").replace("127.0.0.1:9560", f"127.0.0.1:{ports[0]}")
    text = text.replace("  healthCheck:\n", "  healthCheck:\n    enabled: false  # the recorded nodes are not reachable here\n")
    text = text.replace("updateInterval: 1s", "updateInterval: 0s").replace("bucketsPerService: 64", f"bucketsPerService: {buckets}")
    tmp = path.parent / f".{path.name}.lbconfig.tmp"  # replaced in one rename: never half a file
    tmp.write_text(text)
    tmp.replace(path / "lbconfig.yaml")


def commit(path: Path, message: str, sign_with: Path | None) -> str:
    git(path, "add", "-A")
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={sign_with}", "commit", "-S"] if sign_with else ["commit", "--no-gpg-sign"]
    git(path, *sign, "-q", "-m", message)
    return git(path, "rev-parse", "HEAD").strip()


def verify_commits_with_git(audit_dir: Path, signers: Path) -> int:
    """`git verify-commit` on every commit of the audit branch: how many verified."""
    shas = git(audit_dir, "rev-list", "main").split()
    for sha in shas:
        git(audit_dir, "-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", sha)
    return len(shas)


# --- audit commit signing ---------------------------------------------------------------------


@needs_ssh
def test_reconcile_and_rollback_sign_audit_commits_with_ssh(tmp_path, switch_pair, capsys):
    standby, primary = switch_pair
    key, signers = ssh_key(tmp_path, "reconciler")
    intent = tmp_path / "intent"
    intent_checkout(intent, (standby.port, primary.port), None)
    audit_dir = tmp_path / "audit.git"
    sign = ["--sign-commits", "ssh", "--signing-key", str(key)]
    base = ["--intent", str(intent), "--pipeline-dir", str(intent), "--audit-repo", str(audit_dir), *sign]
    assert main(["reconcile", "--once", "--allow-insecure-switches", *base, "--cluster", str(MULTI / "cluster.yaml")]) == 0
    write_intent(intent, (standby.port, primary.port), 32)
    commit(intent, "fewer buckets", None)
    assert main(["reconcile", "--once", "--allow-insecure-switches", *base, "--cluster", str(MULTI / "cluster.yaml")]) == 0
    assert main(["rollback", "--to", "1", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--audit-repo", str(audit_dir), *sign]) == 0
    capsys.readouterr()

    audit = AuditRepo.open_or_init(audit_dir, read_only=True)
    history = audit.history(config=CONFIG)
    assert [(e.version, e.trailers.get("Outcome")) for e in history] == [
        (3, "applied"), (3, "pending"), (2, "applied"), (2, "pending"), (1, "applied"), (1, "pending")]
    assert all(e.signed for e in history)
    assert switch_entries(primary) == entries_of(audit.snapshot_at(1, CONFIG))
    # git itself verifies every commit against the allowed-signers file ...
    assert verify_commits_with_git(audit_dir, signers) == len(history)
    # ... and so does `p4kube audit verify` with the trusted keys; another key is refused.
    assert main(["audit", "verify", "--repo", str(audit_dir), "--allowed-signers", str(signers)]) == 0
    _, other = ssh_key(tmp_path, "mallory")
    capsys.readouterr()
    assert main(["audit", "verify", "--repo", str(audit_dir), "--allowed-signers", str(other)]) == 1


@pytest.fixture
def gpg_home():
    """A GnuPG home with an ed25519 signing key made by `gpg --batch --gen-key`, and a keyring
    holding only its public key; short paths (gpg-agent's socket), agents stopped after."""
    homes = [Path(tempfile.mkdtemp(prefix="g", dir="/tmp")) for _ in range(2)]
    try:
        for h in homes:
            h.chmod(0o700)
        spec = "Key-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\nName-Real: Audit Bot\n" \
               "Name-Email: audit@example.com\nExpire-Date: 0\n%no-protection\n%commit\n"
        for argv, data in ((["--gen-key"], spec), (["--armor", "--export", "audit@example.com"], None)):
            p = subprocess.run(["gpg", "--homedir", str(homes[0]), "--batch", *argv], input=data, capture_output=True,
                               text=True, timeout=60)
            assert p.returncode == 0, p.stderr
        p = subprocess.run(["gpg", "--homedir", str(homes[1]), "--batch", "--import"], input=p.stdout, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        yield homes
    finally:
        for h in homes:
            subprocess.run(["gpgconf", "--homedir", str(h), "--kill", "all"], capture_output=True, timeout=30)
            shutil.rmtree(h, ignore_errors=True)


@needs_gpg
def test_reconcile_signs_audit_commits_with_gpg(tmp_path, switch_pair, gpg_home, capsys):
    standby, primary = switch_pair
    secret, keyring = gpg_home
    intent = tmp_path / "intent"
    intent_checkout(intent, (standby.port, primary.port), None)
    audit_dir = tmp_path / "audit.git"
    argv = ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--audit-repo", str(audit_dir), "--cluster", str(MULTI / "cluster.yaml"),
            "--sign-commits", "gpg", "--signing-key", "audit@example.com", "--gpg-home", str(secret)]
    assert main(argv) == 0
    history = AuditRepo.open_or_init(audit_dir, read_only=True).history(config=CONFIG)
    assert len(history) == 2 and all(e.signed for e in history)
    capsys.readouterr()
    assert main(["audit", "verify", "--repo", str(audit_dir), "--gpg-home", str(keyring)]) == 0
    # A key id the home does not hold: one line before anything is recorded.
    assert main([*argv[:-4], "--signing-key", "nobody@example.com", "--gpg-home", str(secret)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("p4kube reconcile: error: --sign-commits gpg: the key cannot sign") and "Traceback" not in err


@needs_ssh
def test_signing_mistakes_are_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    intent = tmp_path / "intent"
    intent_checkout(intent, (1, 2), None)  # no switch listens: they must never be reached
    audit_dir = tmp_path / "audit.git"
    base = ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--cluster", str(MULTI / "cluster.yaml")]
    key, _ = ssh_key(tmp_path, "k")
    cases = [
        ([*base, "--audit-repo", str(audit_dir), "--sign-commits", "ssh", "--signing-key", str(tmp_path / "missing")],
         "--signing-key " + str(tmp_path / "missing") + ": no such key file"),
        ([*base, "--audit-repo", str(audit_dir), "--sign-commits", "ssh"], "--sign-commits ssh needs --signing-key"),
        ([*base, "--sign-commits", "ssh", "--signing-key", str(key)], "give --audit-repo too"),
        ([*base, "--audit-repo", str(audit_dir), "--signing-key", str(key)], "given without --sign-commits"),
        ([*base, "--audit-repo", str(audit_dir), "--sign-commits", "gpg", "--signing-key", "x", "--gpg-home", str(tmp_path / "nope")],
         "no such directory"),
        (["rollback", "--to", "1", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--audit-repo", str(audit_dir), "--sign-commits", "ssh",
          "--signing-key", str(tmp_path / "missing")], "no such key file"),
        ([*base, "--audit-repo", str(audit_dir), "--verify-intent-signers", str(tmp_path / "nope")], "no such file"),
    ]
    for argv, expected in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    # The signing tool is not installed.
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main([*base, "--audit-repo", str(audit_dir), "--sign-commits", "ssh", "--signing-key", str(key)]) == 1
    err = capsys.readouterr().err
    assert "ssh-keygen is not installed or not on PATH" in err and "Traceback" not in err
    assert not audit_dir.exists()  # nothing was recorded, not even a repository created


# --- signed intent: reconcile -------------------------------------------------------------------


@needs_ssh
def test_reconcile_refuses_a_dirty_edit_on_a_signed_head_once(tmp_path, switch_pair, capsys):
    standby, primary = switch_pair
    dev_key, trusted = ssh_key(tmp_path, "dev")
    intent = tmp_path / "intent"
    signed = intent_checkout(intent, (standby.port, primary.port), dev_key)
    audit_dir = tmp_path / "audit.git"
    argv = ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--audit-repo", str(audit_dir), "--cluster", str(MULTI / "cluster.yaml"),
            "--verify-intent-signers", str(trusted)]
    assert main(argv) == 0  # signed by a trusted key, clean: applied
    capsys.readouterr()
    held = switch_entries(primary)
    write_intent(intent, (standby.port, primary.port), 16)  # an edit nobody signed, on the signed HEAD
    for _ in range(2):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"uncommitted changes on top of signed commit {signed[:12]}" in err and "Traceback" not in err
    assert switch_entries(primary) == switch_entries(standby) == held
    history = AuditRepo.open_or_init(audit_dir, read_only=True).history(config=CONFIG)
    refused = [e for e in history if e.trailers.get("Refused-Intent-Commit")]
    assert [(e.trailers["Refused-Intent-Commit"], e.trailers["Outcome"]) for e in refused] == [(f"{signed}-dirty", "rolled-back")]
    # Signed and committed, the same change is applied.
    commit(intent, "16 buckets", dev_key)
    assert main(argv) == 0


# --- signed intent: run -------------------------------------------------------------------------


@needs_ssh
def test_run_applies_signed_intent_and_refuses_unsigned_commits_and_dirty_edits(tmp_path, switch_pair):
    standby, primary = switch_pair
    ports = (standby.port, primary.port)
    dev_key, trusted = ssh_key(tmp_path, "dev")
    bot_key, bot_signers = ssh_key(tmp_path, "reconciler")
    intent = tmp_path / "intent"
    first = intent_checkout(intent, ports, dev_key)
    cluster = tmp_path / "recorded.yaml"
    shutil.copy(MULTI / "cluster.yaml", cluster)
    audit_dir = tmp_path / "audit.git"
    args = build_parser().parse_args([
        "run", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--cluster", str(cluster), "--audit-repo", str(audit_dir),
        "--state", str(tmp_path / "state"), "--verify-intent-signers", str(trusted),
        "--sign-commits", "ssh", "--signing-key", str(bot_key),
    ])

    def applied(ctl: Controller, version: int) -> bool:
        return any(r.outcome == "applied" and r.version == version for r in ctl.history)

    def backends() -> int:
        return len(primary.entries(1, "MyIngress.backend_table"))

    async def scenario() -> tuple[str, str]:
        rt = await build_runtime(args)
        assert rt.refusals is not None
        ctl = rt.current["controller"] = Controller(rt.intent, rt.cluster, make_worker=rt.make_worker_for(3))
        stop = asyncio.Event()
        task = asyncio.create_task(ctl.run(stop))
        try:
            await ctl.wait_until(lambda: applied(ctl, 1), timeout=30)
            v1 = backends()
            # An unsigned commit lands: refused, recorded, the signed intent stays applied.
            write_intent(intent, ports, 32)
            unsigned = await asyncio.to_thread(commit, intent, "32 buckets, unsigned", None)
            await rt.refusals.wait_for(lambda: any(r == unsigned for r, _ in rt.refusals.reported), timeout=30)
            why = next(w for r, w in rt.refusals.reported if r == unsigned)
            assert f"intent commit {unsigned[:12]}" in why and "is not signed" in why
            assert (CONFIG, unsigned) in rt.refusals.recorded
            assert backends() == v1 and ctl.workers[CONFIG].config.buckets_per_service == 64
            # A signed commit is applied.
            write_intent(intent, ports, 16)
            signed = await asyncio.to_thread(commit, intent, "16 buckets, signed", dev_key)
            await ctl.wait_until(lambda: applied(ctl, 2), timeout=30)
            assert ctl.workers[CONFIG].config.buckets_per_service == 16
            v2 = backends()
            assert v2 != v1
            # An edit on top of the signed HEAD, not committed: refused, recorded, v2 stays.
            write_intent(intent, ports, 8)
            await rt.refusals.wait_for(lambda: any(r == f"{signed}-dirty" for r, _ in rt.refusals.reported), timeout=30)
            why = next(w for r, w in rt.refusals.reported if r == f"{signed}-dirty")
            assert "uncommitted changes on top of signed commit" in why
            await rt.refusals.wait_reported()
            assert backends() == v2 and ctl.workers[CONFIG].config.buckets_per_service == 16
            assert not applied(ctl, 3)
            return unsigned, signed
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await rt.aclose()

    unsigned, signed = asyncio.run(scenario())
    audit = AuditRepo.open_or_init(audit_dir, read_only=True)
    history = audit.history(config=CONFIG)
    refused = [e.trailers["Refused-Intent-Commit"] for e in history if e.trailers.get("Refused-Intent-Commit")]
    assert refused.count(unsigned) == 1 and refused.count(f"{signed}-dirty") == 1, refused
    assert all(e.trailers.get("Outcome") == "rolled-back" for e in history if e.trailers.get("Refused-Intent-Commit"))
    assert audit.last_applied(CONFIG).intent_commit == signed and audit.snapshot_at(1, CONFIG).intent_commit == first
    # Every audit commit the run made is signed by the reconciler's key.
    assert all(e.signed for e in history)
    assert verify_commits_with_git(audit_dir, bot_signers) == len(history)


@needs_ssh
def test_run_verify_intent_signers_needs_a_checkout(tmp_path):
    _, trusted = ssh_key(tmp_path, "dev")
    args = build_parser().parse_args(["run", "--intent-from-cluster", "--verify-intent-signers", str(trusted)])
    from reconciler.cli import CommandError

    with pytest.raises(CommandError, match="--intent DIR"):
        asyncio.run(build_runtime(args, api=object()))
