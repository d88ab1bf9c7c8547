"""The transaction's read-backs (issue 13): the full reads of both untrusted switches are in
flight together before anything is written, each switch is read in full once per transaction
(its writes, when few, verified by key), and none of that changes what a failure does: the same
report, the same rollback, both switches left on the last good snapshot (read back over
P4Runtime). Two software switches over real gRPC on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import pytest
from helpers import run
from test_apply import INFO, World, apply, assert_invariant, build_world, entries_of, read_back

from reconciler import p4names as n
from reconciler.apply import default_session_factory
from reconciler.diff import Update, diff_snapshots
from reconciler.snapshot import Entry
from reconciler.switch import ReadError, SwitchSession, WriteOutcome
from reconciler.switch.wire import write_requests

STANDBY, PRIMARY = "sim-standby", "sim-primary"


@pytest.fixture
def world(switch_pair) -> World:
    return build_world(*switch_pair)


class Log:
    """What the sessions of one test did, in order: ("read", switch), ("read done", switch),
    ("keys", switch), ("write", switch)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def count(self, what: str, switch: str) -> int:
        return self.events.count((what, switch))


def factory(world: World, log: Log, *, before_read: Callable[[SwitchSession], Any] | None = None,
            on_write: Callable[[SwitchSession, Any], Any] | None = None):
    """Sessions that log their reads and writes; `before_read(session)` (awaited) runs as a full
    read starts, `on_write(session, requests)` (awaited) may answer a write instead of the
    switch (a WriteOutcome) or return None to send it."""
    base = default_session_factory(world.config, INFO, connect_timeout=2.0, arbitration_timeout=2.0)

    class Logged(SwitchSession):
        async def read_encoded(self, tables=None, same=None):
            log.events.append(("read", self.name))
            if before_read is not None:
                await before_read(self)
            blobs = await super().read_encoded(tables, same)
            log.events.append(("read done", self.name))
            return blobs

        async def read_keys(self, entries):
            log.events.append(("keys", self.name))
            return await super().read_keys(entries)

        async def write(self, requests, **kw):
            log.events.append(("write", self.name))
            if on_write is not None:
                answer = await on_write(self, requests)
                if answer is not None:
                    return answer
            return await super().write(requests, **kw)

    def make(sw, eid):
        s = base(sw, eid)
        s.__class__ = Logged
        return s

    return make


def unretrieved(loop: asyncio.AbstractEventLoop) -> list[dict]:
    """Collects what the loop's exception handler is told (e.g. "Task exception was never
    retrieved") from now on."""
    seen: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    return seen


def test_both_full_reads_are_in_flight_before_anything_is_written(world):
    """The standby's read does not end until the primary's has started: sequential reads would
    never get there (the wait fails the test after 10 s; nothing sleeps)."""
    assert run(apply(world, world.v1, None)).ok
    log = Log()

    async def go():
        primary_reading = asyncio.Event()

        async def before_read(session):
            if session.name == PRIMARY:
                primary_reading.set()
            else:
                await asyncio.wait_for(primary_reading.wait(), 10)

        seen = unretrieved(asyncio.get_running_loop())
        r = await apply(world, world.v2, world.v1, session_factory=factory(world, log, before_read=before_read))
        gc.collect()
        return r, seen

    r, seen = run(go())
    assert r.outcome == "applied", r.describe()
    assert not seen
    first_write = log.events.index(("write", STANDBY))
    assert {("read", STANDBY), ("read", PRIMARY)} <= set(log.events[:first_write])
    # the writes keep their order: every write of the standby before any of the primary
    writes = [s for what, s in log.events if what == "write"]
    assert writes == sorted(writes, key=[STANDBY, PRIMARY].index)
    assert_invariant(world, world.v2)


def test_one_full_read_per_switch_and_the_few_writes_verified_by_key(world):
    assert run(apply(world, world.v1, None)).ok
    # unchanged: each switch read once in full, nothing written, nothing more read
    log = Log()
    r = run(apply(world, world.v1, world.v1, session_factory=factory(world, log)))
    assert r.outcome == "unchanged", r.describe()
    assert sorted(log.events) == sorted([("read", s) for s in (STANDBY, PRIMARY)] + [("read done", s) for s in (STANDBY, PRIMARY)])
    # a small change: one full read, the writes, then only the keys written are read
    log = Log()
    diff = diff_snapshots(world.v1, world.v2)
    assert 0 < len(diff) <= len(entries_of(world.v1)) // 10
    r = run(apply(world, world.v2, world.v1, session_factory=factory(world, log)))
    assert r.outcome == "applied", r.describe()
    for s in (STANDBY, PRIMARY):
        assert (log.count("read", s), log.count("keys", s)) == (1, 1), log.events
    assert_invariant(world, world.v2)


def test_a_switch_filled_from_empty_or_a_large_diff_is_read_back_in_full_again(world):
    log = Log()
    r = run(apply(world, world.v1, None, session_factory=factory(world, log)))
    assert r.outcome == "applied", r.describe()
    for s in (STANDBY, PRIMARY):  # empty, then everything written: read back in full
        assert (log.count("read", s), log.count("keys", s)) == (2, 0), log.events
    # someone emptied most of the primary's backend_table: more than a tenth of the entries
    buckets = [e for e in world.v1.tables()[n.BACKEND_TABLE]]
    assert len(buckets) > len(entries_of(world.v1)) // 10
    run(_delete_behind_our_back(world, buckets))
    log = Log()
    r = run(apply(world, world.v1, world.v1, session_factory=factory(world, log), election_id=20))
    assert r.outcome == "applied", r.describe()
    assert (log.count("read", PRIMARY), log.count("keys", PRIMARY)) == (2, 0), log.events
    assert (log.count("read", STANDBY), log.count("keys", STANDBY)) == (1, 0), log.events
    assert_invariant(world, world.v1)


async def _delete_behind_our_back(world: World, entries: list[Entry]) -> None:
    """Another controller (a later term) deletes `entries` from the primary."""
    async with SwitchSession(f"127.0.0.1:{world.primary.port}", device_id=1, election_id=15 << 64, info=INFO) as s:
        for phase in write_requests(INFO, [[Update("DELETE", e) for e in entries]], device_id=1,
                                    election_id=s.election_id, batch_size=500):
            assert (await s.write(phase)).ok


@pytest.mark.parametrize("primary_read", ["answers", "fails"])
def test_a_refused_standby_write_with_the_primary_read_prefetched_rolls_back_as_before(world, primary_read):
    """The standby refuses a write: the primary's read, already under way (or failed), is
    settled without being used; the standby is rolled back and both hold v1, as before."""
    assert run(apply(world, world.v1, None)).ok
    log = Log()

    async def before_read(session):
        if session.name == PRIMARY and primary_read == "fails":
            raise ReadError("reading table entries failed: injected", switch=PRIMARY)

    async def go():
        seen = unretrieved(asyncio.get_running_loop())
        world.standby.refuse_writes(1)
        r = await apply(world, world.v2, world.v1, session_factory=factory(world, log, before_read=before_read))
        gc.collect()
        return r, seen

    r, seen = run(go())
    assert not seen, seen
    assert r.outcome == "rolled-back", r.describe()
    assert [s.state for s in r.switches] == ["rolled-back", "not-touched"]
    assert "refused" in r.reason
    assert log.count("write", PRIMARY) == 0
    assert read_back(world.standby) == read_back(world.primary) == entries_of(world.v1)


def test_a_failed_prefetched_primary_read_fails_the_primary_step_as_a_sequential_read_did(world):
    """The primary's read fails while the standby is being written: found when the primary's
    turn comes, the same report as a read that failed then, and both rolled back to v1 (the
    primary over a new, fencing session, read afresh)."""
    assert run(apply(world, world.v1, None)).ok
    log = Log()
    failed: list[int] = []

    async def before_read(session):
        if session.name == PRIMARY and not failed:
            failed.append(session.election_id)
            raise ReadError("reading table entries failed: injected", switch=PRIMARY)

    r = run(apply(world, world.v2, world.v1, session_factory=factory(world, log, before_read=before_read)))
    assert r.outcome == "rolled-back", r.describe()
    standby, primary = r.switches
    assert standby.state == "rolled-back" and standby.reason == ""
    assert primary.state == "rolled-back" and primary.reason == "reading table entries failed: injected"
    assert log.count("write", STANDBY) >= 2  # v2, then the rollback
    # the failed prefetch, then the rollback's own read and its full verify (the proven path)
    assert (log.count("read", PRIMARY), log.count("keys", PRIMARY)) == (3, 0)
    assert_invariant(world, world.v1)


@pytest.mark.parametrize("direction", ["v1 to v2", "v2 to v1"])
@pytest.mark.parametrize("fault", ["dropped", "altered"])
def test_a_write_the_switch_did_not_take_is_caught_by_the_keys_verify(world, direction, fault):
    """The primary answers OK to its writes but drops them (the MODIFYs and, from v2 to v1,
    DELETEs not done), or holds another action at a key just written: the keys read back after
    the writes differ, the transaction fails and both switches return to the last good one."""
    old, new = (world.v1, world.v2) if direction == "v1 to v2" else (world.v2, world.v1)
    assert run(apply(world, old, None)).ok
    log = Log()
    diff = diff_snapshots(old, new)
    modified = next(u.entry for u in diff.updates() if u.kind == "MODIFY")
    faulted: list[bool] = []

    async def on_write(session, requests):
        if session.name != PRIMARY or faulted:
            return None
        faulted.append(True)
        if fault == "dropped":
            return WriteOutcome(len(requests), sum(r.size for r in requests), requests_total=len(requests))
        outcome = await SwitchSession.write(session, requests)
        assert outcome.ok
        other = Entry(modified.table, modified.key, modified.action, ("10.9.9.9",) + modified.args[1:])
        for phase in write_requests(INFO, [[Update("MODIFY", other)]], device_id=1, election_id=session.election_id,
                                    batch_size=10):
            assert (await SwitchSession.write(session, phase)).ok
        return outcome

    r = run(apply(world, new, old, session_factory=factory(world, log, on_write=on_write)))
    assert faulted
    assert r.outcome == "rolled-back", r.describe()
    assert "read-back differs from the snapshot" in r.reason
    # one full read and the keys verify, then the rollback's full read and full verify
    assert (log.count("keys", PRIMARY), log.count("read", PRIMARY)) == (1, 3)
    assert_invariant(world, old)


def test_a_cancelled_transaction_leaves_no_read_running_or_unretrieved(world):
    """apply() cancelled while the standby's read is held up: every read it started ends with
    it (nothing left running, no exception never retrieved); a new applier then finds v1."""
    assert run(apply(world, world.v1, None)).ok
    log = Log()

    async def go():
        primary_reading, never = asyncio.Event(), asyncio.Event()

        async def before_read(session):
            if session.name == PRIMARY:
                primary_reading.set()
                raise ReadError("reading table entries failed: injected", switch=PRIMARY)
            await never.wait()

        seen = unretrieved(asyncio.get_running_loop())
        task = asyncio.ensure_future(apply(world, world.v2, world.v1, session_factory=factory(world, log, before_read=before_read)))
        await asyncio.wait_for(primary_reading.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        left = [t for t in asyncio.all_tasks() if "read_encoded" in repr(t.get_coro())]
        gc.collect()
        return left, seen

    left, seen = run(go())
    assert left == [] and seen == []
    assert not any(what == "write" for what, _ in log.events)
    assert read_back(world.standby) == read_back(world.primary) == entries_of(world.v1)
