"""Health probes against real sockets: TCP listeners on 127.0.0.x stand in for nodes, software
switches over real gRPC on 127.0.0.1 for the switches. No test sleeps: rounds are driven by a
manual clock or a trigger and awaited with timeouts."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Iterator

import grpc
import pytest
from helpers import run
from finsy.proto import p4r, p4r_grpc
from hypothesis import given
from hypothesis import strategies as st

from reconciler import p4names as n
from reconciler.apply import TwoSwitchApplier, default_session_factory
from reconciler.diff import diff_snapshots
from reconciler.health import (
    Endpoint,
    HealthMonitor,
    ManualClock,
    Target,
    TargetState,
    Thresholds,
    Transition,
    advance,
    backend_endpoints,
    backend_targets,
    check_drift,
    check_switch,
    failing_services,
    make_post_apply_probe,
    monitor_for,
    probe_endpoints,
    switch_target,
    tcp_probe,
    vip_targets,
)
from reconciler.intent.model import HealthCheck, LoadBalancerConfig, SwitchConfig, SwitchSpec
from reconciler.p4info import load_p4info, pipeline_info_from_message
from reconciler.sim.server import SoftwareSwitch
from reconciler.snapshot import Backend, Entry, ServiceSnapshot, Snapshot
from reconciler.switch import SwitchSession, pipeline_cookie
from reconciler.switch.translate import election_id_proto, entry_to_proto, updates_to_requests

P4INFO = load_p4info()
INFO = pipeline_info_from_message(P4INFO)
COOKIE = pipeline_cookie(P4INFO, b"")
WAIT = 5.0  # upper bound for anything awaited; never reached when things work


# --- loopback stand-ins for nodes -------------------------------------------------------------


class Nodes:
    """Listening sockets on 127.0.0.x; the kernel completes handshakes without accept()."""

    def __init__(self) -> None:
        self.socks: dict[Endpoint, socket.socket] = {}
        self.extra: list[socket.socket] = []

    def listen(self, address: str, port: int = 0, backlog: int = 128) -> Endpoint:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        s.listen(backlog)
        ep = Endpoint(address, s.getsockname()[1])
        self.socks[ep] = s
        return ep

    def closed(self, address: str) -> Endpoint:
        """A port nothing listens on: connections are refused at once."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((address, 0))
        ep = Endpoint(address, s.getsockname()[1])
        s.close()
        return ep

    def blackhole(self, address: str) -> Endpoint:
        """A listener whose accept queue is full: further SYNs are dropped, connects hang."""
        ep = self.listen(address, backlog=0)
        filler = socket.create_connection((ep.address, ep.port), timeout=WAIT)
        self.extra.append(filler)
        return ep

    def stop(self, ep: Endpoint) -> None:
        self.socks.pop(ep).close()

    def close(self) -> None:
        for s in list(self.socks.values()) + self.extra:
            s.close()
        self.socks.clear()
        self.extra.clear()


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    n_ = Nodes()
    try:
        yield n_
    finally:
        n_.close()


def service(name: str, sid: int, vip: str, backends: list[tuple[str, Endpoint]], *, protocol: str = "TCP",
            port: int = 80, buckets: int = 4) -> ServiceSnapshot:
    bs = tuple(
        Backend(node, ep.address, ep.port, replicas=1, buckets=buckets // len(backends), backend_id=sid * 10 + i)
        for i, (node, ep) in enumerate(backends)
    )
    assignment = tuple(bs[i % len(bs)].node for i in range(buckets))
    return ServiceSnapshot(name, sid, vip, port, protocol, "replica-weighted", buckets, "nodePort", bs, assignment)


def snapshot(*services: ServiceSnapshot, version: int = 1) -> Snapshot:
    return Snapshot("p4kube-system/test", version, None, None, "load_balancer.p4", "sha256:test",
                    tuple(sorted(services, key=lambda s: s.name)))


# --- the state machine ------------------------------------------------------------------------


def feed(results: str, thresholds: Thresholds, state: TargetState | None = None) -> list[TargetState]:
    """'+' a success, '-' a failure; every state along the way."""
    s = state or TargetState()
    out = []
    for c in results:
        s = advance(s, c == "+", "" if c == "+" else "refused", thresholds)
        out.append(s)
    return out


def test_unhealthy_after_failure_threshold_consecutive_failures_only():
    t = Thresholds(failure=3, success=2)
    assert [s.healthy for s in feed("--+--+--", t)] == [True] * 8  # never 3 in a row
    states = feed("---", t)
    assert [s.healthy for s in states] == [True, True, False]
    assert states[-1].reason == "refused" and states[-1].failures == 3


def test_healthy_again_after_success_threshold_consecutive_successes():
    t = Thresholds(failure=2, success=3)
    down = feed("--", t)[-1]
    assert not down.healthy
    states = feed("++-+++", t, down)
    assert [s.healthy for s in states] == [False, False, False, False, False, True]
    assert states[-1].reason == "" and states[-1].failures == 0
    assert states[1].reason == "refused"  # kept while still unhealthy


def test_thresholds_validate_and_come_from_the_health_check():
    with pytest.raises(ValueError, match="at least 1"):
        Thresholds(failure=0)
    assert Thresholds.from_check(HealthCheck(failure_threshold=5, success_threshold=2)) == Thresholds(5, 2)


@given(st.lists(st.booleans(), max_size=40), st.integers(1, 4), st.integers(1, 4))
def test_state_changes_only_at_a_threshold(results, fail_t, ok_t):
    t = Thresholds(fail_t, ok_t)
    s = TargetState()
    for ok in results:
        after = advance(s, ok, "x", t)
        assert not (after.failures and after.successes)
        if after.healthy != s.healthy:
            if after.healthy:
                assert ok and after.successes == ok_t
            else:
                assert not ok and after.failures == fail_t
        s = after


# --- TCP probes -------------------------------------------------------------------------------


def test_tcp_probe_connects_refuses_fast_and_times_out(nodes):
    up = nodes.listen("127.0.0.2")
    closed = nodes.closed("127.0.0.3")
    hole = nodes.blackhole("127.0.0.4")

    async def go():
        t0 = time.perf_counter()
        refused = await tcp_probe(closed.address, closed.port, 2.0)
        refused_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        hung = await tcp_probe(hole.address, hole.port, 0.2)
        hung_s = time.perf_counter() - t0
        return await tcp_probe(up.address, up.port, 2.0), refused, refused_s, hung, hung_s

    ok, refused, refused_s, hung, hung_s = run(go())
    assert ok is None
    assert refused == "connection refused" and refused_s < 1.0
    assert hung == "no answer within 0.2s" and 0.15 < hung_s < 4.0


def test_probe_endpoints_is_bounded_by_the_semaphore():
    async def go():
        in_flight = peak = 0
        gate = asyncio.Event()
        full = asyncio.Event()

        async def connect(host, port, timeout):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            if in_flight == 3:
                full.set()
            await gate.wait()
            in_flight -= 1
            return None if port % 2 else "refused"

        eps = [Endpoint("127.0.0.2", p) for p in range(1, 11)]
        task = asyncio.create_task(probe_endpoints(eps, 1.0, concurrency=3, connect=connect))
        await asyncio.wait_for(full.wait(), WAIT)
        for _ in range(20):  # every other probe is parked on the semaphore: none may start
            await asyncio.sleep(0)
        assert in_flight == 3
        gate.set()
        results = await asyncio.wait_for(task, WAIT)
        return peak, results

    peak, results = run(go())
    assert peak == 3
    assert len(results) == 10
    assert [ep.port for ep, why in results.items() if why] == [2, 4, 6, 8, 10]


# --- the probe after an apply -----------------------------------------------------------------


def test_post_apply_probe_names_the_service_whose_backends_are_all_down(nodes):
    web = [("node-a", nodes.listen("127.0.0.2")), ("node-b", nodes.listen("127.0.0.3"))]
    api = [("node-c", nodes.closed("127.0.0.4")), ("node-d", nodes.closed("127.0.0.5"))]
    mixed = [("node-a", nodes.listen("127.0.0.2")), ("node-e", nodes.closed("127.0.0.6"))]
    udp = [("node-f", nodes.closed("127.0.0.7"))]  # a TCP connect says nothing about UDP
    snap = snapshot(
        service("default/web", 1, "203.0.113.1", web),
        service("default/api:http", 2, "203.0.113.2", api),
        service("default/mixed", 3, "203.0.113.3", mixed),
        service("default/dns", 4, "203.0.113.4", udp, protocol="UDP", port=53),
    )
    probe = make_post_apply_probe(HealthCheck(timeout_s=1.0, failure_threshold=2), retry_delay=0)
    reason = run(probe(snap))
    report = probe.last_report
    assert report is not None and not report.ok
    assert report.failing_services == ("default/api",)
    assert report.failing_service_ports == ("default/api:http",)
    assert report.degraded_services == ("default/mixed",)
    assert report.failing_switches == ()
    assert reason == report.reason
    assert "Services failing: default/api" in reason
    assert "node-c (127.0.0.4:" in reason and "connection refused after 2 attempt(s)" in reason
    by_key = {r.key: r for r in report.results}
    assert len(by_key) == 6  # node-f's UDP endpoint is not probed
    down = [r for r in report.failing_backends]
    assert sorted(r.key.split()[1].split(":")[0] for r in down) == ["127.0.0.4", "127.0.0.5", "127.0.0.6"]
    assert all(r.attempts == 2 for r in down)
    assert all(r.attempts == 1 for r in report.results if r.ok)
    assert by_key[f"backend {web[0][1]}"].services == ("default/web",)


def test_post_apply_probe_healthy_and_disabled(nodes):
    snap = snapshot(service("default/web", 1, "203.0.113.1", [("a", nodes.listen("127.0.0.2"))]))
    probe = make_post_apply_probe(HealthCheck(timeout_s=1.0))
    assert run(probe(snap)) is None
    assert probe.last_report.ok and probe.last_report.results[0].ok

    calls = []

    async def connect(host, port, timeout):
        calls.append((host, port))
        return "refused"

    off = make_post_apply_probe(HealthCheck(enabled=False), connect=connect)
    assert run(off(snap)) is None
    assert off.last_report.skipped and calls == []


def test_post_apply_probe_retries_a_backend_that_comes_up(nodes):
    late = nodes.closed("127.0.0.3")
    attempts = []

    async def connect(host, port, timeout):
        why = await tcp_probe(host, port, timeout)
        attempts.append(why)
        if why is not None:  # the backend finishes starting after the first attempt
            nodes.listen(host, port)
        return why

    snap = snapshot(service("default/web", 1, "203.0.113.1", [("late", late)]))
    probe = make_post_apply_probe(HealthCheck(timeout_s=1.0, failure_threshold=3), retry_delay=0, connect=connect)
    assert run(probe(snap)) is None
    assert attempts == ["connection refused", None]
    assert probe.last_report.results[0].attempts == 2


def test_changed_only_probes_just_the_services_that_differ_from_the_baseline(nodes):
    web_ep, api_ep = nodes.listen("127.0.0.2"), nodes.closed("127.0.0.4")
    web = service("default/web", 1, "203.0.113.1", [("a", web_ep)])
    v1 = snapshot(web)
    v2 = snapshot(web, service("default/api", 2, "203.0.113.2", [("c", api_ep)]), version=2)
    probed: list[Endpoint] = []

    async def connect(host, port, timeout):
        probed.append(Endpoint(host, port))
        return await tcp_probe(host, port, timeout)

    probe = make_post_apply_probe(HealthCheck(timeout_s=1.0, failure_threshold=1), retry_delay=0,
                                  connect=connect, changed_only=True)
    assert run(probe(v1)) is None and probed == [web_ep] and probe.baseline is v1
    probed.clear()
    reason = run(probe(v2))
    assert probed == [api_ep]  # default/web is the same Service: not probed again
    assert "Services failing: default/api" in reason and probe.baseline is v1  # a failed probe is no baseline
    probed.clear()
    moved = nodes.listen("127.0.0.3")
    v3 = snapshot(service("default/web", 1, "203.0.113.1", [("b", moved)]), version=3)
    assert run(probe(v3)) is None and probed == [moved]


def test_vip_probe_blames_the_switch_path_when_backends_answer(nodes):
    vip_ok = nodes.listen("127.0.0.9")  # stands in for a VIP routed through the switches
    backends = [("a", nodes.listen("127.0.0.2"))]
    good = snapshot(service("default/web", 1, vip_ok.address, backends, port=vip_ok.port))
    probe = make_post_apply_probe(HealthCheck(timeout_s=1.0, failure_threshold=1), vip_probe=True,
                                  path_switches=("leaf-1",))
    assert run(probe(good)) is None
    assert [r.kind for r in probe.last_report.results] == ["backend", "vip"]

    vip_dead = nodes.closed("127.0.0.10")
    bad = snapshot(service("default/web", 1, vip_dead.address, backends, port=vip_dead.port))
    reason = run(probe(bad))
    report = probe.last_report
    assert report.failing_switches == ("leaf-1",)
    assert report.failing_services == ("default/web",)
    assert "every VIP fails through switch(es) leaf-1 while backends answer" in reason
    assert f"VIP {vip_dead}: connection refused while its backends answer" in reason


def test_failing_services_and_backend_endpoints_are_pure_views():
    a, b, c = Endpoint("127.0.0.2", 1), Endpoint("127.0.0.3", 2), Endpoint("127.0.0.4", 3)
    snap = snapshot(
        service("ns/one", 1, "203.0.113.1", [("a", a), ("b", b)]),
        service("ns/two", 2, "203.0.113.2", [("a", a)]),
        service("ns/three", 3, "203.0.113.3", [("c", c)], protocol="UDP"),
    )
    eps = backend_endpoints(snap)
    assert eps == {a: (("ns/one", "a"), ("ns/two", "a")), b: (("ns/one", "b"),)}
    assert failing_services(snap, [a]) == ("ns/two",)
    assert failing_services(snap, [a, b]) == ("ns/one", "ns/two")
    assert failing_services(snap, [c]) == ()


def test_post_apply_probe_makes_the_transaction_roll_back(nodes):
    """The Probe adapter against the real two-switch transaction: a Service with every
    backend down rolls both switches back, and the report names that Service."""
    up = nodes.listen("127.0.0.2")
    v1 = snapshot(service("default/web", 1, "203.0.113.1", [("a", up)]))
    v2 = snapshot(
        service("default/web", 1, "203.0.113.1", [("a", up)]),
        service("default/api", 2, "203.0.113.2", [("c", nodes.closed("127.0.0.4"))]),
        version=2,
    )
    standby, primary = SoftwareSwitch(), SoftwareSwitch()
    standby.start()
    primary.start()
    try:
        switches = (SwitchSpec("sw-standby", "standby", f"127.0.0.1:{standby.port}"),
                    SwitchSpec("sw-primary", "primary", f"127.0.0.1:{primary.port}"))
        config = LoadBalancerConfig("p4kube-system", "test", switch_config=SwitchConfig(switches=switches))
        probe = make_post_apply_probe(HealthCheck(timeout_s=1.0, failure_threshold=2), retry_delay=0)

        async def go():
            applier = TwoSwitchApplier(
                config, p4info=P4INFO, info=INFO, device_config=b"", election_id=3,
                session_factory=default_session_factory(config, INFO, connect_timeout=2.0, arbitration_timeout=2.0),
            )
            try:
                r1 = await applier.apply(v1, None, probe)
                r2 = await applier.apply(v2, v1, probe)
                return r1, r2
            finally:
                await applier.close()

        r1, r2 = run(go())
        assert r1.outcome == "applied", r1.describe()
        assert r2.outcome == "rolled-back", r2.describe()
        assert "Services failing: default/api" in r2.reason
        assert probe.last_report.failing_services == ("default/api",)
        # both switches are back on v1: one Service, one vip_table entry each
        assert len(primary.entries(1, n.VIP_TABLE)) == 1 and len(standby.entries(1, n.VIP_TABLE)) == 1
    finally:
        standby.stop(0)
        primary.stop(0)


# --- switch liveness and drift ----------------------------------------------------------------


@pytest.fixture
def switch() -> Iterator[SoftwareSwitch]:
    sw = SoftwareSwitch()
    sw.start()
    try:
        yield sw
    finally:
        sw.stop(0)


def session_for(sw: SoftwareSwitch, election_id: int = 10, name: str = "leaf-1") -> SwitchSession:
    return SwitchSession(f"127.0.0.1:{sw.port}", device_id=1, election_id=election_id, info=INFO, name=name,
                         connect_timeout=2.0, arbitration_timeout=2.0, rpc_timeout=5.0)


def test_switch_liveness_alive_pipeline_and_stopped(switch):
    async def go():
        s = session_for(switch)
        await s.open()
        try:
            no_pipeline = await check_switch(s, timeout=2.0, expected_cookie=COOKIE)
            await s.ensure_pipeline(P4INFO, b"", COOKIE)
            alive = await check_switch(s, timeout=2.0, expected_cookie=COOKIE)
            other = await check_switch(s, timeout=2.0, expected_cookie=COOKIE ^ 1)
            switch.stop(0)
            t0 = time.perf_counter()
            dead = await check_switch(s, timeout=2.0, expected_cookie=COOKIE)
            return no_pipeline, alive, other, dead, time.perf_counter() - t0
        finally:
            await s.close()

    no_pipeline, alive, other, dead, dead_s = run(go())
    assert not no_pipeline.alive and "no pipeline" in no_pipeline.reason
    assert alive.alive and alive.primary and alive.reason == ""
    assert not other.alive and "another pipeline" in other.reason
    assert not dead.alive and "leaf-1" in dead.reason and "UNAVAILABLE" in dead.reason
    assert dead_s < 2.0  # a stopped switch fails fast, it does not wait out the timeout


def test_switch_liveness_times_out_on_a_switch_that_does_not_answer():
    # One worker thread, held by our StreamChannel: every other RPC queues, unanswered.
    sw = SoftwareSwitch(max_workers=1)
    sw.start()
    try:
        async def go():
            s = session_for(sw)
            await s.open()
            try:
                return await check_switch(s, timeout=0.3)
            finally:
                await s.close()

        result = run(go())
    finally:
        sw.stop(0)
    assert not result.alive
    assert result.reason == "no answer to GetForwardingPipelineConfig within 0.3s"
    assert 0.25 < result.seconds < 4.0


def test_check_switch_without_open_session():
    s = SwitchSession("127.0.0.1:1", device_id=1, election_id=1, info=INFO, name="leaf-9")
    result = run(check_switch(s, timeout=1.0))
    assert not result.alive and result.reason == "no open P4Runtime session"


def tamper(sw: SoftwareSwitch, election_id: int, updates: list[p4r.Update]) -> None:
    """Write as another controller with a higher election id, over a raw P4Runtime client."""
    with grpc.insecure_channel(f"127.0.0.1:{sw.port}") as ch:
        stub = p4r_grpc.P4RuntimeStub(ch)
        arb = p4r.StreamMessageRequest()
        arb.arbitration.device_id = 1
        arb.arbitration.election_id.CopyFrom(election_id_proto(election_id))
        done = __import__("threading").Event()

        def requests():
            yield arb
            done.wait(WAIT)

        stream = stub.StreamChannel(requests())
        first = next(stream)
        assert first.arbitration.status.code == 0  # we are primary now
        w = p4r.WriteRequest(device_id=1, election_id=election_id_proto(election_id))
        w.updates.extend(updates)
        stub.Write(w, timeout=WAIT)
        done.set()
        stream.cancel()


def test_drift_found_after_an_out_of_band_change(switch, multi_render):
    snap = multi_render.snapshot

    async def program_and_check():
        s = session_for(switch)
        await s.open()
        try:
            await s.ensure_pipeline(P4INFO, b"", COOKIE)
            for requests in updates_to_requests(INFO, diff_snapshots(None, snap).phases, device_id=1,
                                                election_id=10, batch_size=200):
                if requests:
                    assert (await s.write(requests)).ok
            return await check_drift(s, snap)
        finally:
            await s.close()

    clean = run(program_and_check())
    assert clean.ok and clean.switch == "leaf-1"
    assert clean.entries_read == snap.entry_count()

    bucket = snap.tables()[n.BACKEND_TABLE][0]
    vip = snap.tables()[n.VIP_TABLE][0]
    updates = []
    for kind, entry in ((p4r.Update.MODIFY, Entry(bucket.table, bucket.key, bucket.action, ("10.9.9.9", 1, 0))),
                        (p4r.Update.DELETE, Entry(vip.table, vip.key, vip.action, vip.args))):
        u = p4r.Update(type=kind)
        u.entity.table_entry.CopyFrom(entry_to_proto(INFO, entry))
        updates.append(u)
    default = p4r.Update(type=p4r.Update.MODIFY)
    te = default.entity.table_entry
    te.table_id = INFO.table(n.IPV4_LPM).id
    te.is_default_action = True
    te.action.action.action_id = INFO.action(n.FWD).id
    for param, value in zip(INFO.action(n.FWD).params, (b"\x07", b"\x00\x00\x00\x00\x00\x01")):
        te.action.action.params.add(param_id=param.id, value=value)
    updates.append(default)
    tamper(switch, 20, updates)

    async def check_again():
        s = session_for(switch, election_id=30)  # the reconciler, back with a new lease
        await s.open()
        try:
            return await check_drift(s, snap)
        finally:
            await s.close()

    drift = run(check_again())
    assert not drift.ok
    assert len(drift.differences) == 3, drift.differences
    assert drift.entries_read == snap.entry_count() - 1  # the VIP deleted; defaults are not counted
    assert any(d.startswith("changed MyIngress.backend_table") and "10.9.9.9" in d for d in drift.differences)
    assert any(d.startswith("missing MyIngress.vip_table") for d in drift.differences)
    assert any(d.startswith("changed default of MyIngress.ipv4_lpm: MyIngress.fwd") and "should be MyIngress.drop()" in d
               for d in drift.differences)


# --- the monitor ------------------------------------------------------------------------------


def test_monitor_reports_transitions_with_thresholds_on_a_manual_clock(nodes):
    a = nodes.listen("127.0.0.2")
    b = nodes.listen("127.0.0.3")
    snap = snapshot(service("default/web", 1, "203.0.113.1", [("a", a), ("b", b)]))
    seen: list[Transition] = []

    async def go():
        clock = ManualClock(100.0)
        mon = HealthMonitor(interval=5.0, thresholds=Thresholds(failure=2, success=2),
                            on_transition=seen.append, clock=clock)
        mon.set_targets(backend_targets(snap, 1.0))
        mon.start()
        try:
            await mon.wait_rounds(1, WAIT)
            assert not seen and all(s.healthy for s in mon.states().values())

            async def tick(rounds: int) -> None:
                await clock.wait_sleepers(1, WAIT)
                clock.advance(5.0)
                await mon.wait_rounds(rounds, WAIT)

            nodes.stop(a)  # node a goes away: refused from now on
            await tick(2)
            assert not seen and mon.state(f"backend {a}").failures == 1
            await tick(3)
            assert [(t.key, t.healthy) for t in seen] == [(f"backend {a}", False)]
            assert seen[0].reason == "connection refused" and seen[0].services == ("default/web",)
            assert seen[0].at == 110.0 and seen[0].kind == "backend"
            assert [t.key for t in mon.unhealthy("backend")] == [f"backend {a}"]

            nodes.listen(a.address, a.port)  # node a is back
            await tick(4)
            assert len(seen) == 1  # one success is not enough (success threshold 2)
            mon.trigger()  # a round now, without the clock moving
            await mon.wait_rounds(5, WAIT)
            assert [(t.key, t.healthy) for t in seen] == [(f"backend {a}", False), (f"backend {a}", True)]
            assert seen[1].at == 115.0
        finally:
            await mon.stop()
        assert not mon.running

    run(go())


def test_monitor_keeps_state_across_target_updates_and_survives_a_broken_callback(nodes, caplog):
    down = nodes.closed("127.0.0.4")
    up = nodes.listen("127.0.0.2")

    def boom(_tr: Transition) -> None:
        raise RuntimeError("callback bug")

    async def go():
        mon = HealthMonitor(interval=60.0, thresholds=Thresholds(failure=1), on_transition=boom)
        snap1 = snapshot(service("ns/a", 1, "203.0.113.1", [("x", down)]))
        mon.set_targets(backend_targets(snap1, 1.0))
        transitions = await mon.run_round()
        assert [t.healthy for t in transitions] == [False]
        snap2 = snapshot(service("ns/a", 1, "203.0.113.1", [("x", down), ("y", up)]))
        mon.set_targets(backend_targets(snap2, 1.0) + vip_targets(snap2, 1.0))
        states = mon.states()
        assert not states[f"backend {down}"].healthy  # kept
        assert states[f"backend {up}"] == TargetState()  # new: starts healthy
        assert "vip 203.0.113.1:80" in states
        mon.set_targets(backend_targets(snap2, 1.0))
        assert "vip 203.0.113.1:80" not in mon.states()
        return mon.rounds

    assert run(go()) == 1
    assert "callback failed" in caplog.text and "callback bug" in caplog.text


def test_monitor_switch_target_and_async_callback(switch):
    seen: list[Transition] = []

    async def on(tr: Transition) -> None:
        seen.append(tr)

    async def go():
        s = session_for(switch)
        await s.open()
        await s.ensure_pipeline(P4INFO, b"", COOKIE)
        mon = monitor_for(HealthCheck(interval_s=30.0, timeout_s=2.0, failure_threshold=1), on)
        mon.set_targets([switch_target("leaf-1", lambda: s, 2.0, expected_cookie=COOKIE, services=("ns/a",)),
                         switch_target("leaf-2", lambda: None, 2.0)])
        mon.start()
        try:
            await mon.wait_rounds(1, WAIT)
            first = list(seen)
            switch.stop(0)
            mon.trigger()
            await mon.wait_rounds(2, WAIT)
        finally:
            await mon.stop()
            await s.close()
        return first

    first = run(go())
    assert [(t.key, t.healthy, t.reason) for t in first] == [("switch leaf-2", False, "not connected")]
    assert [(t.key, t.healthy) for t in seen] == [("switch leaf-2", False), ("switch leaf-1", False)]
    assert seen[1].services == ("ns/a",) and "UNAVAILABLE" in seen[1].reason


def test_a_check_that_raises_counts_as_a_failure():
    async def broken() -> str | None:
        raise OSError("no route")

    async def go():
        mon = HealthMonitor(interval=1.0, thresholds=Thresholds(failure=1))
        mon.set_targets([Target("custom thing", "custom", broken)])
        (tr,) = await mon.run_round()
        return tr

    tr = run(go())
    assert not tr.healthy and tr.reason == "check raised OSError: no route"


def test_monitor_rejects_bad_settings():
    with pytest.raises(ValueError, match="interval"):
        HealthMonitor(interval=0, thresholds=Thresholds())
    with pytest.raises(ValueError, match="concurrency"):
        HealthMonitor(interval=1, thresholds=Thresholds(), concurrency=0)

    async def twice():
        mon = HealthMonitor(interval=1, thresholds=Thresholds(), clock=ManualClock())
        mon.start()
        try:
            with pytest.raises(RuntimeError, match="already running"):
                mon.start()
        finally:
            await mon.stop()

    run(twice())


def test_hand_built_services_encode_for_the_p4info():
    # a hand-built service is a valid snapshot service: its entries encode for the P4Info
    svc = service("ns/a", 7, "203.0.113.7", [("x", Endpoint("127.0.0.2", 30080))])
    for es in svc.entries().values():
        for e in es:
            entry_to_proto(INFO, dataclasses.replace(e, service=None))
