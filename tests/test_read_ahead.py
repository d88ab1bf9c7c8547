"""TwoSwitchApplier.read_ahead(): `reconcile --once` reads both switches back while it renders.
The read goes out before render and is used by the next apply() or sync() only over the session
it went out on with no pipeline pushed since; nothing is written by it, and a switch that cannot
be read ahead is handled by apply()/sync() as always. Two software switches over real gRPC."""

from __future__ import annotations

import asyncio
import gc

import pytest
from helpers import run
from test_apply import World, apply, assert_invariant, build_world
from test_readback_apply import PRIMARY, STANDBY, Log, factory, unretrieved

import reconciler.render
from reconciler.cli import main



@pytest.fixture
def world(switch_pair) -> World:
    return build_world(*switch_pair)


def test_the_reads_go_out_before_apply_and_each_switch_is_read_once(world):
    assert run(apply(world, world.v1, None)).ok
    log = Log()

    async def go():
        seen = unretrieved(asyncio.get_running_loop())
        reading = {STANDBY: asyncio.Event(), PRIMARY: asyncio.Event()}

        async def before_read(session):
            reading[session.name].set()

        applier = world.applier(election_id=11, session_factory=factory(world, log, before_read=before_read))
        try:
            await applier.read_ahead()
            # Both reads go out with nothing else asked of the applier (apply() is not called yet).
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in reading.values())), 10)
            before = list(log.events)
            result = await applier.apply(world.v2, world.v1)
        finally:
            await applier.close()
        gc.collect()
        return before, result, seen

    before, result, seen = run(go())
    assert result.outcome == "applied", result.describe()
    assert {("read", STANDBY), ("read", PRIMARY)} <= set(before)  # started before apply() began
    assert not any(what == "write" for what, _ in before)
    for s in (STANDBY, PRIMARY):
        assert log.count("read", s) == 1, log.events  # the read ahead was the transaction's read
    assert not seen
    assert_invariant(world, world.v2)


def test_sync_uses_the_read_ahead_and_repairs_what_differs(world):
    assert run(apply(world, world.v1, None)).ok
    world.standby.reset()  # tables and pipeline gone: not read ahead (it needs a push)
    log = Log()

    async def go():
        primary_reading = asyncio.Event()

        async def before_read(session):
            if session.name == PRIMARY:
                primary_reading.set()

        applier = world.applier(election_id=11, session_factory=factory(world, log, before_read=before_read))
        try:
            await applier.read_ahead()
            await asyncio.wait_for(primary_reading.wait(), 10)
            before = list(log.events)
            result = await applier.sync(world.v1)
        finally:
            await applier.close()
        return before, result

    before, result = run(go())
    assert result.outcome == "applied", result.describe()
    assert ("read", PRIMARY) in before and ("read", STANDBY) not in before  # nothing pushed ahead
    assert log.count("read", PRIMARY) == 1
    assert [r.state for r in result.switches] == ["applied", "unchanged"]
    assert_invariant(world, world.v1)


def test_a_read_ahead_over_a_lost_session_is_not_used(world):
    assert run(apply(world, world.v1, None)).ok
    log = Log()

    async def go():
        seen = unretrieved(asyncio.get_running_loop())
        applier = world.applier(election_id=11, session_factory=factory(world, log))
        try:
            await applier.read_ahead()
            await applier.session_for(PRIMARY).close()  # the stream is gone: what was read may be stale
            result = await applier.apply(world.v2, world.v1)
        finally:
            await applier.close()
        gc.collect()
        return result, seen

    result, seen = run(go())
    assert result.outcome == "applied", result.describe()
    assert log.count("read", PRIMARY) == 2  # read again over the new session
    assert not seen
    assert_invariant(world, world.v2)


def test_reads_ahead_never_used_are_collected_at_close(world):
    assert run(apply(world, world.v1, None)).ok

    async def go():
        seen = unretrieved(asyncio.get_running_loop())
        started, never = asyncio.Event(), asyncio.Event()

        async def before_read(session):
            started.set()
            await never.wait()  # held up: close() must end it

        applier = world.applier(election_id=11, session_factory=factory(world, Log(), before_read=before_read))
        await applier.read_ahead()
        await asyncio.wait_for(started.wait(), 10)
        await applier.close()
        gc.collect()
        left = [t for t in asyncio.all_tasks() if "read_encoded" in repr(t.get_coro())]
        return seen, left

    seen, left = run(go())
    assert not seen and not left
    assert_invariant(world, world.v1)


def test_an_unreachable_switch_is_left_to_apply(world):
    assert run(apply(world, world.v1, None)).ok
    port = world.primary.port
    world.primary.stop(0)

    async def go():
        applier = world.applier(election_id=11)
        try:
            await applier.read_ahead()  # no error: apply() says what is wrong
            return await applier.apply(world.v2, world.v1)
        finally:
            await applier.close()

    result = run(go())
    assert result.outcome == "failed" and "unreachable" in result.describe(), result.describe()
    world.primary.start(f"127.0.0.1:{port}")
    assert_invariant(world, world.v1)  # nothing was written to the standby either


def test_reconcile_once_reads_both_switches_while_it_renders(tmp_path, switch_pair, monkeypatch, capsys):
    """Through the command: render waits until both switches have been asked for their tables
    (their Read RPCs seen by the switches), which only happens when the reads go out first."""
    from test_reconcile_audit import entries_of, switch_entries
    from test_rendered_from import once_world

    from reconciler.audit.repo import AuditRepo
    from reconciler.cluster.recorded import load_cluster_file
    from reconciler.cluster.synthetic import cluster_to_list_yaml, with_scaled_service

    standby, primary, _, audit_dir, cluster, once = once_world(tmp_path, switch_pair)
    assert main(once) == 0
    cluster.write_text(cluster_to_list_yaml(with_scaled_service(load_cluster_file(cluster), "web/frontend", "node-c", +2)))

    reads = {sw.port: sw.reads_processed for sw in (standby, primary)}
    original = reconciler.render.Renderer.render
    asked: list[bool] = []

    def render(self, *args, **kwargs):
        asked.append(all(sw.wait_reads(reads[sw.port] + 1, timeout=10) for sw in (standby, primary)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(reconciler.render.Renderer, "render", render)
    assert main(once) == 0
    assert asked and all(asked)  # render (and its check that it settled) ran after both were asked
    held = AuditRepo.open_or_init(audit_dir, read_only=True).last_applied("p4kube-system/p4kube-config")
    assert held.version == 2
    assert switch_entries(standby) == switch_entries(primary) == entries_of(held)


def test_a_skipped_render_reads_both_switches_while_the_audit_is_read(tmp_path, switch_pair, monkeypatch, capsys):
    """Inputs as recorded (Rendered-From): the last applied snapshot is read from the audit
    repository only once both switches have been asked for their tables."""
    from test_reconcile_audit import entries_of, switch_entries
    from test_rendered_from import SKIPPED, once_world

    import reconciler.audit.refusals
    from reconciler.audit.repo import AuditRepo

    standby, primary, _, audit_dir, _, once = once_world(tmp_path, switch_pair)
    assert main(once) == 0
    capsys.readouterr()
    reads = {sw.port: sw.reads_processed for sw in (standby, primary)}
    original = reconciler.audit.refusals.last_applied_trusted
    asked: list[bool] = []

    def last_applied_trusted(audit, config):
        asked.append(all(sw.wait_reads(reads[sw.port] + 1, timeout=10) for sw in (standby, primary)))
        return original(audit, config)

    monkeypatch.setattr(reconciler.audit.refusals, "last_applied_trusted", last_applied_trusted)
    assert main(once) == 0
    out, err = capsys.readouterr()
    assert SKIPPED in err and "up to date at v1" in out
    assert asked == [True]
    held = AuditRepo.open_or_init(audit_dir, read_only=True).last_applied("p4kube-system/p4kube-config")
    assert switch_entries(standby) == switch_entries(primary) == entries_of(held)
