#!/usr/bin/env python3
"""Old vs new pass-cache render steps (issue 13), alternated in one process: the render memo
module and engine of a git revision (default: cbc36c4, before this work) loaded beside the
working tree's, each run on the same inputs at 5,000 Services: RenderMemo.from_bytes, resume,
the render after resume with one Service scaled, memo() after it, to_bytes. The cyclic
collector is off, as in `reconcile --once` (gc_paused). CPU seconds (process_time), min and
median over --rounds; the results of both are checked equal (snapshot and memo bytes).

    .venv/bin/python bench/bench_render_memo_ab.py [--intent DIR] [--rev REV] [--rounds N]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's reconciler, not an installed one

from reconciler.cluster.synthetic import synthetic_cluster, with_scaled_service
from reconciler.intent.loader import load_intent
from reconciler.render import engine as new_engine
from reconciler.render import memo as new_memo
from reconciler.snapshot import from_document

DIGEST = "sha256:" + "0" * 64
ROOT = Path(__file__).resolve().parent.parent


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--intent", default="/tmp/pw/intent", help="a directory with bench_commands.py's INTENT")
    ap.add_argument("--rev", default="cbc36c4")
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    old_memo = _module_at(a.rev, "reconciler/render/memo.py", "_old_memo", {})
    old_engine = _module_at(a.rev, "reconciler/render/engine.py", "_old_engine", {"from .memo import": "from ._old_memo import"})
    config = load_intent([a.intent]).pick_config(None)

    def cluster_state() -> Any:
        return synthetic_cluster(services=a.services, nodes=a.services // 5, endpoints=a.services * 10, seed=1)

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
    for _ in range(a.rounds):
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
    print(f"{a.services} Services; CPU ms, gc off, {a.rounds} rounds alternated; old = {a.rev}")
    print(f"{'step':42} {'old min':>8} {'old med':>8} {'new min':>8} {'new med':>8} {'ratio':>6}")
    total = {"old": [0.0] * a.rounds, "new": [0.0] * a.rounds}
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
