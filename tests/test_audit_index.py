"""The snapshot index (reconciler/audit/index.py): a restart reads the last applied snapshot from
it without reading a service file; a tampered or mismatching index is never believed (the files
are read instead, or the record is refused by the trust rules); repositories recorded before the
index still work; `audit verify` checks the index against the files."""

from __future__ import annotations

import json
import logging
from typing import Callable

import pygit2
import pytest
from test_audit_support import Clock, allowed_signers, series, ssh_key

import reconciler.audit.repo as audit_repo
from reconciler import cli
from reconciler.audit import AuditRepo, SshSigner, TrustedKeys, UntrustedRecord, verify_history
from reconciler.audit.index import INDEX_DIR, shard_of, shard_path
from reconciler.audit.layout import config_dir
from reconciler.audit.trees import replace_path
from reconciler.snapshot import Snapshot

Files = dict[str, bytes]


def _recorded(tmp_path, signer=None) -> tuple[AuditRepo, list[Snapshot]]:
    """v1 applied, v2 (one Service scaled) applied, v3 (one removed) rolled back: the last
    applied snapshot is v2."""
    s = series(services=12)
    audit = AuditRepo.open_or_init(tmp_path / "audit", clock=Clock(), pack_every=0, signer=signer)
    snaps = [s.snap]
    audit.record(s.snap, "pending")
    audit.record(s.snap, "applied")
    snaps.append(s.scale(s.keys[2]))
    audit.record(snaps[-1], "pending")
    audit.record(snaps[-1], "applied")
    snaps.append(s.remove(s.keys[5]))
    audit.record(snaps[-1], "pending")
    audit.record(snaps[-1], "rolled-back", reason="probe failed")
    return audit, snaps


def _config_files(repo: pygit2.Repository, tree_id: pygit2.Oid) -> Files:
    out: Files = {}

    def walk(oid: pygit2.Oid, prefix: str) -> None:
        for e in repo[oid]:
            if e.type_str == "tree":
                walk(e.id, f"{prefix}{e.name}/")
            else:
                out[f"{prefix}{e.name}"] = repo[e.id].data

    walk(tree_id, "")
    return out


def _write_tree(repo: pygit2.Repository, files: Files) -> pygit2.Oid:
    tb = repo.TreeBuilder()
    subdirs: dict[str, Files] = {}
    for p, data in files.items():
        head, sep, rest = p.partition("/")
        if sep:
            subdirs.setdefault(head, {})[rest] = data
        else:
            tb.insert(head, repo.create_blob(data), pygit2.enums.FileMode.BLOB)
    for name, sub in subdirs.items():
        tb.insert(name, _write_tree(repo, sub), pygit2.enums.FileMode.TREE)
    return tb.write()


def _rewrite_tip(audit: AuditRepo, config: str, edit: Callable[[Files], Files]) -> None:
    """Replace the branch's tip by a commit with the same message (trailers) and parent whose
    config directory is `edit`ed: a hand-made commit, as someone with push access could write."""
    repo = audit.repo
    tip = repo[repo.references[audit.ref].target]
    path = config_dir(config)
    files = edit(_config_files(repo, tip.tree[path].id))
    root = replace_path(repo, tip.tree_id, path, _write_tree(repo, files))
    sig = pygit2.Signature("someone", "someone@example.com", 1_800_000_000, 0)
    oid = repo.create_commit(None, sig, sig, tip.message, root, [tip.parents[0].id])
    repo.references[audit.ref].set_target(oid, "hand-made")


def _no_file_reads(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("a service file was read")

    monkeypatch.setattr(audit_repo, "parse_service_file", fail)


def test_restart_reads_the_last_applied_snapshot_from_the_index(tmp_path, monkeypatch) -> None:
    audit, snaps = _recorded(tmp_path)
    _no_file_reads(monkeypatch)
    restarted = AuditRepo.open_or_init(tmp_path / "audit", clock=Clock(start=1_750_000_000), pack_every=0)
    got = restarted.last_applied(snaps[1].config)
    assert got == snaps[1] and got.digest == snaps[1].digest and got.version == 2
    assert [s.fragment_digest for s in got.services] == [s.fragment_digest for s in snaps[1].services]
    assert restarted.snapshot_at(3) == snaps[2]
    # records after the restart keep the index right: the next restart reads it too
    restarted.record(snaps[2].with_version(4), "pending")
    restarted.record(snaps[2].with_version(4), "applied")
    assert AuditRepo.open_or_init(tmp_path / "audit").last_applied(snaps[2].config) == snaps[2].with_version(4)


def test_each_shard_lists_its_services(tmp_path) -> None:
    audit, snaps = _recorded(tmp_path)
    tree = audit.repo[audit.head].tree[config_dir(snaps[2].config)]
    listed = {}
    for top in audit.repo[tree[INDEX_DIR].id]:
        for f in audit.repo[top.id]:
            doc = json.loads(audit.repo[f.id].data)
            assert doc["auditIndex"] == 1
            for name, e in doc["services"].items():
                assert shard_path(shard_of(name)) == f"{INDEX_DIR}/{top.name}/{f.name}"
                listed[name] = e
    assert sorted(listed) == [s.name for s in snaps[2].services]
    for svc in snaps[2].services:
        assert listed[svc.name]["digest"] == svc.fragment_digest
        assert listed[svc.name]["service"] == svc.to_json()
        assert listed[svc.name]["blob"] == str(tree[f"services/{svc.name.replace(':', '__')}.json"].id)


def _edit_index_entry(name: str, change: Callable[[dict], None]) -> Callable[[Files], Files]:
    def edit(files: Files) -> Files:
        path = shard_path(shard_of(name))
        doc = json.loads(files[path])
        change(doc["services"][name])
        files[path] = json.dumps(doc).encode()
        return files

    return edit


def _reformat(path: str) -> Callable[[Files], Files]:
    return lambda f: {**f, path: json.dumps(json.loads(f[path])).encode()}


def _vip(e: dict) -> None:
    e["service"]["vip"] = "198.51.100.99"


def _digest(e: dict) -> None:
    e["digest"] = "0" * 64


def _bucket(e: dict) -> None:
    e["buckets"][0] = (e["buckets"][0] + 1) % len(e["service"]["backends"])


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda name: _edit_index_entry(name, _vip), "its object hashes to"),  # the digest kept: recomputed
        (lambda name: _edit_index_entry(name, _digest), "digest mismatch"),
        (lambda name: _edit_index_entry(name, _bucket), "its object hashes to"),
        (lambda name: (lambda f: {**f, shard_path(shard_of(name)): b"{not json"}), "not JSON"),
        (lambda name: (lambda f: {p: d for p, d in f.items() if p != shard_path(shard_of(name))}), "has a file but no index entry"),
        # a service file edited by hand (reformatted: same content, another blob) without the index
        (lambda name: _reformat(f"services/{name.replace(':', '__')}.json"), "the index names blob"),
    ],
    ids=["object", "digest", "bucket", "not-json", "missing-shard", "file-changed"],
)
def test_a_tampered_or_mismatching_index_is_not_believed(tmp_path, caplog, edit, why) -> None:
    audit, snaps = _recorded(tmp_path)
    audit.record(snaps[1].with_version(4), "pending")  # the tip: v2's snapshot again, as v4
    audit.record(snaps[1].with_version(4), "applied")
    victim = next(svc.name for svc in snaps[1].services if len(svc.backends) >= 2)
    _rewrite_tip(audit, snaps[1].config, edit(victim))
    restarted = AuditRepo.open_or_init(tmp_path / "audit", pack_every=0)
    with caplog.at_level(logging.WARNING, logger="p4kube.audit"):
        got = restarted.last_applied(snaps[1].config)
    # the files were read instead: the snapshot is the recorded one, not the index's
    assert got == snaps[1].with_version(4) and got.digest == snaps[1].digest
    assert any("the index is not used" in r.getMessage() and why in r.getMessage() for r in caplog.records), caplog.text
    report = verify_history(AuditRepo.open_or_init(tmp_path / "audit", read_only=True))
    assert not report.ok and any("index: " in f.message for f in report.failures), report.format()


def test_with_signing_a_commit_with_an_edited_index_is_refused(tmp_path) -> None:
    key, pub = ssh_key(tmp_path, "reconciler")
    audit, snaps = _recorded(tmp_path, signer=SshSigner(key))
    trust = TrustedKeys(allowed_signers=allowed_signers(tmp_path / "allowed", ("p4kube", pub)))
    assert AuditRepo.open_or_init(tmp_path / "audit", trust=trust).last_applied(snaps[1].config) == snaps[1]
    audit.record(snaps[1].with_version(4), "pending")
    audit.record(snaps[1].with_version(4), "applied")
    _rewrite_tip(audit, snaps[1].config, _edit_index_entry(snaps[1].services[0].name, _vip))
    with pytest.raises(UntrustedRecord, match="not signed"):
        AuditRepo.open_or_init(tmp_path / "audit", trust=trust).last_applied(snaps[1].config)


def _without_index(files: Files) -> Files:
    return {p: d for p, d in files.items() if not p.startswith(INDEX_DIR + "/")}


def test_a_repository_recorded_before_the_index_still_works(tmp_path, caplog, monkeypatch) -> None:
    audit, snaps = _recorded(tmp_path)
    audit.record(snaps[1].with_version(4), "pending")
    audit.record(snaps[1].with_version(4), "applied")
    _rewrite_tip(audit, snaps[1].config, _without_index)  # as a reconciler before the index wrote it
    restarted = AuditRepo.open_or_init(tmp_path / "audit", pack_every=0)
    with caplog.at_level(logging.WARNING, logger="p4kube.audit"):
        assert restarted.last_applied(snaps[1].config) == snaps[1].with_version(4)
        restarted.snapshot_at(4)
        restarted.newest_entry(snaps[1].config)
    notes = [r.getMessage() for r in caplog.records if "no snapshot index" in r.getMessage()]
    assert len(notes) == 1 and "reading all 12 service files; the next record writes the index" in notes[0]
    assert verify_history(AuditRepo.open_or_init(tmp_path / "audit", read_only=True)).ok
    # the next record writes the whole index, and the restart after it reads no service file
    restarted.record(snaps[2].with_version(5), "pending")
    restarted.record(snaps[2].with_version(5), "applied")
    _no_file_reads(monkeypatch)
    again = AuditRepo.open_or_init(tmp_path / "audit", pack_every=0)
    assert again.last_applied(snaps[1].config) == snaps[2].with_version(5)


def test_records_with_the_index_verify(tmp_path, capsys) -> None:
    _recorded(tmp_path)
    assert cli.main(["audit", "verify", "--repo", str(tmp_path / "audit")]) == 0
    assert capsys.readouterr().out.startswith("audit history OK: 6 commits (6 records)")
