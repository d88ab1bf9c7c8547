"""The loop under faults (DESIGN.md 6.1), on fake time where time matters: two software switches
over gRPC on 127.0.0.1, real TCP listeners for the nodes, a real audit repository.

Each test ends by reading both switches and the audit history."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil

from test_reconcile_audit import entries_of, switch_entries
from test_controller import NODES, endpoints, free_port_on_all, make_controller, running, service

from reconciler import p4names as n
from reconciler.cluster.model import OPT_IN_ANNOTATION, Endpoint, Service, ServicePort
from reconciler.cluster.scripted import ScriptedCluster
from reconciler.cluster.synthetic import with_scaled_service
from reconciler.controller import History, TransactionRecord
from reconciler.fallback import FALLBACK_BY_ANNOTATION, FALLBACK_MARKER, FALLBACK_REASON_ANNOTATION
from reconciler.health import ManualClock
from reconciler.intent.model import IntentSet, Safety
from reconciler.outcome import Outcome
from reconciler.sim.server import SoftwareSwitch

CONFIG = "p4kube-system/loop"
TABLES = (n.VIP_TABLE, n.BACKEND_TABLE, n.REVERSE_NAT)


def held(sw) -> set:
    """What a software switch holds, read over P4Runtime (nothing before a pipeline)."""
    return set() if sw.device(1).state is None else switch_entries(sw)


def assert_both_hold(sws, snap) -> None:
    """Both switches hold exactly `snap`'s entries (counted per table, and equal to each other)."""
    want = {t: len(snap.tables().get(t, ())) for t in TABLES}
    for sw in sws:
        assert {t: len(sw.entries(1, t)) for t in TABLES} == want
    assert held(sws[0]) == held(sws[1])


def audit_outcomes(audit) -> list[tuple[int, str]]:
    return [(e.version, e.outcome) for e in audit.history(config=CONFIG)]


def test_history_is_bounded_and_keeps_absolute_positions():
    h = History(limit=3)
    recs = [TransactionRecord("c", i, "applied") for i in range(10)]
    for r in recs:
        h.append(r)
    assert len(h) == 10 and h.retained == 3
    assert [r.version for r in h] == [7, 8, 9]
    assert [r.version for r in h[8:]] == [8, 9]
    assert [r.version for r in h[0:]] == [7, 8, 9]  # older ones are gone, not re-indexed
    assert h[-1].version == 9 and h[7].version == 7
    assert recs[0].outcome is Outcome.APPLIED and recs[0].outcome == "applied"


def test_an_unreachable_primary_degrades_falls_nothing_back_retries_with_backoff_and_is_resynced(loop_world):
    """The control channel is not the data path: nothing falls back, nothing is recorded per
    tick; a change waits with backoff; the primary comes back empty and is re-synced in full."""
    sws, backends, ports, config, state, tmp = loop_world
    config = dataclasses.replace(config, health_check=dataclasses.replace(config.health_check, failure_threshold=3))
    cluster = ScriptedCluster(state)
    clock = ManualClock()

    async def scenario():
        ctl, audit = make_controller(config, cluster, tmp / "audit.git", clock=clock)
        async with running(ctl):
            await ctl.wait_until(lambda: any(r.outcome == "applied" for r in ctl.history))
            worker = ctl.workers[CONFIG]
            v1 = worker.last
            records_before = audit_outcomes(audit)
            port = sws[1].port
            sws[1].stop(0)
            # Health rounds (fake time) find it gone: degraded once failureThreshold is reached.
            for i in range(4):
                await clock.wait_sleepers(1, 10)
                rounds = ctl.health_rounds
                clock.advance(config.health_check.interval_s * 1.01)
                await ctl.wait_until(lambda: ctl.health_rounds > rounds)
                # failureThreshold 3: two missed rounds are not an outage yet
                assert any(r.outcome == Outcome.DEGRADED for r in ctl.history) == (i >= 2)
            degraded = [r for r in ctl.history if r.outcome == Outcome.DEGRADED]
            assert len(degraded) == 1 and "primary" in degraded[0].reason and "no Service falls back" in degraded[0].reason
            assert not any(cluster.snapshot().services[k].auto_fallback for k in ("apps/web", "apps/api"))
            assert worker.fallen_back == {}

            # A change while it is down: tried, nothing written or recorded, retried 1 s, 2 s, 4 s later.
            n0 = len(ctl.history)
            cluster.replace(with_scaled_service(cluster.snapshot(), "apps/web", "node-c", +1))
            await ctl.wait_until(lambda: any(r.outcome == Outcome.FAILED for r in ctl.history[n0:]))
            delays = [next(r for r in ctl.history[n0:] if r.outcome == Outcome.FAILED).retry_in]
            for _ in range(2):
                n1 = len(ctl.history)
                await clock.wait_sleepers(1, 10)
                clock.advance(delays[-1])
                await ctl.wait_until(lambda: any(r.outcome == Outcome.FAILED for r in ctl.history[n1:]))
                delays.append(next(r for r in ctl.history[n1:] if r.outcome == Outcome.FAILED).retry_in)
            assert delays == [1.0, 2.0, 4.0]
            assert audit_outcomes(audit) == records_before  # attempts that reached no switch are not records
            assert held(sws[0]) and len(sws[0].entries(1, n.VIP_TABLE)) == 2  # the standby kept v1

            # The primary returns empty (a rebooted switch): read back in full and repaired on
            # its own, then the waiting change goes to both.
            fresh = SoftwareSwitch()
            fresh.start(f"127.0.0.1:{port}")
            sws[1] = fresh
            n2 = len(ctl.history)
            await clock.wait_sleepers(1, 10)
            clock.advance(delays[-1])
            await ctl.wait_until(lambda: any(r.outcome == Outcome.APPLIED for r in ctl.history[n2:]), timeout=15)
            assert worker.last.version > v1.version
            assert_both_hold(sws, worker.last)
            assert worker.retry_at is None and worker.backoff.failures == 0
            return fresh

    fresh = asyncio.run(scenario())
    fresh.stop(0)


def test_the_removal_guard_refuses_a_mass_removal_until_intent_raises_the_limit(loop_world):
    sws, backends, ports, config, state, tmp = loop_world
    extra = {}
    for i in range(2):
        port = free_port_on_all(list(NODES.values()))
        backends.up(NODES["node-a"], port)
        extra[f"apps/s{i}"] = service(f"s{i}", port)
    state = dataclasses.replace(
        state, services={**state.services, **extra},
        endpoints={**state.endpoints, **{k: endpoints(k, {"node-a": 1}) for k in extra}},
    )
    cluster = ScriptedCluster(state)

    async def scenario():
        ctl, audit = make_controller(config, cluster, tmp / "audit.git")
        async with running(ctl):
            await ctl.wait_until(lambda: any(r.outcome == "applied" for r in ctl.history))
            worker = ctl.workers[CONFIG]
            v1 = worker.last
            assert len(v1.services) == 4
            records = audit_outcomes(audit)
            # Three of four Services vanish at once (a half-read cluster looks like this).
            n0 = len(ctl.history)
            keep = {"apps/web"}
            cluster.replace(dataclasses.replace(
                cluster.snapshot(), services={k: v for k, v in cluster.snapshot().services.items() if k in keep}))
            await ctl.wait_until(lambda: any(r.outcome == Outcome.REFUSED for r in ctl.history[n0:]))
            refused = next(r for r in ctl.history[n0:] if r.outcome == Outcome.REFUSED)
            assert "3 of 4 Services" in refused.reason and "apps/api" in refused.reason
            assert refused.outcome.phase == "failed" and refused.outcome.reason == "RemovalRefused"
            assert worker.last is v1 and audit_outcomes(audit) == records
            assert_both_hold(sws, v1)
            # A person confirms by raising the limit in intent: the change goes through.
            raised = dataclasses.replace(config, safety=Safety(max_removal_percent=100))
            n1 = len(ctl.history)
            ctl.notify_intent(IntentSet((raised,)))
            await ctl.wait_until(lambda: any(r.outcome == Outcome.APPLIED for r in ctl.history[n1:]), timeout=15)
            assert {s.service_key for s in ctl.workers[CONFIG].last.services} == keep
            assert_both_hold(sws, ctl.workers[CONFIG].last)

    asyncio.run(scenario())


def test_many_services_failing_their_probes_at_once_are_not_fallen_back(loop_world):
    """Every backend down at once points at the prober's network: no mass fallback."""
    sws, backends, ports, config, state, tmp = loop_world
    cluster = ScriptedCluster(state)
    config = dataclasses.replace(config, safety=Safety(max_removal_percent=40))

    async def scenario():
        ctl, audit = make_controller(config, cluster, tmp / "audit.git")
        async with running(ctl):
            await ctl.wait_until(lambda: any(r.outcome == "applied" for r in ctl.history))
            v1 = ctl.workers[CONFIG].last
            for ip in NODES.values():
                backends.down(ip, ports["web"])
                backends.down(ip, ports["api"])
            n0 = len(ctl.history)
            await ctl.wait_until(lambda: any(r.outcome == Outcome.REFUSED for r in ctl.history[n0:]), timeout=15)
            refused = next(r for r in ctl.history[n0:] if r.outcome == Outcome.REFUSED)
            assert "not falling back 2 of 2 Services" in refused.reason
            assert not any(s.auto_fallback for s in cluster.snapshot().services.values())
            assert ctl.workers[CONFIG].last is v1
            assert_both_hold(sws, v1)

    asyncio.run(scenario())


def test_a_udp_service_that_fell_back_returns_on_the_evidence_that_can_be_had(loop_world):
    """A UDP Service cannot be probed with a connect; it returns when its endpoints are ready on
    nodes whose TCP backends answer."""
    sws, backends, ports, config, state, tmp = loop_world
    dns = Service(
        namespace="apps", name="dns", type="LoadBalancer",
        ports=(ServicePort("", 53, "UDP", 5353, 31553),),
        annotations=tuple(sorted({
            OPT_IN_ANNOTATION: "disabled", FALLBACK_BY_ANNOTATION: FALLBACK_MARKER,
            FALLBACK_REASON_ANNOTATION: "switch primary unhealthy: cannot be reached",
        }.items())),
    )
    state = dataclasses.replace(
        state, services={**state.services, "apps/dns": dns},
        endpoints={**state.endpoints, "apps/dns": (Endpoint("10.244.9.1", "node-a", (("", 5353),)),)},
    )
    cluster = ScriptedCluster(state)

    async def scenario():
        ctl, audit = make_controller(config, cluster, tmp / "audit.git")
        async with running(ctl):
            await ctl.wait_until(lambda: "apps/dns" in (ctl.workers[CONFIG].last.by_name if ctl.workers[CONFIG].last else {}),
                                 timeout=15)
            assert cluster.snapshot().services["apps/dns"].opt_in == "enabled"
            worker = ctl.workers[CONFIG]
            assert worker.fallen_back == {}
            assert_both_hold(sws, worker.last)
            back = audit.history(config=CONFIG)[0]
            assert "apps/dns recovered from its kube-proxy fallback" in back.trailers.get("Reason", "")

    asyncio.run(scenario())


def test_an_audit_repository_that_disappears_writes_nothing_and_the_loop_goes_on(loop_world):
    sws, backends, ports, config, state, tmp = loop_world
    cluster = ScriptedCluster(state)
    audit_dir = tmp / "audit.git"

    async def scenario():
        ctl, audit = make_controller(config, cluster, audit_dir)
        async with running(ctl):
            await ctl.wait_until(lambda: any(r.outcome == "applied" for r in ctl.history))
            v1 = ctl.workers[CONFIG].last
            before = held(sws[1])
            shutil.rmtree(audit_dir)
            n0 = len(ctl.history)
            cluster.replace(with_scaled_service(cluster.snapshot(), "apps/web", "node-c", +2))
            await ctl.wait_until(lambda: any(r.outcome == Outcome.WAITING for r in ctl.history[n0:]), timeout=15)
            waiting = next(r for r in ctl.history[n0:] if r.outcome == Outcome.WAITING)
            assert "audit repository" in waiting.reason and waiting.retry_in == 1.0
            assert held(sws[1]) == before and ctl.workers[CONFIG].last is v1
            assert_both_hold(sws, v1)

    asyncio.run(scenario())


def test_an_audit_repository_missing_at_start_holds_everything_back_until_it_opens(loop_world):
    """`run` keeps running (Stalled, retried with backoff) while its audit repository cannot be
    opened; it writes nothing to the switches before it has read the last applied snapshot."""
    from reconciler.audit.repo import AuditRepo
    from reconciler.audit.reopening import ReopeningAudit

    sws, backends, ports, config, state, tmp = loop_world
    cluster = ScriptedCluster(state)
    clock = ManualClock()
    where = tmp / "audit.git"
    where.write_text("not a repository")  # a file where the repository should be
    audit = ReopeningAudit(lambda: AuditRepo.open_or_init(where))

    async def scenario():
        ctl, _ = make_controller(config, cluster, where, clock, audit=audit)
        async with running(ctl):
            await ctl.wait_until(lambda: any(r.outcome == Outcome.WAITING for r in ctl.history))
            waiting = next(r for r in ctl.history if r.outcome == Outcome.WAITING)
            assert "audit repository" in waiting.reason and str(where) in waiting.reason
            assert waiting.retry_in == 1.0
            await clock.wait_sleepers(1, 10)
            clock.advance(1.0)
            await ctl.wait_until(lambda: sum(r.outcome == Outcome.WAITING for r in ctl.history) >= 2)
            assert not held(sws[0]) and not held(sws[1])  # nothing written meanwhile
            where.unlink()  # the volume is there now
            await clock.wait_sleepers(1, 10)
            clock.advance(300.0)  # past any backoff delay
            await ctl.wait_until(lambda: any(r.outcome == Outcome.APPLIED for r in ctl.history), timeout=15)
            snap = ctl.workers[CONFIG].last
            assert_both_hold(sws, snap)
            assert [o for _, o in audit_outcomes(AuditRepo.open_or_init(where))] == ["applied", "pending"]

    asyncio.run(scenario())


def test_a_lost_audit_history_does_not_become_a_fresh_render_over_the_switches(loop_world):
    """Switches that serve Services no record accounts for are not overwritten by a first
    render (a lost or wrong audit repository) unless the operator says to adopt them."""
    sws, backends, ports, config, state, tmp = loop_world
    cluster = ScriptedCluster(state)

    async def scenario():
        ctl, _ = make_controller(config, cluster, tmp / "audit.git")
        async with running(ctl):
            await ctl.wait_until(lambda: any(r.outcome == "applied" for r in ctl.history))
        before = held(sws[1])
        ctl2, audit2 = make_controller(config, cluster, tmp / "elsewhere.git")
        async with running(ctl2):
            await ctl2.wait_until(lambda: any(r.outcome == Outcome.REFUSED for r in ctl2.history))
            refused = next(r for r in ctl2.history if r.outcome == Outcome.REFUSED)
            assert "holds 2 Service entries" in refused.reason and "--adopt-switches" in refused.reason
            n0 = len(ctl2.history)
            cluster.replace(with_scaled_service(cluster.snapshot(), "apps/web", "node-c", +1))  # new input: asked again
            await ctl2.wait_until(lambda: any(r.outcome == Outcome.REFUSED for r in ctl2.history[n0:]))
            assert held(sws[1]) == before and audit_outcomes(audit2) == []
        ctl3, audit3 = make_controller(config, cluster, tmp / "elsewhere.git", adopt_switches=True)
        async with running(ctl3):
            await ctl3.wait_until(lambda: any(r.outcome == Outcome.APPLIED for r in ctl3.history), timeout=15)
            assert_both_hold(sws, ctl3.workers[CONFIG].last)
            assert [o for _, o in audit_outcomes(audit3)] == ["applied", "pending"]

    asyncio.run(scenario())


def test_a_primary_rebooted_while_the_standby_is_down_is_repaired_on_its_own(loop_world):
    """Each switch is read back and repaired independently of the other's health."""
    sws, backends, ports, config, state, tmp = loop_world
    cluster = ScriptedCluster(state)

    async def scenario():
        ctl, audit = make_controller(config, cluster, tmp / "audit.git")
        async with running(ctl):
            await ctl.wait_until(lambda: any(r.outcome == "applied" for r in ctl.history))
            v1 = ctl.workers[CONFIG].last
            sws[0].stop(0)  # the standby is down
            port = sws[1].port
            sws[1].stop(0)
            fresh = SoftwareSwitch()  # the primary reboots: no pipeline, no tables
            fresh.start(f"127.0.0.1:{port}")
            try:
                n0 = len(ctl.history)
                await ctl.wait_until(lambda: any(r.outcome == Outcome.RESYNCED and r.writes and "primary" in r.reason
                                                 for r in ctl.history[n0:]), timeout=15)
                assert {t: len(fresh.entries(1, t)) for t in TABLES} == {t: len(v1.tables()[t]) for t in TABLES}
                assert held(fresh) == entries_of(v1)
                assert any(r.outcome == Outcome.DEGRADED and "standby" in r.reason for r in ctl.history[n0:])
                assert not any(s.auto_fallback for s in cluster.snapshot().services.values())
            finally:
                fresh.stop(0)

    asyncio.run(scenario())

