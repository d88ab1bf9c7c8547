"""`p4kube demo`: the main job on the embedded default, narrated.

It needs nothing but the repository: the shipped intent examples, the cluster recorded from
a real kube-apiserver, and a temporary directory for the snapshots it writes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from .cluster.recorded import load_cluster_file
from .cluster.synthetic import with_scaled_service
from .diff import diff_snapshots
from .intent.loader import load_intent, validate_paths
from .paths import REPO_ROOT
from .pipeline_io import config_p4info_digest
from .plan import ConfigPlan, format_text
from .render import Renderer

EXAMPLES = REPO_ROOT / "intent-examples"


def run_demo(workdir: str | None = None, out: TextIO = sys.stdout) -> int:
    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    def step(n: int, title: str) -> None:
        say()
        say(f"== {n}. {title}")

    with tempfile.TemporaryDirectory(prefix="p4kube-demo-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)

        step(1, "Validate the intent examples (what CI runs on every pull request)")
        for name in ("minimal", "production", "multi-service"):
            diags = validate_paths([EXAMPLES / name])
            say(f"  intent-examples/{name}: {'valid' if not diags else f'{len(diags)} error(s)'}")
            for d in diags:
                say(f"    {d}")
        bad = EXAMPLES / "invalid" / "overlapping-vip-pools"
        if bad.exists():
            say("  an invalid example is refused with file:line:col and the field at fault:")
            for d in validate_paths([bad]):
                say(f"    {Path(d.file).relative_to(REPO_ROOT) if Path(d.file).is_absolute() else d.file}"
                    f":{d.line}:{d.column}: {d.field}: {d.message}")

        step(2, "Load the intent and the cluster recorded from a real kube-apiserver")
        intent = load_intent([EXAMPLES / "multi-service"])
        config = intent.config()
        cluster = load_cluster_file(EXAMPLES / "multi-service" / "cluster.yaml")
        opted = sorted(k for k, s in cluster.services.items() if s.opt_in == "enabled")
        say(f"  config {config.key}: algorithm {config.algorithm}, {config.buckets_per_service} buckets per Service,"
            f" {len(config.switch_config.switches)} switches")
        say(f"  cluster: {len(cluster.services)} Services ({len(opted)} opted in: {', '.join(opted)}),"
            f" {len(cluster.nodes)} nodes")
        for issue in cluster.issues:
            say(f"  note: {issue.object}: {issue.message}")

        step(3, "Render the first snapshot (pure, deterministic, schema-checked)")
        renderer = Renderer()
        digest = config_p4info_digest(config)
        t0 = time.perf_counter()
        first = renderer.render(config, cluster, None, p4info_digest=digest, intent_commit=intent.commit)
        ms = (time.perf_counter() - t0) * 1000
        snap1 = first.snapshot
        path1 = work / f"snapshot-v{snap1.version}.json"
        path1.write_text(snap1.to_json_text())
        say(f"  version {snap1.version}: {len(snap1.services)} Services, {snap1.entry_count()} table entries,"
            f" rendered in {ms:.1f} ms")
        say(f"  digest {snap1.digest}")
        say(f"  written to {path1}")

        step(4, "Plan against empty switches")
        plan1 = ConfigPlan(config.key, None, snap1, diff_snapshots(None, snap1), first.issues, intent.commit, intent.dirty)
        for line in format_text([plan1]).splitlines():
            say(f"  {line}")

        step(5, "Cluster churn: web/frontend gains 2 ready replicas on node-c, payments/ledger loses node-g")
        churned = with_scaled_service(cluster, "web/frontend", "node-c", +2)
        ledger_on_g = sum(1 for ep in cluster.endpoints.get("payments/ledger", ()) if ep.node == "node-g")
        churned = with_scaled_service(churned, "payments/ledger", "node-g", -ledger_on_g)
        t0 = time.perf_counter()
        second = renderer.render(
            config, churned, snap1, p4info_digest=digest, intent_commit=intent.commit,
            changed=["web/frontend", "payments/ledger"],
        )
        ms = (time.perf_counter() - t0) * 1000
        snap2 = second.snapshot
        path2 = work / f"snapshot-v{snap2.version}.json"
        path2.write_text(snap2.to_json_text())
        say(f"  incremental render of the 2 changed Services: {ms:.1f} ms -> version {snap2.version}")
        plan2 = ConfigPlan(config.key, snap1, snap2, diff_snapshots(snap1, snap2), second.issues, intent.commit, intent.dirty)
        for line in format_text([plan2]).splitlines():
            say(f"  {line}")
        moved = len(plan2.diff)
        say(f"  only buckets whose backend changed are rewritten: {moved} writes instead of {snap2.entry_count()}")

        step(6, "Render again with nothing changed")
        third = renderer.render(config, churned, snap2, p4info_digest=digest, intent_commit=intent.commit)
        say(f"  digest unchanged -> version stays {third.snapshot.version}, nothing to apply: {not third.changed}")

        say()
        say("Summary")
        say(f"  snapshots: {path1.name} (v{snap1.version}), {path2.name} (v{snap2.version}) in {work}")
        say(f"  first apply: {len(plan1.diff)} writes; churn: {moved} writes; steady state: 0 writes")
        say("  next steps: `p4kube plan --intent DIR --cluster FILE --previous SNAPSHOT` in your intent repository's CI")
        if workdir is None:
            say("  (temporary directory removed; pass --workdir DIR to keep the snapshots)")
    return 0
