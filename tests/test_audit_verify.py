"""`audit verify`: hand-made damage anywhere in the history is found and named."""

from __future__ import annotations

import pygit2
import pytest
from test_audit_support import Clock, series

from reconciler.audit import AuditRepo, verify_history
from reconciler.audit.layout import config_dir
from reconciler.audit.trees import BLOB, replace_path
from reconciler.snapshot import SnapshotError


@pytest.fixture
def history(tmp_path):
    """v1 pending+applied, v2 pending+applied of one config: 4 commits."""
    s = series()
    audit = AuditRepo.open_or_init(tmp_path / "audit", clock=Clock())
    v1 = s.snap
    ids = [audit.record(v1, "pending"), audit.record(v1, "applied")]
    v2 = s.scale(s.keys[2])
    ids += [audit.record(v2, "pending"), audit.record(v2, "applied")]
    return audit, s, ids


def _edit_file(repo: pygit2.Repository, tree: pygit2.Oid, path: str, edit) -> pygit2.Oid:  # type: ignore[no-untyped-def]
    """The root tree with the file at `path` replaced by edit(its bytes)."""
    directory, _, name = path.rpartition("/")
    tb = repo.TreeBuilder(repo[tree][directory])
    tb.insert(name, repo.create_blob(edit(repo[repo[tree][path].id].data)), BLOB)
    return replace_path(repo, tree, directory, tb.write())


def _rewrite(audit: AuditRepo, ids: list[str], index: int, tree: pygit2.Oid, message: str | None = None) -> list[str]:
    """Replace commit ids[index] by one with `tree` (same message unless given) and replay
    the later commits on top with their own trees, as a hand edit of history would."""
    repo = audit.repo
    parent = [repo[ids[index - 1]].id] if index else []
    new = []
    for i, cid in enumerate(ids[index:]):
        c = repo[cid]
        oid = repo.create_commit(None, c.author, c.committer, message if (i == 0 and message) else c.message,
                                 tree if i == 0 else c.tree_id, parent)
        new.append(str(oid))
        parent = [oid]
    repo.references["refs/heads/main"].set_target(parent[0])
    return ids[:index] + new


def test_clean_history_verifies(history) -> None:
    audit, _, _ = history
    report = verify_history(AuditRepo.open_or_init(audit.repo.path, read_only=True))
    assert report.ok and (report.commits, report.records, report.snapshots) == (4, 4, 2)
    assert report.format().startswith("audit history OK: 4 commits (4 records), 2 distinct snapshots checked")


def test_hand_corrupted_snapshot_in_history_is_caught(history) -> None:
    audit, s, ids = history
    key = s.keys[2]
    path = f"{config_dir(s.snap.config)}/services/{key}.json"
    b = s.snap.by_name[key].backends[0]
    tree = _edit_file(audit.repo, audit.repo[ids[2]].tree_id, path,
                      lambda d: d.replace(f'"node_port":{b.port}'.encode(), f'"node_port":{b.port + 1}'.encode(), 1))
    ids = _rewrite(audit, ids, 2, tree)
    report = verify_history(AuditRepo.open_or_init(audit.repo.path, read_only=True))
    assert not report.ok
    assert [f.commit for f in report.failures] == [ids[2]]
    assert report.failures[0].message.startswith(f"{path}: backend_table entry for bucket ")
    assert report.failures[0].message.endswith("not a listed backend")
    assert report.format().startswith("audit history FAILED: 1 problem(s)")
    # reading that commit's snapshot is refused too, with the same reason
    ro = AuditRepo.open_or_init(audit.repo.path, read_only=True)
    with pytest.raises(SnapshotError, match=f"{path}: backend_table entry"):
        ro.snapshot_of(next(e for e in ro.history() if e.commit == ids[2]))


def test_manifest_digest_and_lying_trailers_are_caught(history) -> None:
    audit, s, ids = history
    manifest = f"{config_dir(s.snap.config)}/manifest.json"
    tree = _edit_file(audit.repo, audit.repo[ids[1]].tree_id, manifest,
                      lambda d: d.replace(b'"digest": "sha256:', b'"digest": "sha256:0', 1).replace(b'0", "kind"', b'", "kind"'))
    msg = audit.repo[ids[3]].message.replace("Snapshot-Version: 2", "Snapshot-Version: 9")
    ids2 = _rewrite(audit, ids, 1, tree)
    ids2 = _rewrite(audit, ids2, 3, audit.repo[ids2[3]].tree_id, msg)
    report = verify_history(AuditRepo.open_or_init(audit.repo.path, read_only=True))
    messages: dict[str, str] = {}
    for f in report.failures:
        messages[f.commit] = messages.get(f.commit, "") + f.message + "\n"
    assert "trailers name p4kube-system/test-config v9" in messages[ids2[3]]
    assert "manifest.json" in messages[ids2[1]]
    # the lying version also shows in the sequence: v3-v8 never recorded, v2's pending never closed
    assert "p4kube-system/test-config: v3-v8 missing between v2 and v9" in messages[ids2[3]]
    assert "v2 pending has no outcome after it" in messages[ids2[2]]


def test_commits_that_no_record_wrote_are_flagged(history) -> None:
    audit, s, ids = history
    other = series(name="lb-b", seed=4)
    tip = audit.record(other.snap, "applied")  # a legitimate record of a second config
    both = audit.repo[tip].tree_id
    # the same change as a hand commit without trailers
    hand = _rewrite(audit, ids + [tip], 4, both, "hand edit\n")
    report = verify_history(AuditRepo.open_or_init(audit.repo.path, read_only=True))
    assert [(f.commit, f.message) for f in report.failures] == [
        (hand[4], f"changes {other.snap.config} that no record commit wrote (no Config/Outcome trailers)")
    ]
    # a record of the first config that slips the second one in
    slipped = _rewrite(audit, ids + [tip], 3, both)
    report = verify_history(AuditRepo.open_or_init(audit.repo.path, read_only=True))
    assert [(f.commit, f.message) for f in report.failures] == [
        (slipped[3], f"record of {s.snap.config} also changes {other.snap.config}")
    ]


def _drop(audit: AuditRepo, ids: list[str], drop: set[int]) -> list[str]:
    """Rewrite the branch without the commits ids[i] for i in drop: each later commit is
    replayed (same tree, message, author) on the new parent, as a history rewrite would."""
    repo = audit.repo
    parent: list[pygit2.Oid] = []
    new = []
    for i, cid in enumerate(ids):
        if i in drop:
            continue
        c = repo[cid]
        oid = repo.create_commit(None, c.author, c.committer, c.message, c.tree_id, parent)
        new.append(str(oid))
        parent = [oid]
    repo.references["refs/heads/main"].set_target(parent[0])
    return new


def test_a_version_removed_from_history_is_a_gap(tmp_path) -> None:
    s = series()
    audit = AuditRepo.open_or_init(tmp_path / "audit", clock=Clock())
    ids = []
    for _ in range(6):
        snap = s.snap if not ids else s.scale(s.keys[len(ids) % len(s.keys)])
        ids += [audit.record(snap, "pending"), audit.record(snap, "applied")]
    assert verify_history(AuditRepo.open_or_init(audit.repo.path, read_only=True)).ok
    new = _drop(audit, ids, {8, 9})  # v5 pending + applied
    report = verify_history(AuditRepo.open_or_init(audit.repo.path, read_only=True))
    assert [(f.commit, f.message) for f in report.failures] == [
        (new[8], f"{s.snap.config}: v5 missing between v4 and v6 (records removed from the history?)")
    ]
    assert report.format().splitlines()[1] == f"  {new[8][:12]}: {s.snap.config}: v5 missing between v4 and v6 (records removed from the history?)"
    new = _drop(audit, new, {2, 3, 4, 5})  # v2 and v3 as well
    report = verify_history(AuditRepo.open_or_init(audit.repo.path, read_only=True))
    assert [f.message for f in report.failures] == [
        f"{s.snap.config}: v2-v3 missing between v1 and v4 (records removed from the history?)",
        f"{s.snap.config}: v5 missing between v4 and v6 (records removed from the history?)",
    ]


def test_pending_without_outcome(tmp_path) -> None:
    s = series()
    audit = AuditRepo.open_or_init(tmp_path / "audit", clock=Clock())
    v1 = s.snap
    audit.record(v1, "pending")
    audit.record(v1, "applied")
    v2 = s.scale()
    audit.record(v2, "pending")
    report = verify_history(audit)
    assert report.ok  # the newest record may be in flight: a warning
    assert [w.message for w in report.warnings] == [
        f"{v1.config}: v2 is pending without an outcome yet (the newest record: a transaction in flight, "
        "or a reconciler stopped; the next start records it as interrupted)"
    ]
    assert report.format().splitlines()[1].startswith("  warning: ")
    # a later transaction began without closing v2: v2 is a failure now
    v3 = s.scale(s.keys[4]).with_version(3)
    pending_v2 = audit.history()[0].commit
    audit.record(v3, "pending")
    audit.record(v3, "applied")
    report = verify_history(audit)
    assert [(f.commit, f.message) for f in report.failures] == [
        (pending_v2, f"{v1.config}: v2 pending has no outcome after it (the transaction was never closed)")
    ]
    assert not report.warnings
    # closed by close_interrupted: no problem; a second config's open pending is its own warning
    other = series(name="lb-b", seed=4)
    audit2 = AuditRepo.open_or_init(tmp_path / "audit2", clock=Clock())
    audit2.record(v1, "pending")
    audit2.close_interrupted(v1.config)
    audit2.record(other.snap, "pending")
    report = verify_history(audit2)
    assert report.ok and [w.message.split(":")[0] for w in report.warnings] == [other.snap.config]
