#!/usr/bin/env python3
"""Full sync at the target's speed (issue 13, item 3): the client's own CPU cost of writing a
full snapshot to an empty switch and verifying it by a full read-back.

A 5,000-Service snapshot (348,137 entries) is applied by the transaction of reconciler/apply.py
to one empty software switch running in its own process (`p4kube sim`, spec or --bmv2 mode).
The client's cost is its own process CPU time (time.process_time, which counts every thread of
the process, gRPC's included); the switch's CPU time is read from /proc for comparison.

1. full apply to an empty switch: encode, write in batches, read back in full, compare;
2. the periodic full read-back of a switch that holds the snapshot (forget + sync_switch:
   read everything back, compare, nothing to write), as the health round does;
3. the two steps of the client's read-back on their own, per entry (CPU, best of 5): cutting the
   ReadResponses into entry bytes (wire.split_read_response) and comparing them with the
   expected bytes (wire.match_readback), on the responses of one Read of the whole switch.

Run with PYTHONPATH=<an older tree> to measure that tree's reconciler with this script.

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
from collections.abc import Callable
from pathlib import Path

import grpc
from finsy.proto import p4r

from benchlib import start_switch
from reconciler.apply import TwoSwitchApplier, default_session_factory
from reconciler.cluster.synthetic import synthetic_cluster
from reconciler.intent.model import LoadBalancerConfig, SwitchConfig, SwitchSpec, VipPool
from reconciler.p4info import PipelineInfo, load_p4info, p4info_digest, pipeline_info_from_message
from reconciler.render import Renderer
from reconciler.switch.wire import match_readback, split_read_response


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
        replies = await raw_read(f"127.0.0.1:{port}", config.switch_config.switches[0].device_id, info)
        expected = applier._expected(snap)
        blobs = [b for r in replies for b in split_read_response(r)]
        split_cpu = best_cpu(lambda: [split_read_response(r) for r in replies])
        match_cpu = best_cpu(lambda: match_readback(blobs, expected))
        assert match_readback(blobs, expected).exact
        micro = [f"| {what} | {cpu / entries * 1e9:,.0f} ns/entry ({cpu * 1000:.0f} ms) |"
                 for what, cpu in (("split_read_response", split_cpu), ("match_readback (exact)", match_cpu))]
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
        f"The read-back's client steps on their own ({len(replies)} ReadResponses, CPU, best of 5):",
        "",
        "| step | client CPU |",
        "|---|---|",
        *micro,
        "",
    ]


async def raw_read(address: str, device_id: int, info: PipelineInfo) -> list[bytes]:
    """One wildcard Read of every table, the replies as the bytes the switch sent."""
    request = p4r.ReadRequest(device_id=device_id)
    for table in info.tables.values():
        request.entities.add().table_entry.table_id = table.id
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", -1)]) as channel:
        call = channel.unary_stream("/p4.v1.P4Runtime/Read", request_serializer=p4r.ReadRequest.SerializeToString,
                                    response_deserializer=None)
        return [reply async for reply in call(request, timeout=120)]


def best_cpu(step: Callable[[], object], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        c0 = time.process_time()
        step()
        best = min(best, time.process_time() - c0)
    return best


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
