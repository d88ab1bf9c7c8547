"""The snapshot schema check (issue 13 item 1): full jsonschema vs compiled vs incremental.

Part 1, in one process at --services (default 5,000 Services, 1,000 nodes, 10 endpoints each,
64 buckets: 348,137 entries), CPU seconds (time.process_time: the machine is shared) of

    full jsonschema      python-jsonschema over the whole document (the check before issue 13)
    fastjsonschema       compiled to Python, whole document (only if installed; not a dependency)
    jsonschema-rs        compiled from Rust, whole document (what schema_errors/from_document run)
    incremental, cold    snapshot_schema_errors(snap): header + 5,000 Service objects never seen
    incremental, warm    the same once render or from_document checked them: header + look-ups
    one changed Service  render's check of the changed Service + snapshot_schema_errors after it
                         (before: the whole document again, full jsonschema)
    from_document        parse + check of the document (--previous, audit reads), check included

Part 2 (--commands): `p4kube render`, `check` and `plan --previous` as whole processes from a YAML
recording at --sizes, the reconciler of --before against --after, each extracted with git archive and put first
on PYTHONPATH (default: the commit that added reconciler/snapshot_schema.py, and its parent), wall seconds and the ratio to `python -c pass` in the same run.

    .venv/bin/python bench/bench_schema.py                       # part 1 at 5,000
    .venv/bin/python bench/bench_schema.py --no-full             # without the minute of jsonschema
    .venv/bin/python bench/bench_schema.py --commands --sizes 1000,5000
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from bench_commands import INTENT, commit, free_port, python_floor, run_whole, write_recordings

from reconciler import snapshot as snapshot_mod
from reconciler import snapshot_schema
from reconciler.cluster.synthetic import synthetic_cluster, with_scaled_service
from reconciler.intent.model import LoadBalancerConfig, VipPool
from reconciler.render import Renderer
from reconciler.snapshot import check_service_schema, from_document, schema_validator, snapshot_schema_errors

REPO = Path(__file__).resolve().parents[1]
P4KUBE = Path(sys.executable).with_name("p4kube")
DIGEST = "sha256:" + "0" * 64


def cpu(f: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best CPU seconds of `repeat` runs, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t0 = time.process_time()
        out = f()
        best = min(best, time.process_time() - t0)
    return best, out


def library(services: int, full: bool) -> list[tuple[str, float, str]]:
    config = LoadBalancerConfig(
        namespace="p4kube-system", name="bench", buckets_per_service=64,
        vip_pools=(VipPool("bench", ((ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.19.255.254")),)),),
    )
    cluster = synthetic_cluster(services=services, nodes=1000, endpoints=10 * services, seed=1)
    renderer = Renderer()
    snap = renderer.render(config, cluster, None, p4info_digest=DIGEST).snapshot
    text = snap.to_json_text()
    doc = json.loads(text)
    entries = sum(len(es) for es in doc["tables"].values())
    print(f"{services} Services, {entries:,} entries, document {len(text) / 1e6:.0f} MB", file=sys.stderr)
    rows: list[tuple[str, float, str]] = []

    def row(label: str, seconds: float, note: str = "") -> None:
        rows.append((label, seconds, note))
        print(f"  {label}: {seconds * 1000:,.1f} ms CPU {note}", file=sys.stderr, flush=True)

    if full:
        ref = schema_validator()
        s, errs = cpu(lambda: list(ref.iter_errors(doc)))
        row("full document, python-jsonschema (before)", s, f"{len(errs)} errors")
    try:
        import fastjsonschema  # type: ignore[import-not-found,unused-ignore]

        fj = fastjsonschema.compile(snapshot_schema.schema())
        s, _ = cpu(lambda: fj(doc), 2)
        row("full document, fastjsonschema", s)
    except ImportError:
        print("  fastjsonschema: not installed (pip install fastjsonschema to compare)", file=sys.stderr)
    s, ok = cpu(lambda: snapshot_schema.is_valid(doc), 3)
    row("full document, jsonschema-rs", s, f"valid={ok}")
    s, _ = cpu(lambda: snapshot_mod.schema_errors(doc), 3)
    row("schema_errors(document) (jsonschema-rs; explains only failures)", s)

    def cold() -> list[str]:
        snapshot_mod._VALID_FRAGMENTS.clear()
        return snapshot_schema_errors(snap)

    s, _ = cpu(cold, 3)
    row(f"incremental, cold: header + {services:,} Service objects", s)
    s, _ = cpu(lambda: snapshot_schema_errors(snap), 3)
    row("incremental, warm: header + look-ups", s)

    key = min(k for k in cluster.endpoints if cluster.endpoints[k])
    changed = with_scaled_service(cluster, key, cluster.endpoints[key][0].node, 1)
    new = renderer.render(config, changed, snap, p4info_digest=DIGEST, changed=[key]).snapshot
    moved = [s for s in new.services if s.service_key == key]

    def one() -> list[str]:
        for svc in moved:  # as render checks it: a new object, its digest not yet computed
            check_service_schema(dataclasses.replace(svc))
        return snapshot_schema_errors(new)

    s, _ = cpu(one, 5)
    row("one changed Service: its check in render + snapshot_schema_errors", s)
    s, _ = cpu(lambda: snapshot_schema.is_valid(json.loads(new.to_json_text())), 1)
    row("one changed Service, the whole new document again with jsonschema-rs (for scale)", s, "incl. building the document")
    s, _ = cpu(lambda: from_document(doc), 2)
    row("from_document(document) (parse + compiled check + digest)", s)
    return rows


def commands(sizes: list[int], before: str, after: str) -> str:
    out = []
    with tempfile.TemporaryDirectory(prefix="p4kube-bench-schema-") as tmp:
        work = Path(tmp)
        srcs = {}
        for label, rev in (("before", before), ("after", after)):
            sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()
            src = work / f"src-{label}"
            src.mkdir()
            archive = subprocess.run(["git", "archive", sha, "reconciler"], cwd=REPO, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            srcs[label] = (sha, src)
        floor = python_floor()
        out.append(f"`python -c pass`: {floor * 1000:.0f} ms; before = {srcs['before'][0]}, after = {srcs['after'][0]}\n")
        out.append("| Services | command (YAML recording) | before s (CPU) | after s (CPU) | after / before (CPU) | after / python |")
        out.append("|---:|---|---:|---:|---:|---:|")
        for n in sizes:
            sub = work / str(n)
            sub.mkdir()
            rec = write_recordings(sub, n, 1000, 10 * n)
            intent = sub / "intent"
            intent.mkdir()
            import pygit2

            pygit2.init_repository(str(intent), initial_head="main")
            (intent / "sim-device-config.json").write_bytes((REPO / "intent-examples" / "multi-service" / "sim-device-config.json").read_bytes())
            commit(intent, INTENT.format(standby=free_port(), primary=free_port()), "bench intent")  # no switch is contacted
            common = ["--intent", str(intent), "--pipeline-dir", str(intent), "--cluster", str(rec["base.yaml"])]
            snap = sub / "snapshot.json"
            cmds = [
                ("render --out", ["render", *common, "--out", str(snap)], (0,)),
                ("check", ["check", *common, "--out-dir", str(sub / "check")], (0, 2)),
                ("plan --previous (one Service changed)", ["plan", *common[:4], "--cluster", str(rec["changed.yaml"]), "--previous", str(snap)], (0, 2)),
            ]
            for label, args, ok in cmds:
                walls, cpus = {}, {}
                for which in ("before", "after"):
                    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(srcs[which][1]), os.environ.get("PYTHONPATH")) if p)}
                    if label.startswith("render"):  # each side plans from its own render
                        args[-1] = str(sub / f"snapshot-{which}.json")
                    if label.startswith("plan"):
                        args[-1] = str(sub / f"snapshot-{which}.json")
                    d = run_whole([str(P4KUBE), *args], cwd=sub, env=env)
                    if d.code not in ok:
                        raise SystemExit(f"{label} ({which}) exit {d.code}: " + "\n".join(t for _, t in d.lines[-10:]))
                    walls[which], cpus[which] = d.wall, d.cpu
                    print(f"[{n}] {label} {which}: {d.wall:.1f} s (CPU {d.cpu:.1f} s, RSS {d.rss_mb:.0f} MB)", file=sys.stderr, flush=True)
                out.append(f"| {n:,} | `{label}` | {walls['before']:.1f} ({cpus['before']:.1f}) | {walls['after']:.1f} ({cpus['after']:.1f}) | "
                           f"{walls['after'] / walls['before']:.2f} ({cpus['after'] / cpus['before']:.2f}) | {walls['after'] / floor:.0f}x |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--no-full", dest="full", action="store_false", help="skip python-jsonschema over the whole document")
    ap.add_argument("--commands", action="store_true", help="part 2: whole commands before/after")
    ap.add_argument("--sizes", default="1000,5000")
    ap.add_argument("--before", default=None, help="revision before the compiled check (default: found by git log)")
    ap.add_argument("--after", default=None, help="revision with it (default: the commit that added it)")
    a = ap.parse_args()
    if a.commands:
        added = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%H", "--", "reconciler/snapshot_schema.py"], cwd=REPO, check=True,
            capture_output=True, text=True).stdout.strip().splitlines()[-1]
        print(commands([int(s) for s in a.sizes.split(",")], a.before or added + "^", a.after or added))
        return 0
    rows = library(a.services, a.full)
    print(f"| {a.services:,} Services | CPU ms | note |\n|---|---:|---|")
    for label, s, note in rows:
        print(f"| {label} | {s * 1000:,.1f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
