"""The pull-request plan at realistic size: a 5,000-Service cluster through `p4kube check`.

The full plan of 500 Services was 86,895 characters, over GitHub's 65,536-character comment
limit. `check` now writes a summary as plan.md (the comment) and the full plan beside it; the
recording (several MB in kubectl's layout) is read under its own size limit, not the intent's.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.cluster.model import ClusterState, Endpoint
from reconciler.cluster.synthetic import cluster_to_list, synthetic_cluster
from reconciler.intent.yamlsafe import DEFAULT_MAX_FILE_BYTES
from reconciler.diff import diff_snapshots
from reconciler.intent.loader import load_intent, load_intent_blobs
from reconciler.pipeline_io import render_one
from reconciler.plan import ConfigPlan, format_plan
from reconciler.plan_summary import COMMENT_LIMIT, STEP_SUMMARY_LIMIT, SUMMARY_BUDGET, cut_markdown, format_summary

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"
SERVICES = 5000
# The Services given the largest share moves, largest first (a new node with many endpoints).
BIG_MOVES = (("ns-07/svc-0007", 30), ("ns-21/svc-4321", 20), ("ns-00/svc-2500", 10))


def write_recording(state: ClusterState, path: Path) -> None:
    """kubectl's `-o yaml` List layout (apiVersion, items, kind, metadata), each item written as
    a YAML flow mapping: the same document, emitted in a fraction of a second instead of the
    ~30 s the pure-Python block emitter takes for 5,000 Services."""
    doc = cluster_to_list(state)
    with path.open("w") as f:
        f.write(f"apiVersion: {doc['apiVersion']}\nitems:\n")
        for item in doc["items"]:
            f.write(f"- {json.dumps(item, separators=(', ', ': '))}\n")
        f.write("kind: List\nmetadata:\n  resourceVersion: \"\"\n")


def intent_dir(path: Path) -> Path:
    """The multi-service intent in podIP mode (the synthetic cluster's NodePorts repeat past 2,768
    Services), its VIP pool grown to 8,190 addresses, selecting every namespace."""
    path.mkdir()
    text = (MULTI / "lbconfig.yaml").read_text()
    text = text.replace("198.51.100.10-198.51.100.19", "172.16.0.1-172.16.31.254")
    text = text.replace("    namespaces: [payments, web]\n", "    namespaces: []\n").replace("backendMode: nodePort", "backendMode: podIP")
    (path / "lbconfig.yaml").write_text(text)
    shutil.copy(MULTI / "sim-device-config.json", path)
    return path


def moved(base: ClusterState) -> ClusterState:
    """The base with three Services moved a lot, 1,000 a little, 40 gone. New pods get addresses
    unique across the cluster (podIP mode refuses one address serving two Services)."""
    endpoints = dict(base.endpoints)
    fresh_ips = (f"100.100.{n >> 8}.{n & 255}" for n in range(1, 1 << 16))

    def grow(key: str, node: str, count: int) -> None:
        old = endpoints[key]
        added = tuple(Endpoint(next(fresh_ips), node, old[0].ports, f"{key}-new-{i}") for i in range(count))
        endpoints[key] = old + added

    for key, extra in BIG_MOVES:
        grow(key, next(n for n in sorted(base.nodes) if all(ep.node != n for ep in endpoints[key])), extra)
    keys = sorted(base.services)
    for key in keys[1000:2000]:  # +1 pod on a node it already uses: a third of its share at most
        grow(key, endpoints[key][0].node, 1)
    gone = set(keys[4000:4040])
    return ClusterState(
        services={k: v for k, v in base.services.items() if k not in gone},
        endpoints={k: v for k, v in endpoints.items() if k not in gone},
        nodes=base.nodes,
        resource_version="2",
    )


@pytest.fixture(scope="module")
def intent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return intent_dir(tmp_path_factory.mktemp("scale") / "intent")


@pytest.fixture(scope="module")
def base() -> ClusterState:
    return synthetic_cluster(services=SERVICES, nodes=200, endpoints=2 * SERVICES, seed=5)


def test_check_of_5000_services_writes_a_comment_that_fits(intent: Path, base: ClusterState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the command: every Service new (no previous snapshot), the recording in kubectl's layout."""
    recording = tmp_path / "recorded.yaml"
    write_recording(base, recording)
    size = recording.stat().st_size
    assert size > 1_360_000 and size > DEFAULT_MAX_FILE_BYTES  # larger than the intent file limit allows
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    out = tmp_path / "out"
    t0 = time.monotonic()
    code = main(["check", "--intent", str(intent), "--cluster", str(recording), "--out-dir", str(out)])
    elapsed = time.monotonic() - t0
    assert code == 2
    md = (out / "plan.md").read_text()
    full = (out / "plan-full.md").read_text()
    assert len(full) > COMMENT_LIMIT, "the full plan would not fit a comment: the reason for the summary"
    assert len(md) < SUMMARY_BUDGET, len(md)
    assert md.startswith("<!-- p4kube-plan -->\n")
    assert f"**{SERVICES} to add, 0 to change, 0 to remove**" in md
    assert "p4kube-plan-full" in md  # where the rest is
    assert f"#### Added ({SERVICES})" in md and re.search(r"… and \d+ more added Services", md)
    # The job summary gets the full plan (here under GitHub's 1 MiB per step; longer, it is cut).
    shown = summary.read_text()
    assert shown == full and len(shown.encode()) <= STEP_SUMMARY_LIMIT
    cut = cut_markdown(full, 100_000, "cut: see the artifact")
    assert len(cut.encode()) <= 100_000 and cut.rstrip().endswith("_cut&#58; see the artifact_")
    assert cut.count("<details>") == cut.count("</details>") and full.startswith(cut.rsplit("\n", 4)[0])
    plan = json.loads((out / "plan.json").read_text())
    assert plan["summary"]["added"] == SERVICES and len(plan["configs"][0]["services"]) == SERVICES
    print(f"\n{SERVICES} Services: recording {size} bytes; check {elapsed:.1f} s; "
          f"plan.md {len(md)} chars, plan-full.md {len(full)} chars, job summary {len(shown.encode())} bytes")


def test_summary_of_5000_services_names_the_largest_share_moves(intent: Path, base: ClusterState) -> None:
    loaded = load_intent([str(intent)])
    config = loaded.pick_config(None)
    v1 = render_one(loaded, config, base, None).snapshot
    v2 = render_one(loaded, config, moved(base), v1)
    plan = ConfigPlan(config.key, v1, v2.snapshot, diff_snapshots(v1, v2.snapshot), v2.issues)
    md = format_summary([plan])
    full = format_plan([plan], "markdown")
    assert len(md) < SUMMARY_BUDGET < COMMENT_LIMIT < len(full), (len(md), len(full))
    assert "**0 to add, 1003 to change, 40 to remove**" in md
    moves = md.split("#### Largest share moves (top 25 of 1003 changed)", 1)[1]
    rows = [line for line in moves.splitlines() if line.startswith("| `")]
    assert len(rows) == 25
    assert [re.match(r"\| `([^`]+)`", r).group(1) for r in rows[:3]] == [k for k, _ in BIG_MOVES]  # type: ignore[union-attr]
    # ns-07/svc-0007: 2 pods, then 30 more on another node: 30/32 of its traffic moves.
    assert re.search(r"\| `ns-07/svc-0007` \| [^|]+ \| 9[34]\.\d% \|", rows[0]), rows[0]
    assert not [i for i in plan.issues if i.severity == "error"]
    assert "`ns-40/svc-0040`" in md.split("#### Removed (40)", 1)[1]
    print(f"\nplan.md {len(md)} chars for a full plan of {len(full)} chars")


def test_a_large_recording_in_the_intent_repository_is_not_taken_for_intent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """ci/README.md's layout keeps the recording at cluster/recorded.yaml in the intent repository,
    which `p4kube validate .` (the pre-commit hook) and `check --intent .` walk. A recording over
    the intent's 1 MiB limit used to fail both ("file too large")."""
    repo = tmp_path / "intent"
    repo.mkdir()
    shutil.copy(MULTI / "lbconfig.yaml", repo)
    shutil.copy(MULTI / "sim-device-config.json", repo)
    (repo / "cluster").mkdir()
    recording = repo / "cluster" / "recorded.yaml"
    write_recording(synthetic_cluster(services=1500, nodes=50, endpoints=3000, seed=2), recording)
    assert recording.stat().st_size > max(1_360_000, DEFAULT_MAX_FILE_BYTES)
    monkeypatch.chdir(repo)
    assert main(["validate", "."]) == 0
    assert main(["check", "--intent", ".", "--cluster", "cluster/recorded.yaml", "--out-dir", str(tmp_path / "out")]) == 2
    # The intent as `run` reads it, from the commit's blobs: the same.
    blobs = [("lbconfig.yaml", (repo / "lbconfig.yaml").read_bytes()), ("cluster/recorded.yaml", recording.read_bytes())]
    assert [c.name for c in load_intent_blobs(blobs, str(repo))] == ["p4kube-config"]
    # A large file that could hold a LoadBalancerConfig is still refused.
    (repo / "big.yaml").write_text("# LoadBalancerConfig\n" + "#" * DEFAULT_MAX_FILE_BYTES + "\n")
    capsys.readouterr()
    assert main(["validate", "."]) == 1
    assert "big.yaml:1:1: file too large" in capsys.readouterr().out
