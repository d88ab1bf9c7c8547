"""One pass's full reads of the two switches (issue 13): when both answer the very same bytes,
the second read is neither cut into entries nor compared again (reads.SameReads, the
applier's _match), and nothing else changes: the same reports, the same writes, the same drift
found on the switch that differs. Two software switches over real gRPC on 127.0.0.1."""

from __future__ import annotations

import dataclasses

import pytest
from finsy.proto import p4r
from helpers import run
from test_apply import INFO, MULTI, World, apply, assert_invariant, build_world, entries_of, read_back

from reconciler import p4names as n
from reconciler.cluster.model import OPT_IN_ANNOTATION
from reconciler.cluster.recorded import load_cluster_file
from reconciler.render import Renderer
from reconciler.sim.writes import SUCCESS
from reconciler.snapshot import Entry, Snapshot
from reconciler.switch import reads
from reconciler.switch.reads import SameReads
from reconciler.switch.translate import entry_to_proto


@pytest.fixture
def world(switch_pair) -> World:
    return build_world(*switch_pair)


def test_equal_replies_get_the_same_list_and_other_replies_are_cut_again():
    cuts: list[list[bytes]] = []

    def split(replies: list[bytes]) -> list[bytes]:
        cuts.append(replies)
        return [r[::-1] for r in replies]

    same = SameReads()
    first = same.cut([b"ab", b"cd"], split)
    assert first == [b"ba", b"dc"]
    again = same.cut([b"a" + b"b", b"cd"], split)  # equal bytes in other objects
    assert again is first and len(cuts) == 1
    other = same.cut([b"ab", b"ce"], split)
    assert other == [b"ba", b"ec"] and len(cuts) == 2
    assert same.cut([b"ab"], split) == [b"ba"] and len(cuts) == 3  # a prefix is not equal
    same.clear()
    assert same.cut([b"ab"], split) == [b"ba"] and len(cuts) == 4


def test_a_failed_cut_is_not_kept():
    same = SameReads()

    def bad(replies: list[bytes]) -> list[bytes]:
        raise ValueError("does not parse")

    with pytest.raises(ValueError):
        same.cut([b"x"], bad)
    assert same.cut([b"x"], lambda r: [b"ok"]) == [b"ok"]


class _Counting:
    """reads.split_read_response, counting the responses it cuts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.responses = 0
        real = reads.split_read_response

        def counted(data: bytes) -> list[bytes]:
            self.responses += 1
            return real(data)

        monkeypatch.setattr(reads, "split_read_response", counted)


def _responses_of_one_read(world: World, counting: _Counting) -> int:
    """How many responses one full read of the standby cuts (no SameReads)."""
    before = counting.responses

    async def go() -> None:
        a = world.applier()
        try:
            session, _ = await a._session(a.order[0], check_pipeline=True)
            await session.read_encoded()
        finally:
            await a.close()

    run(go())
    return counting.responses - before


def test_two_switches_in_step_are_cut_once_and_both_reports_stay_the_same(world, monkeypatch):
    assert run(apply(world, world.v1, None)).ok
    counting = _Counting(monkeypatch)
    one = _responses_of_one_read(world, counting)
    assert one > 0
    before = counting.responses
    r = run(apply(world, world.v2, world.v1))
    assert r.outcome == "applied", r.describe()
    assert counting.responses - before == one  # the primary's equal answer was not cut again
    assert [s.drift for s in r.switches] == [(), ()]
    assert r.switches[0].writes == r.switches[1].writes and r.switches[0].writes
    assert_invariant(world, world.v2)
    # sync() of the snapshot both hold: the same, and nothing written
    before = counting.responses
    a = world.applier()
    try:
        s = run(a.sync(world.v2))
    finally:
        run(a.close())
    assert s.outcome == "unchanged", s.describe()
    assert counting.responses - before == one
    assert_invariant(world, world.v2)


def test_the_switch_that_differs_gets_its_own_comparison_and_drift(world, monkeypatch):
    """The standby (read and compared first) lost a VIP behind our back; the primary did not.
    Their answers differ, so each is cut and compared on its own: the standby's drift is
    reported and repaired, the primary's report shows none."""
    assert run(apply(world, world.v1, None)).ok
    vip = world.v1.tables()[n.VIP_TABLE][0]
    request = p4r.WriteRequest(device_id=1)
    update = request.updates.add()
    update.type = p4r.Update.DELETE
    update.entity.table_entry.CopyFrom(entry_to_proto(INFO, Entry(vip.table, vip.key, vip.action, vip.args)))
    assert world.standby.device(1).write(request) == [SUCCESS]  # in process: no gRPC, no arbitration
    assert read_back(world.standby) != read_back(world.primary) == entries_of(world.v1)
    counting = _Counting(monkeypatch)
    one = _responses_of_one_read(world, counting)
    before = counting.responses
    r = run(apply(world, world.v2, world.v1))
    assert r.outcome == "applied", r.describe()
    assert counting.responses - before == 2 * one
    standby, primary = r.switches
    assert len(standby.drift) == 1 and standby.drift[0].startswith("missing MyIngress.vip_table"), standby.drift
    assert primary.drift == ()
    assert_invariant(world, world.v2)


def test_nothing_of_a_pass_is_kept_after_it_even_after_a_rollback(world):
    """The full reads of a pass (~60 MB at 5,000 Services) are dropped at its end: after an
    apply, a sync, and an apply that rolled back (whose rollback reads both switches in full)."""
    more = _one_more_service(world)

    async def go() -> list[tuple[str, tuple[bool, bool]]]:
        applier = world.applier()

        def kept() -> tuple[bool, bool]:
            return applier._same_reads._replies is not None, applier._matched is not None

        seen = []
        try:
            seen.append(((await applier.apply(world.v1, None)).outcome, kept()))
            applier.forget()
            seen.append(((await applier.sync(world.v1)).outcome, kept()))
            applier.forget()
            # the primary's VIP table holds no more than v1 has: one more Service is refused there
            world.primary.shrink_table(1, n.VIP_TABLE, len(world.v1.services))
            seen.append(((await applier.apply(more, world.v1)).outcome, kept()))
        finally:
            await applier.close()
        return seen

    assert run(go()) == [("applied", (False, False)), ("unchanged", (False, False)), ("rolled-back", (False, False))]
    assert_invariant(world, world.v1)


def _one_more_service(world: World) -> Snapshot:
    """v1 and one more Service (web/admin opted in), as test_apply's rollback test makes it."""
    cluster = load_cluster_file(MULTI / "cluster.yaml")
    admin = dataclasses.replace(cluster.services["web/admin"], annotations=((OPT_IN_ANNOTATION, "enabled"),))
    more = dataclasses.replace(cluster, services={**cluster.services, "web/admin": admin})
    snap = Renderer().render(world.config, more, world.v1, p4info_digest=world.v1.p4info_digest).snapshot
    assert "web/admin" in snap.by_name
    return snap
