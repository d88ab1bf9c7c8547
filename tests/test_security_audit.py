"""The audit history is trusted only when verified (docs/audit.md "Trusting the history").

Threats reproduced: a forged "applied" record pushed into the audit repository (unsigned, or
signed by a key nobody trusts) must not be written to the switches at the next start, nor be a
rollback target; a force-pushed remote must be refused, not merged, while a concurrent writer
whose history descends from ours is still merged. Real Git repositories (pygit2, a bare
"remote" on disk), real ssh-keygen keys, two software switches over gRPC on 127.0.0.1."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pygit2
import pytest
from helpers import needs_gpg, needs_ssh
from test_reconcile_audit import CONFIG, MULTI, entries_of, intent_repo, switch_entries
from test_signing_flags import gpg_home  # noqa: F401 - a fixture
from test_signing_flags import ssh_key

from reconciler.audit.errors import AuditError
from reconciler.audit.repo import AuditRepo, Identity
from reconciler.audit.signing import SshSigner
from reconciler.cli import build_parser, main
from reconciler.cluster.recorded import load_cluster_file
from reconciler.cluster.synthetic import with_scaled_service
from reconciler.controller import Controller, Outcome
from reconciler.intent.loader import load_intent
from reconciler.pipeline_io import render_one
from reconciler.cli.run import build_runtime

pytestmark = needs_ssh


def cli_base(intent: Path) -> list[str]:
    return ["--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent)]


def forge_applied(audit_dir: Path, intent: Path, signer: SshSigner | None) -> str:
    """What an attacker with push access writes: a new "applied" record (a real, valid snapshot
    of other content: web/frontend scaled), unsigned or signed by their own key."""
    cluster = with_scaled_service(load_cluster_file(MULTI / "cluster.yaml"), "web/frontend", "node-c", +2)
    intent_set = load_intent([intent])
    config = intent_set.config(CONFIG)
    forger = AuditRepo.open_or_init(audit_dir, author=Identity("p4kube-reconciler", "p4kube-reconciler@localhost"), signer=signer)
    previous = forger.history(config=CONFIG)[0]
    held = forger.snapshot_of(previous)
    forged = render_one(intent_set, config, cluster, held).snapshot.with_version(forger.next_version(CONFIG))
    assert forged.digest != held.digest
    return forger.record(forged, "applied")


@pytest.fixture
def signed_world(tmp_path, switch_pair):
    """v1 applied to both switches by `reconcile --once` with audit signing (SSH)."""
    standby, primary = switch_pair
    intent = intent_repo(tmp_path / "intent", (standby.port, primary.port))
    key, signers = ssh_key(tmp_path, "reconciler")
    audit_dir = tmp_path / "audit.git"
    sign = ["--audit-repo", str(audit_dir), "--sign-commits", "ssh", "--signing-key", str(key)]
    assert main(["reconcile", "--once", *cli_base(intent), *sign, "--cluster", str(MULTI / "cluster.yaml")]) == 0
    return intent, audit_dir, sign, key, signers, (standby, primary)


@pytest.mark.parametrize("forger_key", [None, "mallory"])
def test_reconcile_refuses_a_forged_applied_record(tmp_path, signed_world, capsys, forger_key):
    intent, audit_dir, sign, _, signers, (standby, primary) = signed_world
    signer = SshSigner(ssh_key(tmp_path, forger_key)[0]) if forger_key else None
    forged = forge_applied(audit_dir, intent, signer)
    before = (switch_entries(standby), switch_entries(primary))
    tip = str(pygit2.Repository(str(audit_dir)).head.target)
    capsys.readouterr()

    code = main(["reconcile", "--once", *cli_base(intent), *sign, "--cluster", str(MULTI / "cluster.yaml")])
    err = capsys.readouterr().err
    assert code == 1
    why = "not signed" if forger_key is None else "not in"
    assert f"audit record {forged[:12]} ({CONFIG} v2 applied) is not trusted" in err and why in err, err
    assert "--adopt-switches" in err  # the switches' content is unaccounted for: the existing refusal
    # Nothing written to either switch, nothing recorded.
    assert (switch_entries(standby), switch_entries(primary)) == before
    assert str(pygit2.Repository(str(audit_dir)).head.target) == tip
    # `audit verify` with the trusted key names the forged commit.
    assert main(["audit", "verify", "--repo", str(audit_dir), "--allowed-signers", str(signers)]) == 1
    out = capsys.readouterr().out
    assert f"{forged[:12]}: signature:" in out


def test_rollback_to_a_forged_version_is_refused(tmp_path, signed_world, capsys):
    intent, audit_dir, sign, _, _, (standby, primary) = signed_world
    forge_applied(audit_dir, intent, SshSigner(ssh_key(tmp_path, "mallory")[0]))
    before = (switch_entries(standby), switch_entries(primary))
    tip = str(pygit2.Repository(str(audit_dir)).head.target)
    capsys.readouterr()
    assert main(["rollback", "--to", "2", *cli_base(intent), *sign]) == 1
    err = capsys.readouterr().err
    assert "cannot roll back to v2: audit record" in err and "is not trusted" in err and "nothing was written" in err
    assert (switch_entries(standby), switch_entries(primary)) == before
    assert str(pygit2.Repository(str(audit_dir)).head.target) == tip


def test_audit_allowed_signers_trusts_another_replicas_key(tmp_path, signed_world, capsys):
    """A record signed by a key in --audit-allowed-signers is trusted (another replica), and
    the switches follow it as before."""
    intent, audit_dir, sign, _, _, (standby, primary) = signed_world
    other_key, other_signers = ssh_key(tmp_path, "replica-b")
    forge_applied(audit_dir, intent, SshSigner(other_key))
    code = main(["reconcile", "--once", *cli_base(intent), *sign, "--audit-allowed-signers", str(other_signers),
                 "--cluster", str(MULTI / "cluster.yaml")])
    assert code == 0, capsys.readouterr().err  # v2 taken as what the switches hold: the intent renders v3
    audit = AuditRepo.open_or_init(audit_dir, read_only=True)
    newest = audit.history(config=CONFIG)[0]
    assert (newest.version, newest.outcome) == (3, "applied")
    assert switch_entries(standby) == switch_entries(primary) == entries_of(audit.snapshot_at(3, CONFIG))


def test_run_worker_start_refuses_a_forged_last_record(tmp_path, signed_world):
    """`p4kube run` (ConfigWorker.start, also after a leader change): the forged record is not
    what the switches hold; they serve Services, so the start is refused, nothing written."""
    intent, audit_dir, sign, _, _, (standby, primary) = signed_world
    forged = forge_applied(audit_dir, intent, None)
    before = (switch_entries(standby), switch_entries(primary))
    args = build_parser().parse_args([
        "run", *cli_base(intent), "--cluster", str(MULTI / "cluster.yaml"), *sign, "--state", str(tmp_path / "state"),
    ])

    async def scenario() -> str:
        rt = await build_runtime(args)
        ctl = Controller(rt.intent, rt.cluster, make_worker=rt.make_worker_for(5))
        stop = asyncio.Event()
        task = asyncio.create_task(ctl.run(stop))
        try:
            await ctl.wait_until(lambda: any(r.outcome == Outcome.REFUSED for r in ctl.history), timeout=30)
            return next(r.reason for r in ctl.history if r.outcome == Outcome.REFUSED)
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await rt.aclose()

    reason = asyncio.run(scenario())
    assert f"audit record {forged[:12]}" in reason and "not trusted: not signed" in reason and "--adopt-switches" in reason
    assert (switch_entries(standby), switch_entries(primary)) == before


# --- the remote: force-push refused, concurrent writer merged ----------------------------------


def _clone_writer(remote: Path, workdir: Path, signer: SshSigner | None = None) -> AuditRepo:
    return AuditRepo.open_or_init(f"file://{remote}", workdir=workdir, signer=signer, sleep=lambda s: None)


def _snapshots(intent: Path) -> list:
    """Two different valid snapshots (v1, v2) of the example config."""
    intent_set = load_intent([intent])
    config = intent_set.config(CONFIG)
    cluster = load_cluster_file(MULTI / "cluster.yaml")
    v1 = render_one(intent_set, config, cluster, None).snapshot
    scaled = with_scaled_service(cluster, "web/frontend", "node-c", +2)
    return [v1, render_one(intent_set, config, scaled, v1).snapshot.with_version(2)]


def test_force_pushed_remote_is_refused_and_a_concurrent_writer_is_merged(tmp_path):
    intent = intent_repo(tmp_path / "intent", (1, 2))
    v1, v2 = _snapshots(intent)
    remote = tmp_path / "remote.git"
    pygit2.init_repository(str(remote), bare=True, initial_head="main")
    ours = _clone_writer(remote, tmp_path / "ours")
    ours.record(v1, "pending")
    ours.record(v1, "applied")
    # A concurrent writer (its history descends from what we pushed): merged, as before.
    theirs = _clone_writer(remote, tmp_path / "theirs")
    theirs.record(v2, "pending")
    ours.record(v1, "applied", reason="repaired after read-back")
    merged = pygit2.Repository(str(remote))
    assert len(merged[merged.head.target].parents) == 2  # the merge commit reached the remote

    # Someone force-pushes a rewritten history (a forged root), dropping ours.
    forged_repo = AuditRepo.open_or_init(tmp_path / "forged.git")
    forged_repo.record(v2.with_version(1), "applied")
    forged_tip = forged_repo.repo.head.target
    subprocess.run(["git", "-C", str(remote), "fetch", "-q", str(tmp_path / "forged.git"), "+main:main"], check=True)
    assert pygit2.Repository(str(remote)).head.target == forged_tip
    ours_tip = ours.repo.references[ours.ref].target

    with pytest.raises(AuditError) as e:
        ours.record(v2.with_version(ours.next_version(CONFIG)), "pending")
    text = str(e.value)
    assert "branch main was rewritten" in text and f"now at {str(forged_tip)[:12]}" in text and "refusing to merge" in text
    # The remote keeps the forged history (nothing merged into it or pushed over it) ...
    assert pygit2.Repository(str(remote)).head.target == forged_tip
    # ... the local branch holds no merge of it, and the next record is refused before committing.
    local = ours.repo.references[ours.ref].target
    assert not ours.repo.descendant_of(local, forged_tip)
    with pytest.raises(AuditError, match="was rewritten"):
        ours.record(v1, "applied")
    assert ours.repo.references[ours.ref].target == local
    assert ours.repo.descendant_of(local, ours_tip) or local == ours_tip
    # Opening again (a restart) refuses too: the tracking ref still says what we last saw.
    with pytest.raises(AuditError, match="was rewritten"):
        _clone_writer(remote, tmp_path / "ours")


# --- audit verify: the version sequence -------------------------------------------------------


def _offline(writer: AuditRepo, records: list) -> list[str]:
    """Record while the remote is away, then push: rejected, fetched, merged, pushed."""
    remote, writer.remote = writer.remote, None
    ids = [writer.record(snap, outcome) for snap, outcome in records]
    writer.remote = remote
    writer.push()
    assert len(writer.repo[writer.repo.references[writer.ref].target].parents) == 2  # merged
    return ids


def test_audit_verify_reports_each_break_of_the_version_sequence(tmp_path, capsys):
    """Merged histories of two writers: the same version recorded with two snapshots, and a
    version whose first record does not descend from the previous version's; verify names
    the commit of each."""
    intent = intent_repo(tmp_path / "intent", (1, 2))
    v1, v2 = _snapshots(intent)
    intent_set = load_intent([intent])
    scaled = with_scaled_service(load_cluster_file(MULTI / "cluster.yaml"), "web/frontend", "node-c", +1)
    third = render_one(intent_set, intent_set.config(CONFIG), scaled, v1).snapshot
    assert third.digest not in (v1.digest, v2.digest)
    for case in ("same-version", "broken-chain"):
        remote = tmp_path / f"{case}.git"
        pygit2.init_repository(str(remote), bare=True, initial_head="main")
        a = _clone_writer(remote, tmp_path / f"{case}-a")
        a.record(v1, "pending")
        a.record(v1, "applied")
        b = _clone_writer(remote, tmp_path / f"{case}-b")  # has seen v1
        ours_v2 = a.record(v2, "pending")
        a.record(v2, "applied")
        version = 2 if case == "same-version" else 3
        theirs = _offline(b, [(third.with_version(version), "pending"), (third.with_version(version), "applied")])
        assert main(["audit", "verify", "--repo", f"file://{remote}", "--workdir", str(tmp_path / f"{case}-reader")]) == 1
        out = capsys.readouterr().out
        if case == "same-version":
            line = f"{CONFIG}: v2 recorded with two snapshots ("
            assert out.count(line) == 1, out
            assert f"{ours_v2[:12]}: {line}" in out or f"{theirs[0][:12]}: {line}" in out, out
        else:
            assert f"{theirs[0][:12]}: {CONFIG}: v3's first record does not descend from v2's ({ours_v2[:12]})" in out, out


def test_audit_verify_warns_of_an_applied_record_without_pending(tmp_path, capsys):
    intent = intent_repo(tmp_path / "intent", (1, 2))
    v1, v2 = _snapshots(intent)
    audit = AuditRepo.open_or_init(tmp_path / "audit.git")
    audit.record(v1, "pending")
    audit.record(v1, "applied")
    forged = audit.record(v2, "applied")
    assert main(["audit", "verify", "--repo", str(tmp_path / "audit.git")]) == 0
    out = capsys.readouterr().out
    assert f"warning: {forged[:12]}: {CONFIG}: v2 first recorded as applied, with no pending record before it" in out


@needs_gpg
def test_gpg_signed_history_trusts_its_own_key_and_refuses_a_forgery(tmp_path, switch_pair, gpg_home, capsys):  # noqa: F811
    """--sign-commits gpg: the reconciler's own records verify against its --gpg-home (a
    restart finds the switches up to date), an unsigned forged record does not."""
    standby, primary = switch_pair
    secret, _ = gpg_home
    intent = intent_repo(tmp_path / "intent", (standby.port, primary.port))
    audit_dir = tmp_path / "audit.git"
    argv = ["reconcile", "--once", *cli_base(intent), "--audit-repo", str(audit_dir), "--cluster", str(MULTI / "cluster.yaml"),
            "--sign-commits", "gpg", "--signing-key", "audit@example.com", "--gpg-home", str(secret)]
    assert main(argv) == 0
    assert main(argv) == 0
    assert "up to date at v1" in capsys.readouterr().out
    forged = forge_applied(audit_dir, intent, None)
    before = switch_entries(primary)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"audit record {forged[:12]} ({CONFIG} v2 applied) is not trusted: not signed" in err
    assert switch_entries(primary) == before


def test_audit_trust_options_are_checked_before_anything_is_touched(tmp_path, capsys):
    intent = intent_repo(tmp_path / "intent", (1, 2))  # no switch listens: never reached
    base = ["reconcile", "--once", *cli_base(intent), "--cluster", str(MULTI / "cluster.yaml")]
    cases = [
        ([], "--audit-allowed-signers/--audit-trust-gpg-home verify the audit repository's records: give --audit-repo too"),
        (["--audit-repo", str(tmp_path / "audit.git")],
         f"--audit-allowed-signers {tmp_path / 'nope'}: no such file (an SSH allowed-signers file)"),
    ]
    for extra, message in cases:
        assert main([*base, *extra, "--audit-allowed-signers", str(tmp_path / "nope")]) == 1
        assert capsys.readouterr().err == f"p4kube reconcile: error: {message}\n"
    assert not (tmp_path / "audit.git").exists()
