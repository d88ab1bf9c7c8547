"""AuditRepo on real repositories: record, last_applied, history, incremental trees."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pygit2
import pytest
from helpers import needs_git
from test_audit_support import Clock, git, loose_objects, series

from reconciler.audit import AuditError, AuditRepo, Identity
from reconciler.audit.index import shard_of, shard_path
from reconciler.audit.layout import MANIFEST, config_dir, snapshot_to_files
from reconciler.snapshot import SnapshotError


@pytest.fixture
def audit(tmp_path):
    return AuditRepo.open_or_init(tmp_path / "audit", clock=Clock(), pack_every=0)


def _tree_files(repo: pygit2.Repository, commit: str, config: str) -> dict[str, bytes]:
    tree = repo[commit].tree[config_dir(config)]
    out = {}
    for e in tree:
        if e.name == MANIFEST:
            out[MANIFEST] = repo[e.id].data
        else:  # services/<namespace>/<file>, index/<h>/<h'>.json
            for sub in repo[e.id]:
                for f in repo[sub.id]:
                    out[f"{e.name}/{sub.name}/{f.name}"] = repo[f.id].data
    return out


def test_record_and_last_applied_round_trip_across_a_restart(tmp_path) -> None:
    s = series()
    audit = AuditRepo.open_or_init(tmp_path / "audit", clock=Clock())
    assert audit.last_applied(s.snap.config) is None
    v1 = s.snap
    audit.record(v1, "pending")
    audit.record(v1, "applied")
    v2 = s.scale()
    audit.record(v2, "pending")
    audit.record(v2, "rolled-back", reason="standby leaf-2: read-back differs\nin 3 entries")
    assert audit.last_applied(v1.config) == v1  # v2 was rolled back: the switches hold v1

    restarted = AuditRepo.open_or_init(tmp_path / "audit")
    got = restarted.last_applied(v1.config)
    assert got == v1 and got.digest == v1.digest and got.version == 1
    assert restarted.last_applied("p4kube-system/other") is None
    # the files in the commit are exactly the layout of the snapshot
    assert _tree_files(restarted.repo, restarted.head, v2.config) == snapshot_to_files(v2)


def test_trailers_and_messages(audit) -> None:
    s = series()
    audit.record(s.snap, "pending")
    cid = audit.record(s.snap, "degraded", reason="standby leaf-2 unreachable:\n  connection refused", extra_trailers=[("Standby", "leaf-2")])
    e = audit.history()[0]
    assert e.commit == cid
    assert e.trailers == {
        "Config": s.snap.config,
        "Snapshot-Version": "1",
        "Snapshot-Digest": s.snap.digest,
        "Intent-Commit": "none",
        "Cluster-Resource-Version": str(s.snap.cluster_resource_version),
        "Outcome": "degraded",
        "Reason": "standby leaf-2 unreachable: connection refused",
        "Standby": "leaf-2",
    }
    assert e.summary == f"{s.snap.config} v1 degraded"
    assert audit.history()[1].summary == f"{s.snap.config} v1 pending: 12 added"
    assert e.author == "p4kube-reconciler <p4kube-reconciler@localhost>"
    with pytest.raises(AuditError, match="outcome 'done' is not one of"):
        audit.record(s.snap, "done")
    with pytest.raises(AuditError, match="written by record"):
        audit.record(s.snap, "applied", extra_trailers=[("Outcome", "x")])
    with pytest.raises(AuditError, match="trailer key"):
        audit.record(s.snap, "applied", extra_trailers=[("Bad Key", "x")])


@needs_git
def test_git_interpret_trailers_reads_them(audit) -> None:
    s = series()
    audit.record(s.snap, "rolled-back", reason="probe failed: VIP 203.0.113.10:80 timed out")
    message = git("log", "-1", "--format=%B", "main", cwd=audit.repo.path)
    parsed = git("interpret-trailers", "--parse", cwd=audit.repo.path, input=message)
    assert parsed.splitlines() == [
        f"Config: {s.snap.config}",
        "Snapshot-Version: 1",
        f"Snapshot-Digest: {s.snap.digest}",
        "Intent-Commit: none",
        f"Cluster-Resource-Version: {s.snap.cluster_resource_version}",
        "Outcome: rolled-back",
        "Reason: probe failed: VIP 203.0.113.10:80 timed out",
    ]


def test_identity_is_configurable(tmp_path) -> None:
    audit = AuditRepo.open_or_init(
        tmp_path / "a", author=Identity("Ops Bot", "ops@example.com"), committer=Identity("CI", "ci@example.com"), clock=Clock()
    )
    cid = audit.record(series().snap, "pending")
    c = audit.repo[cid]
    assert (c.author.name, c.author.email, c.committer.name, c.committer.email) == ("Ops Bot", "ops@example.com", "CI", "ci@example.com")


def test_only_changed_service_blobs_are_written(tmp_path) -> None:
    s = series(services=12)
    audit = AuditRepo.open_or_init(tmp_path / "audit", clock=Clock(), pack_every=0)
    audit.record(s.snap, "pending")
    audit.record(s.snap, "applied")
    key = s.keys[4]
    before = loose_objects(tmp_path / "audit")
    cid = audit.record(s.scale(key), "pending")
    new = loose_objects(tmp_path / "audit") - before
    repo = audit.repo
    kinds = sorted(repo[o].type_str for o in new)
    # 1 service file + its namespace tree, services/, its index shard + index/<h>/, index/,
    # the manifest, the config tree, configs/<ns>/, configs/, the root tree, and the commit
    assert kinds == ["blob", "blob", "blob", "commit"] + ["tree"] * 8
    blobs = {repo[o].data for o in new if repo[o].type_str == "blob"}
    files = snapshot_to_files(s.snap)
    assert blobs == {files[MANIFEST], files[f"services/{key}.json"], files[shard_path(shard_of(key))]}
    # every other subtree is the parent's, by id
    parent = repo[cid].parents[0]
    old_services = parent.tree[f"{config_dir(s.snap.config)}/services"]
    new_services = repo[cid].tree[f"{config_dir(s.snap.config)}/services"]
    same = [e.name for e in new_services if old_services[e.name].id == e.id]
    assert sorted(same) == sorted({k.split("/")[0] for k in s.keys} - {key.split("/")[0]})

    before = loose_objects(tmp_path / "audit")
    audit.record(s.snap, "applied")  # an outcome: same tree, one new object (the commit)
    assert [repo[o].type_str for o in loose_objects(tmp_path / "audit") - before] == ["commit"]


def test_a_restarted_repo_still_writes_only_what_changed(tmp_path) -> None:
    s = series(services=12)
    AuditRepo.open_or_init(tmp_path / "audit", clock=Clock()).record(s.snap, "applied")
    restarted = AuditRepo.open_or_init(tmp_path / "audit", clock=Clock(), pack_every=0)
    # cold: no last_applied() read first, so the index knows blob ids but not digests
    before = loose_objects(tmp_path / "audit")
    restarted.record(s.scale(s.keys[0]), "pending")
    new = loose_objects(tmp_path / "audit") - before
    # the service file, its index shard and the manifest (the cold index is rewritten whole, so
    # every other shard comes out identical: no new object)
    assert sum(1 for o in new if restarted.repo[o].type_str == "blob") == 3


def test_removed_service_and_empty_namespace_disappear(tmp_path, audit) -> None:
    s = series(services=12)
    audit.record(s.snap, "applied")
    key = s.keys[3]
    snap = s.remove(key)
    cid = audit.record(snap, "pending")
    e = audit.history()[0]
    assert e.summary.endswith("1 removed")
    services = audit.repo[cid].tree[f"{config_dir(snap.config)}/services"]
    assert key.split("/")[0] not in [t.name for t in services]  # its namespace had only it
    assert audit.snapshot_at(snap.version) == snap


def test_history_filters(audit) -> None:
    a, b = series(name="lb-a"), series(name="lb-b", seed=4)
    audit.record(a.snap, "pending")
    audit.record(a.snap, "applied")
    audit.record(b.snap, "pending")
    audit.record(b.snap, "rolled-back", reason="x")
    audit.record(a.scale(), "pending")
    audit.record(a.snap, "applied")
    assert [e.outcome for e in audit.history()] == ["applied", "pending", "rolled-back", "pending", "applied", "pending"]
    assert [e.version for e in audit.history(config=a.snap.config)] == [2, 2, 1, 1]
    assert [e.config for e in audit.history(outcome="rolled-back")] == [b.snap.config]
    times = [e.time for e in audit.history()]
    assert times == sorted(times, reverse=True) and all(t.tzinfo is not None for t in times)
    middle = audit.history(since=times[4], until=times[1])
    assert [e.time for e in middle] == times[1:5]
    naive = datetime.fromtimestamp(times[2].timestamp(), tz=timezone.utc).replace(tzinfo=None)
    assert len(audit.history(since=naive)) == 3  # naive times are UTC
    assert audit.configs() == sorted([a.snap.config, b.snap.config])
    with pytest.raises(AuditError, match="outcome"):
        audit.history(outcome="bogus")


def test_snapshot_at_and_versions(audit) -> None:
    s = series()
    v1 = s.snap
    audit.record(v1, "applied")
    v2 = s.scale()
    audit.record(v2, "pending")
    assert audit.snapshot_at(1) == v1 and audit.snapshot_at(2, v2.config) == v2
    assert audit.next_version(v1.config) == 3
    with pytest.raises(AuditError, match=r"no version 7 of .*recorded versions: 1, 2"):
        audit.snapshot_at(7)
    # a different snapshot under an already recorded version is refused: versions must mean one thing
    other = s.scale(s.keys[1]).with_version(2)
    with pytest.raises(AuditError, match=r"version 2 was already recorded .* next_version\(\) = 3"):
        audit.record(other, "pending")
    audit.record(other.with_version(3), "pending")
    b = series(name="lb-b")
    audit.record(b.snap, "pending")
    with pytest.raises(AuditError, match="several configs"):
        audit.snapshot_at(1)


def test_schema_is_checked_before_commit(audit, caplog) -> None:
    s = series()
    bad = s.snap.with_version(0)
    with pytest.raises(SnapshotError, match="version 0"):
        audit.record(bad, "pending")
    from dataclasses import replace

    svc = replace(s.snap.services[0], algorithm="")
    broken = replace(s.snap, services=(svc,) + s.snap.services[1:])
    with pytest.raises(SnapshotError, match=r"fails its schema:\n  service ns-00/svc-00: algorithm"):
        audit.record(broken, "pending")
    assert audit.head is None  # nothing was committed


def test_read_only_and_missing(tmp_path) -> None:
    with pytest.raises(AuditError, match="no audit repository"):
        AuditRepo.open_or_init(tmp_path / "nothing", read_only=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(AuditError, match="not empty, and is not a Git repository"):
        AuditRepo.open_or_init(tmp_path / "full")
    AuditRepo.open_or_init(tmp_path / "r").record(series().snap, "pending")
    ro = AuditRepo.open_or_init(tmp_path / "r", read_only=True)
    with pytest.raises(AuditError, match="read-only"):
        ro.record(series().snap, "applied")


def test_compare_and_swap_refuses_a_moved_branch(tmp_path) -> None:
    s = series()
    one = AuditRepo.open_or_init(tmp_path / "a", clock=Clock())
    two = AuditRepo.open_or_init(tmp_path / "a", clock=Clock())
    one.record(s.snap, "pending")
    two.record(s.snap, "applied")  # reads the tip when it records: fine
    tip = two.head
    # a writer that read the tip before another moved it fails instead of losing a commit
    stale = one.repo.references[one.ref].target
    one._set_tip(one.repo[tip].parents[0].id, stale, "test")  # type: ignore[attr-defined] # moves back: allowed (CAS matches)
    with pytest.raises(AuditError, match="moved by another writer"):
        two._set_tip(pygit2.Oid(hex=tip), pygit2.Oid(hex=tip), "test")  # type: ignore[attr-defined]


def test_compact_packs_and_everything_still_reads(tmp_path, caplog) -> None:
    s = series()
    audit = AuditRepo.open_or_init(tmp_path / "a", clock=Clock(), pack_every=3)
    with caplog.at_level(logging.INFO, logger="p4kube.audit"):
        for _ in range(4):
            audit.record(s.snap, "pending")
            audit.record(s.snap, "applied")
            s.scale()
    assert "packed" in caplog.text
    assert len(list((tmp_path / "a" / "objects" / "pack").glob("*.pack"))) == 2
    fresh = AuditRepo.open_or_init(tmp_path / "a", read_only=True)
    assert [fresh.snapshot_at(v).version for v in (1, 2, 3, 4)] == [1, 2, 3, 4]
    from reconciler.audit import verify_history

    assert verify_history(fresh).ok


def test_small_packs_are_rolled_up(tmp_path) -> None:
    s = series()
    audit = AuditRepo.open_or_init(tmp_path / "a", clock=Clock(), pack_every=0)
    pack_dir = tmp_path / "a" / "objects" / "pack"
    for _ in range(5):
        audit.record(s.scale(), "pending")
        audit.compact(max_packs=10)
    assert len(list(pack_dir.glob("*.pack"))) == 5
    audit.record(s.scale(), "pending")
    audit.compact(max_packs=3)  # 6 packs: the 5 small ones rolled into one, the largest kept
    assert len(list(pack_dir.glob("*.pack"))) == 2
    assert not list((tmp_path / "a" / "objects").glob("??/*"))
    assert audit.snapshot_at(s.snap.version) == s.snap
    fresh = AuditRepo.open_or_init(tmp_path / "a", read_only=True)
    assert [fresh.snapshot_at(v).version for v in range(2, s.snap.version + 1)] == list(range(2, s.snap.version + 1))


def test_close_interrupted_after_a_kill_9(tmp_path) -> None:
    """A reconciler killed between `pending` and its outcome: the next start closes the
    transaction with an `interrupted` record of the same version and snapshot."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from reconciler.audit.repo import INTERRUPTED_REASON

    s = series(services=3)
    path = tmp_path / "audit"
    audit = AuditRepo.open_or_init(path, clock=Clock())
    v1 = s.snap
    audit.record(v1, "pending")
    audit.record(v1, "applied")
    assert audit.close_interrupted(v1.config) is None  # nothing open
    v2 = s.scale()
    (tmp_path / "v2.json").write_text(v2.to_json_text())
    code = (
        "import os, signal\n"
        "from reconciler.audit import AuditRepo\n"
        "from reconciler.snapshot import load_snapshot\n"
        f"audit = AuditRepo.open_or_init({str(path)!r})\n"
        f"audit.record(load_snapshot({str(tmp_path / 'v2.json')!r}), 'pending')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True)
    assert out.returncode == -signal.SIGKILL, out.stderr

    restarted = AuditRepo.open_or_init(path, clock=Clock(start=1_800_000_000))
    assert restarted.history()[0].outcome == "pending" and restarted.history()[0].version == 2
    assert restarted.last_applied(v1.config) == v1  # pending is not applied
    pending = restarted.history()[0]
    closed = restarted.close_interrupted(v1.config)
    assert closed is not None and closed.outcome == "interrupted" and closed.version == 2
    assert closed.digest == v2.digest and closed.reason == INTERRUPTED_REASON
    assert closed.trailers["Pending-Commit"] == pending.commit
    assert closed.summary == f"{v1.config} v2 interrupted"
    assert restarted.repo[closed.commit].tree_id == restarted.repo[pending.commit].tree_id  # same snapshot
    assert restarted.snapshot_of(closed) == v2
    assert restarted.last_applied(v1.config) == v1  # interrupted is not applied either
    assert restarted.close_interrupted(v1.config) is None  # closed once
    assert restarted.close_interrupted("p4kube-system/none") is None
    assert restarted.next_version(v1.config) == 3
    assert [e.outcome for e in restarted.history(outcome="interrupted")] == ["interrupted"]
    custom = AuditRepo.open_or_init(path)
    custom.record(v2, "pending")
    assert custom.close_interrupted(v1.config, reason="leader lost the lease").reason == "leader lost the lease"


def test_last_applied_ignores_pending_interrupted_and_rolled_back(audit) -> None:
    s = series(services=3)
    v1 = s.snap
    audit.record(v1, "pending")
    audit.record(v1, "degraded", reason="standby down")
    v2 = s.scale()
    for outcome in ("pending", "interrupted", "rolled-back"):
        audit.record(v2, outcome)
        assert audit.last_applied(v1.config) == v1, outcome
        assert AuditRepo.open_or_init(audit.repo.path).last_applied(v1.config) == v1, outcome
    audit.record(v2, "applied")
    assert audit.last_applied(v1.config) == v2
    assert AuditRepo.open_or_init(audit.repo.path).last_applied(v1.config) == v2


def test_memory_stays_bounded_over_thousands_of_records(tmp_path, monkeypatch) -> None:
    """A long-running reconciler records thousands of commits: the history, version,
    service and namespace caches stay within their bounds (DESIGN.md 6.1 "Bounded"), and
    everything beyond them is still read correctly from the repository."""
    from reconciler.audit import repo as repo_module

    monkeypatch.setattr(repo_module, "_RECENT_ENTRIES", 64)
    monkeypatch.setattr(repo_module, "_VERSION_CACHE", 128)
    monkeypatch.setattr(repo_module, "_SERVICE_CACHE_MIN", 16)
    monkeypatch.setattr(repo_module, "_NAMESPACE_CACHE_LIMIT", 16)
    s = series(services=2)
    audit = AuditRepo.open_or_init(tmp_path / "audit", clock=Clock(), pack_every=500)
    first = s.snap
    sizes = []
    snap = first
    for v in range(1, 1001):  # 2,000 records: pending + outcome of 1,000 versions
        snap = (s.scale() if v % 50 == 0 else snap).with_version(v)
        audit.record(snap, "pending")
        audit.record(snap, "applied" if v % 3 else "rolled-back")
        if v % 100 == 0:
            audit.snapshot_at(v - 99)  # reads old trees: fills the read caches
            sizes.append((len(audit._entries), len(audit._versions), len(audit._services),
                          len(audit._namespaces), len(audit._snapshots), len(audit._indexes), len(audit._max_version)))
    for entries, versions, services, namespaces, snapshots, indexes, configs in sizes:
        assert entries <= 64 and versions <= 128 and services <= 16 and namespaces <= 16
        assert snapshots <= 4 and indexes == 1 and configs == 1
    assert sizes[-1][:2] == (64, 128)  # the bounds were reached, not merely unapproached
    # what fell out of the caches is read from the repository
    assert len(audit.history()) == 2000
    assert audit.next_version(first.config) == 1001
    assert audit.snapshot_at(1) == first
    assert audit.last_applied(first.config).version == 1000
    with pytest.raises(AuditError, match="version 1 was already recorded"):
        audit.record(s.scale().with_version(1), "pending")  # an old version, beyond the version cache
    audit.record(first, "applied", reason="re-recording v1 with its own digest is allowed")
    assert audit.last_applied(first.config) == first
