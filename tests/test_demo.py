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


def versions(report: DemoReport) -> dict[str, int]:
    """The versions of the demo's transactions by role. Step 3's drains end in one pass each: the
    scale-up's, then the scale-down's after the lost node's transaction (a lost node's buckets
    move at once: its connections are gone, there is nothing to drain)."""
    last_churn = report.drains_finished[-1]
    return {"first": 1, "scale_up": 2, "scale_up_step2": 3, "scale_down": 4, "lost_node": 5, "intent": last_churn + 1,
            "rolled_back": last_churn + 2, "without_api": last_churn + 3, "recovered": last_churn + 4}


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
    assert f"transactions {report.final_version - 1} applied, 1 refused, 1 resynced, 1 rolled-back" in text
    # The narrated writes are the transactions' own.
    for r in report.transactions:
        if r.outcome in ("applied", "rolled-back"):
            assert f"v{r.version} " in text


def test_transactions_in_order_with_their_outcomes(demo):
    report, _, _ = demo
    v = versions(report)
    # first apply, churn with its drains' step 2, intent change, rolled back, without web/api, recovered
    assert report.drains_started == (v["scale_up"], v["scale_down"])
    assert report.drains_finished[0] == v["scale_up_step2"] and len(report.drains_finished) == 2
    assert list(report.drains_finished[1:]) == list(range(v["lost_node"] + 1, v["intent"]))
    rolled = v["rolled_back"]
    assert passes(report) == [("applied", x) for x in range(1, rolled)] + [("rolled-back", rolled),
                                                                            ("applied", rolled + 1), ("applied", rolled + 2)]
    by_version = {r.version: r for r in report.transactions if r.outcome in ("applied", "rolled-back")}
    assert by_version[rolled].fell_back == ("web/api",)
    assert all(r.fell_back == () for x, r in by_version.items() if x != rolled)
    assert all(r.writes > 0 for r in by_version.values())
    # Churn moves a few buckets; the first apply writes everything to both switches.
    first = report.checks[0]
    assert by_version[1].writes == 2 * len(first.expected)
    assert all(by_version[x].writes < by_version[1].writes // 4 for x in report.drains_started)
    # Scaling back down moves as few buckets back; step 2 rewrites exactly the drained buckets.
    assert by_version[v["scale_up"]].writes == by_version[v["scale_down"]].writes == by_version[v["scale_up_step2"]].writes
    assert report.final_version == v["recovered"]


def test_established_connections_keep_their_node_through_the_drain(demo):
    report, text, _ = demo
    audit = AuditRepo.open_or_init(report.audit_repo, read_only=True)
    v = versions(report)
    step1, step2 = audit.snapshot_at(v["scale_up"], CONFIG), audit.snapshot_at(v["scale_up_step2"], CONFIG)
    drains = step1.by_name["web/frontend"].drains
    assert drains and {d.source for d in drains} == {"node-e"}
    assert all(step1.by_name["web/frontend"].assignment[d.bucket] == "node-c" for d in drains)
    assert step2.drain_until() is None and step2.by_name["web/frontend"].assignment == step1.by_name["web/frontend"].assignment
    # One long-lived connection per bucket; those in the draining buckets kept node-e while the
    # new ones opened in the same buckets went to node-c (the demo fails if one did not).
    assert report.connections_kept == report.connections_new == len(drains)
    assert f"{len(drains)} established connections kept their node in the {len(drains)} draining buckets" in text
    assert f"{len(drains)} new connections from 10.200.2.7" in text
    assert f"drain finished, v{v['scale_up_step2']}: the plain entries are in place" in text
    assert f"buckets drain from node-e to node-c until" in text
    for x in report.drains_finished:
        assert audit.snapshot_at(x, CONFIG).intent_commit == report.intent_commits[0]
    assert audit.snapshot_at(report.drains_finished[-1], CONFIG).drain_until() is None


def test_audit_repository_holds_every_record_and_the_switches_state(demo):
    report, _, _ = demo
    audit = AuditRepo.open_or_init(report.audit_repo, read_only=True)
    history = list(reversed(audit.history(config=CONFIG)))  # oldest first
    records = [(e.version, e.outcome) for e in history]
    v = versions(report)
    expected = []
    for x in range(1, v["recovered"] + 1):
        expected += [(x, "pending"), (x, "rolled-back" if x == v["rolled_back"] else "applied")]
    expected.append((v["recovered"], "applied"))  # step 6: the rebooted primary repaired (no new version)
    assert records == expected
    assert "drift repaired" in history[-1].reason and "sim-primary" in history[-1].reason
    rolled = next(e for e in history if e.outcome == "rolled-back")
    assert "web/api" in rolled.reason and "connection refused" in rolled.reason
    last = audit.last_applied(CONFIG)
    assert last is not None and last.version == v["recovered"]
    # The intent commit each snapshot was rendered for; from v["intent"] on, the bucketsPerService change.
    initial, change = report.intent_commits
    assert [audit.snapshot_at(x, CONFIG).intent_commit for x in range(1, last.version + 1)] == (
        [initial] * (v["intent"] - 1) + [change] * (last.version - v["intent"] + 1))
    assert {s.bucket_count for s in audit.snapshot_at(v["intent"] - 1, CONFIG).services} == {64}
    assert {s.bucket_count for s in last.services} == {128}
    # node-g was lost at v["lost_node"]: its buckets moved at once (a lost node has no connections
    # to keep, so nothing drains from it) and it never appears again.
    lost = audit.snapshot_at(v["lost_node"], CONFIG)
    assert all(x != "node-g" for s in lost.services for x in s.assignment)
    assert all(b.node != "node-g" for s in lost.services for b in s.backends)
    assert not any(d.source == "node-g" for s in lost.services for d in s.drains)
    for x in range(v["intent"] - 1, last.version + 1):
        if x != v["rolled_back"]:
            assert all(b.node != "node-g" for s in audit.snapshot_at(x, CONFIG).services for b in s.backends)
    assert "web/api" not in audit.snapshot_at(v["without_api"], CONFIG).by_name
    assert "web/api" in last.by_name


def test_both_switches_held_exactly_each_snapshot_when_read(demo):
    report, _, _ = demo
    v = versions(report)
    intent, without, recovered = v["intent"], v["without_api"], v["recovered"]
    # step 3: after each drained event's last step 2; then the intent change, again after the
    # rollback, without web/api, recovered, and step 6's two
    assert [c.version for c in report.checks] == [1, v["scale_up_step2"], report.drains_finished[-1], intent, intent, without,
                                                  recovered, recovered, recovered]
    for check in report.checks:
        assert set(check.held) == {"sim-primary", "sim-standby"}
        assert check.held["sim-primary"] == check.held["sim-standby"] == check.expected, check.label
    audit = AuditRepo.open_or_init(report.audit_repo, read_only=True)
    snap_without, snap_recovered = audit.snapshot_at(without, CONFIG), audit.snapshot_at(recovered, CONFIG)
    at = 5  # the index of the check after web/api left
    vips = {e[1][:2] for e in report.checks[at].expected if e[0] == "MyIngress.vip_table"}
    assert len(vips) == len(snap_without.services) == 3  # web/api's VIP left vip_table while it was fallen back
    assert len({e for e in report.checks[at + 1].expected if e[0] == "MyIngress.vip_table"}) == len(snap_recovered.services) == 4


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
    assert len(lines) == 2 * report.final_version + 1
    assert f"v{report.final_version}" in lines[0] and "applied" in lines[0]  # newest first: step 6's repair
    assert sum("rolled-back" in line for line in lines) == 1


def test_safety_step_refuses_the_mass_removal_and_repairs_the_rebooted_primary(demo):
    report, text, _ = demo
    refused = [r for r in report.transactions if r.outcome == "refused"]
    assert len(refused) == 1 and "4 of 4 Services" in refused[0].reason
    assert refused[0].writes == 0
    resynced = [r for r in report.transactions if r.outcome == "resynced" and r.writes]
    (repair,) = resynced
    assert "sim-primary" in repair.reason and repair.writes == len(report.checks[-1].expected)
    # Both switches were read after each: still the last version, exactly.
    final = report.final_version
    assert [c.version for c in report.checks[-2:]] == [final, final] and all(c.ok for c in report.checks[-2:])
    assert f"nothing to write, the switches never moved from v{final}" in text


def test_a_workdir_with_an_earlier_demo_is_refused(tmp_path):
    (tmp_path / "audit.git").mkdir()
    out, err = io.StringIO(), io.StringIO()
    assert run_demo(workdir=str(tmp_path), out=out, err=err) == 1
    assert "audit.git already exists" in err.getvalue() and out.getvalue() == ""
    assert not (tmp_path / "intent").exists()
