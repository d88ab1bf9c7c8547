#!/usr/bin/env python3
"""Cluster recording load benchmark (issue 13, item 2): a kubectl-style recording of 5,000
Services, 1,000 nodes and 50,000 endpoints, as YAML (`-o yaml`) and as JSON (`-o json`, indented
as kubectl prints it), read by load_cluster_text with the fast paths (reconciler.cluster.fastload)
and with the full loaders (fast=False: ruamel's events and the json module, as before), in the
same process, alternating, best of --repeat. Also each variant's peak RSS, in a child process of
its own (a process's peak only grows). The two must read the same state; that is checked too.

    .venv/bin/python bench/bench_cluster_load.py [--services N] [--repeat N] [--record]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconciler.cluster.recorded import load_cluster_text  # noqa: E402
from reconciler.cluster.synthetic import cluster_to_list, synthetic_cluster  # noqa: E402


def _write(work: Path, services: int, nodes: int, endpoints: int) -> dict[str, Path]:
    listing = cluster_to_list(synthetic_cluster(services=services, nodes=nodes, endpoints=endpoints, seed=1))
    paths = {"yaml": work / "cluster.yaml", "json": work / "cluster.json"}
    # Block style with sorted keys, as kubectl prints; PyYAML's C emitter (ruamel's is slow here).
    paths["yaml"].write_text(yaml.dump(listing, Dumper=yaml.CSafeDumper, default_flow_style=False))
    paths["json"].write_text(json.dumps(listing, indent=4))
    return paths


def _one(path: str, fast: bool) -> None:
    """Child mode: load once and print the peak RSS in MB."""
    load_cluster_text(Path(path).read_text(), path, fast=fast)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child of this (big) parent
    # would report the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) / 1024)
            return
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _peak_rss(path: Path, fast: bool) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--one", str(path), *([] if fast else ["--full"])],
        check=True, capture_output=True, text=True,
    ).stdout
    return float(out.strip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        _one(a.one, fast=not a.full)
        return 0

    rows = []
    with tempfile.TemporaryDirectory(prefix="p4kube-bench-load-") as tmp:
        paths = _write(Path(tmp), a.services, a.nodes, a.endpoints)
        for form, path in paths.items():
            text = path.read_text()
            best: dict[bool, tuple[float, float]] = {}
            states = {}
            for _ in range(a.repeat):
                for fast in (False, True):
                    t0, c0 = time.perf_counter(), time.process_time()
                    states[fast] = load_cluster_text(text, str(path), fast=fast)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    prev = best.get(fast, (float("inf"), float("inf")))
                    best[fast] = (min(prev[0], wall), min(prev[1], cpu))
            assert states[True] == states[False], "the fast and full loaders read different states"
            del states
            rss = {fast: _peak_rss(path, fast) for fast in (False, True)}
            rows.append((form, path.stat().st_size, best, rss))

    lines = [
        f"machine: {platform.machine()} {platform.python_implementation()} {platform.python_version()}, "
        f"{a.services} Services / {a.nodes} nodes / {a.endpoints} endpoints, best of {a.repeat}, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        "| recording | size | full loaders (before) wall / CPU | fast paths wall / CPU | ratio (CPU) | peak RSS before / after |",
        "|---|---|---|---|---|---|",
    ]
    for form, size, best, rss in rows:
        (ow, oc), (nw, nc) = best[False], best[True]
        lines.append(
            f"| {form} | {size / 1e6:.1f} MB | {ow:.2f} s / {oc:.2f} s | {nw:.2f} s / {nc:.2f} s | "
            f"{oc / nc:.1f}x | {rss[False]:.0f} / {rss[True]:.0f} MB |"
        )
    print("\n".join(lines))
    if a.record:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
