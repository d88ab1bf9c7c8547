"""p4/load_balancer.p4info.txtpb against p4c's rules, reconciler/p4names.py and the P4 source;
and reconciler/p4info.py's loader and descriptions; snapshot entry checks (tests/entry_checks.py)."""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import pytest
from finsy.proto import p4i
from google.protobuf import text_format

from reconciler import p4names as n
from reconciler import paths
from reconciler.p4info import (
    P4C_TEXT_HEADER,
    P4InfoError,
    load_p4info,
    p4info_digest,
    pipeline_info,
    pipeline_info_from_message,
)
from entry_checks import check_table_entry, decode_match_value
from p4c_ids import assign_ids, jenkins_one_at_a_time, shortest_unique_suffixes

P4_SOURCE = paths.P4_DIR / "load_balancer.p4"
P4_README = paths.P4_DIR / "README.md"
from helpers import recorded_files
from shared_fixtures import P4RUNTIME_BMV2 as FIXTURES
FIXTURE_P4INFOS = recorded_files(FIXTURES, "*.p4info.txtpb")


@pytest.fixture(scope="module")
def msg() -> p4i.P4Info:
    return load_p4info()


@pytest.fixture(scope="module")
def info():
    return pipeline_info()


@pytest.fixture(scope="module")
def source() -> str:
    # Comments out, so the textual checks only see code.
    text = P4_SOURCE.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _recomputed_ids(message: p4i.P4Info) -> dict[tuple[str, str], int]:
    """Every id of `message`, recomputed from the names the way p4c assigns them."""
    kinds = {
        "action": (p4i.P4Ids.ACTION, [a.preamble.name for a in message.actions]),
        "table": (p4i.P4Ids.TABLE, [t.preamble.name for t in message.tables]),
        "counter": (p4i.P4Ids.COUNTER, [c.preamble.name for c in message.counters]),
        "direct_counter": (
            p4i.P4Ids.DIRECT_COUNTER,
            [c.preamble.name for c in message.direct_counters],
        ),
        "meter": (p4i.P4Ids.METER, [m.preamble.name for m in message.meters]),
        "register": (p4i.P4Ids.REGISTER, [r.preamble.name for r in message.registers]),
    }
    taken: set[int] = set()
    out: dict[tuple[str, str], int] = {}
    for kind, (prefix, names) in kinds.items():
        ids = assign_ids(prefix, names, taken)
        taken.update(ids.values())
        out.update({(kind, name): id_ for name, id_ in ids.items()})
    return out


def _declared_ids(message: p4i.P4Info) -> dict[tuple[str, str], int]:
    out = {}
    for kind, items in (
        ("action", message.actions),
        ("table", message.tables),
        ("counter", message.counters),
        ("direct_counter", message.direct_counters),
        ("meter", message.meters),
        ("register", message.registers),
    ):
        out.update({(kind, item.preamble.name): item.preamble.id for item in items})
    return out


def _all_preambles(message: p4i.P4Info):
    for items in (message.tables, message.actions, message.counters, message.direct_counters,
                  message.registers):
        for item in items:
            yield item.preamble


# ---------------------------------------------------------------------------------------------
# p4c's id hash


def test_jenkins_hash_matches_published_vectors():
    # The test vectors of Bob Jenkins' one-at-a-time hash (as listed on its Wikipedia page).
    assert jenkins_one_at_a_time(b"a") == 0xCA2E9442
    assert jenkins_one_at_a_time(b"The quick brown fox jumps over the lazy dog") == 0x519E91F5


def test_ids_match_real_p4c_output_known_answers():
    # Ids that a real p4c wrote for these names (the BMv2 fixture's P4Info, see the brief).
    assert assign_ids(p4i.P4Ids.ACTION, ["NoAction"])["NoAction"] == 21257015
    assert assign_ids(p4i.P4Ids.TABLE, ["MyIngress.vip_table"])["MyIngress.vip_table"] == 42031472
    assert (
        assign_ids(p4i.P4Ids.ACTION, ["MyIngress.set_service"])["MyIngress.set_service"] == 22836776
    )
    assert (
        assign_ids(p4i.P4Ids.COUNTER, ["MyIngress.backend_packets"])["MyIngress.backend_packets"]
        == 314792151
    )
    # Registers (prefix 0x16), from the register fixture's P4Info (registers-program.p4info.txtpb).
    assert assign_ids(p4i.P4Ids.REGISTER, ["I.conn_bloom", "I.bucket_gen"]) == {
        "I.conn_bloom": 383312199,
        "I.bucket_gen": 379912212,
    }


def test_the_register_fixture_is_covered_by_the_recomputation():
    """The register fixture has registers, and the recomputation really looks at them."""
    fixture = text_format.Parse(
        (FIXTURES / "registers-program.p4info.txtpb").read_text(), p4i.P4Info()
    )
    declared = _declared_ids(fixture)
    assert {name for kind, name in declared if kind == "register"} == {
        "I.conn_bloom",
        "I.bucket_gen",
    }
    assert _recomputed_ids(fixture) == declared
    wrong = p4i.P4Info()
    wrong.CopyFrom(fixture)
    wrong.registers[0].preamble.id += 1
    assert _recomputed_ids(wrong) != _declared_ids(wrong)
    # p4c's register form: bit<N> type spec and the declared size.
    assert [
        (r.type_spec.bitstring.bit.bitwidth, r.size) for r in fixture.registers
    ] == [(1, 65536), (8, 1024)]


@pytest.mark.parametrize("path", FIXTURE_P4INFOS, ids=lambda p: p.name)
def test_hash_reproduces_every_id_of_real_p4c_output(path: Path):
    fixture = text_format.Parse(path.read_text(), p4i.P4Info())
    assert _recomputed_ids(fixture) == _declared_ids(fixture)
    names = [p.name for p in _all_preambles(fixture)]
    aliases = shortest_unique_suffixes(names)
    assert {p.name: p.alias for p in _all_preambles(fixture)} == aliases


def test_every_id_is_recomputed_from_its_name(msg):
    declared = _declared_ids(msg)
    assert len(declared) == 4 + 7 + 3 + 1  # tables, actions, counters, registers
    assert _recomputed_ids(msg) == declared


def test_every_alias_is_the_shortest_unique_suffix(msg):
    preambles = list(_all_preambles(msg))
    aliases = shortest_unique_suffixes(p.name for p in preambles)
    assert {p.name: p.alias for p in preambles} == aliases


def test_assign_ids_probes_the_hash_on_collision():
    name = "MyIngress.vip_table"
    first = assign_ids(p4i.P4Ids.TABLE, [name])[name]
    h = jenkins_one_at_a_time(name.encode())
    assert first == (0x02 << 24) | (h & 0xFFFFFF)
    # The slot is taken: p4c increments the hash and keeps the prefix.
    second = assign_ids(p4i.P4Ids.TABLE, [name], taken={first})[name]
    assert second == (0x02 << 24) | ((h + 1) & 0xFFFFFF)
    # Ids of another prefix never collide with it.
    assert assign_ids(p4i.P4Ids.ACTION, [name], taken={first})[name] == (0x01 << 24) | (
        h & 0xFFFFFF
    )


def test_shortest_unique_suffix_grows_until_unique():
    aliases = shortest_unique_suffixes(
        ["MyIngress.drop", "MyEgress.drop", "MyIngress.fwd", "NoAction"]
    )
    assert aliases == {
        "MyIngress.drop": "MyIngress.drop",
        "MyEgress.drop": "MyEgress.drop",
        "MyIngress.fwd": "fwd",
        "NoAction": "NoAction",
    }


# ---------------------------------------------------------------------------------------------
# The file itself


def test_file_is_exactly_p4c_text_output_after_the_command_comment(msg):
    text = paths.P4INFO_PATH.read_text()
    leading, sep, rest = text.partition("# proto-file:")
    assert sep, "the p4c header '# proto-file: ...' is missing"
    assert all(line.startswith("#") for line in leading.splitlines())
    assert "p4c --target bmv2 --arch v1model --p4runtime-files" in leading
    assert sep + rest == P4C_TEXT_HEADER + text_format.MessageToString(msg)


def test_pkg_info_and_type_info_as_p4c_emits(msg):
    assert msg.pkg_info.arch == "v1model"
    assert msg.HasField("type_info")
    assert msg.type_info.ListFields() == []  # present and empty: `type_info {\n}`


def test_noaction_carries_core_p4_annotation(msg):
    (no_action,) = [a for a in msg.actions if a.preamble.name == n.NO_ACTION]
    assert list(no_action.preamble.annotations) == ['@noWarn("unused")']
    assert msg.actions[0].preamble.name == n.NO_ACTION  # localized first by the frontend


# ---------------------------------------------------------------------------------------------
# reconciler/p4names.py


_TABLES = {
    n.VIP_TABLE: (n.VIP_MATCH, "EXACT", (n.SET_SERVICE, n.NO_ACTION), n.NO_ACTION),
    n.BACKEND_TABLE: (
        n.BACKEND_MATCH, "EXACT", (n.DNAT, n.DNAT_DRAINING, n.NO_ACTION), n.NO_ACTION
    ),
    n.REVERSE_NAT: (n.REVERSE_NAT_MATCH, "EXACT", (n.SNAT, n.NO_ACTION), n.NO_ACTION),
    n.IPV4_LPM: (n.IPV4_LPM_MATCH, "LPM", (n.FWD, n.DROP), n.DROP),
}
_ACTIONS = {
    n.NO_ACTION: (),
    n.SET_SERVICE: n.SET_SERVICE_PARAMS,
    n.DNAT: n.DNAT_PARAMS,
    n.DNAT_DRAINING: n.DNAT_DRAINING_PARAMS,
    n.SNAT: n.SNAT_PARAMS,
    n.FWD: n.FWD_PARAMS,
    n.DROP: (),
}
_COUNTERS = {n.BACKEND_PACKETS: "BOTH", n.BACKEND_SYN: "PACKETS", n.BACKEND_FIN: "PACKETS"}


def test_tables_match_p4names(info):
    assert tuple(info.tables) == n.TABLE_ORDER
    for name, (match, kind, actions, default) in _TABLES.items():
        table = info.table(name)
        assert [(f.name, f.bitwidth) for f in table.match_fields] == list(match), name
        assert [f.id for f in table.match_fields] == list(range(1, len(match) + 1))
        assert {f.match_type for f in table.match_fields} == {kind}
        assert tuple(a.name for a in info.table_actions(name)) == actions
        assert table.default_action == default
        assert table.size == n.TABLE_SIZES[name]
        assert not table.default_only_action_ids


def test_actions_match_p4names(info):
    assert tuple(info.actions) == tuple(_ACTIONS)
    for name, params in _ACTIONS.items():
        action = info.action(name)
        assert [(p.name, p.bitwidth) for p in action.params] == list(params), name
        assert [p.id for p in action.params] == list(range(1, len(params) + 1))


def test_counters_match_p4names(info):
    assert tuple(info.counters) == tuple(_COUNTERS)
    for name, unit in _COUNTERS.items():
        counter = info.counter(name)
        assert counter.unit == unit
        assert counter.size == n.COUNTER_SIZE
    assert n.MAX_BACKEND_ID == n.COUNTER_SIZE - 1
    assert 1 << info.action(n.DNAT).param("backend_id").bitwidth == n.COUNTER_SIZE


def test_registers_match_p4names(msg):
    (register,) = msg.registers
    assert register.preamble.name == n.CONN_GEN
    assert register.type_spec.WhichOneof("type_spec") == "bitstring"
    assert register.type_spec.bitstring.bit.bitwidth == n.CONN_GEN_WIDTH
    assert register.size == n.CONN_CELLS
    assert not register.preamble.annotations
    # The draining entry's generation is what the cells hold.
    generation = dict(n.DNAT_DRAINING_PARAMS)["generation"]
    assert generation == n.CONN_GEN_WIDTH
    # The draining action carries dnat's parameters for both backends.
    assert n.DNAT_DRAINING_PARAMS[:3] == n.DNAT_PARAMS
    assert [(f"old_{p}", w) for p, w in n.DNAT_PARAMS] == list(n.DNAT_DRAINING_PARAMS[3:6])


def test_p4names_ids_fit_their_fields(info):
    assert n.MAX_SERVICE_ID == (1 << info.action(n.SET_SERVICE).param("service_id").bitwidth) - 1
    proto_width = info.table(n.VIP_TABLE).match_field("hdr.ipv4.protocol").bitwidth
    assert all(0 < p < 1 << proto_width for p in n.IP_PROTOCOLS.values())


# ---------------------------------------------------------------------------------------------
# The P4 source declares the same things (a light textual check)


def _block(text: str, opener: str) -> str:
    """The text between the braces of the first block whose header matches `opener`."""
    m = re.search(opener + r"\s*\{", text)
    assert m, f"no block matching {opener!r}"
    depth, start = 1, m.end()
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    raise AssertionError(f"unbalanced braces after {opener!r}")


def _words(text: str) -> str:
    return " ".join(text.split())


def test_source_tables_declare_the_p4info_keys_actions_sizes(source, msg, info):
    ingress = _block(source, r"control\s+MyIngress\s*\([^)]*\)")
    declared_tables = re.findall(r"\btable\s+(\w+)\s*\{", ingress)
    assert declared_tables == [t.preamble.alias for t in msg.tables]
    for table in msg.tables:
        body = _block(ingress, rf"\btable\s+{table.preamble.alias}")
        keys = re.findall(r"([\w.]+)\s*:\s*(\w+)\s*;", _block(body, r"\bkey\s*="))
        assert keys == [
            (f.name, p4i.MatchField.MatchType.Name(f.match_type).lower())
            for f in table.match_fields
        ]
        actions = re.findall(r"(\w+)\s*;", _block(body, r"\bactions\s*="))
        assert actions == [info.action_by_id(r.id).name.split(".")[-1] for r in table.action_refs]
        assert re.search(rf"\bsize\s*=\s*{table.size}\s*;", body)
        default = info.action_by_id(table.initial_default_action.action_id).name.split(".")[-1]
        assert re.search(rf"\bdefault_action\s*=\s*{default}\s*\(\s*\)\s*;", body)
        assert "const" not in body  # P4Info has no const default / const entries


def test_source_actions_declare_the_p4info_params(source, msg):
    ingress = _block(source, r"control\s+MyIngress\s*\([^)]*\)")
    declared = re.findall(r"\baction\s+(\w+)\s*\(([^)]*)\)", ingress)
    in_p4info = [a for a in msg.actions if a.preamble.name != n.NO_ACTION]
    assert [name for name, _ in declared] == [a.preamble.alias for a in in_p4info]
    for (name, params), action in zip(declared, in_p4info, strict=True):
        parsed = [
            re.fullmatch(r"bit<(\d+)>\s+(\w+)", p.strip()) for p in params.split(",") if p.strip()
        ]
        assert all(parsed), f"action {name}: parameters must be plain bit<N> (directionless)"
        assert [(m.group(2), int(m.group(1))) for m in parsed] == [
            (p.name, p.bitwidth) for p in action.params
        ]


def test_source_counters_declare_the_p4info_counters(source, msg):
    consts = dict(re.findall(r"const\s+bit<\d+>\s+(\w+)\s*=\s*(\w+)\s*;", source))
    ingress = _block(source, r"control\s+MyIngress\s*\([^)]*\)")
    declared = re.findall(
        r"\bcounter\s*\(\s*(\w+)\s*,\s*CounterType\.(\w+)\s*\)\s*(\w+)\s*;", ingress
    )
    units = {"packets": "PACKETS", "bytes": "BYTES", "packets_and_bytes": "BOTH"}
    assert [
        (name, int(consts.get(size, size), 0), units[unit]) for size, unit, name in declared
    ] == [(c.preamble.alias, c.size, p4i.CounterSpec.Unit.Name(c.spec.unit)) for c in msg.counters]


def test_source_registers_declare_the_p4info_registers(source, msg):
    consts = dict(re.findall(r"const\s+bit<\d+>\s+(\w+)\s*=\s*(\w+)\s*;", source))
    ingress = _block(source, r"control\s+MyIngress\s*\([^)]*\)")
    declared = re.findall(r"\bregister\s*<\s*bit<(\d+)>\s*>\s*\(\s*(\w+)\s*\)\s*(\w+)\s*;", ingress)
    assert [(name, int(width), int(consts.get(size, size), 0)) for width, size, name in declared] == [
        (r.preamble.alias, r.type_spec.bitstring.bit.bitwidth, r.size) for r in msg.registers
    ]
    # Declared after the counters, as the contract says.
    assert ingress.index("register<") > ingress.rindex("counter(")


def test_source_controls_have_the_agreed_signatures(source):
    flat = _words(source)
    meta_std = "inout metadata meta, inout standard_metadata_t standard_metadata"
    assert f"parser MyParser(packet_in packet, out headers hdr, {meta_std})" in flat
    assert "control MyVerifyChecksum(inout headers hdr, inout metadata meta)" in flat
    assert f"control MyIngress(inout headers hdr, {meta_std})" in flat
    assert f"control MyEgress(inout headers hdr, {meta_std})" in flat
    assert "control MyComputeChecksum(inout headers hdr, inout metadata meta)" in flat
    assert "control MyDeparser(packet_out packet, in headers hdr)" in flat
    assert "#include <core.p4>" in flat and "#include <v1model.p4>" in flat
    headers = re.findall(r"(\w+)\s+(\w+)\s*;", _block(source, r"struct\s+headers"))
    assert headers == [
        ("ethernet_t", "ethernet"),
        ("ipv4_t", "ipv4"),
        ("tcp_t", "tcp"),
        ("udp_t", "udp"),
    ]
    meta = re.findall(r"bit<(\d+)>\s+(\w+)\s*;", _block(source, r"struct\s+metadata"))
    for field in ("l4_src_port", "l4_dst_port", "service_id", "bucket_mask", "bucket"):
        assert ("16", field) in meta


def _p4_hash_fields(source: str) -> list[str]:
    call = re.search(
        r"\bhash\s*\(\s*meta\.bucket\s*,\s*HashAlgorithm\.crc32\s*,\s*16w0\s*,"
        r"\s*\{([^}]*)\}\s*,\s*(\w+)\s*\)",
        source,
    )
    assert call, (
        "the bucket hash call is not hash(meta.bucket, HashAlgorithm.crc32, 16w0, {...}, max)"
    )
    consts = dict(re.findall(r"const\s+bit<\d+>\s+(\w+)\s*=\s*(\w+)\s*;", source))
    assert int(consts.get(call.group(2), call.group(2)), 0) == 65536
    return [f.strip() for f in call.group(1).split(",")]


def test_hash_input_is_the_documented_13_byte_layout(source):
    fields = _p4_hash_fields(source)
    assert fields == [
        "hdr.ipv4.srcAddr",
        "hdr.ipv4.dstAddr",
        "hdr.ipv4.protocol",
        "meta.l4_src_port",
        "meta.l4_dst_port",
    ]
    field_re = r"bit<(\d+)>\s+(\w+)\s*;"
    widths = {
        f"hdr.ipv4.{f}": int(w) for w, f in re.findall(field_re, _block(source, r"header\s+ipv4_t"))
    }
    widths.update(
        {f"meta.{f}": int(w) for w, f in re.findall(field_re, _block(source, r"struct\s+metadata"))}
    )
    assert [widths[f] for f in fields] == [32, 32, 8, 16, 16]
    assert sum(widths[f] for f in fields) == 13 * 8
    # The README documents the same order, and its recipe packs 13 bytes.
    documented = _documented_layout("### The bucket hash")
    assert documented == fields
    assert struct.calcsize("!IIBHH") == 13
    packed = struct.pack("!IIBHH", 0xC6336401, 0xCB00710A, 6, 40000, 80)
    assert packed.hex() == "c6336401cb00710a069c400050"


def _documented_layout(heading: str, table: int = 0) -> list[str]:
    """The field column of the `table`-th byte-layout table of README section `heading`."""
    section = P4_README.read_text().split(heading, 1)[1].split("\n### ", 1)[0]
    tables = re.split(r"\n\n(?=\| bytes)", section)[1:]
    return re.findall(r"^\| [\d-]+ \| ([\w.]+)", tables[table], flags=re.M)


def _conn_hash_fields(source: str, index: str) -> list[str]:
    call = re.search(
        rf"\bhash\s*\(\s*meta\.{index}\s*,\s*HashAlgorithm\.crc32\s*,\s*32w0\s*,"
        r"\s*\{([^}]*)\}\s*,\s*(\w+)\s*\)",
        source,
    )
    assert call, f"the {index} hash is not hash(meta.{index}, HashAlgorithm.crc32, 32w0, {{...}}, max)"
    consts = dict(re.findall(r"const\s+bit<\d+>\s+(\w+)\s*=\s*(\w+)\s*;", source))
    assert int(consts.get(call.group(2), call.group(2)), 0) == n.CONN_CELLS
    return [f.strip() for f in call.group(1).split(",")]


def test_connection_hashes_are_the_documented_layouts(source):
    a = _conn_hash_fields(source, "conn_idx_a")
    b = _conn_hash_fields(source, "conn_idx_b")
    assert a == ["meta.l4_dst_port", "meta.l4_src_port", "hdr.ipv4.protocol",
                 "hdr.ipv4.dstAddr", "hdr.ipv4.srcAddr"]
    assert b == ["hdr.ipv4.srcAddr", "meta.l4_src_port", "hdr.ipv4.dstAddr",
                 "meta.l4_dst_port", "hdr.ipv4.protocol"]
    assert sorted(a) == sorted(b) == sorted(_p4_hash_fields(source))  # the same 13 bytes
    section = "### The connection hashes"
    assert _documented_layout(section, 0) == a
    assert _documented_layout(section, 1) == b
    # The metadata is wide enough for a register index (bit<32>) and a cell (bit<32>).
    meta = dict((f, int(w)) for w, f in re.findall(r"bit<(\d+)>\s+(\w+)\s*;",
                                                    _block(source, r"struct\s+metadata")))
    assert meta["conn_idx_a"] == meta["conn_idx_b"] == 32
    assert meta["conn_gen_a"] == meta["conn_gen_b"] == meta["generation"] == n.CONN_GEN_WIDTH
    # The software switch hashes the same bytes (its struct layouts are the README's recipes).
    from reconciler.sim.pipeline import conn_cells
    import zlib
    src, vip, sport, vport = 0xC6336401, 0xCB00710A, 40000, 80
    assert conn_cells(src, vip, 6, sport, vport) == (
        zlib.crc32(bytes.fromhex("00509c4006cb00710ac6336401")) % n.CONN_CELLS,
        zlib.crc32(bytes.fromhex("c63364019c40cb00710a005006")) % n.CONN_CELLS,
    )
    readme = P4_README.read_text()
    assert 'struct.pack("!HHBII", vip_port, src_port, protocol, vip, src_ip)) % 262144' in readme
    assert 'struct.pack("!IHIHB", src_ip, src_port, vip, vip_port, protocol)) % 262144' in readme


def test_draining_happens_in_apply_after_the_table_and_the_action_does_not_rewrite(source):
    ingress = _block(source, r"control\s+MyIngress\s*\([^)]*\)")
    action = _block(ingress, r"\baction\s+dnat_draining\s*\([^)]*\)")
    assert "hdr." not in action and ".count(" not in action  # only metadata
    apply = _block(ingress, r"\bapply")
    after_table = apply.split("backend_table.apply().hit", 1)[1]
    assert after_table.index("conn_idx_a") < after_table.index("backend_syn.count")
    assert "conn_gen.write(meta.conn_idx_a, meta.generation)" in _words(after_table)
    assert "conn_gen.read(meta.conn_gen_a, meta.conn_idx_a)" in _words(after_table)


# ---------------------------------------------------------------------------------------------
# Loader, digest, lookups


def test_load_is_cached_but_returns_independent_copies(tmp_path):
    path = tmp_path / "p.txtpb"
    path.write_text(paths.P4INFO_PATH.read_text())
    first = load_p4info(path)
    first.tables[0].size = 1
    second = load_p4info(path)
    assert second.tables[0].size == n.TABLE_SIZES[n.VIP_TABLE]
    assert pipeline_info(path) is pipeline_info(path)


def test_load_sees_a_rewritten_file(tmp_path):
    path = tmp_path / "p.txtpb"
    path.write_text(paths.P4INFO_PATH.read_text())
    assert len(load_p4info(path).counters) == 3
    path.write_text('pkg_info { arch: "v1model" }\n')
    assert len(load_p4info(path).counters) == 0
    assert pipeline_info(path).tables == {}


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(P4InfoError, match=r"cannot read P4Info .*nope\.txtpb"):
        load_p4info(tmp_path / "nope.txtpb")


def test_parse_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txtpb"
    path.write_text('pkg_info {\n  arch: "v1model"\n}\ntables {\n  sise: 3\n}\n')
    with pytest.raises(P4InfoError, match=r"bad\.txtpb:5:3: not P4Info text format") as raised:
        load_p4info(path)
    assert "sise" not in str(raised.value)  # the file may be anything intent named: none of it is echoed


def test_inconsistent_p4info_is_rejected(msg):
    dangling = p4i.P4Info()
    dangling.CopyFrom(msg)
    dangling.tables[0].action_refs.add().id = 0x01999999
    with pytest.raises(P4InfoError, match=r"MyIngress.vip_table.*unknown action id"):
        pipeline_info_from_message(dangling)
    dup = p4i.P4Info()
    dup.CopyFrom(msg)
    dup.tables[0].preamble.id = dup.tables[1].preamble.id
    with pytest.raises(P4InfoError, match="reuses id"):
        pipeline_info_from_message(dup)


def test_digest_is_sha256_of_deterministic_serialization(msg):
    digest = p4info_digest(msg)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert (
        digest == "sha256:" + hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()
    )
    assert p4info_digest(load_p4info()) == digest
    changed = p4i.P4Info()
    changed.CopyFrom(msg)
    changed.tables[0].size += 1
    assert p4info_digest(changed) != digest


def test_lookups_by_id_and_name(info, msg):
    for table in msg.tables:
        assert info.table_by_id(table.preamble.id).name == table.preamble.name
    for action in msg.actions:
        assert info.action_by_id(action.preamble.id).name == action.preamble.name
    for counter in msg.counters:
        assert info.counter_by_id(counter.preamble.id).name == counter.preamble.name
    with pytest.raises(P4InfoError, match="no table with id"):
        info.table_by_id(0x02000001)
    with pytest.raises(P4InfoError, match=r"no action named 'MyIngress.nope'.*MyIngress.dnat"):
        info.action("MyIngress.nope")
    with pytest.raises(P4InfoError, match="has no match field 'meta.port'"):
        info.table(n.VIP_TABLE).match_field("meta.port")
    with pytest.raises(TypeError):
        info.tables["x"] = None  # read-only


# ---------------------------------------------------------------------------------------------
# check_table_entry


GOOD = {
    n.VIP_TABLE: {
        "match": {
            "hdr.ipv4.dstAddr": "203.0.113.10",
            "meta.l4_dst_port": 80,
            "hdr.ipv4.protocol": 6,
        },
        "action": n.SET_SERVICE,
        "params": {"service_id": 3, "bucket_mask": 63},
        "service": "default/web",
    },
    n.BACKEND_TABLE: {
        "match": {"meta.service_id": 3, "meta.bucket": 17},
        "action": n.DNAT,
        "params": {"node_ip": "10.0.0.11", "node_port": 30080, "backend_id": 65535},
    },
    n.REVERSE_NAT: {
        "match": {
            "hdr.ipv4.srcAddr": "10.0.0.11",
            "meta.l4_src_port": 30080,
            "hdr.ipv4.protocol": 6,
        },
        "action": n.SNAT,
        "params": {"vip": "203.0.113.10", "vip_port": 80},
    },
    n.IPV4_LPM: {
        "match": {"hdr.ipv4.dstAddr": "10.0.0.0/24"},
        "action": n.FWD,
        "params": {"port": 511, "dst_mac": "aa:bb:cc:00:11:ff"},
    },
}


@pytest.mark.parametrize("table", list(GOOD))
def test_good_entries_pass(info, table):
    assert check_table_entry(info, table, GOOD[table]) == []


def test_default_route_and_noaction_entries_pass(info):
    route = {"match": {"hdr.ipv4.dstAddr": "0.0.0.0/0"}, "action": n.DROP, "params": {}}
    assert check_table_entry(info, n.IPV4_LPM, route) == []
    assert decode_match_value(info.table(n.IPV4_LPM).match_fields[0], "0.0.0.0/0") == (0, 0)
    assert decode_match_value(info.table(n.IPV4_LPM).match_fields[0], "10.1.2.0/23") == (
        0x0A010200,
        23,
    )
    noop = {"match": {"meta.service_id": 1, "meta.bucket": 0}, "action": n.NO_ACTION, "params": {}}
    assert check_table_entry(info, n.BACKEND_TABLE, noop) == []


def _bad(table, path, value):
    entry = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD[table].items()}
    *parents, last = path
    target = entry
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return entry


class _Delete:
    """Sentinel: remove the key. A stable repr keeps test ids equal across xdist workers."""

    def __repr__(self) -> str:
        return "DELETE"


_DELETE = _Delete()

BAD_CASES = [
    # (table, path in the entry, new value, what the problem must say)
    (n.VIP_TABLE, ("match", "hdr.ipv4.dst"), "1.2.3.4", "unknown match field 'hdr.ipv4.dst'"),
    (
        n.VIP_TABLE,
        ("match", "meta.l4_dst_port"),
        _DELETE,
        "match field 'meta.l4_dst_port' is missing",
    ),
    (n.VIP_TABLE, ("match", "meta.l4_dst_port"), 70000, "70000 does not fit in 16 bits"),
    (n.VIP_TABLE, ("match", "hdr.ipv4.protocol"), 256, "256 does not fit in 8 bits"),
    (n.VIP_TABLE, ("match", "hdr.ipv4.protocol"), -1, "-1 is negative"),
    (n.VIP_TABLE, ("match", "hdr.ipv4.protocol"), True, "expected an integer, got True"),
    (n.VIP_TABLE, ("match", "hdr.ipv4.dstAddr"), 3405803786, "expected an IPv4 address string"),
    (n.VIP_TABLE, ("match", "hdr.ipv4.dstAddr"), "203.0.113.256", "not a dotted-quad IPv4 address"),
    (n.VIP_TABLE, ("match", "hdr.ipv4.dstAddr"), "203.0.113.010", "not a dotted-quad IPv4 address"),
    (n.VIP_TABLE, ("params", "bucket_mask"), _DELETE, "parameter 'bucket_mask' is missing"),
    (n.VIP_TABLE, ("params", "weight"), 1, "has no parameter 'weight'"),
    (
        n.VIP_TABLE,
        ("params", "service_id"),
        65536,
        "parameter 'service_id': 65536 does not fit in 16 bits",
    ),
    (n.VIP_TABLE, ("action",), n.DNAT, "action MyIngress.dnat is not one of the table's actions"),
    (n.VIP_TABLE, ("action",), "MyIngress.nope", "unknown action 'MyIngress.nope'"),
    (n.VIP_TABLE, ("params",), _DELETE, "entry has no 'params'"),
    (n.VIP_TABLE, ("priority",), 10, "unknown entry key 'priority'"),
    (n.BACKEND_TABLE, ("params", "node_ip"), "10.0.0.1 ", "not a dotted-quad IPv4 address"),
    (
        n.IPV4_LPM,
        ("match", "hdr.ipv4.dstAddr"),
        "10.0.0.1/24",
        "host bits set beyond the /24 prefix",
    ),
    (n.IPV4_LPM, ("match", "hdr.ipv4.dstAddr"), "10.0.0.0/33", "not an integer from 0 to 32"),
    (n.IPV4_LPM, ("match", "hdr.ipv4.dstAddr"), "10.0.0.0", "expected an IPv4 prefix"),
    (n.IPV4_LPM, ("params", "port"), 512, "parameter 'port': 512 does not fit in 9 bits"),
    (n.IPV4_LPM, ("params", "dst_mac"), "AA:BB:CC:00:11:FF", "expected a lowercase MAC address"),
    (n.IPV4_LPM, ("params", "dst_mac"), 0xAABBCC0011FF, "expected a lowercase MAC address"),
]


@pytest.mark.parametrize(
    ("table", "path", "value", "problem"), BAD_CASES, ids=lambda v: str(v)[:30]
)
def test_bad_entries_name_the_problem(info, table, path, value, problem):
    problems = check_table_entry(info, table, _bad(table, path, value))
    assert len(problems) == 1, problems
    assert problem in problems[0]
    assert problems[0].startswith(table)


def test_every_problem_of_an_entry_is_reported(info):
    entry = {
        "match": {"hdr.ipv4.dstAddr": "10.0.0.1/8", "extra": 1},
        "action": n.FWD,
        "params": {"port": 1024},
    }
    problems = check_table_entry(info, n.IPV4_LPM, entry)
    assert len(problems) == 4, problems
    assert any("unknown match field 'extra'" in p for p in problems)
    assert any("host bits" in p for p in problems)
    assert any("'port': 1024 does not fit in 9 bits" in p for p in problems)
    assert any("'dst_mac' is missing" in p for p in problems)


def test_unknown_table_and_malformed_entries(info):
    assert check_table_entry(info, "MyIngress.nope", GOOD[n.VIP_TABLE]) == [
        "unknown table 'MyIngress.nope' (known: " + ", ".join(n.TABLE_ORDER) + ")"
    ]
    assert "must be an object" in check_table_entry(info, n.VIP_TABLE, ["match"])[0]
    assert (
        "'match' must be an object"
        in check_table_entry(info, n.VIP_TABLE, {**GOOD[n.VIP_TABLE], "match": [1, 2]})[0]
    )


def test_default_only_action_is_refused_in_entries(msg):
    variant = p4i.P4Info()
    variant.CopyFrom(msg)
    vip = variant.tables[0]
    vip.action_refs[1].scope = p4i.ActionRef.DEFAULT_ONLY
    vip.action_refs[1].annotations.append("@defaultonly")
    info = pipeline_info_from_message(variant)
    entry = {"match": GOOD[n.VIP_TABLE]["match"], "action": n.NO_ACTION, "params": {}}
    (problem,) = check_table_entry(info, n.VIP_TABLE, entry)
    assert "may only be the table's default action" in problem
