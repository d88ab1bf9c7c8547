"""`p4kube plan` output: text, markdown and JSON, and the terraform-style exit codes."""

from __future__ import annotations

import json
import re

import pytest
from helpers_render import do_render, make_cluster, make_config, make_service

from reconciler.cluster.model import ClusterState
from reconciler.diff import diff_snapshots
from reconciler.intent.model import IntentSet, LoadBalancerConfig
from reconciler.pipeline_io import make_plans
from reconciler.plan import (
    EXIT_CHANGES,
    EXIT_NO_CHANGES,
    MARKDOWN_MARKER,
    ConfigPlan,
    exit_code,
    format_plan,
    plan_to_json,
)
from reconciler.render import RenderResult
from reconciler.snapshot import Snapshot

COMMIT = "0123456789abcdef" * 2 + "01234567"


def plan_of(config: LoadBalancerConfig, old: Snapshot | None, result: RenderResult, **kw: object) -> ConfigPlan:
    return ConfigPlan(config.key, old, result.snapshot, diff_snapshots(old, result.snapshot), result.issues, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def change_plan() -> ConfigPlan:
    """alpha scaled (2:1 -> 2:2), beta removed, gamma added; one error and one warning issue."""
    config = make_config()
    alpha, beta = make_service("alpha"), make_service("beta", node_port_base=30010)
    v1 = do_render(config, make_cluster({alpha: {"node-0": 2, "node-1": 1}, beta: {"node-1": 1}})).snapshot
    gamma = make_service("gamma", node_port_base=30020)
    outside = make_service("outside", node_port_base=30030, load_balancer_ip="192.0.2.1")
    idle = make_service("idle", node_port_base=30040)
    cluster = make_cluster({alpha: {"node-0": 2, "node-1": 2}, gamma: {"node-2": 3}, outside: {"node-0": 1}, idle: {}})
    result = do_render(config, cluster, v1, intent_commit=COMMIT)
    return plan_of(config, v1, result, intent_commit=COMMIT, intent_dirty=True)


@pytest.fixture(scope="module")
def install_plan(multi_config: LoadBalancerConfig, multi_render: RenderResult) -> ConfigPlan:
    return plan_of(multi_config, None, multi_render)


@pytest.fixture(scope="module")
def noop_plan(multi_config: LoadBalancerConfig, recorded_cluster: ClusterState, multi_render: RenderResult) -> ConfigPlan:
    again = do_render(multi_config, recorded_cluster, multi_render.snapshot)
    return plan_of(multi_config, multi_render.snapshot, again)


# --- exit codes -------------------------------------------------------------------------------------


def test_exit_codes(install_plan: ConfigPlan, noop_plan: ConfigPlan, change_plan: ConfigPlan) -> None:
    assert (EXIT_NO_CHANGES, EXIT_CHANGES) == (0, 2)
    assert exit_code([noop_plan]) == 0
    assert exit_code([install_plan]) == 2
    assert exit_code([noop_plan, change_plan]) == 2
    assert exit_code([]) == 0


def test_new_snapshot_version_is_a_change() -> None:
    # A Service added without ready endpoints needs no table writes, but it gets a VIP and a
    # service id and the snapshot gets a new version to commit: the plan must not say "no changes".
    config = make_config()
    alpha = make_service("alpha")
    v1 = do_render(config, make_cluster({alpha: {"node-0": 2}})).snapshot
    result = do_render(config, make_cluster({alpha: {"node-0": 2}, make_service("idle", node_port_base=30030): {}}), v1)
    assert result.changed and result.snapshot.version == 2
    plan = plan_of(config, v1, result)
    text = format_plan([plan], "text")
    assert "+ default/idle" in text
    assert exit_code([plan]) == EXIT_CHANGES, f"plan lists an added Service and a new version, yet exits 0:\n{text}"
    assert "No changes" not in text, text


# --- text ---------------------------------------------------------------------------------------------


def test_text_install(install_plan: ConfigPlan) -> None:
    text = format_plan([install_plan], "text")
    lines = text.splitlines()
    assert lines[0] == "LoadBalancerConfig p4kube-system/p4kube-config: new, version 1"
    assert "+ payments/dns-cache  198.51.100.10:53/UDP  id 1  replica-weighted, 64 buckets" in text
    assert "+ web/frontend  198.51.100.13:80/TCP  id 4  replica-weighted, 64 buckets" in text
    # web/frontend: node-c 1 replica, node-e 2 -> 21 and 43 of 64 buckets.
    assert re.search(r"node-c\s+replicas 1\s+buckets 21 \(32\.8%\)", text), text
    assert re.search(r"node-e\s+replicas 2\s+buckets 43 \(67\.2%\)", text), text
    assert re.search(r"MyIngress\.backend_table\s+\+256 ~0 -0", text)
    assert re.search(r"MyIngress\.vip_table\s+\+4 ~0 -0", text)
    assert re.search(r"MyIngress\.ipv4_lpm\s+\+1 ~0 -0", text)
    writes = len(install_plan.diff)
    assert lines[-1] == f"Plan: 4 to add, 0 to change, 0 to remove; {writes} table writes."
    assert "web/admin" not in text and "default/kubernetes" not in text


def test_text_changes(change_plan: ConfigPlan) -> None:
    text = format_plan([change_plan], "text")
    assert text.splitlines()[0] == "LoadBalancerConfig p4kube-system/test-config: version 1 -> 2"
    assert "intent commit 0123456789ab + uncommitted changes" in text
    assert "~ default/alpha  203.0.113.10:80/TCP" in text
    assert "- default/beta  203.0.113.11:80/TCP" in text
    assert "+ default/gamma  203.0.113.12:80/TCP" in text
    assert re.search(r"node-1\s+replicas 1 -> 2\s+buckets 21 \(32\.8%\) -> 32 \(50\.0%\)", text), text
    assert re.search(r"node-0\s+replicas 2 -> 2\s+buckets 43 \(67\.2%\) -> 32 \(50\.0%\)", text), text
    assert "! default/outside: requested IP 192.0.2.1" in text
    assert "? default/idle: no ready endpoints" in text
    assert text.splitlines()[-1].startswith("Plan: 2 to add, 1 to change, 1 to remove; ")
    counts = change_plan.diff.counts()
    per = counts["MyIngress.backend_table"]
    assert re.search(
        rf"MyIngress\.backend_table\s+\+{per.get('INSERT', 0)} ~{per.get('MODIFY', 0)} -{per.get('DELETE', 0)}", text
    )


def test_text_no_changes(noop_plan: ConfigPlan) -> None:
    text = format_plan([noop_plan], "text")
    assert text.splitlines()[0] == "LoadBalancerConfig p4kube-system/p4kube-config: version 1, no changes"
    assert text.splitlines()[-1] == "No changes. The switches already hold what the intent and cluster describe."
    assert "table writes" not in text


def test_pod_ip_backends_are_labelled_with_their_address() -> None:
    config = make_config(backend_mode="podIP", buckets=4)
    svc = make_service("pods")
    cluster = make_cluster({svc: {"node-0": 1}}, nodes=1)
    plan = plan_of(config, None, do_render(config, cluster))
    address = cluster.endpoints["default/pods"][0].address
    assert f"node-0/{address}" in format_plan([plan], "text")
    assert plan_to_json([plan])["configs"][0]["services"][0]["backends"][0]["backend"] == f"node-0/{address}"


# --- markdown -----------------------------------------------------------------------------------------


def test_markdown(change_plan: ConfigPlan) -> None:
    md = format_plan([change_plan], "markdown")
    assert md.startswith(MARKDOWN_MARKER + "\n")
    assert "**2 to add, 1 to change, 1 to remove**" in md
    assert "#### `p4kube-system/test-config`: version 1 -> 2" in md
    assert "| ~ | `default/alpha` | 203.0.113.10:80/TCP | `node-0` | 2 → 2 | 43 → 32 |" in md
    assert "|  |  |  | `node-1` | 1 → 2 | 21 → 32 |" in md
    assert "| - | `default/beta` | 203.0.113.11:80/TCP | `node-1` | 1 | 64 |" in md
    assert "| + | `default/gamma` | 203.0.113.12:80/TCP | `node-2` | 3 | 64 |" in md
    assert "| + | `default/idle` | 203.0.113.13:80/TCP | _no ready backends_ | | |" in md
    per = change_plan.diff.counts()["MyIngress.vip_table"]
    assert f"| `MyIngress.vip_table` | {per.get('INSERT', 0)} | {per.get('MODIFY', 0)} | {per.get('DELETE', 0)} |" in md
    # Issues are free text: inside a fenced code block, never Markdown.
    fence = md.index("```text\n")
    assert "\n❌ default/outside: requested IP 192.0.2.1" in md[fence:]
    assert "\n⚠️ default/idle: no ready endpoints" in md[fence:]


def test_markdown_no_changes(noop_plan: ConfigPlan) -> None:
    md = format_plan([noop_plan], "markdown")
    assert md.startswith(MARKDOWN_MARKER)
    assert "**No changes.**" in md
    assert "| Service |" not in md and "Table writes" not in md


# --- json ------------------------------------------------------------------------------------------------


def test_json(change_plan: ConfigPlan, noop_plan: ConfigPlan) -> None:
    doc = json.loads(format_plan([change_plan, noop_plan], "json"))
    assert doc == plan_to_json([change_plan, noop_plan])
    assert set(doc) == {"changed", "summary", "configs"}
    assert doc["changed"] is True
    assert doc["summary"] == {
        "added": 2, "changed": 1, "removed": 1, "writes": len(change_plan.diff), "drainsStarted": 11, "drainsFinished": 0,
    }
    first, second = doc["configs"]
    assert set(first) == {
        "config", "changed", "fromVersion", "toVersion", "digest", "intentCommit", "intentDirty", "services", "writes", "issues",
    }
    assert (first["config"], first["changed"], first["fromVersion"], first["toVersion"]) == ("p4kube-system/test-config", True, 1, 2)
    assert first["digest"] == change_plan.new.digest
    assert (first["intentCommit"], first["intentDirty"]) == (COMMIT, True)
    services = {s["name"]: s for s in first["services"]}
    assert {n: s["change"] for n, s in services.items()} == {
        "default/alpha": "changed", "default/beta": "removed", "default/gamma": "added", "default/idle": "added",
    }
    alpha = services["default/alpha"]
    assert (alpha["vip"], alpha["port"], alpha["protocol"]) == ("203.0.113.10", 80, "TCP")
    assert alpha["backends"] == [
        {"backend": "node-0", "replicasBefore": 2, "replicasAfter": 2, "bucketsBefore": 43, "bucketsAfter": 32},
        {"backend": "node-1", "replicasBefore": 1, "replicasAfter": 2, "bucketsBefore": 21, "bucketsAfter": 32},
    ]
    # The 11 buckets that move from node-0 to node-1 drain (the default timeout is 60s).
    (started,) = alpha["drains"]["started"]
    assert (started["buckets"], started["from"], started["to"], alpha["drains"]["finished"]) == (11, "node-0", "node-1", 0)
    assert services["default/beta"]["backends"] == [
        {"backend": "node-1", "replicasBefore": 1, "replicasAfter": None, "bucketsBefore": 64, "bucketsAfter": None}
    ]
    assert services["default/idle"]["backends"] == []
    assert first["writes"] == change_plan.diff.counts()
    issues = {(i["service"], i["severity"]) for i in first["issues"]}
    assert issues == {("default/outside", "error"), ("default/idle", "warning")}
    assert all(set(i) == {"service", "severity", "message"} for i in first["issues"])
    assert (second["changed"], second["services"], second["writes"]) == (False, [], {})
    assert second["fromVersion"] == second["toVersion"] == 1


def test_json_no_changes(noop_plan: ConfigPlan) -> None:
    doc = json.loads(format_plan([noop_plan], "json"))
    assert doc["changed"] is False
    assert doc["summary"] == {"added": 0, "changed": 0, "removed": 0, "writes": 0, "drainsStarted": 0, "drainsFinished": 0}


# --- through the CLI's edge -----------------------------------------------------------------------------


def test_make_plans_with_previous(multi_config: LoadBalancerConfig, recorded_cluster: ClusterState, multi_render: RenderResult) -> None:
    intent = IntentSet(configs=(multi_config,), commit=COMMIT)
    (fresh,) = make_plans(intent, [multi_config], recorded_cluster, {})
    assert fresh.old is None and fresh.changed and fresh.new.intent_commit == COMMIT
    assert fresh.new.digest == multi_render.snapshot.digest
    (again,) = make_plans(intent, [multi_config], recorded_cluster, {multi_config.key: fresh.new})
    assert not again.changed and exit_code([again]) == 0
    assert again.new.version == fresh.new.version


def test_markdown_escapes_names_that_are_not_kubernetes_names() -> None:
    """A node name that no API server would accept (a forged recording, a previous snapshot)
    is shown escaped on one table row: it cannot add a heading or open an HTML comment."""
    from reconciler.cluster.model import Node

    crafted = "node-x\n\n## No changes. Safe to merge\n<!--"
    nodes = {"node-0": Node("node-0", "10.1.0.1"), crafted: Node(crafted, "10.1.0.2")}
    svc = make_service("alpha")
    config = make_config()
    md = format_plan([plan_of(config, None, do_render(config, make_cluster({svc: {"node-0": 1, crafted: 1}}, nodes)))], "markdown")
    lines = md.splitlines()
    assert not any(line.startswith("#") and "Safe to merge" in line for line in lines)
    assert md.count("<!--") == 1
    row = next(line for line in lines if "not a valid name" in line)
    assert row.startswith("|") and row.count("|") == 7
    assert "node&#45;x\\n\\n&#35;&#35; No changes&#46; Safe to merge\\n&#60;&#33;&#45;&#45; _(not a valid name)_" in row
    assert "| `node-0` |" in md
