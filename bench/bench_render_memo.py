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

With --against REV: the render memo module and engine of git revision REV loaded beside this
tree's and run alternately in this process on the same inputs (the only comparison that means
anything on a machine whose speed moves): from_bytes, resume, the render after resume with one
Service scaled, memo() after it, to_bytes; CPU seconds, the cyclic collector off as in
`reconcile --once` (gc_paused), min and median over --repeat rounds; both sides' snapshot and
memo bytes are checked equal.

    .venv/bin/python bench/bench_render_memo.py [--intent DIR] [--services N] [--repeat N] [--against REV]

Without --intent, bench_commands.py's intent is written to a temporary directory.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from reconciler.cluster.model import ClusterState
from reconciler.cluster.synthetic import synthetic_cluster, with_scaled_service
from reconciler.intent.loader import load_intent
from reconciler.render import Renderer
from reconciler.render import engine as this_engine
from reconciler.render import memo as this_memo
from reconciler.render.memo import RenderMemo
from reconciler.snapshot import from_document

DIGEST = "sha256:" + "0" * 64
T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def timed(results: dict[str, list[tuple[float, float]]], name: str, fn: Callable[[], T]) -> T:
    gc.collect()
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    results.setdefault(name, []).append((time.perf_counter() - w, time.process_time() - c))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--intent", metavar="DIR", help="an intent directory (default: bench_commands.py's INTENT, written "
                    "to a temporary directory)")
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--against", metavar="REV", help="compare with the render memo and engine of this git revision")
    a = ap.parse_args()

    if a.intent:
        config = load_intent([a.intent]).pick_config(None)
    else:
        with tempfile.TemporaryDirectory(prefix="p4kube-bench-render-memo-") as tmp:
            config = load_intent([_bench_intent(Path(tmp))]).pick_config(None)

    def cluster_state() -> ClusterState:
        return synthetic_cluster(services=a.services, nodes=a.nodes, endpoints=a.endpoints, seed=1)

    if a.against:
        return against(a.against, a.repeat, config, cluster_state)

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


def _bench_intent(directory: Path) -> Path:
    """bench_commands.py's intent written to `directory` (its switch ports are never dialled here)."""
    from bench_commands import INTENT  # a sibling script: bench/ is on sys.path when run

    (directory / "lb.yaml").write_text(INTENT.format(standby=9560, primary=9559))
    shutil.copy(ROOT / "intent-examples" / "multi-service" / "sim-device-config.json", directory)
    return directory


def _module_at(rev: str, path: str, name: str, replace: dict[str, str]) -> ModuleType:
    """The module at `path` as of git revision `rev`, loaded as reconciler.render.<name>."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True, capture_output=True, text=True).stdout
    for a, b in replace.items():
        source = source.replace(a, b)
    spec = importlib.util.spec_from_loader(f"reconciler.render.{name}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "reconciler.render"
    sys.modules[spec.name] = module
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def against(rev: str, rounds: int, config: Any, cluster_state: Callable[[], ClusterState]) -> int:
    """Old (`rev`) and this tree's pass-cache render steps alternated in one process (--against)."""
    old_memo = _module_at(rev, "reconciler/render/memo.py", "_old_memo", {})
    old_engine = _module_at(rev, "reconciler/render/engine.py", "_old_engine", {"from .memo import": "from ._old_memo import"})
    new_engine, new_memo = this_engine, this_memo
    cluster = cluster_state()
    first = new_engine.Renderer()
    snap = first.render(config, cluster, None, p4info_digest=DIGEST).snapshot
    data = first.memo().to_bytes()
    key = sorted(cluster.services)[len(cluster.services) // 2]
    changed = with_scaled_service(cluster_state(), key, next(iter(cluster.nodes)), 1)
    sides = {"old": (old_engine, old_memo), "new": (new_engine, new_memo)}
    times: dict[tuple[str, str], list[float]] = {}
    outputs: dict[str, tuple[str, bytes]] = {}

    def timed(side: str, step: str, fn: Callable[[], Any]) -> Any:
        c = time.process_time()
        out = fn()
        times.setdefault((step, side), []).append(time.process_time() - c)
        return out

    gc.collect()
    gc.disable()
    for _ in range(rounds):
        for side, (engine, memo_module) in sides.items():
            previous = from_document(json.loads(snap.to_json_text()))
            memo = timed(side, "RenderMemo.from_bytes", lambda: memo_module.RenderMemo.from_bytes(data))
            r = engine.Renderer()
            assert timed(side, "resume", lambda: r.resume(memo, config, previous, p4info_digest=DIGEST))
            result = timed(side, "render after resume, one Service scaled", lambda: r.render(config, changed, previous, p4info_digest=DIGEST))
            assert result.rendered == {key}
            m = timed(side, "memo() after it", r.memo)
            out = timed(side, "to_bytes", m.to_bytes)
            outputs[side] = (result.snapshot.to_json_text(), out)
            del previous, memo, r, result, m
            gc.collect()
        assert outputs["old"] == outputs["new"], "old and new differ"
    print(f"{len(cluster.services)} Services; CPU ms, gc off, {rounds} rounds alternated; old = {rev}")
    print(f"{'step':42} {'old min':>8} {'old med':>8} {'new min':>8} {'new med':>8} {'ratio':>6}")
    total = {"old": [0.0] * rounds, "new": [0.0] * rounds}
    for step in dict.fromkeys(s for s, _ in times):
        o, n = times[(step, "old")], times[(step, "new")]
        for side, xs in (("old", o), ("new", n)):
            total[side] = [t + x for t, x in zip(total[side], xs)]
        print(f"{step:42} {min(o) * 1e3:8.1f} {statistics.median(o) * 1e3:8.1f} {min(n) * 1e3:8.1f} {statistics.median(n) * 1e3:8.1f}"
              f" {statistics.median(n) / statistics.median(o):6.2f}")
    o, n = total["old"], total["new"]
    print(f"{'all five':42} {min(o) * 1e3:8.1f} {statistics.median(o) * 1e3:8.1f} {min(n) * 1e3:8.1f} {statistics.median(n) * 1e3:8.1f}"
          f" {statistics.median(n) / statistics.median(o):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
