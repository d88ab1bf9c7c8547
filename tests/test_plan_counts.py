"""The plan's write counts without the writes: a diff onto empty tables counts its INSERTs from the
Services (no Entry and Update per entry) and must give exactly what counting the phases gives, so
every plan form (plan.md, plan-full.md, plan.json, plan.txt, stdout) stays byte-identical."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from test_plan_scale import intent_dir

from reconciler.cluster.model import ClusterState, Endpoint
from reconciler.cluster.synthetic import synthetic_cluster
from reconciler.diff import SnapshotDiff, diff_snapshots
from reconciler.intent.loader import load_intent
from reconciler.p4names import FWD, IPV4_LPM
from reconciler.pipeline_io import render_one
from reconciler.plan import ConfigPlan, format_plan
from reconciler.plan_summary import format_summary
from reconciler.snapshot import Entry, Snapshot

SERVICES = 200


def moved(base: ClusterState) -> ClusterState:
    """Twenty Services gain three pods on a node they did not use: some buckets move (and drain)."""
    endpoints = dict(base.endpoints)
    for i, key in enumerate(sorted(base.services)[:20]):
        node = next(n for n in sorted(base.nodes) if all(ep.node != n for ep in endpoints[key]))
        old = endpoints[key]
        endpoints[key] = old + tuple(Endpoint(f"100.100.{i}.{j}", node, old[0].ports, f"{key}-new-{j}") for j in range(3))
    return ClusterState(services=base.services, endpoints=endpoints, nodes=base.nodes, resource_version="2")


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Snapshot, Snapshot]:
    intent = load_intent([str(intent_dir(tmp_path_factory.mktemp("counts") / "intent"))])
    config = intent.pick_config(None)
    base = synthetic_cluster(services=SERVICES, nodes=40, endpoints=4 * SERVICES, seed=7)
    v1 = render_one(intent, config, base, None).snapshot
    v2 = render_one(intent, config, moved(base), v1).snapshot
    assert not any(s.drains for s in v1.services) and sum(len(s.drains) for s in v2.services) > 20
    return config.key, v1, v2


def by_phases(diff: SnapshotDiff) -> SnapshotDiff:
    """The same diff counted from its phases (the Entry and Update per write)."""
    return dataclasses.replace(diff, known_counts=None)


def forms(plan: ConfigPlan) -> dict[str, str]:
    out = {fmt: format_plan([plan], fmt) for fmt in ("markdown", "json", "text")}
    out["summary"] = format_summary([plan])
    return out


def assert_same_counts(diff: SnapshotDiff) -> None:
    slow = by_phases(diff)
    assert diff.counts() == slow.counts() and len(diff) == len(slow) and diff.empty == slow.empty


@pytest.mark.parametrize("case", ["new", "new with drains", "previous with drains", "nothing changed"])
def test_plan_forms_are_byte_identical(snapshots: tuple[str, Snapshot, Snapshot], case: str) -> None:
    key, v1, v2 = snapshots
    old, new = {"new": (None, v1), "new with drains": (None, v2), "previous with drains": (v1, v2), "nothing changed": (v2, v2)}[case]
    diff = diff_snapshots(old, new)
    if old is None:
        assert diff.known_counts is not None, "onto empty tables the writes are counted, not made"
    fast = ConfigPlan(key, old, new, diff, ())
    slow = ConfigPlan(key, old, new, by_phases(diff), ())
    got, want = forms(fast), forms(slow)
    for fmt in want:
        assert got[fmt] == want[fmt], fmt
    assert_same_counts(diff)
    if old is None:
        assert json.loads(got["json"])["summary"]["writes"] == sum(new.table_counts.values())
        assert "phases" not in diff.__dict__, "formatting the plan must not make the writes"


def test_counts_with_shared_keys_routes_and_empty_previous(snapshots: tuple[str, Snapshot, Snapshot]) -> None:
    """Keys two Services share (a service id, a reverse_nat key) are one write each, as in the
    phases; routes count in their table; a previous snapshot without entries is empty tables."""
    _, v1, v2 = snapshots
    a, b, c = v2.services[:3]
    shared = [
        dataclasses.replace(b, service_id=a.service_id),  # backend_table keys of `a` again (fewer or more buckets)
        dataclasses.replace(c, backends=c.backends + a.backends[:1]),  # a reverse_nat key of `a`
    ]
    route = Entry(IPV4_LPM, ("10.9.0.0/16",), FWD, (1, "aa:bb:cc:dd:ee:ff"))
    odd = dataclasses.replace(v2, services=(a, *shared, *v2.services[3:]), global_entries=(route,))
    for old, new in ((None, odd), (dataclasses.replace(v1, services=tuple(dataclasses.replace(s, backends=()) for s in v1.services)), v2)):
        diff = diff_snapshots(old, new)
        assert diff.known_counts is not None
        assert_same_counts(diff)
    counted = diff_snapshots(None, odd).counts()
    for table in ("MyIngress.backend_table", "MyIngress.reverse_nat"):  # the shared keys: fewer writes than entries
        assert counted[table]["INSERT"] < odd.table_counts[table], table
    assert counted[IPV4_LPM] == {"INSERT": 1}


def test_counts_from_phases_when_anything_is_held(snapshots: tuple[str, Snapshot, Snapshot]) -> None:
    _, v1, v2 = snapshots
    diff = diff_snapshots(v1, v2)
    assert diff.known_counts is None and not diff.empty and len(diff) == sum(1 for _ in diff.updates())
