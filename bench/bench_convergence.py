#!/usr/bin/env python3
"""End-to-end convergence (issue 7): from an EndpointSlice change to both switches programmed
and the audit commits written, at 5,000 Services with updateInterval 0.

The loop is the product's (reconciler/controller.py: render -> pending commit -> standby ->
primary -> read-back -> applied commit); the switches are two `p4kube sim` processes; the
audit repository is real. The cluster is a ScriptedCluster fed the changed state directly, so
the Kubernetes watch path (event decoding in reconciler/cluster/live.py) is not in this number:
bench/bench_cluster_events.py measures that part on its own. Target: p99 < 250 ms.

    .venv/bin/python bench/bench_convergence.py [--services N] [--changes N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import random
import sys
import tempfile
import time
from pathlib import Path

from benchlib import pct, switch_processes
from reconciler.apply import TwoSwitchApplier, default_session_factory
from reconciler.audit.repo import AuditRepo
from reconciler.cluster.scripted import ScriptedCluster
from reconciler.cluster.synthetic import synthetic_cluster, with_scaled_service
from reconciler.controller import ConfigWorker, Controller
from reconciler.intent.model import HealthCheck, IntentSet, LoadBalancerConfig, SwitchConfig, SwitchSpec, VipPool
from reconciler.intent.watch import StaticIntent
from reconciler.p4info import load_p4info, p4info_digest, pipeline_info_from_message


async def run(a: argparse.Namespace, workdir: Path) -> str:
    p4info = load_p4info()
    info = pipeline_info_from_message(p4info)
    digest = p4info_digest(p4info)
    with switch_processes(2) as ports:
        config = LoadBalancerConfig(
            namespace="p4kube-system", name="bench", update_interval_s=0.0,
            health_check=HealthCheck(enabled=False),  # synthetic node IPs are not reachable here
            vip_pools=(VipPool("bench", ((ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.19.255.254")),)),),
            switch_config=SwitchConfig(switches=(
                SwitchSpec("standby", "standby", f"127.0.0.1:{ports[0]}"),
                SwitchSpec("primary", "primary", f"127.0.0.1:{ports[1]}"),
            )),
        )
        state = synthetic_cluster(services=a.services, nodes=a.nodes, endpoints=a.endpoints)
        cluster = ScriptedCluster(state)
        audit = AuditRepo.open_or_init(workdir / "audit.git")

        def make_worker(cfg: LoadBalancerConfig) -> ConfigWorker:
            applier = TwoSwitchApplier(cfg, p4info=p4info, info=info, device_config=b"", election_id=1,
                                       session_factory=default_session_factory(cfg, info))
            return ConfigWorker(cfg, applier, digest, audit=audit)

        ctl = Controller(StaticIntent(IntentSet((config,))), cluster, make_worker=make_worker)
        stop = asyncio.Event()
        t0 = time.perf_counter()
        task = asyncio.create_task(ctl.run(stop))
        await ctl.wait_until(lambda: any(r.outcome == "applied" for r in ctl.history), timeout=900)
        t_first = time.perf_counter() - t0
        gc.collect()
        gc.freeze()  # as `p4kube run` does once the state is loaded

        rng = random.Random(5)
        keys = sorted(k for k in state.services if state.endpoints.get(k))
        times, writes = [], []
        for _ in range(a.changes):
            key = rng.choice(keys)
            current = cluster.snapshot()
            node = rng.choice(current.endpoints[key]).node
            new_state = with_scaled_service(current, key, node, 1 if rng.random() < 0.5 else -1)
            n = len(ctl.history)
            t0 = time.perf_counter()
            cluster.replace(new_state)
            await ctl.wait_until(lambda: len(ctl.history) > n, timeout=60)
            times.append(time.perf_counter() - t0)
            writes.append(ctl.history[-1].writes)
        stop.set()
        await asyncio.wait_for(task, 60)
        versions = len(audit.history(config=config.key))
    ms = [t * 1000 for t in times]
    return "\n".join([
        f"### Convergence: {a.services} Services, updateInterval 0, two switch processes, real audit repository ({time.strftime('%Y-%m-%d')})",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| start: first render, pending commit, full apply to both switches, applied commit | {t_first:.1f} s | - |",
        f"| one EndpointSlice change -> both switches programmed + audit commits: median / p99 ({a.changes} changes) | {pct(ms, .5):.1f} / {pct(ms, .99):.1f} ms | p99 < 250 ms |",
        f"| writes per change (both switches): median / max | {pct(writes, .5):.0f} / {max(writes)} | - |",
        f"| audit commits at the end | {versions} | - |",
        "",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=50000)
    ap.add_argument("--changes", type=int, default=200)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="p4kube-bench-") as tmp:
        print(asyncio.run(run(a, Path(tmp))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
