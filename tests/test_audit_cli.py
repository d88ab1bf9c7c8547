"""`p4kube audit log|show|diff|verify` through reconciler.cli.main."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from test_audit_support import Clock, allowed_signers, series, ssh_key

from reconciler import cli
from reconciler.audit import AuditRepo, SshSigner
from reconciler.cli.audit import parse_when
from reconciler.snapshot import load_snapshot


@pytest.fixture
def p4kube():
    """The product's own entry point: its parser registers the audit commands."""
    return cli.main


@pytest.fixture
def repo(tmp_path):
    """Two configs; lb-a: v1 applied, v2 rolled back, v3 applied; lb-b: v1 pending."""
    a, b = series(name="lb-a"), series(name="lb-b", seed=4)
    audit = AuditRepo.open_or_init(tmp_path / "audit", clock=Clock(start=1_700_000_000, step=3600))
    snaps = [a.snap]
    audit.record(a.snap, "pending")
    audit.record(a.snap, "applied")
    snaps.append(a.scale(a.keys[1]))
    audit.record(a.snap, "pending")
    audit.record(a.snap, "rolled-back", reason="probe of 198.18.0.2:80 failed")
    snaps.append(a.scale(a.keys[3], delta=-1).with_version(3))
    audit.record(snaps[-1], "pending")
    audit.record(snaps[-1], "applied")
    audit.record(b.snap, "pending")
    return str(tmp_path / "audit"), snaps, b.snap


def test_log_text_and_filters(p4kube, repo, capsys) -> None:
    path, snaps, b = repo
    assert p4kube(["audit", "log", "--repo", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7
    assert lines[0].split()[2:5] == [b.config, "v1", "pending"]
    assert "rolled-back" in lines[3] and lines[3].endswith("probe of 198.18.0.2:80 failed")
    assert p4kube(["audit", "log", "--repo", path, "--config", snaps[0].config, "--outcome", "applied"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[3] for line in lines] == ["v3", "v1"]
    # commit times are 1,700,003,600 + 3,600 s per commit: the 2nd to 4th commits
    since = datetime.fromtimestamp(1_700_000_000 + 2 * 3600, tz=timezone.utc).isoformat()
    until = datetime.fromtimestamp(1_700_000_000 + 4 * 3600, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert p4kube(["audit", "log", "--repo", path, "--since", since, "--until", until]) == 0
    assert [line.split()[4] for line in capsys.readouterr().out.splitlines()] == ["rolled-back", "pending", "applied"]


def test_log_json_has_every_trailer(p4kube, repo, capsys) -> None:
    path, snaps, _ = repo
    assert p4kube(["audit", "log", "--repo", path, "--format", "json", "--outcome", "rolled-back"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(docs) == 1
    d = docs[0]
    assert d["trailers"] == {
        "Config": snaps[1].config,
        "Snapshot-Version": "2",
        "Snapshot-Digest": snaps[1].digest,
        "Intent-Commit": "none",
        "Cluster-Resource-Version": snaps[1].cluster_resource_version,
        "Outcome": "rolled-back",
        "Reason": "probe of 198.18.0.2:80 failed",
    }
    assert (d["version"], d["outcome"], d["config"], d["signed"]) == (2, "rolled-back", snaps[1].config, False)
    assert datetime.fromisoformat(d["time"]).timestamp() == 1_700_000_000 + 4 * 3600


def test_show_reassembles_the_snapshot(p4kube, repo, capsys, tmp_path) -> None:
    path, snaps, _ = repo
    assert p4kube(["audit", "show", "2", "--repo", path, "--config", snaps[1].config]) == 0
    assert capsys.readouterr().out == snaps[1].to_json_text()
    out = tmp_path / "v1.json"
    assert p4kube(["audit", "show", "1", "--repo", path, "--config", snaps[0].config, "--out", str(out)]) == 0
    assert load_snapshot(out) == snaps[0]
    assert p4kube(["audit", "show", "1", "--repo", path]) == 1
    assert "several configs; name one with --config" in capsys.readouterr().err
    assert p4kube(["audit", "show", "9", "--repo", path, "--config", snaps[0].config]) == 1
    assert "no version 9 of p4kube-system/lb-a (recorded versions: 1, 2, 3)" in capsys.readouterr().err


def test_diff_per_table(p4kube, repo, capsys) -> None:
    path, snaps, _ = repo
    cfg = snaps[0].config
    assert p4kube(["audit", "diff", "1", "2", "--repo", path, "--config", cfg]) == 0
    text = capsys.readouterr().out
    changed = snaps[1].services[1].name
    assert text.splitlines()[0].startswith(f"{cfg}: version 1 -> 2")
    assert "services: 0 added, 1 changed, 0 removed" in text and f"  ~ {changed}" in text
    assert "MyIngress.backend_table: 0 added, 0 removed, " in text
    # A moved bucket drains (DESIGN.md 5.1): plain dnat before, dnat_draining after.
    assert "~ meta.service_id=" in text and "dnat(" in text and " -> dnat_draining(" in text
    assert p4kube(["audit", "diff", "1", "3", "--repo", path, "--config", cfg, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["from"] == {"version": 1, "digest": snaps[0].digest} and doc["to"]["version"] == 3
    assert sorted(c["name"] for c in doc["services"]) == sorted({snaps[1].services[1].name, snaps[2].services[3].name})
    moved = doc["tables"]["MyIngress.backend_table"]["changed"]
    assert moved and all(c["old"]["match"] == c["new"]["match"] and c["old"]["params"] != c["new"]["params"] for c in moved)
    assert p4kube(["audit", "diff", "3", "3", "--repo", path, "--config", cfg]) == 0
    assert "no changes" in capsys.readouterr().out


def test_verify_exit_codes_and_signatures(p4kube, repo, capsys, tmp_path) -> None:
    path, snaps, _ = repo
    assert p4kube(["audit", "verify", "--repo", path]) == 0
    assert capsys.readouterr().out.startswith("audit history OK: 7 commits (7 records)")
    key, pub = ssh_key(tmp_path, "k")
    signers = allowed_signers(tmp_path / "allowed", ("audit@example.com", pub))
    assert p4kube(["audit", "verify", "--repo", path, "--allowed-signers", str(signers)]) == 1
    captured = capsys.readouterr()
    assert "audit history FAILED: 7 problem(s)" in captured.out and "signature: not signed" in captured.out
    assert "p4kube audit verify: 7 problem(s)" in captured.err

    signed = AuditRepo.open_or_init(tmp_path / "signed", signer=SshSigner(key), clock=Clock())
    signed.record(snaps[0], "applied")
    assert p4kube(["audit", "verify", "--repo", str(tmp_path / "signed"), "--allowed-signers", str(signers)]) == 0
    assert "1 good signatures" in capsys.readouterr().out
    assert p4kube(["audit", "log", "--repo", str(tmp_path / "signed")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("signed")


def test_remote_repo_and_errors(p4kube, repo, capsys, tmp_path) -> None:
    path, snaps, _ = repo
    # any repository path with --workdir is treated as a remote: fetched into the work directory
    assert p4kube(["audit", "log", "--repo", path, "--workdir", str(tmp_path / "cache"), "--limit", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert p4kube(["audit", "log", "--repo", str(tmp_path / "missing")]) == 1
    assert "p4kube audit: error: no audit repository at" in capsys.readouterr().err
    assert p4kube(["audit", "log", "--repo", path, "--since", "yesterday"]) == 1
    assert "is not a time" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        p4kube(["audit", "show", "zero", "--repo", path])
    assert info.value.code == cli.EXIT_USAGE
    assert p4kube(["audit"]) == cli.EXIT_USAGE


def test_parse_when() -> None:
    now = datetime(2024, 5, 2, 12, 0, tzinfo=timezone.utc)
    assert parse_when("2d", lambda: now) == datetime(2024, 4, 30, 12, 0, tzinfo=timezone.utc)
    assert parse_when("90m", lambda: now) == datetime(2024, 5, 2, 10, 30, tzinfo=timezone.utc)
    assert parse_when("2024-05-01") == datetime(2024, 5, 1, tzinfo=timezone.utc)
    assert parse_when("2024-05-01T12:00:00+02:00").utcoffset().total_seconds() == 7200


def test_interrupted_in_log_and_verify_warnings_and_gaps(p4kube, repo, capsys) -> None:
    path, snaps, b = repo
    assert p4kube(["audit", "verify", "--repo", path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        f"  warning: {AuditRepo.open_or_init(path).history()[0].commit[:12]}: {b.config}: v1 is pending without an outcome yet "
        "(the newest record: a transaction in flight, or a reconciler stopped; the next start records it as interrupted)"
    ]
    audit = AuditRepo.open_or_init(path, clock=Clock(start=1_800_000_000))
    closed = audit.close_interrupted(b.config)
    assert p4kube(["audit", "log", "--repo", path, "--outcome", "interrupted"]) == 0
    line = capsys.readouterr().out.rstrip("\n")
    assert line.split()[:5] == [closed.commit[:12], closed.time.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), b.config, "v1", "interrupted"]
    assert line.endswith("the reconciler stopped before recording an outcome (killed or crashed); the switches were read back at start")
    assert p4kube(["audit", "verify", "--repo", path]) == 0
    assert capsys.readouterr().out == "audit history OK: 8 commits (8 records), 4 distinct snapshots checked\n"
    # a version skipped (as a history rewrite that removed v4 would leave it)
    audit.record(snaps[-1].with_version(5), "pending")
    audit.record(snaps[-1].with_version(5), "applied")
    assert p4kube(["audit", "verify", "--repo", path]) == 1
    captured = capsys.readouterr()
    assert f"{snaps[0].config}: v4 missing between v3 and v5 (records removed from the history?)" in captured.out
    assert captured.err == f"p4kube audit verify: 1 problem(s) in {path}\n"
