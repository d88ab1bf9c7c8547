"""The removal guard (DESIGN.md 6.1): the pure verdict, and what a pull request's plan says."""

from __future__ import annotations

import dataclasses

from helpers_render import do_render, make_cluster, make_config, make_service

from reconciler.guard import fallback_verdict, removal_verdict
from reconciler.intent.model import IntentSet, Safety
from reconciler.pipeline_io import make_plans
from reconciler.plan import format_plan


def _four():
    config = make_config()
    services = [make_service(f"s{i}", node_port_base=30000 + 10 * i) for i in range(4)]
    cluster = make_cluster({s: {"node-0": 1, "node-1": 1} for s in services})
    return config, services, cluster, do_render(config, cluster).snapshot


def test_verdict_counts_services_not_ports_or_backends():
    config, services, cluster, v1 = _four()
    # A lost node takes backends away, not Services: allowed whatever the limit.
    lost = make_cluster({s: {"node-0": 1} for s in services})
    v2 = do_render(config, lost, v1).snapshot
    verdict = removal_verdict(v1, v2, 0)
    assert verdict.served == 4 and verdict.removed == () and verdict.allowed

    two_left = make_cluster({s: {"node-0": 1} for s in services[:2]})
    v3 = do_render(config, two_left, v1).snapshot
    assert removal_verdict(v1, v3, 50).allowed  # 2 of 4 = 50%: not more than the limit
    assert not removal_verdict(v1, v3, 49).allowed
    one_left = make_cluster({services[0]: {"node-0": 1}})
    v4 = do_render(config, one_left, v1).snapshot
    refused = removal_verdict(v1, v4, 50)
    assert not refused.allowed and refused.removed == ("default/s1", "default/s2", "default/s3")
    text = refused.describe()
    assert "3 of 4 Services (75%)" in text and "spec.safety.maxRemovalPercent (50%)" in text and "default/s3" in text
    assert removal_verdict(v1, v4, 100).allowed


def test_one_service_may_always_leave_and_a_first_render_removes_nothing():
    config = make_config()
    only = make_service("only")
    v1 = do_render(config, make_cluster({only: {"node-0": 1}})).snapshot
    gone = do_render(config, make_cluster({}), v1).snapshot
    assert removal_verdict(v1, gone, 0).allowed  # a person deleting their one Service
    assert removal_verdict(None, v1, 0).allowed and removal_verdict(None, v1, 0).served == 0


def test_fallback_verdict_refuses_mass_fallback():
    _, _, _, v1 = _four()
    assert fallback_verdict(v1, ("default/s0",), 10).allowed
    assert not fallback_verdict(v1, ("default/s0", "default/s1", "default/s2"), 50).allowed
    # Services not on the switches do not count.
    assert fallback_verdict(v1, ("default/s0", "other/x", "other/y"), 30).allowed


def test_plan_says_the_reconciler_would_refuse_the_change():
    config, services, cluster, v1 = _four()
    cluster_after = make_cluster({services[0]: {"node-0": 1, "node-1": 1}})
    plans = make_plans(IntentSet((config,)), [config], cluster_after, {config.key: v1})
    text = format_plan(plans, "text")
    markdown = format_plan(plans, "markdown")
    for out in (text, markdown):
        assert "the reconciler would refuse this change" in out and "3 of 4 Services" in out
    raised = dataclasses.replace(config, safety=Safety(max_removal_percent=100))
    plans = make_plans(IntentSet((raised,)), [raised], cluster_after, {config.key: v1})
    assert "would refuse" not in format_plan(plans, "text")
