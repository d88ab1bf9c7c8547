"""switch/encoded_memo.py: a snapshot's encoded entries stored by one process and reused by the
next (issue 13). Reused bytes equal a fresh encoding exactly; a Service whose fragment is not
known is encoded; stored bytes that are damaged, of another format version or of another P4Info
are refused or left unused; and an applier told them writes, reports and leaves on the switches
exactly what it does without them (two software switches over real gRPC on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from types import MappingProxyType

import pytest
from helpers import run
from helpers_render import do_render, make_config
from test_apply import INFO, World, assert_invariant, build_world
from test_apply_sync import delete_out_of_band

from reconciler import p4names as n
from reconciler.apply import ApplyResult
from reconciler.cluster.synthetic import synthetic_cluster
from reconciler.intent.model import Route, SwitchConfig
from reconciler.p4info import pipeline_info_from_message
from reconciler.sim import SoftwareSwitch
from reconciler.snapshot import Drain, Snapshot
from reconciler.switch import encoded_memo
from reconciler.switch.encoded_memo import FORMAT_VERSION, KnownEncodings, dump_encodings, info_key, load_encodings
from reconciler.switch.wire import EncodedEntries

ROUTES = (
    Route(ipaddress.IPv4Network("10.0.0.0/8"), 1, "02:00:0a:00:00:01"),
    Route(ipaddress.IPv4Network("0.0.0.0/0"), 0, "02:00:c0:00:02:01"),
)


def _rendered(backend_mode: str) -> Snapshot:
    config = make_config(backend_mode=backend_mode, buckets=16, pool_size=64)
    config = dataclasses.replace(config, switch_config=SwitchConfig(routes=ROUTES))
    return do_render(config, synthetic_cluster(services=40, nodes=12, endpoints=300, seed=3)).snapshot


@pytest.fixture(scope="module", params=["nodePort", "podIP"])
def snap(request: pytest.FixtureRequest) -> Snapshot:
    """A rendered snapshot with global route entries, plus a draining Service and one without backends."""
    s = _rendered(request.param)
    base = next(x for x in s.services if len({b.node for b in x.backends}) >= 2)
    key = (lambda b: b.address) if base.backend_mode == "podIP" else (lambda b: b.node)
    other = next(key(b) for b in base.backends if key(b) != base.assignment[0])
    drained = dataclasses.replace(base, name=base.name + "-drained", service_id=60_001,
                                  drains=(Drain(0, other, 7, 1_900_000_000.0),))
    empty = dataclasses.replace(base, name=base.name + "-empty", service_id=60_002, backends=(),
                                assignment=(None,) * base.bucket_count)
    assert s.global_entries
    return dataclasses.replace(s, services=(*s.services, drained, empty))


def _starts(e: EncodedEntries) -> list[int]:
    """Where each Service's entries start, then where the global entries start."""
    layout = e.service_layout()
    assert layout is not None
    return list(layout[2])


def _same(a: EncodedEntries, b: EncodedEntries) -> None:
    assert a.blobs == b.blobs and a.tables == b.tables and a.index == b.index
    assert _starts(a) == _starts(b)
    assert a.at(range(len(a))) == b.at(range(len(b)))


def test_stored_bytes_reused_equal_a_fresh_encoding(snap: Snapshot) -> None:
    fresh = EncodedEntries.of(INFO, snap)
    known = load_encodings(dump_encodings(fresh))
    assert len(known) == len(snap.services) and known.for_info(INFO)
    starts = _starts(fresh)
    assert [known.services[s.fragment_digest] for s in snap.services] == [
        (fresh.blobs[a:b], fresh.tables[a:b]) for a, b in zip(starts, starts[1:])
    ]
    again = EncodedEntries.of(INFO, snap, None, known)
    _same(again, fresh)
    # every Service's bytes are the stored objects: nothing was encoded again but the sample
    first = snap.services[0]
    assert again.blobs[0] is known.services[first.fragment_digest][0][0]


def test_a_service_whose_fragment_is_not_known_is_encoded(snap: Snapshot) -> None:
    known = load_encodings(dump_encodings(EncodedEntries.of(INFO, snap)))
    moved = dataclasses.replace(snap.services[1], vip="198.51.100.77")
    added = dataclasses.replace(snap.services[2], name="extra/added:80", service_id=60_003, vip="198.51.100.78")
    services = (snap.services[0], moved, *snap.services[2:], added)
    changed = dataclasses.replace(snap, services=services)
    assert moved.fragment_digest not in known.services and added.fragment_digest not in known.services
    _same(EncodedEntries.of(INFO, changed, None, known), EncodedEntries.of(INFO, changed))


@pytest.mark.parametrize("digests_before, digests_after", [(False, False), (False, True), (True, False), (True, True)])
def test_a_previous_encoding_is_reused_whether_or_not_the_digests_were_made(
        snap: Snapshot, digests_before: bool, digests_after: bool) -> None:
    """The per-Service cache of `previous` is found by fragment digest, or by equal objects when
    `previous` had no digests made. Only objects without digests against a previous that had
    them are encoded again (the same bytes: a snapshot applied has its digests made)."""
    def copies(with_digests: bool) -> list:
        made = [dataclasses.replace(s) for s in snap.services]  # equal objects, no digest cached
        if with_digests:
            assert all(s.fragment_digest for s in made)
        return made

    before, after = copies(digests_before), copies(digests_after)
    prev = EncodedEntries.of_snapshot(INFO, before, snap.global_entries, list)
    again = EncodedEntries.of_snapshot(INFO, after, snap.global_entries, list, prev)
    _same(again, prev)
    end = len(prev) - len(snap.global_entries)
    reused = [a is b for a, b in zip(again.blobs[:end], prev.blobs[:end])]
    assert all(reused) if digests_after or not digests_before else not any(reused)  # encoded again, or not


def test_bytes_for_another_p4info_are_not_used(snap: Snapshot) -> None:
    """A P4Info whose VIP table numbers a match field otherwise: the stored bytes name the old id."""
    from reconciler.p4info import load_p4info

    other = type(load_p4info())()
    other.CopyFrom(load_p4info())
    next(t for t in other.tables if t.preamble.name == n.VIP_TABLE).match_fields[0].id = 9
    info2 = pipeline_info_from_message(other)
    stored = load_encodings(dump_encodings(EncodedEntries.of(INFO, snap)))
    assert info_key(info2) != info_key(INFO) and not stored.for_info(info2)
    _same(EncodedEntries.of(info2, snap, None, stored), EncodedEntries.of(info2, snap))


def test_stale_bytes_under_the_right_key_are_caught_by_the_sample_and_not_used(snap: Snapshot) -> None:
    """Bytes an encoding of another version made (here: every entry with a byte appended), stored
    under today's P4Info key: the sample encoded again differs, so nothing stored is used."""
    fresh = EncodedEntries.of(INFO, snap)
    known = load_encodings(dump_encodings(fresh))
    stale = KnownEncodings(known.info_key, MappingProxyType({
        d: (tuple(b + b"\x00" for b in blobs), tables) for d, (blobs, tables) in known.services.items()
    }))
    _same(EncodedEntries.of(INFO, snap, None, stale), fresh)


@pytest.mark.parametrize("cut", ["one entry less", "tables out of order"])
def test_bytes_not_laid_out_as_the_service_is_are_not_used(snap: Snapshot, cut: str) -> None:
    """Stored bytes of one Service that are not its layout (one entry fewer, the tables in
    another order) would make positions name the wrong entries: nothing stored is used."""
    fresh = EncodedEntries.of(INFO, snap)
    known = load_encodings(dump_encodings(fresh))
    last = snap.services[-3]
    blobs, tables = known.services[last.fragment_digest]
    bad = (blobs[:-1], tables[:-1]) if cut == "one entry less" else (blobs, tables[::-1])
    damaged = KnownEncodings(known.info_key, MappingProxyType({**known.services, last.fragment_digest: bad}))
    _same(EncodedEntries.of(INFO, snap, None, damaged), fresh)


def test_entries_not_laid_out_per_service_are_not_dumped(snap: Snapshot) -> None:
    with pytest.raises(ValueError, match="not made per Service"):
        dump_encodings(EncodedEntries(INFO, [e for es in snap.tables().values() for e in es]))


# --- malformed stored data ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(snap: Snapshot) -> bytes:
    return dump_encodings(EncodedEntries.of(INFO, snap))


def _wrapped(body: bytes, version: int = FORMAT_VERSION) -> bytes:
    return encoded_memo._MAGIC + version.to_bytes(2, "big") + hashlib.sha256(body).digest() + body


def _body(data: bytes) -> bytes:
    return data[encoded_memo._HEAD:]


def test_empty_truncated_or_foreign_data_is_refused(stored: bytes) -> None:
    for data, why in [
        (b"", "header is missing"),
        (b"\x00" * 100, "header is missing"),
        (stored[:len(encoded_memo._MAGIC) + 3], "truncated header"),
        (stored[:encoded_memo._HEAD], "checksum mismatch"),
        (stored[:-1], "checksum mismatch"),
        (stored[: len(stored) // 2], "checksum mismatch"),
        (stored + b"\x00", "checksum mismatch"),
        (_wrapped(_body(stored), FORMAT_VERSION + 1), f"format version {FORMAT_VERSION + 1}"),
        (_wrapped(b"\xff\xff\xff"), "does not parse"),
        (_wrapped(b""), "no P4Info key"),
    ]:
        with pytest.raises(ValueError, match=why):
            load_encodings(data)


def test_bytes_checked_by_the_caller_load_alike_without_the_second_checksum(stored: bytes) -> None:
    """checked=True (pass_cache checked the whole file): the same entries; the body's own
    checksum is then not what refuses a damaged file (the caller's digest is), so a wrong one
    alone is passed over while every other check still holds."""
    plain, checked = load_encodings(stored), load_encodings(stored, checked=True)
    assert (checked.info_key, dict(checked.services)) == (plain.info_key, dict(plain.services))
    wrong_sum = stored[:encoded_memo._HEAD - 32] + b"\x00" * 32 + _body(stored)
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_encodings(wrong_sum)
    assert dict(load_encodings(wrong_sum, checked=True).services) == dict(plain.services)
    with pytest.raises(ValueError, match="format version"):
        load_encodings(_wrapped(_body(stored), FORMAT_VERSION + 1), checked=True)


def test_every_bit_flip_is_refused(stored: bytes) -> None:
    """A flipped bit anywhere (header, checksum, counts, entry bytes) is refused, never loaded."""
    step = max(1, len(stored) // 400)
    for pos in [*range(0, 80), *range(80, len(stored), step), len(stored) - 1]:
        for bit in (0, 7):
            damaged = bytearray(stored)
            damaged[pos] ^= 1 << bit
            with pytest.raises(ValueError, match="stored encoded entries|header"):
                load_encodings(bytes(damaged))


def _message(stored: bytes):  # noqa: ANN202 (a message type built at run time)
    return encoded_memo._ENCODINGS.FromString(_body(stored))


@pytest.mark.parametrize("damage, why", [
    (lambda m: m.counts.__setitem__(0, m.counts[0] + 1), "entry counts add up"),
    (lambda m: m.counts.append(1), "entry counts and"),
    (lambda m: m.runs.__setitem__(0, m.runs[0] + 1), "run counts add up"),
    (lambda m: m.run_lengths.__setitem__(0, m.run_lengths[0] + 1), "runs hold"),
    (lambda m: (m.run_lengths.__setitem__(0, m.run_lengths[0] + 1), m.run_lengths.__setitem__(1, m.run_lengths[1] - 1)),
     "not all of table"),
    (lambda m: m.run_tables.__setitem__(0, 99), "names table 99"),
    (lambda m: m.table_names.append(m.table_names[0]), "table names or ids"),
    (lambda m: m.table_ids.__setitem__(0, m.table_ids[0] + 1), "not all of table"),
    (lambda m: m.digests.__setitem__(1, m.digests[0]), "digests malformed or repeated"),
    (lambda m: m.digests.__setitem__(0, "x" * 64), "digests malformed"),
    (lambda m: setattr(m, "info_key", ""), "no P4Info key"),
])
def test_counts_that_do_not_add_up_are_refused_even_with_a_good_checksum(stored: bytes, damage, why: str) -> None:
    msg = _message(stored)
    damage(msg)
    with pytest.raises(ValueError, match=why):
        load_encodings(_wrapped(msg.SerializeToString()))


def test_a_fragment_twice_is_stored_once_and_both_take_its_bytes(snap: Snapshot) -> None:
    twice = dataclasses.replace(snap, services=(*snap.services, snap.services[0]))
    fresh = EncodedEntries.of(INFO, twice)
    known = load_encodings(dump_encodings(fresh))
    assert len(known) == len(snap.services)
    _same(EncodedEntries.of(INFO, twice, None, known), fresh)


def test_a_snapshot_without_services_round_trips() -> None:
    empty = EncodedEntries.of(INFO, None)
    known = load_encodings(dump_encodings(empty))
    assert len(known) == 0 and known.for_info(INFO)


# --- the applier ------------------------------------------------------------------------------


@pytest.fixture
def two_worlds():
    """Two pairs of software switches, each with the multi-service example's snapshots."""
    sws = [SoftwareSwitch() for _ in range(4)]
    try:
        for sw in sws:
            sw.start()
        yield build_world(sws[0], sws[1]), build_world(sws[2], sws[3])
    finally:
        for sw in sws:
            sw.stop(0)


def _plain(r: ApplyResult) -> ApplyResult:
    return dataclasses.replace(r, switches=tuple(dataclasses.replace(s, seconds=0.0) for s in r.switches))


def _writes_seen(world: World, log: list[bytes]):  # noqa: ANN202
    from reconciler.apply import default_session_factory
    from reconciler.switch import SwitchSession

    base = default_session_factory(world.config, INFO, connect_timeout=2.0, arbitration_timeout=2.0)

    class Logged(SwitchSession):
        async def write(self, requests, **kw):  # noqa: ANN001, ANN003, ANN202
            log.extend(u.SerializeToString() for r in requests for u in r.updates)  # not the election ids
            return await super().write(requests, **kw)

    def make(sw, eid):  # noqa: ANN001, ANN202
        s = base(sw, eid)
        s.__class__ = Logged
        return s

    return make


def test_an_applier_told_stored_encodings_applies_and_syncs_exactly_as_without(two_worlds) -> None:
    plain_world, known_world = two_worlds
    v1, v2 = plain_world.v1, plain_world.v2
    stored = load_encodings(dump_encodings(EncodedEntries.of(INFO, v1)))
    assert any(s.fragment_digest not in stored.services for s in v2.services)

    async def steps(world: World, known: KnownEncodings | None, log: list[bytes]):  # noqa: ANN202
        a = world.applier(session_factory=_writes_seen(world, log))
        out = []
        try:
            a.know(known)
            a.prepare(v1)
            out.append(_plain(await a.apply(v1, None)))
            used = a.encoded_for(v1)
            assert used is not None and a.encoded_for(v2) is None
            if known is not None:  # the stored bytes themselves were used
                assert used.blobs[0] is known.services[v1.services[0].fragment_digest][0][0]
            dumped = dump_encodings(used)
            out.append(_plain(await a.apply(v2, v1)))
            a.forget()
            out.append(_plain(await a.sync(v2)))
            return out, dumped
        finally:
            await a.close()

    log_plain: list[bytes] = []
    log_known: list[bytes] = []
    without, dumped_plain = run(steps(plain_world, None, log_plain))
    told, dumped_known = run(steps(known_world, stored, log_known))
    assert [r.outcome for r in without] == ["applied", "applied", "unchanged"]
    assert told == without
    assert log_known == log_plain and log_plain
    assert dumped_known == dumped_plain  # what the caller stores next is the same too
    assert assert_invariant(plain_world, v2) is v2
    assert assert_invariant(known_world, v2) is v2


def test_the_applier_uses_the_stored_bytes_for_the_last_good_snapshot_too(two_worlds) -> None:
    """The drift of an apply compares against the last good snapshot's bytes: with a Service of
    it changed on the switch by someone else, the drift reported is the same with stored bytes."""
    plain_world, known_world = two_worlds
    v1, v2 = plain_world.v1, plain_world.v2
    stored = load_encodings(dump_encodings(EncodedEntries.of(INFO, v1)))

    async def go(world: World, known: KnownEncodings | None) -> ApplyResult:
        a = world.applier()
        try:
            assert (await a.apply(v1, None)).ok
        finally:
            await a.close()
        a = world.applier()
        try:
            a.know(known)
            delete_out_of_band(world.standby, v1.tables()[n.VIP_TABLE][0])  # drift
            return _plain(await a.apply(v2, v1))
        finally:
            await a.close()

    without = run(go(plain_world, None))
    told = run(go(known_world, stored))
    assert without == told and any(r.drift for r in without.switches)
