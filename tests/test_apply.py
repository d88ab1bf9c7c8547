"""The two-switch transaction against two software switches over real gRPC on 127.0.0.1.

Every test ends by checking the invariant of DESIGN.md 6: both switches hold exactly the old
or exactly the new snapshot (read back over P4Runtime, not from the simulator's insides).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import grpc
import pytest
from helpers import run
from finsy.proto import p4r, p4r_grpc

from reconciler import p4names as n
from reconciler.apply import TwoSwitchApplier, default_session_factory
from reconciler.cluster.recorded import load_cluster_file
from reconciler.cluster.synthetic import with_scaled_service
from reconciler.diff import diff_snapshots
from reconciler.intent.loader import load_intent
from reconciler.intent.model import SwitchSpec
from reconciler.p4info import load_p4info, pipeline_info_from_message
from reconciler.pipeline_io import config_p4info_digest
from reconciler.render import Renderer
from reconciler.sim.server import SoftwareSwitch
from reconciler.snapshot import Entry, Snapshot
from reconciler.switch import SwitchSession
from reconciler.switch.translate import election_id_proto, entry_to_proto, proto_to_entry

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"
P4INFO = load_p4info()
INFO = pipeline_info_from_message(P4INFO)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def switches():
    """Two software switches (standby, primary) on loopback, stopped at the end."""
    standby, primary = SoftwareSwitch(), SoftwareSwitch()
    standby.start()
    primary.start()
    try:
        yield standby, primary
    finally:
        standby.stop(0)
        primary.stop(0)


@dataclasses.dataclass
class World:
    standby: SoftwareSwitch
    primary: SoftwareSwitch
    config: object
    v1: Snapshot
    v2: Snapshot

    def applier(self, election_id: int = 10, **kw) -> TwoSwitchApplier:
        factory = kw.pop("session_factory", None) or default_session_factory(
            self.config, INFO, connect_timeout=2.0, arbitration_timeout=2.0
        )
        return TwoSwitchApplier(
            self.config, p4info=P4INFO, info=INFO, device_config=b"", election_id=election_id,
            session_factory=factory, **kw,
        )


@pytest.fixture
def world(switches) -> World:
    return build_world(*switches)


def build_world(standby: SoftwareSwitch, primary: SoftwareSwitch) -> World:
    """The multi-service example on two running software switches, with snapshots v1 and v2."""
    intent = load_intent([MULTI])
    base = intent.config()
    sw = (
        SwitchSpec("sim-standby", "standby", f"127.0.0.1:{standby.port}", 1),
        SwitchSpec("sim-primary", "primary", f"127.0.0.1:{primary.port}", 1),
    )
    config = dataclasses.replace(base, switch_config=dataclasses.replace(base.switch_config, switches=sw, batch_size=100))
    cluster = load_cluster_file(MULTI / "cluster.yaml")
    digest = config_p4info_digest(config)
    r = Renderer()
    v1 = r.render(config, cluster, None, p4info_digest=digest).snapshot
    churned = with_scaled_service(cluster, "web/frontend", "node-c", +2)
    v2 = r.render(config, churned, v1, p4info_digest=digest, changed=["web/frontend"]).snapshot
    assert v2.version == 2
    return World(standby, primary, config, v1, v2)


def read_back(sw: SoftwareSwitch) -> set[tuple]:
    """Every table entry of device 1, over P4Runtime Read (no arbitration needed to read)."""
    with grpc.insecure_channel(f"127.0.0.1:{sw.port}") as ch:
        stub = p4r_grpc.P4RuntimeStub(ch)
        req = p4r.ReadRequest(device_id=1)
        for t in n.TABLE_ORDER:
            req.entities.add().table_entry.table_id = INFO.table(t).id
        out = set()
        for reply in stub.Read(req, timeout=10):
            for ent in reply.entities:
                e = proto_to_entry(INFO, ent.table_entry)
                out.add((e.table, e.key, e.action, e.args))
        return out


def entries_of(snap: Snapshot | None) -> set[tuple]:
    if snap is None:
        return set()
    return {(e.table, e.key, e.action, e.args) for es in snap.tables().values() for e in es}


def assert_invariant(w: World, *allowed: Snapshot | None) -> Snapshot | None:
    """Both switches hold exactly the same one of `allowed`; returns which."""
    got_standby, got_primary = read_back(w.standby), read_back(w.primary)
    for snap in allowed:
        if got_standby == entries_of(snap) and got_primary == entries_of(snap):
            return snap
    raise AssertionError(
        f"switches hold a mix: standby {len(got_standby)} entries, primary {len(got_primary)} entries; "
        f"allowed versions {[s.version if s else None for s in allowed]}"
    )


async def apply(w: World, target, last_good, applier=None, **kw):
    a = applier or w.applier(**kw)
    try:
        return await a.apply(target, last_good)
    finally:
        if applier is None:
            await a.close()


# --- the tests --------------------------------------------------------------------------------


def test_fresh_install_then_incremental_change_writes_only_changed_entries(world):
    async def go():
        a = world.applier()
        try:
            r1 = await a.apply(world.v1, None)
            assert r1.outcome == "applied", r1.describe()
            assert [s.state for s in r1.switches] == ["applied", "applied"]
            assert all(s.pipeline_pushed for s in r1.switches)
            fresh = sum(v.get("INSERT", 0) for v in r1.switches[0].writes.values())
            assert fresh == len(entries_of(world.v1))
            r2 = await a.apply(world.v2, world.v1)
            assert r2.outcome == "applied", r2.describe()
            # Exactly the minimal diff between v1 and v2, on each switch: a few bucket MODIFYs.
            expected = diff_snapshots(world.v1, world.v2).counts()
            assert set(expected) == {n.BACKEND_TABLE} and set(expected[n.BACKEND_TABLE]) == {"MODIFY"}
            for s in r2.switches:
                assert s.writes == expected
                assert not s.pipeline_pushed
        finally:
            await a.close()

    run(go())
    assert assert_invariant(world, world.v2) is world.v2


def test_matching_pipeline_is_not_pushed_again_and_entries_survive(world):
    r1 = run(apply(world, world.v1, None))
    assert r1.ok
    # A new applier (new connections): the pipeline is there, so it must not be pushed (that
    # would clear the tables); a full read-back finds nothing to do.
    r2 = run(apply(world, world.v1, world.v1))
    assert r2.outcome == "unchanged", r2.describe()
    assert not any(s.pipeline_pushed for s in r2.switches)
    assert sum(sum(k.values()) for s in r2.switches for k in s.writes.values()) == 0
    assert_invariant(world, world.v1)


def test_standby_down_applies_primary_reports_degraded_and_resyncs(world):
    assert run(apply(world, world.v1, None)).ok
    port = world.standby.port
    world.standby.stop(0)
    r = run(apply(world, world.v2, world.v1))
    assert r.outcome == "degraded", r.describe()
    assert r.switches[0].state == "unreachable" and "sim-standby" in r.reason
    assert read_back(world.primary) == entries_of(world.v2)
    # The standby returns (a restarted process: empty tables); the next apply re-syncs it.
    world.standby.reset()
    world.standby.start(f"127.0.0.1:{port}")
    r = run(apply(world, world.v2, world.v2))
    assert r.outcome == "applied", r.describe()
    assert r.switches[0].pipeline_pushed
    assert_invariant(world, world.v2)


def test_standby_down_with_abort_policy_writes_nothing(world):
    assert run(apply(world, world.v1, None)).ok
    world.standby.stop(0)
    r = run(apply(world, world.v2, world.v1, standby_unreachable="abort"))
    assert r.outcome == "failed" and "nothing was written" in r.reason
    assert read_back(world.primary) == entries_of(world.v1)


def test_primary_down_writes_nothing(world):
    assert run(apply(world, world.v1, None)).ok
    world.primary.stop(0)
    r = run(apply(world, world.v2, world.v1))
    assert r.outcome == "failed"
    assert "primary sim-primary unreachable: nothing was written" in r.reason
    assert read_back(world.standby) == entries_of(world.v1)


def test_primary_refuses_mid_batch_after_standby_succeeded_both_rolled_back(world):
    assert run(apply(world, world.v1, None)).ok
    # v3 adds a Service: the primary's vip_table is full, so its INSERT is refused after the
    # standby already took v3.
    intent_cfg = world.config
    cluster = load_cluster_file(MULTI / "cluster.yaml")
    extra = dataclasses.replace(
        cluster.services["web/admin"], annotations=(("loadbalancer.k8s.io/p4kube", "enabled"),)
    )
    cluster3 = dataclasses.replace(cluster, services={**cluster.services, "web/admin": extra})
    v3 = Renderer().render(intent_cfg, cluster3, world.v1, p4info_digest=world.v1.p4info_digest).snapshot
    assert "web/admin" in v3.by_name
    world.primary.shrink_table(1, n.VIP_TABLE, len(world.v1.services))
    r = run(apply(world, v3, world.v1))
    assert r.outcome == "rolled-back", r.describe()
    assert "RESOURCE_EXHAUSTED" in r.reason or "refused" in r.reason
    assert [s.state for s in r.switches] == ["rolled-back", "rolled-back"]
    assert_invariant(world, world.v1)


def test_stream_drops_mid_apply_rolls_back(world):
    assert run(apply(world, world.v1, None)).ok
    base = default_session_factory(world.config, INFO, connect_timeout=2.0, arbitration_timeout=2.0)
    dropped = []

    class Dropping(SwitchSession):
        async def write(self, requests, **kw):
            if self.name == "sim-primary" and not dropped:
                dropped.append(world.primary.drop_streams())
                # wait until our stream has noticed, so the write is refused as not-primary
                await asyncio.wait_for(self.wait_lost(), 10)
            return await super().write(requests, **kw)

    def factory(sw, eid):
        s = base(sw, eid)
        s.__class__ = Dropping
        return s

    r = run(apply(world, world.v2, world.v1, session_factory=factory))
    assert dropped == [1]
    assert r.outcome == "rolled-back", r.describe()
    assert_invariant(world, world.v1)


def test_higher_election_id_elsewhere_is_refused_cleanly(world):
    assert run(apply(world, world.v1, None, election_id=10)).ok

    async def go():
        # The next term (base id 11) in the wire layout (base << 64) | counter outranks every
        # session of term 10, whatever its fencing counter.
        other = SwitchSession(f"127.0.0.1:{world.primary.port}", device_id=1, election_id=11 << 64, info=INFO, name="other")
        await other.open()
        try:
            return await apply(world, world.v2, world.v1, election_id=10)
        finally:
            await other.close()

    r = run(go())
    assert r.outcome == "failed"
    assert "sim-primary" in r.reason and ("primary" in r.reason.lower())
    assert_invariant(world, world.v1)


def test_entries_tampered_out_of_band_are_detected_and_repaired(world):
    assert run(apply(world, world.v1, None)).ok
    # Another controller (while we are not connected, with a higher election id, as the spec
    # requires to become primary) rewrites one bucket and deletes a VIP.
    bucket = next(e for e in world.v1.tables()[n.BACKEND_TABLE])
    vip = world.v1.tables()[n.VIP_TABLE][0]
    with grpc.insecure_channel(f"127.0.0.1:{world.primary.port}") as ch:
        stub = p4r_grpc.P4RuntimeStub(ch)
        stream_req = p4r.StreamMessageRequest()
        stream_req.arbitration.device_id = 1
        # a later term than ours (10): wire ids are (term << 64) | counter
        stream_req.arbitration.election_id.CopyFrom(election_id_proto(50 << 64))
        q: list = [stream_req]
        done = __import__("threading").Event()

        def requests():
            yield from q
            done.wait(10)

        stream = stub.StreamChannel(requests())
        next(stream)  # arbitration answer: primary
        tampered = Entry(bucket.table, bucket.key, bucket.action, ("10.9.9.9", 1, 0))
        w = p4r.WriteRequest(device_id=1, election_id=election_id_proto(50 << 64))
        u = w.updates.add()
        u.type = p4r.Update.MODIFY
        u.entity.table_entry.CopyFrom(entry_to_proto(INFO, tampered))
        u = w.updates.add()
        u.type = p4r.Update.DELETE
        u.entity.table_entry.CopyFrom(entry_to_proto(INFO, Entry(vip.table, vip.key, vip.action, vip.args)))
        stub.Write(w, timeout=10)
        done.set()
        stream.cancel()
    world.primary.wait_for_streams(0)
    assert read_back(world.primary) != entries_of(world.v1)
    r = run(apply(world, world.v1, world.v1, election_id=100))
    assert r.outcome == "applied", r.describe()
    primary = r.switches[1]
    assert len(primary.drift) == 2, primary.drift
    assert any("changed" in d and "10.9.9.9" in d for d in primary.drift)
    assert any(d.startswith("missing MyIngress.vip_table") for d in primary.drift)
    assert r.switches[0].drift == ()
    assert_invariant(world, world.v1)


def test_a_different_pipeline_on_the_switch_is_replaced(world):
    # Someone pushed another device config (so another cookie) and an entry: ours replaces it.
    async def other_pipeline():
        s = SwitchSession(f"127.0.0.1:{world.primary.port}", device_id=1, election_id=5, info=INFO, name="other")
        await s.open()
        try:
            assert await s.ensure_pipeline(P4INFO, b"another device config")
            bucket = world.v1.tables()[n.BACKEND_TABLE][0]
            req = p4r.WriteRequest(device_id=1, election_id=election_id_proto(5))
            u = req.updates.add()
            u.type = p4r.Update.INSERT
            u.entity.table_entry.CopyFrom(entry_to_proto(INFO, Entry(bucket.table, bucket.key, bucket.action, ("10.1.1.1", 1, 1))))
            assert (await s.write([req])).ok
        finally:
            await s.close()

    run(other_pipeline())
    r = run(apply(world, world.v1, None, election_id=10))
    assert r.outcome == "applied", r.describe()
    assert [s.pipeline_pushed for s in r.switches] == [True, True]
    assert_invariant(world, world.v1)


def test_a_diff_from_the_unmatched_entries_equals_the_diff_from_the_full_lists(multi_render) -> None:
    """_put and _drift diff only the entries whose bytes differ: the same writes, phases and
    order as diffing what the switch holds in full, also when a service id is taken over."""
    from reconciler.apply import _unmatched
    from reconciler.diff import diff_entries

    snap: Snapshot = multi_render.snapshot
    want = [e for s in snap.services for es in s.entries().values() for e in es] + list(snap.global_entries)
    vips = [e for e in want if e.table == n.VIP_TABLE]
    bucket = next(e for e in want if e.table == n.BACKEND_TABLE)
    cases = {
        "a changed bucket": [e if e is not bucket else Entry(e.table, e.key, e.action, ("10.9.9.9", 1, 0)) for e in want],
        "a missing VIP": [e for e in want if e is not vips[0]],
        "a stale VIP of a live service id": want + [Entry(n.VIP_TABLE, ("203.0.113.9", 80, 6), n.SET_SERVICE, vips[1].args)],
        "a VIP moved to another service id": [
            e if e is not vips[0] else Entry(e.table, e.key, e.action, (vips[1].args[0], e.args[1])) for e in want
        ] + [Entry(n.BACKEND_TABLE, (4000, 0), n.DNAT, ("10.0.0.1", 1, 1))],
        "nothing": list(want),
    }
    for what, holds in cases.items():
        have, exp = {(e.table, e.key, e.action, e.args) for e in holds}, {(e.table, e.key, e.action, e.args) for e in want}
        missing = [e for e in want if (e.table, e.key, e.action, e.args) not in have]
        extra = [e for e in holds if (e.table, e.key, e.action, e.args) not in exp]
        # the full lists as the read-back made them: the matched entries in snapshot order, then the others
        full = diff_entries([e for e in want if (e.table, e.key, e.action, e.args) in have] + extra, want)
        reduced = diff_entries(*_unmatched(missing, extra, snap))
        assert reduced.phases == full.phases, what
        assert (not full.empty) == (what != "nothing"), what
        assert bool(full.phases[0]) == ("service id" in what), what  # the take-over path is taken
