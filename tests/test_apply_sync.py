"""The switches' own state decides (DESIGN.md 6.1): per-switch sync, the cheap quick check, trust,
and the fencing of a Write whose RPC timed out. Real software switches over gRPC on 127.0.0.1.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from finsy.proto import p4r
from test_apply import (
    INFO,
    P4INFO,
    World,
    assert_invariant,
    build_world,
    entries_of,
    read_back,
)

from reconciler import p4names as n
from reconciler.apply import TwoSwitchApplier, default_session_factory
from reconciler.sim.server import SoftwareSwitch
from reconciler.switch import SwitchError, SwitchSession
from reconciler.switch.translate import (
    TranslationError,
    election_id_proto,
    entry_to_proto,
    split_election_id,
    wire_election_id,
)

PRIMARY, STANDBY = "sim-primary", "sim-standby"


@pytest.fixture(params=["spec", "bmv2"])
def world(request) -> World:
    """Both modes of the software switch: BMv2 promotes the next stream when the primary's
    ends and accepts id-less writes with no stream open, which fencing must survive too."""
    bmv2 = request.param == "bmv2"
    standby, primary = SoftwareSwitch(bmv2=bmv2), SoftwareSwitch(bmv2=bmv2)
    standby.start()
    primary.start()
    try:
        yield build_world(standby, primary)
    finally:
        standby.stop(0)
        primary.stop(0)


def applier(w: World, election_id: int = 10, **session_kw) -> TwoSwitchApplier:
    kw = {"connect_timeout": 2.0, "arbitration_timeout": 2.0, **session_kw}
    return TwoSwitchApplier(
        w.config, p4info=P4INFO, info=INFO, device_config=b"", election_id=election_id,
        session_factory=default_session_factory(w.config, INFO, **kw),
    )


async def wait_lost(a: TwoSwitchApplier, name: str) -> None:
    session = a.session_for(name)
    assert session is not None
    await asyncio.wait_for(session.wait_lost(), 5)


def delete_out_of_band(sw: SoftwareSwitch, entry) -> None:
    """Someone else deletes an entry (in-process, past arbitration: not one of our sessions)."""
    req = p4r.WriteRequest(device_id=1)
    u = req.updates.add()
    u.type = p4r.Update.DELETE
    u.entity.table_entry.CopyFrom(entry_to_proto(INFO, entry, key_only=True))
    assert sw.device(1).write(req) == [(0, "")]


# --- election id layout ------------------------------------------------------------------------


def test_wire_election_id_puts_the_term_high_and_the_counter_low():
    assert wire_election_id(10, 0) == 10 << 64
    assert wire_election_id(10, 7) == (10 << 64) | 7
    assert split_election_id(wire_election_id(3, 5)) == (3, 5)
    # every session of a term ranks below every session of the next term
    assert wire_election_id(10, (1 << 64) - 1) < wire_election_id(11, 0)
    assert election_id_proto(wire_election_id(2, 9)) == p4r.Uint128(high=2, low=9)
    for bad in (0, 1 << 64, -1):
        with pytest.raises(TranslationError, match="2\\*\\*64"):
            wire_election_id(bad, 0)


def test_base_election_id_must_fit_in_64_bits(world):
    with pytest.raises(ValueError, match="high 64 bits"):
        applier(world, election_id=1 << 64)


# --- fencing a timed-out write -----------------------------------------------------------------


def test_timed_out_write_is_fenced_refused_when_it_lands_and_the_session_still_works(world):
    async def go():
        a = applier(world, rpc_timeout=0.3)
        try:
            assert (await a.apply(world.v1, None)).outcome == "applied"
            before = a.election_id_of(PRIMARY)
            assert split_election_id(before)[0] == 10
            processed = world.primary.writes_processed
            # The primary's next Write sits in the switch for 1 s, well past the 0.3 s deadline.
            world.primary.delay_writes(1.0)
            r = await a.apply(world.v2, world.v1)
            assert r.outcome == "rolled-back", r.describe()
            assert "DEADLINE_EXCEEDED" in r.reason
            assert [s.state for s in r.switches] == ["rolled-back", "rolled-back"]
            # fenced: a new session, a strictly higher id of the same term, below the next term
            after = a.election_id_of(PRIMARY)
            assert before < after < wire_election_id(11, 0)
            assert world.primary.arbitrator.primary_election_id(1) == after
            # The delayed Write is processed after the transaction ended: refused.
            assert await asyncio.to_thread(world.primary.wait_for_writes, processed + 1, 10)
            late = [rec for rec in world.primary.write_log()[processed:] if rec.delayed]
            assert len(late) == 1, world.primary.write_log()[processed:]
            assert late[0].code == grpc.StatusCode.PERMISSION_DENIED, late[0]
            assert late[0].election_id == before
            assert_invariant(world, world.v1)
            # the fenced session carries the next transaction
            r = await a.apply(world.v2, world.v1)
            assert r.outcome == "applied", r.describe()
            assert a.election_id_of(PRIMARY) == after
            assert a.trusts(PRIMARY) and a.trusts(STANDBY)
        finally:
            await a.close()

    asyncio.run(go())
    assert_invariant(world, world.v2)


def test_a_new_process_of_the_same_term_catches_up_with_a_fenced_id(world):
    """A switch following the specification remembers the highest id it has seen: after an
    earlier process of the same term fenced up to counter 1000 and exited, a new process
    (counter restarting low) catches up instead of staying backup."""

    async def go():
        earlier = SwitchSession(f"127.0.0.1:{world.primary.port}", device_id=1, info=INFO,
                                election_id=wire_election_id(10, 1000), name="earlier")
        await earlier.open()
        await earlier.close()
        assert await asyncio.to_thread(world.primary.wait_for_streams, 0)
        a = applier(world)
        try:
            r = await a.apply(world.v1, None)
            assert r.outcome == "applied", r.describe()
            assert split_election_id(a.election_id_of(PRIMARY))[0] == 10
            if not world.primary.behavior.bmv2:
                assert a.election_id_of(PRIMARY) > wire_election_id(10, 1000)
        finally:
            await a.close()

    asyncio.run(go())
    assert_invariant(world, world.v1)


# --- per-switch sync ----------------------------------------------------------------------------


def test_sync_repairs_a_restarted_primary_while_the_standby_is_down(world):
    async def go():
        a = applier(world)
        try:
            assert (await a.apply(world.v1, None)).ok
            assert a.trusts(PRIMARY) and a.trusts(STANDBY)
            world.standby.stop(0)
            await wait_lost(a, STANDBY)
            # the primary's process restarts: same port, empty device
            port = world.primary.port
            world.primary.stop(0)
            await wait_lost(a, PRIMARY)
            world.primary.reset()
            world.primary.start(f"127.0.0.1:{port}")
            assert not a.trusts(PRIMARY) and not a.trusts(STANDBY)

            r = await a.sync(world.v1)
            assert r.outcome == "degraded", r.describe()
            standby, primary = r.switches
            assert standby.state == "unreachable" and STANDBY in r.reason
            assert primary.state == "applied" and primary.pipeline_pushed
            assert sum(v.get("INSERT", 0) for v in primary.writes.values()) == len(entries_of(world.v1))
            assert read_back(world.primary) == entries_of(world.v1)
            assert a.trusts(PRIMARY) and not a.trusts(STANDBY)

            # sync_switch on its own: the standby is still down, the primary is trusted
            report = await a.sync_switch(STANDBY, world.v1)
            assert report.state == "unreachable"
            r = await a.sync(world.v1)
            assert r.outcome == "degraded" and r.switches[1].state == "unchanged"
        finally:
            await a.close()

    asyncio.run(go())


def test_sync_switch_reads_back_and_repairs_only_that_switch(world):
    async def go():
        a = applier(world)
        try:
            assert (await a.apply(world.v1, None)).ok
            vip = world.v1.tables()[n.VIP_TABLE][0]
            delete_out_of_band(world.standby, vip)
            delete_out_of_band(world.primary, vip)
            a.forget(PRIMARY)
            report = await a.sync_switch(PRIMARY, world.v1)
            assert report.state == "applied" and report.writes == {n.VIP_TABLE: {"INSERT": 1}}
            assert any(d.startswith("missing MyIngress.vip_table") for d in report.drift)
            assert read_back(world.primary) == entries_of(world.v1)
            assert read_back(world.standby) == entries_of(world.v1) - {(vip.table, vip.key, vip.action, vip.args)}
            # a trusted switch holding the snapshot: nothing read, nothing written
            report = await a.sync_switch(PRIMARY, world.v1)
            assert report.state == "unchanged" and not report.writes
        finally:
            await a.close()

    asyncio.run(go())


# --- the quick check ----------------------------------------------------------------------------


def test_quick_check_finds_a_deleted_entry_and_sync_repairs_it(world):
    async def go():
        a = applier(world)
        try:
            assert (await a.apply(world.v1, None)).ok
            q = await a.quick_check(PRIMARY, world.v1)
            assert q.ok, q
            assert q.counts == {t: len(world.v1.tables().get(t, ())) for t in INFO.tables}
            bucket = world.v1.tables()[n.BACKEND_TABLE][3]
            delete_out_of_band(world.primary, bucket)
            assert a.trusts(PRIMARY)  # nothing told the applier
            q = await a.quick_check(PRIMARY, world.v1)
            assert not q.ok and n.BACKEND_TABLE in q.reason, q
            assert q.counts[n.BACKEND_TABLE] == len(world.v1.tables()[n.BACKEND_TABLE]) - 1
            assert not a.trusts(PRIMARY) and a.trusts(STANDBY)
            r = await a.sync(world.v1)
            assert r.outcome == "applied", r.describe()
            assert [s.state for s in r.switches] == ["unchanged", "applied"]
            assert r.switches[1].writes == {n.BACKEND_TABLE: {"INSERT": 1}}
            assert (await a.quick_check(PRIMARY, world.v1)).ok
        finally:
            await a.close()

    asyncio.run(go())
    assert_invariant(world, world.v1)


def test_quick_check_leaves_large_tables_to_the_full_read_back(world):
    """P4Runtime has no count call: counting a table reads all of it. Tables over max_count are
    not counted every round; the periodic full read-back covers them."""

    async def go():
        a = applier(world)
        try:
            assert (await a.apply(world.v1, None)).ok
            assert world.v1.table_counts == {t: len(world.v1.tables().get(t, ())) for t in world.v1.table_counts}
            delete_out_of_band(world.primary, world.v1.tables()[n.BACKEND_TABLE][3])
            limit = len(world.v1.tables()[n.BACKEND_TABLE]) - 1
            q = await a.quick_check(PRIMARY, world.v1, max_count=limit)
            assert q.ok and n.BACKEND_TABLE not in q.counts and n.VIP_TABLE in q.counts, q
            assert a.trusts(PRIMARY)
            assert not (await a.quick_check(PRIMARY, world.v1, max_count=None)).ok
        finally:
            await a.close()

    asyncio.run(go())


def test_quick_check_finds_a_missing_pipeline_and_sync_pushes_it(world):
    async def go():
        a = applier(world)
        try:
            assert (await a.apply(world.v1, None)).ok
            world.primary.reset()  # the device forgets everything; our stream stays open
            assert a.trusts(PRIMARY)
            q = await a.quick_check(PRIMARY, world.v1)
            assert not q.ok and "no pipeline" in q.reason, q
            assert not a.trusts(PRIMARY)
            r = await a.sync(world.v1)
            assert r.outcome == "applied", r.describe()
            assert r.switches[1].pipeline_pushed and r.switches[1].state == "applied"
            assert (await a.quick_check(PRIMARY, world.v1)).ok
        finally:
            await a.close()

    asyncio.run(go())
    assert_invariant(world, world.v1)


def test_quick_check_without_a_session_raises_and_drops_trust(world):
    async def go():
        a = applier(world)
        try:
            with pytest.raises(SwitchError, match="no open P4Runtime session"):
                await a.quick_check(PRIMARY, world.v1)
            with pytest.raises(KeyError):
                await a.quick_check("nonesuch", world.v1)
        finally:
            await a.close()

    asyncio.run(go())


# --- trust --------------------------------------------------------------------------------------


def test_trust_is_dropped_after_a_failed_write_and_the_switch_is_fenced(world):
    async def go():
        a = applier(world)
        try:
            assert (await a.apply(world.v1, None)).ok
            before = a.election_id_of(PRIMARY)
            world.primary.refuse_writes(1)
            report = await a.sync_switch(PRIMARY, world.v2)
            assert report.state == "failed" and "refused by fault injection" in report.reason
            assert not a.trusts(PRIMARY) and a.session_for(PRIMARY) is None
            r = await a.sync(world.v2)
            assert [s.state for s in r.switches] == ["applied", "applied"], r.describe()
            assert a.election_id_of(PRIMARY) > before
            assert a.trusts(PRIMARY)
        finally:
            await a.close()

    asyncio.run(go())
    assert_invariant(world, world.v2)


def test_trust_is_dropped_after_a_reconnect(world):
    async def go():
        a = applier(world)
        try:
            assert (await a.apply(world.v1, None)).ok
            before = a.election_id_of(PRIMARY)
            assert world.primary.drop_streams() == 1
            await wait_lost(a, PRIMARY)
            assert not a.trusts(PRIMARY) and a.trusts(STANDBY)
            session = await a.reconnect(PRIMARY)
            assert session is not None and session.election_id > before
            assert not a.trusts(PRIMARY)  # a new stream: not read back yet
            r = await a.sync(world.v1)
            assert r.outcome == "unchanged", r.describe()
            assert a.trusts(PRIMARY)
        finally:
            await a.close()

    asyncio.run(go())
    assert_invariant(world, world.v1)


def test_a_cancelled_apply_closes_the_session_so_its_queued_write_is_refused(world):
    """The client's own timeout (the caller cancels the transaction mid-write): the stream is
    closed at once, the queued Write is refused when the switch gets to it, and the next sync
    opens a new session (higher id), reads the switch back in full and repairs."""

    async def go():
        a = applier(world)
        try:
            assert (await a.apply(world.v1, None)).ok
            before = a.election_id_of(PRIMARY)
            processed = world.primary.writes_processed
            world.primary.delay_writes(1.0)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(a.apply(world.v2, world.v1), 0.3)
            assert a.session_for(PRIMARY) is None and not a.trusts(PRIMARY)
            assert await asyncio.to_thread(world.primary.wait_for_writes, processed + 1, 10)
            late = [rec for rec in world.primary.write_log()[processed:] if rec.delayed]
            assert len(late) == 1 and late[0].code == grpc.StatusCode.PERMISSION_DENIED, late
            r = await a.sync(world.v1)  # the caller restores the last good snapshot
            assert r.ok, r.describe()
            assert a.election_id_of(PRIMARY) > before
        finally:
            await a.close()

    asyncio.run(go())
    assert_invariant(world, world.v1)
