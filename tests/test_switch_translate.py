"""Snapshot entries <-> P4Runtime messages, and diff phases -> WriteRequests (pure translation)."""

from __future__ import annotations

import finsy as fy
import pytest
from finsy.proto import p4i, p4r
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import p4names as n
from reconciler.cluster.recorded import load_cluster_file
from reconciler.diff import PHASE_NAMES, Update, diff_snapshots
from reconciler.intent.loader import load_intent
from reconciler.p4info import load_p4info, pipeline_info, pipeline_info_from_message
from reconciler.paths import REPO_ROOT
from reconciler.pipeline_io import config_p4info_digest
from reconciler.render import render
from reconciler.snapshot import Entry
from reconciler.switch.translate import (
    TranslationError,
    describe_update,
    election_id_proto,
    entry_to_proto,
    proto_to_entry,
    updates_to_requests,
    write_counts,
)

INFO = pipeline_info()

VIP = Entry(n.VIP_TABLE, ("203.0.113.10", 80, 6), n.SET_SERVICE, (3, 63))
BACKEND = Entry(n.BACKEND_TABLE, (3, 17), n.DNAT, ("10.0.0.11", 30080, 7))
REVERSE = Entry(n.REVERSE_NAT, ("10.0.0.11", 30080, 6), n.SNAT, ("203.0.113.10", 80))
ROUTE = Entry(n.IPV4_LPM, ("10.20.0.0/16",), n.FWD, (1, "02:00:0a:14:00:01"))
DEFAULT_ROUTE = Entry(n.IPV4_LPM, ("0.0.0.0/0",), n.FWD, (0, "02:00:c0:00:02:01"))
HOST_ROUTE = Entry(n.IPV4_LPM, ("192.0.2.1/32",), n.FWD, (511, "ff:ff:ff:ff:ff:ff"))
ZEROES = Entry(n.VIP_TABLE, ("0.0.0.0", 0, 0), n.SET_SERVICE, (0, 0))
ALL = [VIP, BACKEND, REVERSE, ROUTE, DEFAULT_ROUTE, HOST_ROUTE, ZEROES]


def _fields(te: p4r.TableEntry) -> dict[int, p4r.FieldMatch]:
    return {fm.field_id: fm for fm in te.match}


def _params(te: p4r.TableEntry) -> dict[int, bytes]:
    return {p.param_id: p.value for p in te.action.action.params}


# --- entry_to_proto ---------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ALL, ids=lambda e: f"{e.table}:{e.key}")
def test_round_trip_every_table(entry: Entry) -> None:
    te = entry_to_proto(INFO, entry)
    assert te.table_id == INFO.table(entry.table).id
    assert te.action.action.action_id == INFO.action(entry.action).id
    back = proto_to_entry(INFO, te)
    assert back == Entry(entry.table, entry.key, entry.action, entry.args)  # service dropped
    # and through the wire format too
    wire = p4r.TableEntry.FromString(te.SerializeToString())
    assert proto_to_entry(INFO, wire) == back


def test_canonical_bytestrings_and_ids() -> None:
    te = entry_to_proto(INFO, VIP)
    table = INFO.table(n.VIP_TABLE)
    fields = _fields(te)
    assert [fm.field_id for fm in te.match] == [f.id for f in table.match_fields]
    assert fields[1].exact.value == bytes([203, 0, 113, 10])
    assert fields[2].exact.value == b"\x50"  # 80: shortest form
    assert fields[3].exact.value == b"\x06"
    params = _params(te)
    assert params == {1: b"\x03", 2: b"\x3f"}


def test_zero_is_one_zero_byte_and_leading_zero_bytes_are_dropped() -> None:
    te = entry_to_proto(INFO, ZEROES)
    assert all(fm.exact.value == b"\x00" for fm in te.match)
    assert set(_params(te).values()) == {b"\x00"}
    small = entry_to_proto(INFO, Entry(n.VIP_TABLE, ("0.0.1.2", 256, 17), n.SET_SERVICE, (65535, 1)))
    fields = _fields(small)
    assert fields[1].exact.value == b"\x01\x02"
    assert fields[2].exact.value == b"\x01\x00"
    assert _params(small) == {1: b"\xff\xff", 2: b"\x01"}


def test_lpm_prefix_and_mac() -> None:
    te = entry_to_proto(INFO, ROUTE)
    (fm,) = te.match
    assert fm.WhichOneof("field_match_type") == "lpm"
    assert fm.lpm.value == bytes([10, 20, 0, 0]) and fm.lpm.prefix_len == 16
    assert _params(te) == {1: b"\x01", 2: bytes([2, 0, 10, 20, 0, 1])}
    te = entry_to_proto(INFO, HOST_ROUTE)
    assert te.match[0].lpm.prefix_len == 32
    assert _params(te) == {1: b"\x01\xff", 2: b"\xff" * 6}


def test_slash_zero_omits_the_field() -> None:
    te = entry_to_proto(INFO, DEFAULT_ROUTE)
    assert len(te.match) == 0  # never prefix_len 0: BMv2 rejects it, the spec says omit
    assert proto_to_entry(INFO, te).key == ("0.0.0.0/0",)


def test_matches_finsy_encoder() -> None:
    """finsy's own P4TableEntry encoder is an independent oracle for the canonical form."""
    schema = fy.P4Schema(load_p4info())
    for e in ALL:
        table, action = INFO.table(e.table), INFO.action(e.action)
        theirs = fy.P4TableEntry(
            e.table,
            match=fy.P4TableMatch({f.name: str(v) for f, v in zip(table.match_fields, e.key)}),
            action=fy.P4TableAction(e.action, **{p.name: v for p, v in zip(action.params, e.args)}),
        ).encode_entry(schema)
        assert entry_to_proto(INFO, e) == theirs, e


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (Entry("MyIngress.nope", (1,), n.FWD, (1, "02:00:00:00:00:01")), "not in the P4Info"),
        (Entry(n.VIP_TABLE, ("203.0.113.10", 80), n.SET_SERVICE, (3, 63)), "matches on 3"),
        (Entry(n.VIP_TABLE, ("203.0.113.10", 80, 6), n.DNAT, ("10.0.0.1", 1, 1)), "not one of the table's actions"),
        (Entry(n.VIP_TABLE, ("203.0.113.10", 80, 6), n.SET_SERVICE, (3,)), "takes 2 parameter"),
        (Entry(n.VIP_TABLE, ("203.0.113.300", 80, 6), n.SET_SERVICE, (3, 63)), "'hdr.ipv4.dstAddr'"),
        (Entry(n.VIP_TABLE, ("203.0.113.010", 80, 6), n.SET_SERVICE, (3, 63)), "dotted-quad"),
        (Entry(n.VIP_TABLE, ("203.0.113.10", 65536, 6), n.SET_SERVICE, (3, 63)), "does not fit in 16 bits"),
        (Entry(n.VIP_TABLE, ("203.0.113.10", 80, True), n.SET_SERVICE, (3, 63)), "expected an integer"),
        (Entry(n.VIP_TABLE, ("203.0.113.10", 80, -1), n.SET_SERVICE, (3, 63)), "does not fit"),
        (Entry(n.VIP_TABLE, (3405803786, 80, 6), n.SET_SERVICE, (3, 63)), "IPv4 address string"),
        (Entry(n.IPV4_LPM, ("10.20.0.1/16",), n.FWD, (1, "02:00:0a:14:00:01")), "host bits"),
        (Entry(n.IPV4_LPM, ("10.20.0.0/33",), n.FWD, (1, "02:00:0a:14:00:01")), "IPv4 prefix"),
        (Entry(n.IPV4_LPM, ("10.20.0.0",), n.FWD, (1, "02:00:0a:14:00:01")), "IPv4 prefix"),
        (Entry(n.IPV4_LPM, ("10.20.0.0/16",), n.FWD, (512, "02:00:0a:14:00:01")), "parameter 'port'"),
        (Entry(n.IPV4_LPM, ("10.20.0.0/16",), n.FWD, (1, "02:00:0A:14:00:01")), "lowercase MAC"),
        (Entry(n.IPV4_LPM, ("10.20.0.0/16",), n.DROP, ()), None),  # valid: drop takes no params
    ],
)
def test_bad_entries_are_named(entry: Entry, expected: str | None) -> None:
    if expected is None:
        assert proto_to_entry(INFO, entry_to_proto(INFO, entry)) == entry
        return
    with pytest.raises(TranslationError) as info:
        entry_to_proto(INFO, entry)
    assert expected in str(info.value)
    assert entry.table in str(info.value)


def test_default_only_action_is_refused() -> None:
    """A @defaultonly action may not be an entry's action (the switch would refuse it)."""
    msg = load_p4info()
    (table,) = [t for t in msg.tables if t.preamble.name == n.BACKEND_TABLE]
    noaction_id = INFO.action(n.NO_ACTION).id
    (ref,) = [r for r in table.action_refs if r.id == noaction_id]
    ref.scope = p4i.ActionRef.DEFAULT_ONLY
    info = pipeline_info_from_message(msg)
    with pytest.raises(TranslationError, match="may only be the table's default action"):
        entry_to_proto(info, Entry(n.BACKEND_TABLE, (1, 2), n.NO_ACTION, ()))
    # in the project's P4Info NoAction is an ordinary table action: it encodes without params
    te = entry_to_proto(INFO, Entry(n.BACKEND_TABLE, (1, 2), n.NO_ACTION, ()))
    assert te.action.action.action_id == noaction_id and not te.action.action.params
    assert entry_to_proto(info, BACKEND) == entry_to_proto(INFO, BACKEND)


# --- proto_to_entry ---------------------------------------------------------------------------


def _padded(entry: Entry) -> p4r.TableEntry:
    """The entry with every bytestring zero-padded to its full width, plus two extra bytes."""
    te = entry_to_proto(INFO, entry)
    table, action = INFO.table(entry.table), INFO.action(entry.action)
    widths = {f.id: f.bitwidth for f in table.match_fields}
    for fm in te.match:
        which = fm.WhichOneof("field_match_type")
        target = getattr(fm, which)
        target.value = target.value.rjust((widths[fm.field_id] + 7) // 8 + 2, b"\x00")
    pw = {p.id: p.bitwidth for p in action.params}
    for p in te.action.action.params:
        p.value = p.value.rjust((pw[p.param_id] + 7) // 8, b"\x00")
    return te


@pytest.mark.parametrize("entry", ALL, ids=lambda e: f"{e.table}:{e.key}")
def test_read_back_accepts_padded_bytestrings(entry: Entry) -> None:
    te = _padded(entry)
    assert te != entry_to_proto(INFO, entry) or entry == DEFAULT_ROUTE
    assert proto_to_entry(INFO, te) == entry


def test_read_back_accepts_fields_in_any_order() -> None:
    te = entry_to_proto(INFO, REVERSE)
    reordered = p4r.TableEntry(table_id=te.table_id, match=list(reversed(te.match)), action=te.action)
    assert proto_to_entry(INFO, reordered) == REVERSE


def test_read_back_refuses_what_does_not_fit() -> None:
    te = entry_to_proto(INFO, ROUTE)
    te.action.action.params[0].value = b"\x02\x00"  # 512 in the 9-bit port
    with pytest.raises(TranslationError, match="does not fit in 9 bits"):
        proto_to_entry(INFO, te)

    te = entry_to_proto(INFO, VIP)
    del te.match[1]
    with pytest.raises(TranslationError, match="lacks match field 'meta.l4_dst_port'"):
        proto_to_entry(INFO, te)

    te = entry_to_proto(INFO, VIP)
    te.table_id = 12345
    with pytest.raises(TranslationError, match="table id 12345"):
        proto_to_entry(INFO, te)

    te = entry_to_proto(INFO, ROUTE)
    te.match[0].lpm.value = bytes([10, 20, 0, 1])
    with pytest.raises(TranslationError, match="invalid prefix"):
        proto_to_entry(INFO, te)

    te = entry_to_proto(INFO, VIP)
    te.is_default_action = True
    with pytest.raises(TranslationError, match="default entry"):
        proto_to_entry(INFO, te)

    te = entry_to_proto(INFO, VIP)
    del te.action.action.params[1]
    with pytest.raises(TranslationError, match="lacks parameter"):
        proto_to_entry(INFO, te)


_octet = st.integers(0, 255)
_ipv4 = st.tuples(_octet, _octet, _octet, _octet).map(lambda t: ".".join(map(str, t)))
_u16 = st.integers(0, 0xFFFF)
_mac = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))


@st.composite
def _prefixes(draw: st.DrawFn) -> str:
    length = draw(st.integers(0, 32))
    value = draw(st.integers(0, 0xFFFFFFFF)) & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF
    return f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}/{length}"


_entries = st.one_of(
    st.builds(lambda a, p, pr, s, m: Entry(n.VIP_TABLE, (a, p, pr), n.SET_SERVICE, (s, m)),
              _ipv4, _u16, _octet, _u16, _u16),
    st.builds(lambda s, b, a, p, i: Entry(n.BACKEND_TABLE, (s, b), n.DNAT, (a, p, i)),
              _u16, _u16, _ipv4, _u16, _u16),
    st.builds(lambda a, p, pr, v, vp: Entry(n.REVERSE_NAT, (a, p, pr), n.SNAT, (v, vp)),
              _ipv4, _u16, _octet, _ipv4, _u16),
    st.builds(lambda pfx, port, mac: Entry(n.IPV4_LPM, (pfx,), n.FWD, (port, mac)),
              _prefixes(), st.integers(0, 511), _mac),
)


@settings(max_examples=300, deadline=None)
@given(_entries, st.booleans())
def test_round_trip_property(entry: Entry, pad: bool) -> None:
    te = _padded(entry) if pad else entry_to_proto(INFO, entry)
    assert proto_to_entry(INFO, te) == entry
    if not pad:  # canonical: no leading zero byte unless the value is 0
        values = [getattr(fm, fm.WhichOneof("field_match_type")).value for fm in te.match]
        values += [p.value for p in te.action.action.params]
        assert all(v == b"\x00" or v[0] != 0 for v in values)


# --- diff -> requests -------------------------------------------------------------------------


def _backend(i: int) -> Entry:
    return Entry(n.BACKEND_TABLE, (1, i), n.DNAT, ("10.0.0.1", 30000 + i, 1))


def test_batches_split_within_phases_and_phases_stay_apart() -> None:
    phases = (
        (),
        tuple(Update("INSERT", _backend(i)) for i in range(1201)),
        (Update("INSERT", VIP),),
        (),
        tuple(Update("DELETE", _backend(2000 + i)) for i in range(3)),
    )
    eid = (7 << 64) | 9
    out = updates_to_requests(INFO, phases, device_id=4, election_id=eid, batch_size=500)
    assert len(out) == len(phases)
    assert [[len(r.updates) for r in reqs] for reqs in out] == [[], [500, 500, 201], [1], [], [3]]
    for reqs in out:
        for r in reqs:
            assert r.device_id == 4
            assert (r.election_id.high, r.election_id.low) == (7, 9)
            assert r.atomicity == p4r.WriteRequest.CONTINUE_ON_ERROR
    # order kept across the split
    sent = [proto_to_entry(INFO, u.entity.table_entry) for r in out[1] for u in r.updates]
    assert sent == [u.entry for u in phases[1]]
    assert all(u.type == p4r.Update.INSERT for r in out[1] for u in r.updates)
    (vip_req,) = out[2]
    assert proto_to_entry(INFO, vip_req.updates[0].entity.table_entry) == VIP
    # DELETE carries the key only
    (delete_req,) = out[4]
    for u, upd in zip(delete_req.updates, phases[4]):
        assert u.type == p4r.Update.DELETE
        assert not u.entity.table_entry.HasField("action")
        assert len(u.entity.table_entry.match) == 2
    assert write_counts(INFO, [r for reqs in out for r in reqs]) == {
        n.BACKEND_TABLE: {"DELETE": 3, "INSERT": 1201},
        n.VIP_TABLE: {"INSERT": 1},
    }


def test_modify_carries_the_new_action() -> None:
    new = Entry(n.BACKEND_TABLE, (1, 0), n.DNAT, ("10.0.0.2", 30001, 2))
    ((req,),) = updates_to_requests(
        INFO, [[Update("MODIFY", new, _backend(0))]], device_id=1, election_id=1, batch_size=10
    )
    assert req.updates[0].type == p4r.Update.MODIFY
    assert proto_to_entry(INFO, req.updates[0].entity.table_entry) == new
    assert describe_update(INFO, req.updates[0]) == "MODIFY MyIngress.backend_table (1, 0)"


def test_a_rendered_diff_translates_phase_by_phase() -> None:
    example = REPO_ROOT / "intent-examples" / "multi-service"
    intent = load_intent([example])
    config = intent.config()
    cluster = load_cluster_file(example / "cluster.yaml")
    snap = render(config, cluster, None, p4info_digest=config_p4info_digest(config)).snapshot
    diff = diff_snapshots(None, snap)
    assert len(diff) > 0
    out = updates_to_requests(INFO, diff.phases, device_id=1, election_id=1, batch_size=7)
    assert len(out) == len(PHASE_NAMES)
    for phase, reqs in zip(diff.phases, out):
        assert sum(len(r.updates) for r in reqs) == len(phase)
        assert all(len(r.updates) <= 7 for r in reqs)
        decoded = [proto_to_entry(INFO, u.entity.table_entry) for r in reqs for u in r.updates]
        assert decoded == [Entry(u.entry.table, u.entry.key, u.entry.action, u.entry.args) for u in phase]
    assert write_counts(INFO, [r for reqs in out for r in reqs]) == diff.counts()


def test_request_parameters_are_checked() -> None:
    with pytest.raises(TranslationError, match="batch size"):
        updates_to_requests(INFO, [[Update("INSERT", VIP)]], device_id=1, election_id=1, batch_size=0)
    with pytest.raises(TranslationError, match="unknown update kind"):
        updates_to_requests(INFO, [[Update("UPSERT", VIP)]], device_id=1, election_id=1, batch_size=1)  # type: ignore[arg-type]
    for bad in (0, -1, 1 << 128, True):
        with pytest.raises(TranslationError, match="election id"):
            election_id_proto(bad)
    top = election_id_proto((1 << 128) - 1)
    assert top.high == top.low == (1 << 64) - 1
