#!/usr/bin/env python3
"""Render benchmark (issue 2): a synthetic cluster of 5,000 Services, 1,000 nodes and 50,000 ready
endpoints at 64 buckets per Service.

Measures the full render (including the digest), the incremental re-render after one Service's
EndpointSlice changes (the controller passes `changed=`), the same without the hint (the renderer
compares inputs itself), and peak RSS. Targets: full < 3 s, one changed Service < 10 ms,
peak RSS < 600 MB.

    .venv/bin/python bench/bench_render.py [--services N] [--changes N] [--record]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import platform
import random
import resource
import sys
import time
from pathlib import Path

from reconciler.cluster.synthetic import synthetic_cluster, with_scaled_service
from reconciler.intent.model import LoadBalancerConfig, VipPool
from reconciler.render import Renderer

DIGEST = "sha256:" + "0" * 64


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=50000)
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    ap.add_argument("--no-gc-freeze", dest="gc_freeze", action="store_false", help="leave the loaded state to the cyclic GC")
    a = ap.parse_args()

    t0 = time.perf_counter()
    cluster = synthetic_cluster(services=a.services, nodes=a.nodes, endpoints=a.endpoints, seed=1)
    t_synth = time.perf_counter() - t0
    config = LoadBalancerConfig(
        namespace="p4kube-system",
        name="bench",
        buckets_per_service=64,
        vip_pools=(VipPool("bench", ((ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.19.255.254")),)),),
    )
    renderer = Renderer()
    t0 = time.perf_counter()
    result = renderer.render(config, cluster, None, p4info_digest=DIGEST)
    _ = result.snapshot.digest  # the digest is part of a full render: computed inside the timed region
    t_full = time.perf_counter() - t0
    snap = result.snapshot
    entries = snap.entry_count()
    if a.gc_freeze:
        # What a long-running controller does once its large, long-lived state is loaded: move
        # it out of the cyclic collector's reach, so later collections do not rescan it.
        gc.collect()
        gc.freeze()

    rng = random.Random(7)
    keys = sorted(k for k in cluster.services if cluster.endpoints.get(k))
    node_names = sorted(cluster.nodes)
    hinted, unhinted = [], []
    for i in range(a.changes):
        key = rng.choice(keys)
        eps = cluster.endpoints[key]
        node = rng.choice(eps).node if eps and rng.random() < 0.5 else rng.choice(node_names)
        count_on_node = sum(1 for e in eps if e.node == node)
        delta = -1 if count_on_node > 0 and rng.random() < 0.5 else 1
        cluster = with_scaled_service(cluster, key, node, delta)
        t0 = time.perf_counter()
        if i % 2 == 0:
            result = renderer.render(config, cluster, snap, p4info_digest=DIGEST, changed=[key])
            _ = result.snapshot.digest
            hinted.append(time.perf_counter() - t0)
        else:
            result = renderer.render(config, cluster, snap, p4info_digest=DIGEST)
            _ = result.snapshot.digest
            unhinted.append(time.perf_counter() - t0)
        snap = result.snapshot
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def ms(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))]

    lines = [
        f"### Render: {a.services} Services, {a.nodes} nodes, {a.endpoints} endpoints, 64 buckets "
        f"({time.strftime('%Y-%m-%d')}, {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()})",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| full render incl. digest | {t_full:.2f} s ({entries} table entries) | < 3 s |",
        f"| one changed Service, `changed=` hint: median / p99 | {ms(hinted, .5):.2f} / {ms(hinted, .99):.2f} ms | < 10 ms |",
        f"| one changed Service, no hint (inputs compared): median / p99 | {ms(unhinted, .5):.2f} / {ms(unhinted, .99):.2f} ms | - |",
        f"| incremental / full (median, hinted) | {ms(hinted, .5) / (1000 * t_full):.4f} | - |",
        f"| peak RSS (whole process, incl. the synthetic cluster) | {rss_mb:.0f} MB | < 600 MB |",
        f"| gc.freeze() after the first render | {'yes' if a.gc_freeze else 'no'} | - |",
        f"| building the synthetic cluster (not render) | {t_synth:.2f} s | - |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if a.record:
        path = Path(__file__).with_name("RESULTS.md")
        with path.open("a") as f:
            f.write(text + "\n")
        print(f"appended to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
