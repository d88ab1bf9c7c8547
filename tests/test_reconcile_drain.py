"""`p4kube reconcile --once` and connection drains (DESIGN.md 5.1): a scale event is step 1
(draining entries, recorded); a pass mid-drain writes and records nothing and says when to run
again; a pass at or after `until` is step 2 (plain entries, recorded). The real command in this
process (its wall clock replaced), two software switches on loopback, a real audit repository."""

from __future__ import annotations

import json

from helpers import run_cli
from test_reconcile_audit import CONFIG, MULTI, entries_of, intent_repo, switch_entries

from reconciler import p4names as n
from reconciler.audit.repo import AuditRepo
from reconciler.cli import apply as apply_cli
from reconciler.cluster.recorded import load_cluster_file
from reconciler.cluster.synthetic import cluster_to_list_yaml, with_scaled_service
from reconciler.snapshot import format_time

NOW = 1_800_000_000.0


def draining(sw) -> int:
    return sum(1 for e in switch_entries(sw) if e[0] == n.BACKEND_TABLE and e[2] == n.DNAT_DRAINING)


def test_reconcile_once_starts_reports_and_finishes_a_drain(tmp_path, switch_pair, capsys, monkeypatch):
    standby, primary = switch_pair
    intent = intent_repo(tmp_path / "intent", (standby.port, primary.port))
    audit_dir = tmp_path / "audit.git"
    scaled = tmp_path / "cluster2.yaml"
    scaled.write_text(cluster_to_list_yaml(with_scaled_service(load_cluster_file(MULTI / "cluster.yaml"), "web/frontend", "node-c", +2)))
    base = ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent),
            "--audit-repo", str(audit_dir)]
    clock = [NOW]
    monkeypatch.setattr(apply_cli, "wall_clock", lambda: clock[0])

    assert run_cli(capsys, *base, "--cluster", str(MULTI / "cluster.yaml"))[0] == 0
    code, out, _ = run_cli(capsys, *base, "--cluster", str(scaled))
    assert code == 0
    audit = AuditRepo.open_or_init(audit_dir, read_only=True)
    v2 = audit.last_applied(CONFIG)
    until = v2.drain_until()
    assert until == NOW + 60  # the default connectionDrainTimeout
    buckets = sum(len(s.drains) for s in v2.services)
    assert buckets > 0 and draining(standby) == draining(primary) == buckets
    assert (f"drain started: {buckets} buckets of 1 Service until {format_time(until)}" in out
            and f"run again after {format_time(until)} to finish it" in out)
    assert f"drain started: {buckets} buckets" in audit.history(config=CONFIG)[0].trailers["Reason"]

    # Mid-drain: nothing is written or recorded; the command says when to run again.
    records = len(audit.history(config=CONFIG))
    clock[0] = until - 1
    code, out, _ = run_cli(capsys, *base, "--cluster", str(scaled))
    assert code == 0
    assert f"drain in progress: {buckets} buckets until {format_time(until)}; run again after {format_time(until)} to finish it" in out
    code, out, _ = run_cli(capsys, *base, "--cluster", str(scaled), "-o", "json")
    doc = json.loads(out)
    assert doc["outcome"] == "unchanged" and all(sw["writes"] == 0 for sw in doc["switches"])
    assert doc["drain"]["started"] is None and doc["drain"]["draining"]["until"] == format_time(until)
    assert doc["drain"]["draining"]["buckets"] == buckets
    assert len(AuditRepo.open_or_init(audit_dir, read_only=True).history(config=CONFIG)) == records
    # `p4kube status` says so too.
    status = ["status", "--intent", str(intent), "--pipeline-dir", str(intent), "--audit-repo", str(audit_dir),
              "--allow-insecure-switches", "--cluster", str(scaled)]
    code, out, _ = run_cli(capsys, *status, "-o", "json")
    assert code == 0 and json.loads(out)["configs"][0]["drainingUntil"] == format_time(until)
    assert f"draining until {format_time(until)}" in run_cli(capsys, *status)[1]
    assert switch_entries(standby) == switch_entries(primary) == entries_of(v2)

    # At `until`: step 2, a transaction like any other.
    clock[0] = until
    code, out, _ = run_cli(capsys, *base, "--cluster", str(scaled), "-o", "json")
    assert code == 0
    doc = json.loads(out)
    audit = AuditRepo.open_or_init(audit_dir, read_only=True)
    v3 = audit.last_applied(CONFIG)
    assert doc["outcome"] == "applied" and doc["version"] == v3.version == v2.version + 1
    assert doc["drain"]["finished"].startswith(f"{buckets} buckets of 1 Service") and doc["drain"]["draining"] is None
    assert v3.drain_until() is None and draining(standby) == draining(primary) == 0
    assert switch_entries(standby) == switch_entries(primary) == entries_of(v3)
    assert "drain finished" in audit.history(config=CONFIG)[0].trailers["Reason"]
    assert json.loads(run_cli(capsys, *status, "-o", "json")[1])["configs"][0]["drainingUntil"] is None


def held(sw) -> set[tuple]:
    """What a software switch's device holds, read in process (also once its server is stopped)."""
    return {(t, e.key, e.action, tuple(e.params.values())) for t in n.TABLE_ORDER for e in sw.entries(1, t)}


def test_errors_and_a_dead_switch_mid_drain_remove_nothing_and_end_no_drain(tmp_path, switch_pair, capsys, monkeypatch):
    """DESIGN.md 6.1 while the switches hold a drain (step 1): a typo in the intent, an empty
    recording and a dead primary, before and after `until`, each refuse and write nothing; both
    switches keep the draining snapshot, exactly (an error is never a removal, nor a step 2)."""
    from helpers import commit_all

    standby, primary = switch_pair
    intent = intent_repo(tmp_path / "intent", (standby.port, primary.port))
    audit_dir = tmp_path / "audit.git"
    scaled = tmp_path / "cluster2.yaml"
    scaled.write_text(cluster_to_list_yaml(with_scaled_service(load_cluster_file(MULTI / "cluster.yaml"), "web/frontend", "node-c", +2)))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    base = ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent),
            "--audit-repo", str(audit_dir)]
    clock = [NOW]
    monkeypatch.setattr(apply_cli, "wall_clock", lambda: clock[0])
    assert run_cli(capsys, *base, "--cluster", str(MULTI / "cluster.yaml"))[0] == 0
    assert run_cli(capsys, *base, "--cluster", str(scaled))[0] == 0
    v2 = AuditRepo.open_or_init(audit_dir, read_only=True).last_applied(CONFIG)
    until = v2.drain_until()
    assert until is not None and draining(standby) == draining(primary) > 0
    step1 = (held(standby), held(primary))
    assert switch_entries(standby) == switch_entries(primary) == entries_of(v2)
    records = len(AuditRepo.open_or_init(audit_dir, read_only=True).history(config=CONFIG))

    def unchanged() -> None:
        assert (held(standby), held(primary)) == step1
        audit = AuditRepo.open_or_init(audit_dir, read_only=True)
        assert audit.last_applied(CONFIG).digest == v2.digest and len(audit.history(config=CONFIG)) == records

    good = (intent / "lbconfig.yaml").read_text()
    for clock[0] in (until - 1, until + 1):  # mid-drain, and when step 2 would be due
        (intent / "lbconfig.yaml").write_text(good.replace("algorithm: replica-weighted", "algorithm: replica-weigthed"))
        commit_all(intent, "typo")
        code, out, err = run_cli(capsys, *base, "--cluster", str(scaled))
        assert code == 1 and "replica-weigthed" in out + err
        unchanged()
        (intent / "lbconfig.yaml").write_text(good)
        commit_all(intent, "fixed")
        code, out, err = run_cli(capsys, *base, "--cluster", str(empty))
        assert code == 1 and "empty" in (out + err).lower()
        unchanged()
    primary.stop(0)
    code, out, err = run_cli(capsys, *base, "--cluster", str(scaled))  # step 2 due, the primary dead
    assert code != 0 and "nothing" in (out + err).lower()
    unchanged()
