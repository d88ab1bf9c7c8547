"""`p4kube demo` end to end, in-process: every step's effect is checked from the outside (the
audit repository on disk, `p4kube audit log`) and from what the demo read off both switches."""

from __future__ import annotations

import io
import re

import pytest

from reconciler.audit.repo import AuditRepo
from reconciler.cli import main
from reconciler.demo import DemoReport, run_demo

CONFIG = "p4kube-system/p4kube-config"
FALLBACK = "loadbalancer.k8s.io/p4kube"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run of the whole demo (a few seconds), shared by the tests below."""
    work = tmp_path_factory.mktemp("demo")
    out, err = io.StringIO(), io.StringIO()
    reports: list[DemoReport] = []
    code = run_demo(workdir=str(work), out=out, err=err, on_report=reports.append)
    assert code == 0, out.getvalue()[-3000:] + err.getvalue()
    assert len(reports) == 1
    flat = " ".join(out.getvalue().split())  # the narration wraps long lines
    return reports[0], flat, err.getvalue()


def passes(report: DemoReport) -> list[tuple[str, int | None]]:
    """(outcome, version) of every transaction that wrote or tried to write (step 6's refusal
    and repair are checked on their own)."""
    return [(r.outcome, r.version) for r in report.transactions if r.outcome in ("applied", "rolled-back")]


def test_every_step_is_narrated_and_the_summary_names_the_audit_repository(demo):
    report, text, err = demo
    assert err == ""
    for header in ("== 1. Set up", "== 2. Validate, render", "== 3. Cluster churn", "== 4. An intent change",
                   "== 5. Injected failure", "== 6. Safety", "== Summary"):
        assert header in text
    assert f"p4kube audit log --repo {report.audit_repo}" in text
    assert f"rm -rf {report.workdir}" in text
    assert "Plan: 4 to add, 0 to change, 0 to remove" in text
    assert "transactions 7 applied, 1 refused, 1 resynced, 1 rolled-back" in text
    # The narrated writes are the transactions' own.
    for r in report.transactions:
        if r.outcome in ("applied", "rolled-back"):
            assert f"v{r.version} " in text


def test_transactions_in_order_with_their_outcomes(demo):
    report, _, _ = demo
    # 1 first apply, 2-4 churn, 5 intent change, 6 rolled back, 7 without web/api, 8 recovered
    assert passes(report) == [("applied", v) for v in range(1, 6)] + [("rolled-back", 6), ("applied", 7), ("applied", 8)]
    by_version = {r.version: r for r in report.transactions if r.outcome in ("applied", "rolled-back")}
    assert by_version[6].fell_back == ("web/api",)
    assert all(by_version[v].fell_back == () for v in (1, 2, 3, 4, 5, 7, 8))
    assert all(r.writes > 0 for r in by_version.values())
    # Churn moves a few buckets; the first apply writes everything to both switches.
    first = report.checks[0]
    assert by_version[1].writes == 2 * len(first.expected)
    assert all(by_version[v].writes < by_version[1].writes // 4 for v in (2, 3, 4))
    assert by_version[2].writes == by_version[3].writes  # scaling back down moves as few buckets back
    assert report.final_version == 8


def test_audit_repository_holds_every_record_and_the_switches_state(demo):
    report, _, _ = demo
    audit = AuditRepo.open_or_init(report.audit_repo, read_only=True)
    history = list(reversed(audit.history(config=CONFIG)))  # oldest first
    records = [(e.version, e.outcome) for e in history]
    expected = []
    for v in range(1, 9):
        expected += [(v, "pending"), (v, "rolled-back" if v == 6 else "applied")]
    expected.append((8, "applied"))  # step 6: the rebooted primary repaired to v8 (no new version)
    assert records == expected
    assert "drift repaired" in history[-1].reason and "sim-primary" in history[-1].reason
    rolled = next(e for e in history if e.outcome == "rolled-back")
    assert "web/api" in rolled.reason and "connection refused" in rolled.reason
    last = audit.last_applied(CONFIG)
    assert last is not None and last.version == 8
    # The intent commit each snapshot was rendered for; v5 on is the bucketsPerService change.
    initial, change = report.intent_commits
    assert [audit.snapshot_at(v, CONFIG).intent_commit for v in range(1, 9)] == [initial] * 4 + [change] * 4
    assert {s.bucket_count for s in audit.snapshot_at(4, CONFIG).services} == {64}
    assert {s.bucket_count for s in last.services} == {128}
    # node-g was lost at v4 and never holds buckets again.
    for v in (4, 5, 7, 8):
        assert all(b.node != "node-g" for s in audit.snapshot_at(v, CONFIG).services for b in s.backends)
    assert "web/api" not in audit.snapshot_at(7, CONFIG).by_name
    assert "web/api" in last.by_name


def test_both_switches_held_exactly_each_snapshot_when_read(demo):
    report, _, _ = demo
    assert [c.version for c in report.checks] == [1, 4, 5, 5, 7, 8, 8, 8]  # v5 again after the rollback; step 6
    for check in report.checks:
        assert set(check.held) == {"sim-primary", "sim-standby"}
        assert check.held["sim-primary"] == check.held["sim-standby"] == check.expected, check.label
    audit = AuditRepo.open_or_init(report.audit_repo, read_only=True)
    v7, v8 = audit.snapshot_at(7, CONFIG), audit.snapshot_at(8, CONFIG)
    vips = {e[1][:2] for e in report.checks[4].expected if e[0] == "MyIngress.vip_table"}
    assert len(vips) == len(v7.services) == 3  # web/api's VIP left vip_table while it was fallen back
    assert len({e for e in report.checks[5].expected if e[0] == "MyIngress.vip_table"}) == len(v8.services) == 4


def test_fallback_annotations_and_their_removal_on_recovery(demo):
    report, text, _ = demo
    ann = report.fallback_annotations
    assert ann[FALLBACK] == "disabled"
    assert ann["loadbalancer.k8s.io/p4kube-fallback-by"] == "p4kube"
    assert "web/api" in ann["loadbalancer.k8s.io/p4kube-fallback-reason"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ann["loadbalancer.k8s.io/p4kube-fallback-time"])
    rec = report.recovered_annotations
    assert rec[FALLBACK] == "enabled"
    assert not [k for k in rec if k.startswith("loadbalancer.k8s.io/p4kube-fallback")]
    assert "misses vip_table" in text  # a packet to the fallen-back VIP was routed, not balanced
    assert "(web/api) leaves sim-primary on port 1 for node-" in text  # and balanced again after recovery


def test_audit_log_command_lists_the_demo_records(demo, capsys):
    report, _, _ = demo
    capsys.readouterr()
    assert main(["audit", "log", "--repo", str(report.audit_repo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 17
    assert "v8" in lines[0] and "applied" in lines[0]  # newest first: step 6's repair
    assert sum("rolled-back" in line for line in lines) == 1


def test_safety_step_refuses_the_mass_removal_and_repairs_the_rebooted_primary(demo):
    report, text, _ = demo
    refused = [r for r in report.transactions if r.outcome == "refused"]
    assert len(refused) == 1 and "4 of 4 Services" in refused[0].reason
    assert refused[0].writes == 0
    resynced = [r for r in report.transactions if r.outcome == "resynced" and r.writes]
    (repair,) = resynced
    assert "sim-primary" in repair.reason and repair.writes == len(report.checks[-1].expected)
    # Both switches were read after each: still v8, exactly.
    assert [c.version for c in report.checks[-2:]] == [8, 8] and all(c.ok for c in report.checks[-2:])
    assert "nothing to write, the switches never moved from v8" in text


def test_a_workdir_with_an_earlier_demo_is_refused(tmp_path):
    (tmp_path / "audit.git").mkdir()
    out, err = io.StringIO(), io.StringIO()
    assert run_demo(workdir=str(tmp_path), out=out, err=err) == 1
    assert "audit.git already exists" in err.getvalue() and out.getvalue() == ""
    assert not (tmp_path / "intent").exists()
