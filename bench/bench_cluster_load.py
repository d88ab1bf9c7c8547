#!/usr/bin/env python3
"""Cluster recording load benchmark (issue 13, item 2): a kubectl-style recording of 5,000
Services, 1,000 nodes and 50,000 endpoints, as YAML (`-o yaml`) and as JSON (`-o json`, indented
as kubectl prints it), read by load_cluster_text with the fast paths and with the full loaders
(fast=False: ruamel's events and the json module, as before), in the same process, alternating,
best of --repeat. YAML is read three ways: the full loader, the libyaml events path
(reconciler.cluster.fastload, the line reader switched off) and the line reader
(reconciler.cluster.blockyaml, first of the fast paths). Also each variant's peak RSS, in a child
process of its own (a process's peak only grows). All must read the same state; that is checked.

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

from reconciler.cluster import blockyaml  # noqa: E402
from reconciler.cluster.fastload import Unusual  # noqa: E402
from reconciler.cluster.recorded import _EventBuilder, load_cluster_text  # noqa: E402
from reconciler.cluster.synthetic import cluster_to_list, synthetic_cluster  # noqa: E402
from reconciler.inputlimits import RECORDING_MAX_DEPTH  # noqa: E402

# Variants: name -> (fast paths?, line reader?)
VARIANTS = {"full": (False, False), "events": (True, False), "block": (True, True)}


def _no_line_reader(*_args: object) -> list[object]:
    raise Unusual("switched off by the benchmark")


def _load(text: str, path: str, variant: str) -> object:
    fast, line_reader = VARIANTS[variant]
    if line_reader or not fast:
        return load_cluster_text(text, path, fast=fast)
    real = blockyaml.yaml_documents
    blockyaml.yaml_documents = _no_line_reader  # type: ignore[assignment]
    try:
        return load_cluster_text(text, path, fast=True)
    finally:
        blockyaml.yaml_documents = real


def _write(work: Path, services: int, nodes: int, endpoints: int) -> dict[str, Path]:
    listing = cluster_to_list(synthetic_cluster(services=services, nodes=nodes, endpoints=endpoints, seed=1))
    paths = {"yaml": work / "cluster.yaml", "json": work / "cluster.json"}
    # Block style with sorted keys, as kubectl prints; PyYAML's C emitter (ruamel's is slow here).
    paths["yaml"].write_text(yaml.dump(listing, Dumper=yaml.CSafeDumper, default_flow_style=False))
    paths["json"].write_text(json.dumps(listing, indent=4))
    return paths


def _one(path: str, variant: str) -> None:
    """Child mode: load once and print the peak RSS in MB."""
    _load(Path(path).read_text(), path, variant)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child of this (big) parent
    # would report the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) / 1024)
            return
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _peak_rss(path: Path, variant: str) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--one", str(path), "--variant", variant],
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
    ap.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        _one(a.one, a.variant)
        return 0

    rows = []
    with tempfile.TemporaryDirectory(prefix="p4kube-bench-load-") as tmp:
        paths = _write(Path(tmp), a.services, a.nodes, a.endpoints)
        for form, path in paths.items():
            text = path.read_text()
            if form == "yaml":  # the line reader must answer for it, not hand it on
                blockyaml.yaml_documents(text, _EventBuilder().plain_data, RECORDING_MAX_DEPTH)
            # JSON never reaches the line reader: its two fast variants are the same.
            variants = list(VARIANTS) if form == "yaml" else ["full", "events"]
            best: dict[str, tuple[float, float]] = {}
            states = {}
            for _ in range(a.repeat):
                for variant in variants:
                    t0, c0 = time.perf_counter(), time.process_time()
                    states[variant] = _load(text, str(path), variant)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    prev = best.get(variant, (float("inf"), float("inf")))
                    best[variant] = (min(prev[0], wall), min(prev[1], cpu))
            assert all(state == states["full"] for state in states.values()), "the loaders read different states"
            del states
            rss = {variant: _peak_rss(path, variant) for variant in variants}
            rows.append((form, path.stat().st_size, best, rss))

    lines = [
        f"machine: {platform.machine()} {platform.python_implementation()} {platform.python_version()}, "
        f"{a.services} Services / {a.nodes} nodes / {a.endpoints} endpoints, best of {a.repeat}, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        "| recording | size | full loaders wall / CPU | libyaml events / orjson wall / CPU "
        "| line reader wall / CPU | full / fastest (CPU) | peak RSS full / events / line reader |",
        "|---|---|---|---|---|---|---|",
    ]
    for form, size, best, rss in rows:
        cells = [f"{best[v][0]:.2f} s / {best[v][1]:.2f} s" if v in best else "-" for v in VARIANTS]
        fastest = min(cpu for _, cpu in best.values())
        mem = " / ".join(f"{rss[v]:.0f}" if v in rss else "-" for v in VARIANTS)
        lines.append(
            f"| {form} | {size / 1e6:.1f} MB | {' | '.join(cells)} | {best['full'][1] / fastest:.1f}x | {mem} MB |"
        )
    print("\n".join(lines))
    if a.record:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
