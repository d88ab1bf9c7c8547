"""Leader election on a coordination.k8s.io/v1 Lease, against the test API server with the
official client; time is a fake clock, so no test waits for a lease to expire."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import run
from kubeapi.server import KubeApiServer
from kubernetes import client as k8s

from reconciler.kube.client import build_api_client
from reconciler.kube.leader import LeaderElector, LeadershipLost, Term

NS = "p4kube-system"
MICROTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def now(self) -> datetime:
        return datetime(2026, 11, 22, 10, 0, tzinfo=UTC) + timedelta(seconds=self.t, microseconds=1)

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    with KubeApiServer() as srv:
        srv.load([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        yield srv


@pytest.fixture
def apis(server: KubeApiServer) -> Iterator[list[k8s.ApiClient]]:
    clients = [build_api_client(configuration=server.client_configuration()) for _ in range(3)]
    try:
        yield clients
    finally:
        for c in clients:
            c.close()


def elector(api: k8s.ApiClient, identity: str, clock: FakeClock, **kw: Any) -> LeaderElector:
    return LeaderElector(api, namespace=NS, identity=identity, clock=clock, now=clock.now, **kw)


def read_lease(api: k8s.ApiClient) -> dict[str, Any]:
    raw = k8s.CoordinationV1Api(api).read_namespaced_lease("p4kube-reconciler", NS, _preload_content=False)
    return json.loads(raw.data)


def test_handover_signals_the_old_leader_at_once(apis: list[k8s.ApiClient]) -> None:
    clock = FakeClock()

    async def go() -> None:
        a, b = elector(apis[0], "a", clock), elector(apis[1], "b", clock)
        lost: list[Term] = []
        a.on_lost(lost.append)
        assert await a.try_acquire_or_renew()
        term_a = a.term
        assert a.election_id() == 1  # created with leaseTransitions 0
        assert not await b.try_acquire_or_renew()  # held and alive
        clock.advance(10)
        assert await a.try_acquire_or_renew()  # renewed
        clock.advance(10)
        assert not await b.try_acquire_or_renew()  # b saw the renewal: its wait started again
        clock.advance(16)  # a silent for longer than the lease duration, as b's clock measures
        assert await b.try_acquire_or_renew()
        assert b.election_id() == 2 > term_a.election_id
        assert not term_a.lost.is_set()  # a does not know yet...
        assert not await a.try_acquire_or_renew()  # ...until its next renew, which signals at once
        assert term_a.lost.is_set() and lost == [term_a]
        assert "held by b" in term_a.lost_reason
        with pytest.raises(LeadershipLost):
            a.election_id()

    run(go())
    spec = read_lease(apis[2])["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1 and spec["leaseDurationSeconds"] == 15
    assert MICROTIME.match(spec["acquireTime"]) and MICROTIME.match(spec["renewTime"])


def test_a_renew_refused_with_409_ends_leadership_when_another_holds_the_lease(apis: list[k8s.ApiClient], server: KubeApiServer) -> None:
    """a reads the Lease, b takes it over in between, a's PUT carries the old resourceVersion."""
    clock = FakeClock()

    async def go() -> None:
        a, b = elector(apis[0], "a", clock), elector(apis[1], "b", clock)
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
        clock.advance(16)
        leases = a._leases
        real_read = leases.read_namespaced_lease
        loop = asyncio.get_running_loop()

        def read_then_b_takes_over(name: str, ns: str, **kw: Any) -> Any:
            resp = real_read(name, ns, **kw)
            leases.read_namespaced_lease = real_read  # once
            assert asyncio.run_coroutine_threadsafe(b.try_acquire_or_renew(), loop).result(10)
            return resp

        leases.read_namespaced_lease = read_then_b_takes_over  # type: ignore[method-assign]
        assert not await a.try_acquire_or_renew()
        assert a.term is not None and a.term.lost.is_set() and "held by b" in a.term.lost_reason
        assert b.is_leader and b.election_id() == 2

    run(go())
    puts = [r.code for r in server.requests if r.resource == "leases" and r.verb == "update"]
    assert 409 in puts


def test_release_hands_over_without_waiting(apis: list[k8s.ApiClient]) -> None:
    clock = FakeClock()

    async def go() -> None:
        a, b = elector(apis[0], "a", clock), elector(apis[1], "b", clock)
        assert await a.try_acquire_or_renew()
        term = a.term
        assert not await b.try_acquire_or_renew()
        assert await a.release()
        assert term is not None and term.lost.is_set() and term.lost_reason == "released"
        assert read_lease(apis[2])["spec"]["holderIdentity"] == ""
        assert await b.try_acquire_or_renew()  # no clock advance needed
        assert b.election_id() == 2

    run(go())


def test_renew_deadline_ends_leadership_when_the_api_is_unreachable(apis: list[k8s.ApiClient], server: KubeApiServer) -> None:
    clock = FakeClock()

    async def go() -> None:
        a = elector(apis[0], "a", clock)
        assert await a.try_acquire_or_renew()
        await asyncio.to_thread(server.stop)
        clock.advance(5)
        assert await a.try_acquire_or_renew()  # failed, but within the 10 s renew deadline
        clock.advance(5)
        assert not await a.try_acquire_or_renew()
        assert a.term is not None and "could not renew for 10s" in a.term.lost_reason

    run(go())


def test_run_loop_acquires_with_an_injected_sleep(apis: list[k8s.ApiClient]) -> None:
    clock = FakeClock()

    async def go() -> None:
        ticks: asyncio.Queue[float] = asyncio.Queue()
        proceed = asyncio.Event()

        async def sleep(seconds: float) -> None:
            await ticks.put(seconds)
            await proceed.wait()

        a = elector(apis[0], "a", clock, sleep=sleep)
        task = asyncio.create_task(a.run())
        term = await asyncio.wait_for(a.acquired(), 10)
        assert term.election_id == 1
        assert await asyncio.wait_for(ticks.get(), 10) == a.retry_period_s
        a.stop()
        proceed.set()
        await asyncio.wait_for(task, 10)

    run(go())


def test_timing_rules_are_checked() -> None:
    with pytest.raises(ValueError, match="retry_period_s < renew_deadline_s < lease_duration_s"):
        LeaderElector(None, namespace=NS, lease_duration_s=10, renew_deadline_s=10)  # type: ignore[arg-type]


# --- fencing at a software switch ----------------------------------------------------------------


def test_the_deposed_leaders_election_id_is_refused_by_the_switch(apis: list[k8s.ApiClient]) -> None:
    """Election ids taken from the Lease: the new leader's session becomes primary and the old
    one's writes are refused (PERMISSION_DENIED), and the lost signal closes the old session."""
    from reconciler import p4names as n
    from reconciler.diff import Update
    from reconciler.p4info import load_p4info, pipeline_info
    from reconciler.sim import SoftwareSwitch
    from reconciler.snapshot import Entry
    from reconciler.switch import NotPrimaryError, SwitchSession
    from reconciler.switch.translate import updates_to_requests

    info = pipeline_info()
    entry = Entry(n.BACKEND_TABLE, (1, 0), n.DNAT, ("10.0.0.1", 30000, 0))
    clock = FakeClock()

    def write_requests(s: SwitchSession) -> Any:
        (reqs,) = updates_to_requests(info, [[Update("INSERT", entry)]], device_id=1, election_id=s.election_id, batch_size=10)
        return reqs

    async def go(switch: SoftwareSwitch) -> None:
        a, b = elector(apis[0], "a", clock), elector(apis[1], "b", clock)
        assert await a.try_acquire_or_renew()
        old = SwitchSession(f"127.0.0.1:{switch.port}", device_id=1, election_id=a.election_id(), info=info)
        await old.open()
        closing: list[asyncio.Task[None]] = []
        a.on_lost(lambda term: closing.append(asyncio.get_running_loop().create_task(old.close())))
        await old.ensure_pipeline(load_p4info(), b"{}")
        assert not await b.try_acquire_or_renew()  # b starts watching the Lease
        clock.advance(16)
        assert await b.try_acquire_or_renew()
        async with SwitchSession(f"127.0.0.1:{switch.port}", device_id=1, election_id=b.election_id(), info=info) as new:
            assert new.is_primary
            assert "deposed" in await asyncio.wait_for(old.wait_lost(), 5)
            old._require_primary = lambda what: None  # type: ignore[method-assign]  # as if the news had not arrived
            with pytest.raises(NotPrimaryError) as refused:
                await old.write(write_requests(old))
            assert "PERMISSION_DENIED" in str(refused.value.code)
            assert not await a.try_acquire_or_renew()  # a learns it lost: its session is closed
            await asyncio.wait_for(closing[0], 5)  # the close the callback started at once
            assert not old.is_open
            assert (await new.write(write_requests(new))).ok

    with SoftwareSwitch() as switch:
        run(go(switch))
