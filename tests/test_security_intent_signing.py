"""Signed intent end to end: with --verify-intent-signers what is rendered is read from the
verified commit's blobs, never from the working tree; uncommitted and untracked edits are
refused with a clear message and nothing is written. Real Git checkouts signed with real
ssh-keygen keys, two software switches over gRPC on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest
from helpers import needs_ssh
from test_reconcile_audit import CONFIG, MULTI, switch_entries
from test_signing_flags import commit, intent_checkout, ssh_key, write_intent

from reconciler.audit.repo import AuditRepo
from reconciler.cli import build_parser, main
from reconciler.controller import Controller
from reconciler.diagnostics import InputError
from reconciler.intent.committed import CommittedIntent, load_committed_intent
from reconciler.cli.run import build_runtime

# A file nobody committed, let alone signed (any YAML the loader reads counts).
UNTRACKED = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: not-signed, namespace: p4kube-system}\n"

pytestmark = needs_ssh


def test_committed_intent_is_the_commits_content_whatever_the_checkout_holds(tmp_path):
    key, _ = ssh_key(tmp_path, "dev")
    intent = tmp_path / "intent"
    signed = intent_checkout(intent, (1, 2), key, buckets=64)
    # The checkout changes after the commit: an edit, an untracked file, a deleted file.
    write_intent(intent, (1, 2), 8)
    (intent / "extra.yaml").write_text("apiVersion: [\n")
    loaded = load_committed_intent(intent, signed)
    assert loaded.commit == signed and not loaded.dirty
    assert [c.buckets_per_service for c in loaded.configs] == [64]
    assert loaded.configs[0].source.file == str(intent / "lbconfig.yaml")  # named as the checkout shows it
    (intent / "lbconfig.yaml").unlink()
    assert load_committed_intent(intent, signed).configs == loaded.configs

    # An invalid committed file: positions name the repository path, file:line:col.
    (intent / "lbconfig.yaml").write_text((intent / "extra.yaml").read_text())
    bad = commit(intent, "broken", key)
    with pytest.raises(InputError) as e:
        load_committed_intent(intent, bad)
    assert f"{intent / 'lbconfig.yaml'}:2:1: YAML syntax error" in str(e.value), str(e.value)


def test_committed_intent_refuses_a_committed_symlink(tmp_path):
    key, _ = ssh_key(tmp_path, "dev")
    intent = tmp_path / "intent"
    intent_checkout(intent, (1, 2), key)
    outside = tmp_path / "outside.yaml"
    outside.write_text((intent / "lbconfig.yaml").read_text())
    (intent / "lbconfig.yaml").unlink()
    (intent / "lbconfig.yaml").symlink_to(outside)
    linked = commit(intent, "a link", key)
    with pytest.raises(InputError, match="symbolic link in the signed commit: not followed"):
        load_committed_intent(intent, linked)


def _reconcile(intent, audit_dir, signers, *extra: str) -> int:
    return main(["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent),
                 "--cluster", str(MULTI / "cluster.yaml"), "--audit-repo", str(audit_dir),
                 "--verify-intent-signers", str(signers), *extra])


@pytest.mark.parametrize("edit", ["modified", "untracked"])
def test_reconcile_refuses_uncommitted_and_untracked_edits_on_a_signed_head(tmp_path, switch_pair, capsys, edit):
    standby, primary = switch_pair
    ports = (standby.port, primary.port)
    key, signers = ssh_key(tmp_path, "dev")
    intent = tmp_path / "intent"
    signed = intent_checkout(intent, ports, key, buckets=64)
    audit_dir = tmp_path / "audit.git"
    assert _reconcile(intent, audit_dir, signers) == 0
    applied = AuditRepo.open_or_init(audit_dir, read_only=True).last_applied(CONFIG)
    assert applied.intent_commit == signed
    before = (switch_entries(standby), switch_entries(primary))
    if edit == "modified":
        write_intent(intent, ports, 8)
    else:
        (intent / "more.yaml").write_text(UNTRACKED)
    capsys.readouterr()
    assert _reconcile(intent, audit_dir, signers) == 1
    err = capsys.readouterr().err
    assert f"refused: the checkout has uncommitted changes on top of signed commit {signed[:12]}" in err, err
    assert (switch_entries(standby), switch_entries(primary)) == before
    newest = AuditRepo.open_or_init(audit_dir, read_only=True).history(config=CONFIG)[0]
    assert (newest.outcome, newest.trailers.get("Refused-Intent-Commit")) == ("rolled-back", f"{signed}-dirty")


def test_run_renders_each_accepted_head_from_its_commit(tmp_path, switch_pair):
    """`run --verify-intent-signers`: the loop's intent is read from the accepted commit's
    blobs (CommittedIntent); an untracked file on top of it is refused, nothing written."""
    standby, primary = switch_pair
    ports = (standby.port, primary.port)
    key, signers = ssh_key(tmp_path, "dev")
    intent = tmp_path / "intent"
    signed = intent_checkout(intent, ports, key, buckets=64)
    args = build_parser().parse_args([
        "run", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent),
        "--cluster", str(MULTI / "cluster.yaml"), "--state", str(tmp_path / "state"), "--verify-intent-signers", str(signers),
    ])

    async def scenario() -> str:
        rt = await build_runtime(args)
        assert isinstance(rt.intent, CommittedIntent)
        assert rt.intent.current().commit == signed and not rt.intent.current().dirty
        ctl = Controller(rt.intent, rt.cluster, make_worker=rt.make_worker_for(3))
        stop = asyncio.Event()
        task = asyncio.create_task(ctl.run(stop))
        try:
            await ctl.wait_until(lambda: any(r.outcome == "applied" for r in ctl.history), timeout=30)
            before = (switch_entries(standby), switch_entries(primary))
            (intent / "more.yaml").write_text(UNTRACKED)
            rt.intent.reload()
            await rt.refusals.wait_for(lambda: any(r == f"{signed}-dirty" for r, _ in rt.refusals.reported), timeout=30)
            assert (switch_entries(standby), switch_entries(primary)) == before
            assert [c.key for c in rt.intent.current().configs] == [CONFIG]
            return next(w for r, w in rt.refusals.reported if r == f"{signed}-dirty")
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await rt.aclose()

    why = asyncio.run(scenario())
    assert "uncommitted changes on top of signed commit" in why
