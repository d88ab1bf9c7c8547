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

Overlapping drains (--overlap SECONDS): a real rolling update's steps come every few seconds while
each drain lasts 60 s, so several drains run at once. The 5 events then come SECONDS apart, and
the reconciler is rendered as the controller would: once per instant (an event's time, or the
`until` of a running drain, in time order; `now` = that instant; an event at an `until` is one
render). Connections live across events: every 60 s / --chunks, the oldest 1/chunks of them end
and new ones open (SYN) until there are --connections again (broken ones are reset and replaced
there too). After each write, a data packet of every connection in a bucket whose entry changed or
that drains; after each round, of every connection in a draining bucket (a plain entry that did not
change sends a connection where it did before: it does not read conn_gen). A break is counted for
the event whose drain holds the bucket: at its step 1, at its step 2, as a Bloom false positive (a
connection older than the bucket's drain sent to the new backend), or as a new connection reset
(opened during the drain, sent back to the old backend because a cell of its lost the generation:
another generation's SYN overwrote it). The expected false positives are, per old connection in
a draining bucket, the highest (cells holding its drain's generation / CONN_CELLS)^2 seen at its
checks (the register's real fill, so overwrites count).
It runs stateless and with the product's draining (every render's drains in a fresh generation).

    .venv/bin/python bench/bench_drain.py [--quick] [--connections N] [--overlap SECONDS] [--record]
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
from reconciler.snapshot import Drain, ServiceSnapshot, Snapshot  # noqa: E402
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
    serial: int = 0  # overlap mode: its SYN was the serial-th
    fp_generation: int = 0  # overlap mode: the generation its false-positive chance is for ...
    fp_chance: float = 0.0  # ... and the highest chance seen at its checks


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


POLICIES = {
    "stateless": "stateless (0s)",
    "fresh": "draining (60s), a fresh generation per render",
}


@dataclass
class OverlapEvent:
    what: str
    at: float  # seconds after the first event
    moved: int = 0
    removed_mid_drain: int = 0  # of those, buckets that were draining already
    in_moved: int = 0
    generations: set[int] = field(default_factory=set)
    broken_step1: int = 0  # in buckets that were not draining
    broken_removed: int = 0  # step 1 of a re-moved bucket: the earlier drain's old connections
    bloom_fp: int = 0  # old connections of its drain sent to the new backend
    new_reset: int = 0  # connections opened during its drain sent back to the old backend
    broken_step2: int = 0
    new_marked: int = 0  # connections opened in its draining buckets (their SYN marked conn_gen)
    expected_fp: float = 0.0

    @property
    def broken(self) -> int:
        return self.broken_step1 + self.broken_removed + self.bloom_fp + self.new_reset + self.broken_step2


@dataclass
class OverlapResult:
    policy: str
    spacing: float
    events: list[OverlapEvent] = field(default_factory=list)
    instants: list[str] = field(default_factory=list)  # one line per render
    max_running: int = 0  # most drains (events) running at once
    packets: int = 0
    cells_used: int = 0
    seconds: float = 0.0


def run_overlap(policy: str, connections: int, chunks: int, seed: int, bmv2: bool, spacing: float) -> OverlapResult:
    return _run_overlap(policy, connections, chunks, seed, bmv2, spacing)


def _run_overlap(policy: str, connections: int, chunks: int, seed: int, bmv2: bool, spacing: float) -> OverlapResult:
    cfg = config(0.0 if policy == "stateless" else TIMEOUT_S)
    renderer = Renderer()
    cluster, key = start_cluster()
    snap = renderer.render(cfg, cluster, None, p4info_digest=DIGEST, now=T0).snapshot
    sw = Switch(bmv2)
    sw.apply(snap)
    svc = service_of(snap)
    vip, port = ip(svc.vip), svc.port
    nodes_by_ip = {node.internal_ip: name for name, node in cluster.nodes.items() if node.internal_ip}
    rng = random.Random(seed)
    used: set[tuple[int, int]] = set()

    def open_conn() -> Conn:
        while True:
            src, sport = ip("198.51.0.0") + rng.randrange(1, 1 << 16), rng.randrange(1024, 65536)
            if (src, sport) not in used:
                used.add((src, sport))
                break
        node = sw.send(src, sport, vip, port, SYN, nodes_by_ip)
        return Conn(src, sport, node, flow_bucket(src, vip, 6, sport, port, BUCKETS - 1), len(used))

    first = T0 + 600.0
    times = [first + k * spacing for k in range(len(EVENTS))]
    result = OverlapResult(policy, spacing, [OverlapEvent(what, t - first) for (what, _), t in zip(EVENTS, times)])
    event_of_start = {math.floor(t): k for k, t in enumerate(times)}
    live = [open_conn() for _ in range(connections)]  # oldest first
    start_serial: dict[str, int] = {}  # per event: the serial of the first connection opened in its drain
    round_s = TIMEOUT_S / chunks
    next_round = first + round_s
    pending = list(zip(times, EVENTS))
    t_start = time.perf_counter()

    def drains(s: Snapshot) -> dict[int, Drain]:
        return {d.bucket: d for d in service_of(s).drains}

    def event_of(d: Drain) -> OverlapEvent:
        return result.events[event_of_start[int(d.until - math.ceil(TIMEOUT_S))]]

    def check(step1: set[int], removed: set[int], step2: dict[int, Drain], event: OverlapEvent | None) -> None:
        """A data packet of every connection in a draining bucket or one whose entry changed now;
        broken ones are reset (dropped from `live`)."""
        nonlocal live
        running = drains(snap)
        fill = Counter(sw.device.registers(n.CONN_GEN).values())
        keep: list[Conn] = []
        for c in live:
            b = c.bucket
            d = running.get(b)
            if d is None and b not in step1 and b not in step2:
                keep.append(c)
                continue
            ok = sw.send(c.src, c.sport, vip, port, ACK | PSH, nodes_by_ip) == c.node
            if d is not None and b not in step1 and c.serial < start_serial[event_of(d).what]:
                ev = event_of(d)  # an old connection of a running drain: a false positive's chance
                chance = (fill[d.generation] / n.CONN_CELLS) ** 2
                if c.fp_generation != d.generation:
                    c.fp_generation, c.fp_chance = d.generation, 0.0
                if chance > c.fp_chance:
                    ev.expected_fp += chance - c.fp_chance
                    c.fp_chance = chance
            if ok:
                keep.append(c)
            elif b in step1:
                assert event is not None
                if b in removed:
                    event.broken_removed += 1
                else:
                    event.broken_step1 += 1
            elif b in step2:
                event_of(step2[b]).broken_step2 += 1
            else:
                assert d is not None
                ev = event_of(d)
                if c.serial < start_serial[ev.what]:
                    ev.bloom_fp += 1
                else:
                    ev.new_reset += 1
        live = keep

    def refill() -> None:
        running = drains(snap)
        while len(live) < connections:
            c = open_conn()
            live.append(c)
            if c.bucket in running:
                event_of(running[c.bucket]).new_marked += 1

    while pending or snap.drain_until() is not None:
        until = snap.drain_until()
        now = min(pending[0][0] if pending else math.inf, until if until is not None else math.inf)
        while next_round <= now:  # a connection lives at most TIMEOUT_S: it ends before a step 2 then
            # a round: the oldest 1/chunks end, new ones open until there are `connections` again
            live = live[math.ceil(connections / chunks):]
            refill()
            check(set(), set(), {}, None)
            next_round += round_s
        event: OverlapEvent | None = None
        if pending and pending[0][0] == now:
            event = result.events[len(EVENTS) - len(pending)]
            _, (_, deltas) = pending.pop(0)
            for node, delta in deltas:
                cluster = with_scaled_service(cluster, key, node, delta)
        before, before_drains = service_of(snap), drains(snap)
        snap = renderer.render(cfg, cluster, snap, p4info_digest=DIGEST, now=now).snapshot
        after, after_drains = service_of(snap), drains(snap)
        moved = {b for b, (x, y) in enumerate(zip(before.assignment, after.assignment)) if x != y}
        removed: set[int] = set()
        ended = {b: d for b, d in before_drains.items() if b not in after_drains and b not in moved}
        if event is not None:
            start_serial[event.what] = len(used) + 1  # connections opened from now on are its drain's new ones
            event.moved = len(moved)
            removed = {b for b in moved if b in before_drains and before_drains[b].until > now}
            event.removed_mid_drain = len(removed)
            event.in_moved = sum(1 for c in live if c.bucket in moved)
            event.generations = {after_drains[b].generation for b in moved if b in after_drains}
            if set(after_drains) - set(before_drains) - moved or (policy != "stateless" and not moved <= set(after_drains)):
                raise AssertionError(f"{event.what}: the drains do not start on the moved buckets")
        elif moved:
            raise AssertionError(f"the render at {now - first:g}s moved buckets {sorted(moved)} without an event")
        writes = sw.apply(snap)
        result.max_running = max(result.max_running, len({event_of(d).what for d in after_drains.values()}))
        label = (f"event {result.events.index(event) + 1}" if event is not None else "") + (
            f"{' + ' if event is not None and ended else ''}step 2 of {len(ended)} buckets" if ended else "")
        result.instants.append(
            f"{now - first:+g}s: {label}; {writes} writes; draining {len(after_drains)} buckets, generations "
            f"{sorted({d.generation for d in after_drains.values()}) or '-'}"
        )
        check(moved, removed, ended, event)
        refill()  # the clients of reset connections connect again
    result.seconds = time.perf_counter() - t_start
    result.packets = sw.packets
    result.cells_used = sw.cells_used()
    return result


def overlap_table(stateless: OverlapResult, runs: list[OverlapResult]) -> str:
    head = ("| event (s after the first) | buckets moved (of which draining already) | connections in moved buckets "
            "| broken, stateless (0s) |")
    rule = "|---|---:|---:|---:|"
    for r in runs:
        head += (f" {POLICIES[r.policy]}: generation | new connections in its draining buckets "
                 f"| broken: step 1 / step 1 of re-moved buckets / Bloom FP (expected) / new reset / step 2 |")
        rule += "---:|---:|---|"
    rows = [head, rule]
    for i, ev in enumerate(runs[0].events):
        st = stateless.events[i].broken
        row = f"| {ev.what} (+{ev.at:g}) | {ev.moved} ({ev.removed_mid_drain}) | {ev.in_moved:,} | {st:,} |"
        for r in runs:
            e = r.events[i]
            gens = ", ".join(f"T0+{g - int(T0)}" for g in sorted(e.generations))
            row += (f" {gens} | {e.new_marked:,} | **{e.broken:,}**: {e.broken_step1} / {e.broken_removed:,} / "
                    f"{e.bloom_fp} ({e.expected_fp:.3f}) / {e.new_reset:,} / {e.broken_step2} |")
        rows.append(row)
    total = (f"| **total** | {sum(e.moved for e in runs[0].events)} | {sum(e.in_moved for e in runs[0].events):,} "
             f"| **{sum(e.broken for e in stateless.events):,}** |")
    for r in runs:
        evs = r.events
        total += (f" | {sum(e.new_marked for e in evs):,} | **{sum(e.broken for e in evs):,}**: "
                  f"{sum(e.broken_step1 for e in evs)} / {sum(e.broken_removed for e in evs):,} / "
                  f"{sum(e.bloom_fp for e in evs)} ({sum(e.expected_fp for e in evs):.3f}) / "
                  f"{sum(e.new_reset for e in evs):,} / {sum(e.broken_step2 for e in evs)} |")
    rows.append(total)
    return "\n".join(rows)


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
    ap.add_argument("--overlap", type=float, metavar="SECONDS", default=0.0,
                    help="also the overlapping run: events SECONDS apart (e.g. 10), drains of 60 s")
    ap.add_argument("--no-sequential", action="store_true", help="only the overlapping run")
    ap.add_argument("--record", action="store_true", help="add the results to bench/RESULTS.md")
    a = ap.parse_args(argv)
    if a.quick:
        a.connections, a.chunks = 1_000, 2
    if a.no_sequential and a.overlap <= 0:
        ap.error("--no-sequential needs --overlap")
    t0 = time.perf_counter()
    parts: list[str] = []
    failed = 0
    if not a.no_sequential:
        stateless = run("stateless", a.connections, a.chunks, a.seed, a.bmv2)
        draining = run("draining", a.connections, a.chunks, a.seed, a.bmv2)
        memory = n.CONN_CELLS * n.CONN_GEN_WIDTH // 8
        text = table(stateless, draining, a.connections)
        packets = sum(e.packets for e in stateless.events + draining.events)
        seconds = stateless.seconds + draining.seconds
        parts.append(
            f"{a.connections:,} established connections, {BUCKETS} buckets, {len(EVENTS)} events, "
            f"{a.chunks} rounds per drain, seed {a.seed}\n\n{text}\n\n"
            f"- conn_gen: {n.CONN_CELLS:,} cells x {n.CONN_GEN_WIDTH} bits = {memory / 2**20:g} MiB of switch register "
            f"memory; {draining.cells_used:,} cells hold a generation after the run\n"
            f"- packets through the pipeline: {packets:,} ({packets / seconds:,.0f}/s) in {seconds:.1f} s "
            f"(stateless {stateless.seconds:.1f} s, draining {draining.seconds:.1f} s)\n"
            f"- table writes per transaction: stateless {[w for e in stateless.events for w in e.writes]}, "
            f"draining (step 1, step 2) {[e.writes for e in draining.events]}"
        )
        failed += sum(e.broken_event + e.broken_drain + e.broken_step2 + e.new_misrouted for e in draining.events)
    if a.overlap > 0:
        every = [run_overlap(p, a.connections, a.chunks, a.seed, a.bmv2, a.overlap) for p in POLICIES]
        runs = every[1:]
        lines = "\n".join(f"- {POLICIES[r.policy]}: renders at {'; '.join(r.instants)}" for r in runs)
        parts.append(
            f"Overlapping drains: the 5 events {a.overlap:g} s apart, drains of {TIMEOUT_S:g} s (up to "
            f"{max(r.max_running for r in runs)} events' drains at once), {a.connections:,} connections living "
            f"{TIMEOUT_S:g} s ({a.chunks} rounds of {TIMEOUT_S / a.chunks:g} s), seed {a.seed}; generations as seconds "
            f"after T0 (the first event is at T0+600)\n\n{overlap_table(every[0], runs)}\n\n{lines}\n"
            + "\n".join(
                f"- {POLICIES[r.policy]}: {r.packets:,} packets ({r.packets / r.seconds:,.0f}/s) in {r.seconds:.1f} s; "
                f"{r.cells_used:,} conn_gen cells hold a generation after the run" for r in every)
        )
        # Judged: the product's policy, on what it promises with overlapping drains: nothing
        # broken at an ordinary step 1 or at step 2. Re-moved buckets (a drain entry holds two
        # backends), cross-generation overwrites and Bloom false positives are measured and
        # reported (docs/dataplane.md "Limits"); the earlier policy and stateless are comparisons.
        failed += sum(e.broken_step1 + e.broken_step2 for e in runs[0].events)
    wall = time.perf_counter() - t0
    summary = "\n\n".join(parts) + f"\n\n(wall {wall:.1f} s)"
    print(summary)
    if a.record:
        record(summary, a)
    return 1 if failed else 0


def record(summary: str, a: argparse.Namespace) -> None:
    """Append a run to the "Connection draining (issue 15)" section of bench/RESULTS.md (the end
    of the file when there is none), keeping what is there."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"{platform.machine()}, {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the end), "
               f"Python {platform.python_version()}, {platform.system()}; software switch in "
               f"{'BMv2' if a.bmv2 else 'spec'} mode, in process")
    args = " ".join(x for x in (
        "--quick" if a.quick else "", f"--connections {a.connections}" if not a.quick else "",
        f"--overlap {a.overlap:g}" if a.overlap > 0 else "", "--no-sequential" if a.no_sequential else "") if x)
    block = f"### {'Sequential and overlapping drains' if a.overlap > 0 else 'Sequential drains'}, {when}\n\n{machine}. `.venv/bin/python bench/bench_drain.py {args}`\n\n{summary}\n"
    text = RESULTS.read_text()
    heading = "\n## Connection draining (issue 15)"
    at = text.find(heading)
    if at < 0:
        RESULTS.write_text(text + f"{heading} — `bench/bench_drain.py`\n\n{block}")
        return
    end = text.find("\n## ", at + len(heading))
    end = len(text) if end < 0 else end + 1
    RESULTS.write_text(text[:end].rstrip("\n") + "\n\n" + block + "\n" + text[end:])


if __name__ == "__main__":
    sys.exit(main())
