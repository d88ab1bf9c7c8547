#!/usr/bin/env python3
"""RenderMemo benchmark (issue 13): what `reconcile --once` would pay to resume the renderer
instead of rendering every Service again, at 5,000 Services / 1,000 nodes / 50,000 endpoints
with the intent of bench/bench_commands.py.

Measures, in one process, each step as a new process would do it (the snapshot parsed from its
file form, a cluster state built anew so that no input object is shared with the render that
made the memo): a full render from the previous snapshot with one Service scaled (today's
`reconcile --once`), memo() after a full render and after an incremental one, its size,
from_bytes, resume, and the render with the same change after resume. Median of --repeat runs,
wall and CPU seconds.

    .venv/bin/python bench/bench_render_memo.py [--intent DIR] [--services N] [--repeat N]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

from reconciler.cluster.model import ClusterState
from reconciler.cluster.synthetic import synthetic_cluster, with_scaled_service
from reconciler.intent.loader import load_intent
from reconciler.render import Renderer
from reconciler.render.memo import RenderMemo
from reconciler.snapshot import from_document

DIGEST = "sha256:" + "0" * 64
T = TypeVar("T")


def timed(results: dict[str, list[tuple[float, float]]], name: str, fn: Callable[[], T]) -> T:
    gc.collect()
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    results.setdefault(name, []).append((time.perf_counter() - w, time.process_time() - c))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--intent", default="/tmp/pw/intent", help="a directory with bench_commands.py's INTENT")
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()

    config = load_intent([a.intent]).pick_config(None)

    def cluster_state() -> ClusterState:
        return synthetic_cluster(services=a.services, nodes=a.nodes, endpoints=a.endpoints, seed=1)

    cluster = cluster_state()
    first = Renderer()
    results: dict[str, list[tuple[float, float]]] = {}
    snap = timed(results, "full render, no previous", lambda: first.render(config, cluster, None, p4info_digest=DIGEST).snapshot)
    key = sorted(cluster.services)[len(cluster.services) // 2]
    node = next(iter(cluster.nodes))
    size = 0
    for _ in range(a.repeat):
        data = timed(results, "memo() after a full render", lambda: first.memo().to_bytes())
        size = len(data)
        previous = from_document(json.loads(snap.to_json_text()))  # as the audit repository gives it
        changed = with_scaled_service(cluster_state(), key, node, 1)
        full = timed(results, "full render from previous, one Service scaled (today)", lambda: Renderer().render(config, changed, previous, p4info_digest=DIGEST))
        previous = from_document(json.loads(snap.to_json_text()))
        memo = timed(results, "RenderMemo.from_bytes", lambda: RenderMemo.from_bytes(data))
        resumed = Renderer()
        ok = timed(results, "resume", lambda: resumed.resume(memo, config, previous, p4info_digest=DIGEST))
        assert ok, "memo refused"
        result = timed(results, "render after resume, one Service scaled", lambda: resumed.render(config, changed, previous, p4info_digest=DIGEST))
        assert result.rendered == {key}, sorted(result.rendered)[:5]
        assert result.snapshot.to_json_text() == full.snapshot.to_json_text()
        timed(results, "memo() after the incremental render", lambda: resumed.memo().to_bytes())
        same, previous = cluster_state(), from_document(json.loads(snap.to_json_text()))
        unchanged = Renderer()
        assert unchanged.resume(RenderMemo.from_bytes(data), config, previous, p4info_digest=DIGEST)
        result = timed(results, "render after resume, nothing changed", lambda: unchanged.render(config, same, previous, p4info_digest=DIGEST))
        assert not result.rendered and not result.changed
    print(f"{a.services} Services, {a.nodes} nodes, {a.endpoints} endpoints, {config.buckets_per_service} buckets; memo {size:,} bytes")
    print(f"{'step':58} {'wall s':>8} {'cpu s':>8}   (median of {a.repeat})")
    for name, xs in results.items():
        print(f"{name:58} {statistics.median(x[0] for x in xs):8.3f} {statistics.median(x[1] for x in xs):8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
