"""`reconcile --once` skips reading the recording and rendering when the last applied snapshot was
rendered from exactly these inputs (reconciler/rendered_from.py), and still reads both switches
back and repairs them. What makes the skip sound is held here: render applied to its own output
with the same inputs changes nothing."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from helpers import commit_all
from test_reconcile_audit import CONFIG, MULTI, entries_of, intent_repo, switch_entries

from reconciler.audit.repo import AuditRepo
from reconciler.cli import main
from reconciler.cluster.model import ClusterState
from reconciler.cluster.recorded import load_cluster_file
from reconciler.cluster.synthetic import cluster_to_list_yaml, synthetic_cluster, with_scaled_service
from reconciler.intent.loader import load_intent
from reconciler.render import Renderer
from reconciler import rendered_from
from reconciler.rendered_from import TRAILER, inputs_digest, unchanged

NOW = 1_800_000_000.0
P4INFO = "sha256:" + "0" * 64
SKIPPED = "not rendered again"


# For the synthetic clusters: every namespace, a pool for all of them.
SYNTHETIC_INTENT = """\
apiVersion: networking.p4kube.io/v1alpha1
kind: LoadBalancerConfig
metadata: {{name: synthetic, namespace: p4kube-system}}
spec:
  connectionDrainTimeout: {drain}
  vipPools:
    - name: all
      addresses: ["198.18.0.1-198.18.0.100"]
  switchConfig:
    deviceConfig: sim-device-config.json
    switches:
      - {{name: standby, role: standby, address: "127.0.0.1:9560"}}
      - {{name: primary, role: primary, address: "127.0.0.1:9559"}}
"""


@pytest.fixture(params=["0s", "60s"])
def config(tmp_path, request):
    d = tmp_path / "intent"
    d.mkdir()
    (d / "lbconfig.yaml").write_text(SYNTHETIC_INTENT.format(drain=request.param))
    return load_intent([str(d)]).configs[0]


def _without_node(state: ClusterState, node: str) -> ClusterState:
    return dataclasses.replace(state, nodes={k: v for k, v in state.nodes.items() if k != node})


def _without_service(state: ClusterState, key: str) -> ClusterState:
    return dataclasses.replace(state, services={k: v for k, v in state.services.items() if k != key},
                               endpoints={k: v for k, v in state.endpoints.items() if k != key})


def _clusters() -> list[ClusterState]:
    base = synthetic_cluster(services=12, nodes=6, endpoints=60, seed=3)
    first = sorted(base.services)[0]
    node = next(ep.node for ep in base.endpoints[first])
    return [
        base,
        with_scaled_service(base, first, node, +3),
        with_scaled_service(base, first, node, -1),
        with_scaled_service(base, first, "node-5", +2),
        _without_node(base, node),  # endpoints on a node that left: render keeps what it can
        _without_service(base, sorted(base.services)[-1]),
    ]


def test_render_of_its_own_output_with_the_same_inputs_changes_nothing(config):
    """For every pair (what was applied before, what the cluster is now): render(now, previous)
    gives S; render(now, S) gives S again, byte for byte (same digest, not `changed`)."""
    clusters = _clusters()
    drained = 0
    for before, now in itertools.product(clusters, clusters):
        p0 = Renderer().render(config, before, None, p4info_digest=P4INFO, now=NOW).snapshot
        assert len(p0.services) >= len(before.services) - 1  # the cases are real: the Services are served
        s = Renderer().render(config, now, p0, p4info_digest=P4INFO, now=NOW).snapshot
        drained += any(svc.drains for svc in s.services)
        again = Renderer().render(config, now, s, p4info_digest=P4INFO, now=NOW + 1)
        assert not again.changed and again.snapshot.digest == s.digest
    # With a drain timeout, moved buckets drain: their snapshots are fixed points too (before `until`).
    assert bool(drained) == bool(config.connection_drain_timeout_s)


def test_the_digest_covers_every_input(config):
    recording = b"apiVersion: v1\nkind: List\nitems: []\n"
    d = inputs_digest(config, recording, p4info_digest=P4INFO, intent_commit="abc")
    assert d is not None and d.startswith("sha256:")
    assert inputs_digest(config, recording, p4info_digest=P4INFO, intent_commit="abc") == d
    others = [
        inputs_digest(config, recording + b"\n", p4info_digest=P4INFO, intent_commit="abc"),
        inputs_digest(config, recording, p4info_digest="sha256:" + "1" * 64, intent_commit="abc"),
        inputs_digest(config, recording, p4info_digest=P4INFO, intent_commit="abd"),
        inputs_digest(config, recording, p4info_digest=P4INFO, intent_commit=None),
        inputs_digest(dataclasses.replace(config, buckets_per_service=32), recording, p4info_digest=P4INFO, intent_commit="abc"),
    ]
    assert len({d, *others}) == 6
    # A plugin algorithm is code outside this package: never skipped.
    assert inputs_digest(dataclasses.replace(config, algorithm="maglev-plugin"), recording, p4info_digest=P4INFO,
                         intent_commit="abc") is None


def test_another_reconciler_renders_again(config, monkeypatch):
    recording = b"{}"
    before = inputs_digest(config, recording, p4info_digest=P4INFO, intent_commit="abc")
    monkeypatch.setattr(rendered_from, "code_digest", lambda: "0" * 64)
    assert inputs_digest(config, recording, p4info_digest=P4INFO, intent_commit="abc") != before


def test_not_used_with_drains_or_without_a_record(config):
    base = _clusters()[0]
    p0 = Renderer().render(config, base, None, p4info_digest=P4INFO, now=NOW).snapshot
    s = Renderer().render(config, with_scaled_service(base, sorted(base.services)[0], "node-5", +4), p0,
                          p4info_digest=P4INFO, now=NOW).snapshot
    assert unchanged(p0, "sha256:x", "sha256:x")
    assert not unchanged(p0, "sha256:x", "sha256:y")
    assert not unchanged(p0, None, "sha256:x")
    assert not unchanged(p0, "sha256:x", None)
    assert not unchanged(None, "sha256:x", "sha256:x")
    if config.connection_drain_timeout_s:
        assert any(svc.drains for svc in s.services)
        assert not unchanged(s, "sha256:x", "sha256:x")  # their end depends on the clock


def _trailers(audit_dir) -> list[tuple[int | None, str | None, str | None]]:
    audit = AuditRepo.open_or_init(audit_dir, read_only=True)
    return [(e.version, e.outcome, e.trailers.get(TRAILER)) for e in audit.history(config=CONFIG)]


def once_world(tmp_path, switch_pair):
    """(standby, primary, intent dir, audit dir, recording, the `reconcile --once` arguments): the
    multi-service example in a Git repository pointed at the switches, its recording copied."""
    standby, primary = switch_pair
    intent = intent_repo(tmp_path / "intent", (standby.port, primary.port))
    audit_dir = tmp_path / "audit.git"
    cluster = tmp_path / "cluster.yaml"
    cluster.write_bytes((MULTI / "cluster.yaml").read_bytes())
    once = ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent),
            "--audit-repo", str(audit_dir), "--cluster", str(cluster)]
    return standby, primary, intent, audit_dir, cluster, once


def test_reconcile_once_skips_render_and_still_reads_both_switches_back(tmp_path, switch_pair, capsys):
    standby, primary, intent, audit_dir, cluster, once = once_world(tmp_path, switch_pair)

    assert main(once) == 0
    capsys.readouterr()
    records = _trailers(audit_dir)
    assert [r[:2] for r in records] == [(1, "applied"), (1, "pending")]
    key = records[0][2]
    assert key and key.startswith("sha256:") and records[1][2] == key
    v1 = AuditRepo.open_or_init(audit_dir, read_only=True).last_applied(CONFIG)

    # Same inputs: not rendered, read back, up to date; nothing recorded.
    assert main(once) == 0
    out, err = capsys.readouterr()
    assert SKIPPED in err and "up to date at v1" in out
    assert len(_trailers(audit_dir)) == 2

    # The switches' own state still decides: an emptied standby is found and repaired.
    standby.reset()  # in place: tables and pipeline gone
    assert main(once) == 0
    out, err = capsys.readouterr()
    assert SKIPPED in err and "repaired" in out
    assert switch_entries(standby) == switch_entries(primary) == entries_of(v1)
    assert _trailers(audit_dir)[0] == (1, "applied", key)

    # The same cluster in other bytes: rendered again (bytes are what is compared), still v1.
    cluster.write_text(cluster.read_text() + "\n")
    assert main(once) == 0
    out, err = capsys.readouterr()
    assert SKIPPED not in err and "up to date at v1" in out

    # A change of the intent renders again, whatever the recording.
    (intent / "lbconfig.yaml").write_text((intent / "lbconfig.yaml").read_text().replace("spec:\n", "spec:\n  connectionDrainTimeout: 0s\n", 1))
    commit_all(intent)
    assert main(once) == 0
    out, err = capsys.readouterr()
    assert SKIPPED not in err

    # A changed cluster: rendered and applied as v2 (or v3), with its own digest recorded.
    cluster.write_text(cluster_to_list_yaml(with_scaled_service(load_cluster_file(cluster), "web/frontend", "node-c", +2)))
    assert main(once) == 0
    out, err = capsys.readouterr()
    assert SKIPPED not in err
    newest = _trailers(audit_dir)[0]
    assert newest[1] == "applied" and newest[2] and newest[2] != key
    held = AuditRepo.open_or_init(audit_dir, read_only=True).last_applied(CONFIG)
    assert switch_entries(standby) == switch_entries(primary) == entries_of(held)
    assert main(once) == 0
    out, err = capsys.readouterr()
    assert SKIPPED in err and f"up to date at v{held.version}" in out


def test_a_bad_recording_is_refused_before_anything_is_recorded(tmp_path, switch_pair, capsys):
    standby, primary, intent, audit_dir, cluster, once = once_world(tmp_path, switch_pair)
    assert main(once) == 0
    before = _trailers(audit_dir), switch_entries(standby), switch_entries(primary)
    cluster.write_text("")
    assert main(once) != 0
    assert "the file is empty" in capsys.readouterr().err
    assert (_trailers(audit_dir), switch_entries(standby), switch_entries(primary)) == before


def test_a_render_that_released_a_value_is_rendered_again_until_it_settles(tmp_path, switch_pair, capsys):
    """Three VIPs: web/api leaves and web/frontend comes in the same change. The VIP web/api held
    is quarantined for one version, so the first render leaves web/frontend without one (an
    issue), and the same inputs rendered again give it that VIP: the first record must not say
    what it was rendered from, or the second render would be skipped for good."""
    from test_fault_matrix import delete_services, dump, recording

    standby, primary = switch_pair
    intent = intent_repo(tmp_path / "intent", (standby.port, primary.port))
    lbconfig = intent / "lbconfig.yaml"
    lbconfig.write_text(lbconfig.read_text().replace("198.51.100.10-198.51.100.19", "198.51.100.10-198.51.100.12"))
    commit_all(intent)
    audit_dir = tmp_path / "audit.git"
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(dump(delete_services(recording(), "web/frontend")))
    once = ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent),
            "--audit-repo", str(audit_dir), "--cluster", str(cluster)]

    assert main(once) == 0
    assert _trailers(audit_dir)[0][1:] == ("applied", _trailers(audit_dir)[0][2]) and _trailers(audit_dir)[0][2]
    cluster.write_text(dump(delete_services(recording(), "web/api")))
    assert main(once) == 0
    err = capsys.readouterr().err
    assert "web/frontend" in err  # no VIP free this version
    v2 = AuditRepo.open_or_init(audit_dir, read_only=True).last_applied(CONFIG)
    assert "web/frontend" not in {s.service_key for s in v2.services}
    assert _trailers(audit_dir)[0][:2] == (v2.version, "applied") and _trailers(audit_dir)[0][2] is None

    # The same inputs: rendered again (not skipped), and now web/frontend has a VIP.
    assert main(once) == 0
    out, err = capsys.readouterr()
    assert SKIPPED not in err
    v3 = AuditRepo.open_or_init(audit_dir, read_only=True).last_applied(CONFIG)
    assert v3.version == v2.version + 1 and "web/frontend" in {s.service_key for s in v3.services}
    assert _trailers(audit_dir)[0][2]  # settled: says what it was rendered from
    assert switch_entries(standby) == switch_entries(primary) == entries_of(v3)
    assert main(once) == 0
    out, err = capsys.readouterr()
    assert SKIPPED in err and f"up to date at v{v3.version}" in out


def test_a_skipped_render_still_reports_its_issues(tmp_path, switch_pair, capsys):
    standby, primary = switch_pair
    intent = intent_repo(tmp_path / "intent", (standby.port, primary.port))
    lbconfig = intent / "lbconfig.yaml"
    lbconfig.write_text(lbconfig.read_text().replace("198.51.100.10-198.51.100.19", "198.51.100.10-198.51.100.12"))
    commit_all(intent)  # three VIPs for four Services: one is left out, every time
    audit_dir = tmp_path / "audit.git"
    once = ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent),
            "--audit-repo", str(audit_dir), "--cluster", str(MULTI / "cluster.yaml")]
    assert main(once) == 0
    err = capsys.readouterr().err
    assert "error:" in err
    audit = AuditRepo.open_or_init(audit_dir, read_only=True)
    assert audit.history(config=CONFIG)[0].trailers.get("Render-Issues") == "1 error"
    assert main(once) == 0
    out, err = capsys.readouterr()
    assert SKIPPED in err and "1 error when v1 was rendered" in err and "up to date at v1" in out
