"""The two-step drain in the loop (DESIGN.md 5.1, issue 15): a scale event is applied as step 1
(dnat_draining entries on both switches, recorded in the audit repository), the loop wakes at the
drains' `until` and applies step 2 (plain entries); a restart mid-drain finishes at `until`, a
restart after it at once; a drain-starting transaction that fails is rolled back to plain
entries; a failed step 2 is retried without new drains. Two software switches over real gRPC on
127.0.0.1, TCP listeners on 127.0.0.x for the nodes, a real audit repository, fake time (a
ManualClock and a wall clock derived from it); packets through the switch's packet interface."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import random

from test_controller import NODES, endpoints, running
from test_security_addresses import kube  # noqa: F401 - the test API server fixture, with the CRD

from reconciler import p4names as n
from reconciler.app import Settings, worker_factory
from reconciler.audit.repo import AuditRepo
from reconciler.cluster.scripted import ScriptedCluster
from reconciler.controller import Controller
from reconciler.health import ManualClock
from reconciler.intent.model import IntentSet, Route
from reconciler.intent.watch import StaticIntent
from reconciler.paths import DEMO_EXAMPLE_DIR
from reconciler.sim.packet import ACK, PSH, SYN, build_tcp, ip, ip_str, parse_frame
from reconciler.sim.pipeline import flow_bucket
from reconciler.snapshot import format_time

EPOCH = 1_800_000_000.0  # the wall clock's reading when the ManualClock reads 0
KEY = "p4kube-system/loop"
BEFORE = {"node-a": 1, "node-b": 2, "node-c": 3}
AFTER = {"node-a": 3, "node-b": 2, "node-c": 1}
CLIENT_PORT, NODE_PORT = 2, 1
NODE_OF = {ip_: node for node, ip_ in NODES.items()}


def drain_world(loop_world):
    """loop_world with routes (so that packets leave the switch) and web at 1/2/3 replicas."""
    sws, backends, ports, config, state, tmp = loop_world
    routes = (Route(ipaddress.IPv4Network("127.0.0.0/8"), NODE_PORT, "02:00:00:00:00:01"),
              Route(ipaddress.IPv4Network("198.51.0.0/16"), CLIENT_PORT, "02:00:00:00:00:02"))
    config = dataclasses.replace(config, switch_config=dataclasses.replace(config.switch_config, routes=routes))
    state = scaled(state, BEFORE)
    return sws, config, state, tmp


def scaled(state, per_node):
    return dataclasses.replace(state, endpoints={**state.endpoints, "apps/web": endpoints("web", per_node)})


def controller(config, cluster, audit_dir, clock):
    audit = AuditRepo.open_or_init(audit_dir)
    settings = Settings(pipeline_dir=str(DEMO_EXAMPLE_DIR), allow_insecure_switches=True, timeout=2.0, election_id=7)
    make_worker = worker_factory(settings, audit=audit, fallback=cluster, probe_retry_delay=0.01)
    ctl = Controller(StaticIntent(IntentSet((config,))), cluster, make_worker=make_worker, clock=clock,
                     wall=lambda: EPOCH + clock.now())
    return ctl, audit


def web(snap):
    return next(s for s in snap.services if s.service_key == "apps/web")


def backend_rows(sw):
    """The backend_table as the switch holds it: {(service_id, bucket): (action, params)}."""
    return {e.key: (e.action, dict(e.params)) for e in sw.entries(1, n.BACKEND_TABLE)}


def draining_buckets(sw) -> int:
    return sum(1 for e in sw.entries(1, n.BACKEND_TABLE) if e.action == n.DNAT_DRAINING)


def send(sw, vip: str, port: int, flow: tuple[str, int], flags: int) -> str:
    """One TCP packet of `flow` to the VIP through the switch's packets: the node it is sent to."""
    src, sport = flow
    out = sw.inject(1, CLIENT_PORT, build_tcp(src, vip, sport, port, flags, b"x" if flags & PSH else b""))
    assert out.egress_port == NODE_PORT, out.trace
    return NODE_OF[ip_str(parse_frame(out.data).ipv4.dst)]


def reasons(audit):
    return [(e.version, e.trailers.get("Outcome"), e.trailers.get("Reason", "")) for e in audit.history(config=KEY)]


def applied(ctl, since: int = 0):
    return lambda: any(r.outcome == "applied" for r in ctl.history[since:])


def test_scale_applies_step_one_then_step_two_at_until_and_connections_keep_their_node(loop_world, caplog):
    sws, config, state, tmp = drain_world(loop_world)
    cluster = ScriptedCluster(state)
    clock = ManualClock()
    caplog.set_level(logging.INFO, logger="reconciler.controller")

    async def scenario():
        ctl, audit = controller(config, cluster, tmp / "audit.git", clock)
        async with running(ctl):
            await ctl.wait_until(applied(ctl))
            v1 = audit.last_applied(KEY)
            assert v1.drain_until() is None and draining_buckets(sws[1]) == 0
            svc1 = web(v1)
            mask = svc1.bucket_count - 1
            rng = random.Random(15)
            established = sorted({(f"198.51.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.randrange(1024, 65536))
                                  for _ in range(300)})
            home = {f: send(sws[1], svc1.vip, svc1.port, f, SYN) for f in established}

            # Step 1: the scale to 3/2/1 moves buckets; each moved bucket drains.
            n0 = len(ctl.history)
            cluster.replace(scaled(cluster.snapshot(), AFTER))
            await ctl.wait_until(applied(ctl, n0))
            v2 = audit.last_applied(KEY)
            svc2 = web(v2)
            moved = {b for b, (x, y) in enumerate(zip(svc1.assignment, svc2.assignment)) if x != y}
            assert moved and {d.bucket for d in svc2.drains} == moved
            until = v2.drain_until()
            assert until == EPOCH + config.connection_drain_timeout_s
            assert draining_buckets(sws[0]) == draining_buckets(sws[1]) == len(moved)
            assert backend_rows(sws[0]) == backend_rows(sws[1])
            record = next(r for r in ctl.history[n0:] if r.outcome == "applied")
            assert record.version == v2.version and record.draining == f"draining until {format_time(until)}"
            reason = reasons(audit)[0]
            assert reason[:2] == (v2.version, "applied")
            started = f"drain started: {len(moved)} buckets of 1 Service until {format_time(until)}"
            assert started in reason[2]
            assert sum(f"v{v2.version}: {started}" in m for m in caplog.messages) == 1

            # Established connections keep their node through step 1; new ones in a moved bucket
            # go to the bucket's new node at once.
            in_moved = [f for f in established if flow_bucket(ip(f[0]), ip(svc1.vip), 6, f[1], svc1.port, mask) in moved]
            assert in_moved  # else this test could not fail
            for f in established:
                assert send(sws[1], svc2.vip, svc2.port, f, ACK | PSH) == home[f]
            fresh = [(f"198.51.7.{i}", 40000 + i) for i in range(1, 200)]
            fresh = [f for f in fresh if flow_bucket(ip(f[0]), ip(svc2.vip), 6, f[1], svc2.port, mask) in moved]
            for f in fresh:
                b = flow_bucket(ip(f[0]), ip(svc2.vip), 6, f[1], svc2.port, mask)
                assert send(sws[1], svc2.vip, svc2.port, f, SYN) == svc2.assignment[b]

            # Nothing more happens before `until` (the loop sleeps until then)...
            clock.advance(until - 1 - (EPOCH + clock.now()))
            await ctl.wait_until(lambda: ctl.health_rounds > 0)
            assert audit.last_applied(KEY).version == v2.version
            # ...and at `until` step 2 writes the plain entries, on both switches.
            n1 = len(ctl.history)
            clock.advance(1)
            await ctl.wait_until(applied(ctl, n1))
            v3 = audit.last_applied(KEY)
            assert v3.version == v2.version + 1 and v3.drain_until() is None
            assert web(v3).assignment == svc2.assignment
            assert draining_buckets(sws[0]) == draining_buckets(sws[1]) == 0
            assert backend_rows(sws[0]) == backend_rows(sws[1])
            finished = f"drain finished: {len(moved)} buckets of 1 Service"
            assert finished in reasons(audit)[0][2]
            assert any(f"v{v3.version}: {finished}" in m for m in caplog.messages)
            assert next(r for r in ctl.history[n1:] if r.outcome == "applied").draining == ""
            # After step 2 the moved buckets' connections all go to the new node.
            for f in in_moved:
                b = flow_bucket(ip(f[0]), ip(svc2.vip), 6, f[1], svc2.port, mask)
                assert send(sws[1], svc2.vip, svc2.port, f, ACK) == svc2.assignment[b] != home[f]

    asyncio.run(scenario())


async def _step_one(ctl, audit, cluster):
    await ctl.wait_until(applied(ctl))
    n0 = len(ctl.history)
    cluster.replace(scaled(cluster.snapshot(), AFTER))
    await ctl.wait_until(applied(ctl, n0))
    v2 = audit.last_applied(KEY)
    assert v2.drain_until() is not None
    return v2


def test_restart_mid_drain_finishes_at_until_and_after_until_at_once(loop_world):
    sws, config, state, tmp = drain_world(loop_world)
    cluster = ScriptedCluster(state)
    clock = ManualClock()

    async def scenario():
        ctl, audit = controller(config, cluster, tmp / "audit.git", clock)
        async with running(ctl):
            v2 = await _step_one(ctl, audit, cluster)
        until = v2.drain_until()
        held = backend_rows(sws[1])
        assert draining_buckets(sws[1]) > 0

        # A new reconciler mid-drain: reads v2 from the audit repository, writes nothing, and
        # schedules the wake-up at `until`, not earlier.
        clock.advance(20)
        ctl2, audit2 = controller(config, cluster, tmp / "audit.git", clock)
        async with running(ctl2):
            await ctl2.wait_passes(1)
            assert all(r.writes == 0 for r in ctl2.history)
            assert audit2.last_applied(KEY).version == v2.version
            assert ctl2.workers[KEY].drain_at() == until - EPOCH
            clock.advance(until - 1 - (EPOCH + clock.now()))
            await ctl2.wait_until(lambda: ctl2.health_rounds > 0)
            assert audit2.last_applied(KEY).version == v2.version and backend_rows(sws[1]) == held
            clock.advance(1)
            await ctl2.wait_until(lambda: audit2.last_applied(KEY).version == v2.version + 1)
            assert draining_buckets(sws[0]) == draining_buckets(sws[1]) == 0

            # A second move, then a restart after its `until`: finished at once.
            n0 = len(ctl2.history)
            cluster.replace(scaled(cluster.snapshot(), BEFORE))
            await ctl2.wait_until(applied(ctl2, n0))
            v4 = audit2.last_applied(KEY)
            assert v4.drain_until() is not None and draining_buckets(sws[1]) > 0
        clock.advance(v4.drain_until() - (EPOCH + clock.now()) + 30)
        ctl3, audit3 = controller(config, cluster, tmp / "audit.git", clock)
        async with running(ctl3):
            await ctl3.wait_passes(1)
            v5 = audit3.last_applied(KEY)
            assert v5.version == v4.version + 1 and v5.drain_until() is None
            assert draining_buckets(sws[0]) == draining_buckets(sws[1]) == 0
            assert "drain finished" in reasons(audit3)[0][2]

    asyncio.run(scenario())


def test_a_failed_drain_start_is_rolled_back_to_plain_entries_on_both_switches(loop_world):
    sws, config, state, tmp = drain_world(loop_world)
    cluster = ScriptedCluster(state)
    clock = ManualClock()

    async def scenario():
        ctl, audit = controller(config, cluster, tmp / "audit.git", clock)
        async with running(ctl):
            await ctl.wait_until(applied(ctl))
            v1 = audit.last_applied(KEY)
            rows = backend_rows(sws[1])
            assert backend_rows(sws[0]) == rows
            sws[1].refuse_writes(1)  # the primary refuses step 1 after the standby took it
            n0 = len(ctl.history)
            cluster.replace(scaled(cluster.snapshot(), AFTER))
            await ctl.wait_until(lambda: any(r.outcome == "rolled-back" for r in ctl.history[n0:]))
            record = next(r for r in ctl.history[n0:] if r.outcome == "rolled-back")
            assert record.retry_in is not None and record.draining == ""
            assert backend_rows(sws[0]) == backend_rows(sws[1]) == rows  # the buckets' old backends, plain
            assert draining_buckets(sws[0]) == 0
            assert audit.last_applied(KEY).version == v1.version
            version, outcome, reason = reasons(audit)[0]
            assert outcome == "rolled-back" and "drain started" in reason
            # The retry (after the backoff) starts the drain again, and it holds.
            clock.advance(record.retry_in)
            await ctl.wait_until(applied(ctl, n0))
            assert draining_buckets(sws[0]) == draining_buckets(sws[1]) > 0
            assert audit.last_applied(KEY).version == version + 1

    asyncio.run(scenario())


def test_a_failed_step_two_keeps_the_draining_entries_and_is_retried_without_new_drains(loop_world):
    sws, config, state, tmp = drain_world(loop_world)
    cluster = ScriptedCluster(state)
    clock = ManualClock()

    async def scenario():
        ctl, audit = controller(config, cluster, tmp / "audit.git", clock)
        async with running(ctl):
            v2 = await _step_one(ctl, audit, cluster)
            held = backend_rows(sws[1])
            sws[1].refuse_writes(1)
            n0 = len(ctl.history)
            clock.advance(v2.drain_until() - (EPOCH + clock.now()))
            await ctl.wait_until(lambda: any(r.outcome == "rolled-back" for r in ctl.history[n0:]))
            record = next(r for r in ctl.history[n0:] if r.outcome == "rolled-back")
            # The switches keep step 1 (safe: it serves every connection) and say so.
            assert backend_rows(sws[0]) == backend_rows(sws[1]) == held
            assert record.draining == f"draining until {format_time(v2.drain_until())}"
            assert ctl.workers[KEY].drain_at() is None  # the retry's backoff decides, not the drain
            clock.advance(record.retry_in)
            await ctl.wait_until(applied(ctl, n0))
            assert draining_buckets(sws[0]) == draining_buckets(sws[1]) == 0
            tail = [r for r in reasons(audit) if r[0] > v2.version]
            assert [o for _, o, _ in tail] == ["applied", "pending", "rolled-back", "pending"]
            assert all("drain finished" in why and "drain started" not in why for _, _, why in tail)

    asyncio.run(scenario())


def test_cr_status_says_draining_until_while_a_drain_runs(kube) -> None:
    """The LoadBalancerConfig's Ready condition says "draining until T" (through the test API
    server, as `p4kube run` writes it), and stops saying it once step 2 is applied."""
    from kubernetes import client as k8s
    from test_security_addresses import MULTI, NS, cr, create

    from reconciler.app.reports import CRStatus
    from reconciler.controller import TransactionRecord
    from reconciler.intent.files import OperatorDirs
    from reconciler.kube.client import build_api_client
    from reconciler.kube.crstatus import ConfigStatusWriter
    from reconciler.kube.intent_source import GROUP, PLURAL, VERSION, CRIntentSource

    create(kube, cr("edge", NS))
    api = build_api_client(configuration=kube.client_configuration("sa-token"))
    admin = build_api_client(configuration=kube.client_configuration("admin-token"))
    until = EPOCH + 60

    async def go() -> list[str]:
        messages = []
        async with CRIntentSource(api, namespaces=[NS], dirs=OperatorDirs(pipeline_dir=MULTI)) as source:
            await source.wait_synced(timeout=10)
            status = CRStatus(source, ConfigStatusWriter(api))
            for version, draining_until in ((2, until), (3, None)):
                await status.report(TransactionRecord(f"{NS}/edge", version, "applied", draining_until=draining_until), None, None)
                obj = k8s.CustomObjectsApi(admin).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "edge")
                ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
                messages.append(ready["message"])
        return messages

    try:
        during, after = asyncio.run(go())
    finally:
        api.close()
        admin.close()
    assert during == f"v2 applied; draining until {format_time(until)}"
    assert after == "v3 applied"


def test_on_the_real_loop_clock_step_two_follows_a_wall_clock_past_until(loop_world):
    """The product's clocks (the event loop's monotonic time, a wall clock): when the wall clock
    passes `until` (here it jumps, as after an NTP step), the next wake-up of the loop (a health
    round) finishes the drain rather than spinning on a due time that is always 'now'."""
    sws, config, state, tmp = drain_world(loop_world)
    cluster = ScriptedCluster(state)
    offset = [0.0]

    async def scenario():
        audit = AuditRepo.open_or_init(tmp / "audit.git")
        settings = Settings(pipeline_dir=str(DEMO_EXAMPLE_DIR), allow_insecure_switches=True, timeout=2.0, election_id=7)
        make_worker = worker_factory(settings, audit=audit, fallback=cluster, probe_retry_delay=0.01)
        import time

        ctl = Controller(StaticIntent(IntentSet((config,))), cluster, make_worker=make_worker,
                         wall=lambda: time.time() + offset[0])
        async with running(ctl):
            v2 = await _step_one(ctl, audit, cluster)
            assert audit.last_applied(KEY).version == v2.version
            offset[0] = v2.drain_until() - time.time() + 1
            await ctl.wait_until(lambda: audit.last_applied(KEY).version == v2.version + 1, timeout=20)
            assert draining_buckets(sws[0]) == draining_buckets(sws[1]) == 0

    asyncio.run(asyncio.wait_for(scenario(), 60))
