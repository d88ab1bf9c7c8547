#!/usr/bin/env python3
"""Full sync at the target's speed (issue 13, item 3): the client's own CPU cost of writing a
full snapshot to an empty switch and verifying it by a full read-back.

A 5,000-Service snapshot (348,137 entries) is applied by the transaction of reconciler/apply.py
to one empty software switch running in its own process (`p4kube sim`, spec or --bmv2 mode).
The client's cost is its own process CPU time (time.process_time, which counts every thread of
the process, gRPC's included); the switch's CPU time is read from /proc for comparison.

1. full apply to an empty switch: encode, write in batches, read back in full, compare;
2. the periodic full read-back of a switch that holds the snapshot (forget + sync_switch:
   read everything back, compare, nothing to write), as the health round does.

Target: >= 100,000 entries/s of client CPU for step 1 (write + read-back comparison).

    .venv/bin/python bench/bench_full_sync.py [--services N] [--bmv2] [--batch-size N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import os
import sys
import time
from pathlib import Path

from benchlib import start_switch
from reconciler.apply import TwoSwitchApplier, default_session_factory
from reconciler.cluster.synthetic import synthetic_cluster
from reconciler.intent.model import LoadBalancerConfig, SwitchConfig, SwitchSpec, VipPool
from reconciler.p4info import load_p4info, p4info_digest, pipeline_info_from_message
from reconciler.render import Renderer


def cpu_of(pid: int) -> float:
    """utime + stime of process `pid` in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(a: argparse.Namespace) -> list[str]:
    p4info = load_p4info()
    info = pipeline_info_from_message(p4info)
    proc, port = start_switch(bmv2=a.bmv2)
    try:
        config = LoadBalancerConfig(
            namespace="p4kube-system",
            name="bench",
            vip_pools=(VipPool("bench", ((ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.19.255.254")),)),),
            switch_config=SwitchConfig(switches=(SwitchSpec("sw", "primary", f"127.0.0.1:{port}"),), batch_size=a.batch_size),
        )
        cluster = synthetic_cluster(services=a.services, nodes=a.nodes, endpoints=a.endpoints)
        snap = Renderer().render(config, cluster, None, p4info_digest=p4info_digest(p4info)).snapshot
        del cluster
        entries = snap.entry_count()
        assert snap.digest  # computed by render in real use (the result records it): not the sync's cost
        applier = TwoSwitchApplier(
            config, p4info=p4info, info=info, device_config=b"", election_id=1,
            session_factory=default_session_factory(config, info),
        )
        gc.collect()
        gc.freeze()
        # connect and push the pipeline first: not part of the sync's cost
        assert not await applier.unreachable()

        rows = []
        for label, step in (("full apply to an empty switch (write + full read-back compare)", "apply"),
                            ("full read-back of a switch holding the snapshot (compare, nothing written)", "resync")):
            if step == "resync":
                applier.forget("sw")
            sw0, c0, w0 = cpu_of(proc.pid), time.process_time(), time.perf_counter()
            if step == "apply":
                result = await applier.apply(snap, None)
                assert result.outcome == "applied", result.describe()
            else:
                report = await applier.sync_switch("sw", snap)
                assert report.state == "unchanged", report.describe()
            client, wall, switch = time.process_time() - c0, time.perf_counter() - w0, cpu_of(proc.pid) - sw0
            rows.append(f"| {label} | {client:.2f} s = {entries / client:,.0f} entries/s | {switch:.2f} s | {wall:.2f} s |")
        await applier.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
    mode = "BMv2 mode" if a.bmv2 else "spec mode"
    return [
        f"### Full sync: {a.services} Services, {entries:,} entries, one software switch ({mode}) in its own process, "
        f"batches of {a.batch_size} ({time.strftime('%Y-%m-%d %H:%M')} UTC, CPython {sys.version.split()[0]})",
        "",
        "| step | client CPU (entries/s) | switch CPU | wall |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=50000)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--bmv2", action="store_true", help="the software switch in BMv2 mode")
    a = ap.parse_args()
    print("\n".join(asyncio.run(run(a))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
