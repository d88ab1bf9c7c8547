"""The plan comment's summary (reconciler.plan_summary): errors first, bounded, escaped."""

from __future__ import annotations

from dataclasses import replace

from helpers_render import do_render, make_cluster, make_config, make_service

from reconciler.cluster.model import Node
from reconciler.diff import diff_snapshots
from reconciler.plan import ConfigPlan
from reconciler.plan_summary import ISSUES_BUDGET, SUMMARY_BUDGET, cut_markdown, format_summary, share_moved
from reconciler.render import RenderIssue


def _plan(nodes_before: dict[str, int], nodes_after: dict[str, int], nodes: int | dict[str, Node] = 4) -> ConfigPlan:
    config, alpha = make_config(), make_service("alpha")
    v1 = do_render(config, make_cluster({alpha: nodes_before}, nodes)).snapshot
    v2 = do_render(config, make_cluster({alpha: nodes_after}, nodes), v1)
    return ConfigPlan(config.key, v1, v2.snapshot, diff_snapshots(v1, v2.snapshot), v2.issues)


def test_share_moved_is_the_traffic_that_changes_backend() -> None:
    plan = _plan({"node-0": 2, "node-1": 1}, {"node-0": 2, "node-1": 2})  # 43:21 -> 32:32 of 64 buckets
    (change,) = plan.diff.services
    assert share_moved(change) == 11 / 64
    md = format_summary([plan])
    assert "| `default/alpha` | 203.0.113.10:80/TCP | 17.2% | `node-0` 43 → 32, `node-1` 21 → 32 |" in md


def test_errors_come_first_and_many_issues_are_cut_with_a_count() -> None:
    plan = _plan({"node-0": 1}, {"node-0": 2})
    warnings = tuple(RenderIssue(f"default/w{i}", "no ready endpoints " + "x" * 80) for i in range(2000))
    errors = (RenderIssue("default/bad", "requested IP 192.0.2.1 is outside every pool", "error"),)
    md = format_summary([replace(plan, issues=warnings + errors)])
    assert len(md) < SUMMARY_BUDGET
    assert "#### Issues: 1 error(s), 2000 warning(s)" in md
    body = md.split("```text\n", 1)[1].split("\n```", 1)[0]
    lines = body.splitlines()
    assert lines[0] == "❌ default/bad: requested IP 192.0.2.1 is outside every pool"
    assert len(body) <= ISSUES_BUDGET + 100 and lines[-1].startswith("… and ") and lines[-1].endswith("more (see the full plan)")


def test_a_crafted_node_name_is_escaped_in_the_largest_moves() -> None:
    crafted = "node-x\n\n## No changes. Safe to merge\n<!--"
    nodes = {"node-0": Node("node-0", "10.1.0.1"), crafted: Node(crafted, "10.1.0.2")}
    md = format_summary([_plan({"node-0": 1}, {"node-0": 1, crafted: 3}, nodes)])
    assert md.count("<!--") == 1 and not any(line.startswith("#") and "Safe" in line for line in md.splitlines())
    assert "node&#45;x\\n\\n&#35;&#35; No changes&#46; Safe to merge\\n&#60;&#33;&#45;&#45; _(not a valid name)_ 0 → 48" in md


def test_cut_markdown_closes_what_it_leaves_open() -> None:
    text = "# plan\n\n<details><summary>writes</summary>\n\n" + "| a | b |\n" * 50 + "</details>\n\n````text\n" + "line ```\n" * 500 + "````\n"
    assert cut_markdown(text, len(text.encode()), "n") == text
    cut = cut_markdown(text, 3000, "cut: see <the> artifact")
    assert len(cut.encode()) <= 3000
    assert cut.count("<details>") == cut.count("</details>") == 1
    assert cut.count("````") == 2 and cut.rstrip().endswith("_cut&#58; see &#60;the&#62; artifact_")
    inner = cut_markdown(text, 600, "cut")
    assert len(inner.encode()) <= 600 and inner.count("<details>") == inner.count("</details>") == 1
