#!/usr/bin/env python3
"""Apply benchmark (issue 4): two software switches, each in its own process (`p4kube sim`),
and the transaction of reconciler/apply.py driving them over gRPC on loopback.

1. A full 5,000-Service snapshot (348,000 entries) applied to empty standby and primary.
2. One changed Service (an EndpointSlice scaled), rendered incrementally and applied end to end
   to both switches (diff, writes in dependency order, key read-back on each): median and p99.
Targets: one changed Service on both switches under 100 ms p99. (Client-side encoding on its
own is bench/bench_encode.py; target 50,000 entries/s.)

    .venv/bin/python bench/bench_apply.py [--services N] [--changes N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import random
import sys
import time

from benchlib import pct, switch_processes
from reconciler.apply import TwoSwitchApplier, default_session_factory
from reconciler.cluster.synthetic import synthetic_cluster, with_scaled_service
from reconciler.intent.model import LoadBalancerConfig, SwitchConfig, SwitchSpec, VipPool
from reconciler.p4info import load_p4info, p4info_digest, pipeline_info_from_message
from reconciler.render import Renderer


async def main_async(a: argparse.Namespace) -> str:
    p4info = load_p4info()
    info = pipeline_info_from_message(p4info)
    digest = p4info_digest(p4info)
    with switch_processes(2) as (standby_port, primary_port):
        config = LoadBalancerConfig(
            namespace="p4kube-system",
            name="bench",
            vip_pools=(VipPool("bench", ((ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.19.255.254")),)),),
            switch_config=SwitchConfig(
                switches=(
                    SwitchSpec("standby", "standby", f"127.0.0.1:{standby_port}"),
                    SwitchSpec("primary", "primary", f"127.0.0.1:{primary_port}"),
                ),
                batch_size=a.batch_size,
            ),
        )
        cluster = synthetic_cluster(services=a.services, nodes=a.nodes, endpoints=a.endpoints)
        renderer = Renderer()
        snap = renderer.render(config, cluster, None, p4info_digest=digest).snapshot
        entries = snap.entry_count()
        applier = TwoSwitchApplier(
            config, p4info=p4info, info=info, device_config=b"", election_id=1,
            session_factory=default_session_factory(config, info),
        )
        t0 = time.perf_counter()
        result = await applier.apply(snap, None)
        t_full = time.perf_counter() - t0
        assert result.outcome == "applied", result.describe()
        gc.collect()
        gc.freeze()

        rng = random.Random(11)
        keys = sorted(k for k in cluster.services if cluster.endpoints.get(k))
        times, writes = [], []
        for _ in range(a.changes):
            key = rng.choice(keys)
            eps = cluster.endpoints[key]
            node = rng.choice(eps).node
            cluster = with_scaled_service(cluster, key, node, 1 if rng.random() < 0.5 else -1)
            t0 = time.perf_counter()
            new = renderer.render(config, cluster, snap, p4info_digest=digest, changed=[key]).snapshot
            result = await applier.apply(new, snap)
            times.append(time.perf_counter() - t0)
            assert result.ok, result.describe()
            writes.append(sum(sum(k.values()) for k in result.writes().values()))
            if a.verbose and len(writes) <= 3:
                print(result.describe(), file=sys.stderr)
            snap = new
        await applier.close()
    ms = [t * 1000 for t in times]
    return "\n".join(
        [
            f"### Apply: {a.services} Services, two software switches in their own processes ({time.strftime('%Y-%m-%d')})",
            "",
            "| measure | result | target |",
            "|---|---|---|",
            f"| full snapshot to empty standby + primary ({entries} entries each, read back fully) | {t_full:.2f} s = {2 * entries / t_full:,.0f} entries/s | - |",
            f"| one changed Service, render + apply to both switches: median / p99 | {pct(ms, .5):.1f} / {pct(ms, .99):.1f} ms | p99 < 100 ms |",
            f"| writes per change (both switches): median / max | {pct(writes, .5):.0f} / {max(writes)} | - |",
            "",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=50000)
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    print(asyncio.run(main_async(a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

