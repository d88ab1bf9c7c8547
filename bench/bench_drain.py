#!/usr/bin/env python3
"""Connection draining (issue 15 item 5): established TCP connections broken per event of a
rolling update, stateless against draining, through the software switch's packet pipeline.

One Service (64 buckets, replicas on three nodes, then on up to five) holds 10,000 established TCP
connections spread over its buckets. A rolling update of 5 events changes its replicas: one added,
one removed, one added, one removed, one moved. Each event is rendered by reconciler.render on an
explicit clock, diffed and translated by the product (reconciler.diff, reconciler.switch.translate)
into P4Runtime WriteRequests, written to an in-process software switch (reconciler.sim Device, the
same state its gRPC server serves), and every packet goes through its model of load_balancer.p4
(reconciler.sim.pipeline, the same CRC-32 hashes and conn_gen register as the program).

Per event, with connections that live no longer than the drain (clients replace them as they end):
  1. the event's snapshot is written (stateless: plain entries; draining: step 1, dnat_draining
     on the moved buckets);
  2. one data packet of each of the 10,000 established connections: a connection is *broken* when
     it reaches another node than its SYN did;
  3. during the drain the old connections end and as many new ones are opened (SYN), in --chunks
     rounds; after each round, a data packet of every connection still open (old and new) in a
     draining bucket (the others' entries are plain and unchanged);
  4. draining only: step 2 once the drain has ended (render at until, plain entries), then a data
     packet of every connection again.
The new connections are the established ones of the next event.

Broken connections are counted once each (in stateless mode they are replaced at once). For the
draining mode, an old connection sent to the new backend during the drain is a false positive
of the conn_gen Bloom filter (its two cells both hold the drain's generation); the expected count
is sum over the old connections in draining buckets of (1 - e^(-2N/CONN_CELLS))^2, N the marks.

    .venv/bin/python bench/bench_drain.py [--quick] [--connections N] [--record]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ipaddress  # noqa: E402

from finsy.proto import p4r  # noqa: E402

from reconciler import p4names as n  # noqa: E402
from reconciler.cluster.model import ClusterState  # noqa: E402
from reconciler.cluster.synthetic import synthetic_cluster, with_scaled_service  # noqa: E402
from reconciler.diff import diff_snapshots  # noqa: E402
from reconciler.intent.model import LoadBalancerConfig, Route, SwitchConfig, VipPool  # noqa: E402
from reconciler.p4info import load_p4info, pipeline_info_from_message  # noqa: E402
from reconciler.render import Renderer  # noqa: E402
from reconciler.sim.behavior import behavior_for  # noqa: E402
from reconciler.sim.device import Device  # noqa: E402
from reconciler.sim.packet import ACK, PSH, SYN, build_tcp, ip, ip_str, parse_frame  # noqa: E402
from reconciler.sim.pipeline import flow_bucket, process_packet  # noqa: E402
from reconciler.snapshot import ServiceSnapshot, Snapshot  # noqa: E402
from reconciler.switch.translate import updates_to_requests  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
BUCKETS = 64
TIMEOUT_S = 60.0
T0 = 1_800_000_000.0  # the explicit clock's start (epoch seconds); events are 10 minutes apart
CLIENT_PORT, NODE_PORT = 2, 1
DIGEST = "0" * 64
# The rolling update: (what, [(node, replica delta)]) on nodes node-0..node-4.
START = {"node-0": 2, "node-1": 2, "node-2": 2}
EVENTS = (
    ("add a replica on node-3", [("node-3", +1)]),
    ("remove one on node-0", [("node-0", -1)]),
    ("add one on node-4", [("node-4", +1)]),
    ("remove one on node-1", [("node-1", -1)]),
    ("move one from node-2 to node-3", [("node-2", -1), ("node-3", +1)]),
)


@dataclass
class Conn:
    src: int
    sport: int
    node: str  # where its SYN went
    bucket: int


@dataclass
class EventResult:
    what: str
    moved: int  # buckets whose backend changed
    in_moved: int  # established connections in those buckets at the event
    broken_event: int  # broken by the event's first write (stateless), or by step 1 (draining)
    broken_drain: int = 0  # draining: old connections sent to the new backend later in the drain
    broken_step2: int = 0  # draining: connections moved by step 2
    new_opened: int = 0  # connections opened during the drain
    new_marked: int = 0  # ... of which in draining buckets (their SYN marked conn_gen)
    new_misrouted: int = 0  # new connections that left their SYN's node
    expected_fp: float = 0.0
    writes: tuple[int, ...] = ()  # table writes per transaction
    packets: int = 0


@dataclass
class RunResult:
    mode: str
    events: list[EventResult] = field(default_factory=list)
    cells_used: int = 0
    seconds: float = 0.0


class Switch:
    """An in-process software switch device with load_balancer.p4, written by the product's
    diff and translation, packets through its pipeline."""

    def __init__(self, bmv2: bool) -> None:
        message = load_p4info()
        self.info = pipeline_info_from_message(message)
        self.device = Device(1, behavior_for(bmv2))
        request = p4r.SetForwardingPipelineConfigRequest(
            device_id=1, action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT)
        request.election_id.low = 1
        request.config.p4info.CopyFrom(message)
        request.config.p4_device_config = b"{}"
        self.device.set_pipeline(request)
        self.held: Snapshot | None = None
        self.packets = 0

    def apply(self, snap: Snapshot) -> int:
        """Write the difference from what the switch holds; returns the number of updates."""
        diff = diff_snapshots(self.held, snap)
        count = 0
        for requests in updates_to_requests(self.info, diff.phases, device_id=1, election_id=1, batch_size=1000):
            for request in requests:
                results = self.device.write(request)
                bad = [r for r in results if r[0] != 0]
                if bad:
                    raise RuntimeError(f"write refused: {bad[:3]}")
                count += len(request.updates)
        self.held = snap
        return count

    def send(self, src: int, sport: int, vip: int, port: int, flags: int, nodes_by_ip: dict[str, str]) -> str:
        self.packets += 1
        out = process_packet(self.device, CLIENT_PORT, build_tcp(src, vip, sport, port, flags))
        if out.data is None:
            raise RuntimeError(f"dropped: {out.trace}")
        return nodes_by_ip[ip_str(parse_frame(out.data).ipv4.dst)]  # type: ignore[union-attr]

    def cells_used(self) -> int:
        return sum(1 for v in self.device.registers(n.CONN_GEN).values() if v)


def config(timeout_s: float) -> LoadBalancerConfig:
    return LoadBalancerConfig(
        namespace="p4kube-system", name="bench-drain", buckets_per_service=BUCKETS,
        connection_drain_timeout_s=timeout_s,
        vip_pools=(VipPool("bench", ((ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.18.0.254")),)),),
        switch_config=SwitchConfig(routes=(Route(ipaddress.IPv4Network("10.0.0.0/8"), NODE_PORT),)),
    )


def start_cluster() -> tuple[ClusterState, str]:
    state = synthetic_cluster(services=1, nodes=5, endpoints=0, seed=1)
    key = next(iter(state.services))
    for node, replicas in START.items():
        state = with_scaled_service(state, key, node, replicas)
    return state, key


def service_of(snap: Snapshot) -> ServiceSnapshot:
    (svc,) = snap.services
    return svc


def run(mode: str, connections: int, chunks: int, seed: int, bmv2: bool) -> RunResult:
    timeout = TIMEOUT_S if mode == "draining" else 0.0
    cfg = config(timeout)
    renderer = Renderer()
    cluster, key = start_cluster()
    now = T0
    snap = renderer.render(cfg, cluster, None, p4info_digest=DIGEST, now=now).snapshot
    sw = Switch(bmv2)
    sw.apply(snap)
    svc = service_of(snap)
    vip, port = ip(svc.vip), svc.port
    nodes_by_ip = {node.internal_ip: name for name, node in cluster.nodes.items() if node.internal_ip}
    rng = random.Random(seed)
    used: set[tuple[int, int]] = set()

    def fresh_flow() -> tuple[int, int]:
        while True:
            flow = (ip("198.51.0.0") + rng.randrange(1, 1 << 16), rng.randrange(1024, 65536))
            if flow not in used:
                used.add(flow)
                return flow

    def open_conn() -> Conn:
        src, sport = fresh_flow()
        node = sw.send(src, sport, vip, port, SYN, nodes_by_ip)
        return Conn(src, sport, node, flow_bucket(src, vip, 6, sport, port, BUCKETS - 1))

    def data(c: Conn) -> str:
        return sw.send(c.src, c.sport, vip, port, ACK | PSH, nodes_by_ip)

    established = [open_conn() for _ in range(connections)]
    result = RunResult(mode)
    t_start = time.perf_counter()
    for what, deltas in EVENTS:
        now += 600.0
        before = service_of(snap)
        for node, delta in deltas:
            cluster = with_scaled_service(cluster, key, node, delta)
        snap = renderer.render(cfg, cluster, snap, p4info_digest=DIGEST, now=now).snapshot
        svc = service_of(snap)
        moved = {b for b, (x, y) in enumerate(zip(before.assignment, svc.assignment)) if x != y}
        draining = {d.bucket for d in svc.drains}
        if mode == "draining" and draining != moved:
            raise AssertionError(f"{what}: draining buckets {sorted(draining)} are not the moved ones {sorted(moved)}")
        packets0 = sw.packets
        ev = EventResult(what, len(moved), sum(1 for c in established if c.bucket in moved), 0)
        ev.writes += (sw.apply(snap),)
        broken: set[int] = set()
        for i, c in enumerate(established):
            if data(c) != c.node:
                broken.add(i)
        ev.broken_event = len(broken)
        # Stateless: the broken ones are reset; their clients reconnect (counted among the new).
        old = [c for i, c in enumerate(established) if i not in broken]
        new: list[Conn] = []
        marks = 0
        per_round = math.ceil(connections / chunks)
        for r in range(chunks):
            # a round of the drain: 1/chunks of the old connections end, as many new ones open
            ending = len(old) if r == chunks - 1 else min(len(old), per_round)
            old = old[ending:]
            want = connections if r == chunks - 1 else min(connections, (r + 1) * per_round)
            while len(new) < want:
                c = open_conn()
                marks += c.bucket in draining
                new.append(c)
            if mode == "draining":
                # Only the draining buckets' entries decide by conn_gen; the plain ones were
                # checked for every connection at step 1 and are checked again after step 2.
                survivors = []
                for c in old:
                    if c.bucket in draining and data(c) != c.node:
                        ev.broken_drain += 1  # a false positive: marked cells of another connection
                    else:
                        survivors.append(c)
                old = survivors
                ev.new_misrouted += sum(1 for c in new if c.bucket in draining and data(c) != c.node)
                # expected false positives this round, for the old connections in draining buckets
                fill = 1 - math.exp(-2 * marks / n.CONN_CELLS)
                ev.expected_fp += sum(1 for c in old if c.bucket in draining) * fill * fill
        ev.new_opened, ev.new_marked = len(new), marks
        if mode == "draining":
            until = snap.drain_until()
            assert until is not None and until <= now + TIMEOUT_S
            now = until
            snap = renderer.render(cfg, cluster, snap, p4info_digest=DIGEST, now=now).snapshot
            if snap.drain_until() is not None:
                raise AssertionError(f"{what}: the render at {until} did not end the drain")
            ev.writes += (sw.apply(snap),)
            ev.broken_step2 = sum(1 for c in new if data(c) != c.node)
        ev.packets = sw.packets - packets0
        result.events.append(ev)
        established = new
    result.seconds = time.perf_counter() - t_start
    result.cells_used = sw.cells_used()
    return result


def table(stateless: RunResult, draining: RunResult, connections: int) -> str:
    rows = [
        "| event | buckets moved | connections in moved buckets | broken, stateless (0s) | broken, draining (60s): "
        "step 1 / during drain / step 2 | new connections during the drain (in draining buckets) | new misrouted "
        "| expected Bloom false positives |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for a, b in zip(stateless.events, draining.events):
        rows.append(
            f"| {a.what} | {b.moved} | {b.in_moved:,} | {a.broken_event:,} ({a.broken_event / connections:.1%}) | "
            f"{b.broken_event} / {b.broken_drain} / {b.broken_step2} | {b.new_opened:,} ({b.new_marked:,}) | "
            f"{b.new_misrouted} | {b.expected_fp:.4f} |"
        )
    ta = sum(e.broken_event for e in stateless.events)
    tb = sum(e.broken_event + e.broken_drain + e.broken_step2 for e in draining.events)
    rows.append(
        f"| **total** | {sum(e.moved for e in draining.events)} | {sum(e.in_moved for e in draining.events):,} | "
        f"**{ta:,}** | **{tb}** | {sum(e.new_opened for e in draining.events):,} "
        f"({sum(e.new_marked for e in draining.events):,}) | {sum(e.new_misrouted for e in draining.events)} | "
        f"{sum(e.expected_fp for e in draining.events):.4f} |"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--chunks", type=int, default=4, help="rounds of the drain in which connections end and open")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--bmv2", action="store_true", help="the switch in BMv2 mode (same data plane)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1,000 connections, 2 rounds (< 30 s)")
    ap.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    a = ap.parse_args(argv)
    if a.quick:
        a.connections, a.chunks = 1_000, 2
    t0 = time.perf_counter()
    stateless = run("stateless", a.connections, a.chunks, a.seed, a.bmv2)
    draining = run("draining", a.connections, a.chunks, a.seed, a.bmv2)
    wall = time.perf_counter() - t0
    memory = n.CONN_CELLS * n.CONN_GEN_WIDTH // 8
    text = table(stateless, draining, a.connections)
    packets = sum(e.packets for e in stateless.events + draining.events)
    summary = (
        f"{a.connections:,} established connections, {BUCKETS} buckets, {len(EVENTS)} events, "
        f"{a.chunks} rounds per drain, seed {a.seed}\n\n{text}\n\n"
        f"- conn_gen: {n.CONN_CELLS:,} cells x {n.CONN_GEN_WIDTH} bits = {memory / 2**20:g} MiB of switch register "
        f"memory; {draining.cells_used:,} cells hold a generation after the run\n"
        f"- packets through the pipeline: {packets:,} ({packets / wall:,.0f}/s) in {wall:.1f} s "
        f"(stateless {stateless.seconds:.1f} s, draining {draining.seconds:.1f} s)\n"
        f"- table writes per transaction: stateless {[w for e in stateless.events for w in e.writes]}, "
        f"draining (step 1, step 2) {[e.writes for e in draining.events]}"
    )
    print(summary)
    if a.record:
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
        with RESULTS.open("a") as f:
            f.write(f"\n## Connection draining (issue 15) — `bench/bench_drain.py`\n\n{when}, {machine}.\n\n{summary}\n")
    failed = sum(e.broken_event + e.broken_drain + e.broken_step2 + e.new_misrouted for e in draining.events)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
