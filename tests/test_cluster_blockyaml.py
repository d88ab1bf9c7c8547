"""The line reader of kubectl's block YAML (reconciler.cluster.blockyaml) gives exactly the
documents the libyaml events path (fastload) and the full loader give, or gives up (Unusual):
for the recorded and generated clusters (where it must answer), for random data dumped as the
benchmark and as go-yaml print it, and for every shape it leaves to the others. Also the
resolver's pre-filter (plain scalars whose first character no implicit pattern starts with are
strings) answers what the resolver answers."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml.nodes import ScalarNode
from shared_fixtures import RECORDED_CLUSTER
from test_cluster_fastload import BENCH_CONFIG, MULTI, RECORDINGS, _full_docs, _outcome, _snapshot_bytes, _typed

from reconciler.cluster import blockyaml, fastload
from reconciler.cluster.model import ClusterState
from reconciler.cluster.recorded import _EventBuilder, load_cluster_text
from reconciler.cluster.synthetic import cluster_to_list, synthetic_cluster
from reconciler.inputlimits import RECORDING_MAX_DEPTH
from reconciler.intent.loader import load_intent


def _block(text: str) -> list[Any]:
    return blockyaml.yaml_documents(text, _EventBuilder().plain_data, RECORDING_MAX_DEPTH)


def _fast(text: str) -> list[Any]:
    return fastload.yaml_documents(text, _EventBuilder().plain_data, RECORDING_MAX_DEPTH)


_full = _full_docs


def _same_or_unusual(text: str) -> bool:
    """blockyaml gives up or reads what the full loader and fastload read; whether it answered."""
    try:
        block = _typed(_block(text))
    except fastload.Unusual:
        return False
    assert block == _typed(_full(text)), text
    try:
        assert block == _typed(_fast(text)), text
    except fastload.Unusual:
        pass  # fastload gave up where the line reader did not: the full loader agreed above
    return True


def _kubectl_yaml(data: Any) -> str:
    """As the benchmark prints a recording (bench/benchlib.py kubectl_yaml)."""
    return yaml.dump(data, Dumper=yaml.CSafeDumper, default_flow_style=False, sort_keys=True, allow_unicode=True, width=2**31 - 1)


class _GoLike(yaml.SafeDumper):
    """Closer to go-yaml (kubectl): sequences indented under their key, and strings in every
    style the emitter allows them (literal block for text with line breaks, quoted keys)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str_styles(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        style: str | None = "|"
    else:
        style = (None, "'", '"')[zlib.crc32(value.encode("utf-8", "surrogatepass")) % 3]
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_GoLike.add_representer(str, _str_styles)


def _go_like_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_GoLike, default_flow_style=False, allow_unicode=True, width=2**31 - 1)


# --- the recorded and generated clusters: read by the line reader, the same as before ---------


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_recorded_clusters_are_read_by_the_line_reader_the_same(path: Path) -> None:
    text = path.read_text()
    docs = _block(text)  # it answers: no fallback
    assert _typed(docs) == _typed(_full(text)) == _typed(_fast(text))
    fast, full = load_cluster_text(text, str(path)), load_cluster_text(text, str(path), fast=False)
    assert fast == full and fast.services
    config = load_intent([MULTI / "lbconfig.yaml"]).config()
    assert _snapshot_bytes(config, fast) == _snapshot_bytes(config, full)


def test_the_recorded_cluster_has_a_literal_block_scalar() -> None:
    # kubectl prints last-applied-configuration as `|`: the reader must take it, not give up.
    text = (RECORDED_CLUSTER / "cluster.yaml").read_text()
    assert "last-applied-configuration: |\n" in text
    _block(text)


@pytest.fixture(scope="module")
def generated() -> tuple[ClusterState, dict[str, Any]]:
    state = synthetic_cluster(services=1000, nodes=200, endpoints=10000, seed=3)
    return state, cluster_to_list(state)


@pytest.mark.parametrize("dump", [_kubectl_yaml, _go_like_yaml], ids=["kubectl", "go-like"])
def test_a_generated_1000_service_recording_is_read_by_the_line_reader_the_same(
    generated: tuple[ClusterState, dict[str, Any]], dump: Any
) -> None:
    state, listing = generated
    text = dump(listing)
    assert _block(text) == [listing]  # it answers: no fallback
    fast, full = load_cluster_text(text), load_cluster_text(text, fast=False)
    assert fast == full == state
    assert _snapshot_bytes(BENCH_CONFIG, fast) == _snapshot_bytes(BENCH_CONFIG, full)


def test_the_short_way_reads_lines_as_the_long_way(generated: tuple[ClusterState, dict[str, Any]]) -> None:
    # _line reads the commonest lines with one regular expression; _any_line reads every line.
    texts = [_kubectl_yaml(generated[1]), _go_like_yaml(generated[1])] + [p.read_text() for p in RECORDINGS]
    lines = {line for text in texts for line in text.split("\n") if line.strip()}
    lines |= {f"{pre}{line}" for line in ACCEPTED_LINES for pre in ("", "  ", "- ", "- - ")}
    reader = blockyaml._Reader(_EventBuilder().plain_data, RECORDING_MAX_DEPTH)
    common = 0
    for line in sorted(lines):
        if blockyaml._COMMON.fullmatch(line) is None:
            continue
        common += 1
        try:
            short: Any = _typed(reader._line(line))
        except fastload.Unusual:
            short = fastload.Unusual
        try:
            long: Any = _typed(reader._any_line(line))
        except fastload.Unusual:
            long = fastload.Unusual
        assert short == long, line
    assert common > 1000


ACCEPTED_LINES = [
    "a: b", "a: 1", "a: -1", "a: 1.5", "a: .inf", "a: ~", "a: null", "a: true", "a: 0x1F", "a: 010", "a: 1:30",
    "a:b: c", "a: b:c", "a: b#c", "a#b: c", "a.b/c-d: e", "a: 'b c'", "a: 'it''s'", 'a: "b \\" c"', 'a: "x"',
    "a: ''", 'a: ""', "a:", "1: a", "true: a", "~: a", "a: /x", "a: ./x", "a: é", "é: a", "x", "-1", "a:b",
    "'a': b", '"a b": c', "a: {}", "a: []", "a: |", "a: |-", "a: b'c", 'a: b"c', "a: fd00::1", "a: 2001-12-14",
]


# --- random data, as the benchmark and as go-yaml print it -----------------------------------

TRICKY = [
    "yes", "no", "on", "off", "y", "n", "true", "True", "FALSE", "010", "0o10", "0x1F", "0b101", "-010", "+12",
    "+1", "-0", "1_000", "0.", ".5", "1e3", "1E3", "1.0e+3", "-.inf", ".Inf", ".NaN", "1:30", "190:20:30", "~",
    "null", "NULL", "", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10", "=", "0", "00",
    "08", "0.1.2", "123456789012345678901234567890", "'quoted'", '"dq"', "a: b", "- x", "a#b", "a #b", "<<",
    "-", "--", "---", "...", "a:", ":a", "?a", "? a", "-a", "- ", " a", "a ", "a\nb", "a\n", "\nb", "a\n\n",
    "a\\b", "\\", "é", "☃ x", "a\tb", "\x85", "\u2028", "\ufeff", "\x07", "{}", "[]", "{a}", "|", ">", "&a", "*a",
    "!a", "%a", "@a", "`a", "a: 'b'", "it's", 'say "hi"', "a,b", "[a", "#", "a:b", "1:30:00", "1.2.3.4", "fd00::1",
]
_PIECES = st.sampled_from(TRICKY + [": ", " #", "'", '"', "\\", "\n", " ", "-", "\\n", "\\x41", "é", "\U0001f600"])
_STRINGS = st.one_of(
    st.sampled_from(TRICKY),
    st.text(max_size=8),
    st.lists(_PIECES | st.text(max_size=3), max_size=4).map("".join),
    # Text over several lines, for the literal block scalars of the go-like dump.
    st.lists(st.sampled_from(["a", "  b", "", " ", "c d", "#x", "- y", "k: v", "'q'", "é"]), min_size=2, max_size=5).map(
        "\n".join
    ),
)
_DATA = st.recursive(
    st.one_of(
        _STRINGS,
        st.integers(),
        st.floats(allow_nan=False),
        st.booleans(),
        st.none(),
    ),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(_STRINGS, kids, max_size=4)),
    max_leaves=20,
)


@pytest.mark.parametrize(
    "dump",
    [
        _kubectl_yaml,
        _go_like_yaml,
        lambda d: yaml.dump(d, Dumper=yaml.CSafeDumper, default_flow_style=False),  # width 80, not unicode
    ],
    ids=["kubectl", "go-like", "default-width"],
)
@given(data=_DATA)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_data_reads_the_same_or_is_left_to_the_others(dump: Any, data: Any) -> None:
    doc = {"kind": "List", "items": [], "x": data}
    text = dump(doc)
    if _same_or_unusual(text):
        assert _block(text) == _full(text)
    # Several documents, with and without a leading `---`.
    for many in ("---\n" + text + "---\n" + text, text + "---\n" + text):
        _same_or_unusual(many)


_RECORDED_HEAD = "\n".join((RECORDED_CLUSTER / "cluster.yaml").read_text().split("\n")[:60]) + "\n"
_EDIT_PIECES = [
    " ", "  ", "-", "- ", ":", ": ", "#", " #", "'", '"', "\\", "|", "|-", ">", "{}", "[]", "{", "&a", "*a", "!t",
    "?", "---", "...", "\n", "\n\n", "\t", "~", "1", "0x1", "é", "\\n", "a", "z: 1", "\n- ", "\n  ", "%", "\r",
]


@given(
    st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(["insert", "delete", "replace"]), st.sampled_from(_EDIT_PIECES)),
        min_size=1,
        max_size=3,
    )
)
@settings(max_examples=400, deadline=None)
def test_edited_recordings_read_the_same_or_are_left_to_the_others(edits: list[tuple[float, str, str]]) -> None:
    # A real recording with a few characters inserted, deleted or replaced: whatever the
    # edit makes of it, the line reader reads what the full loader reads or gives up.
    text = list(_RECORDED_HEAD)
    for at, how, piece in edits:
        pos = int(at * len(text))
        if how == "insert":
            text.insert(pos, piece)
        elif how == "delete":
            del text[pos : pos + len(piece)]
        else:
            text[pos] = piece
    edited = "".join(text)
    try:
        _block(edited)
    except fastload.Unusual:
        return
    _same_or_unusual(edited)  # it answered: the full loader must read the same


def test_plain_data_in_both_dumps_is_answered() -> None:
    # The property above must not pass by giving up: ordinary data is read by the line reader.
    doc = {
        "a": [1, "x", {"b": None, "c": [[1, 2], []], "d": {}}, [{"e": "f"}]],
        "g": "multi\nline\n",
        "h": "strip\nme",
        "i": "it's: 'q'",
        "j": 'dq "x" \\ é',
        "k": ["-1", "yes", "1:30", "", "~"],
        "l": {"nested": {"deeper": ["x", {"y": "z"}]}},
        "m n": -1.5,
    }
    for dump in (_kubectl_yaml, _go_like_yaml):
        if dump is _kubectl_yaml:  # PyYAML quotes text with line breaks over several lines
            doc = {k: v for k, v in doc.items() if not (isinstance(v, str) and "\n" in v)}
        text = dump(doc)
        assert _block(text) == [doc], text
        assert _block("---\n" + text + "---\n" + text) == [doc, doc]


# --- the shapes the line reader reads, by hand --------------------------------------------------

ACCEPTED = [
    "a: 1\nb:\n- x\n- y: 2\n  z: 3\n- - p\n  - q\n-\nc: d\n",
    "a:\n  - 1\n  - - 2\n    - 3\n  -\n    b: c\n",
    "- a\n- - b\n  - - c\n- -1\n- -x: 1\n- a:b\n- a:\n- a: |\n    x\n",
    "a: |\n  line 1\n    indented\n\n  after a blank\n\n\nb: |-\n  stripped\n\n",
    "a: |\n  x\nb: 1\n",
    "- |\n  in a sequence\n- |-\n  x\n  y\n",
    "'quoted key': 1\n\"dq key\": 2\n'': 3\n\"a: b\": 4\n'it''s': 5\n",
    'a: "\\0\\a\\b\\t\\n\\v\\f\\r\\e\\ \\"\\\\\\N\\_\\L\\P\\x41\\u00e9\\U0001F600"\n',
    "a: {}\nb: []\nc:\n- {}\n- []\n",
    "---\na: 1\n---\nb: 2\n",
    "a: 1\n---\n- b\n",
    "a:\nb:\n",
    "a: b c d\nb: 'x  y'\nc: \"x  y\"\nd: x  y\n",
    "-\n a: 1\n-\n - b\n- ...\n- ---\n- a[0]: b,c{d}\n",
    "a: x#y\nb: x:y\nc: -\u00e9\n",
    "1: a\nfalse: b\n~: c\n1.5: d\n",
    "a:\n  b:\n    c:\n      d: 1\n  e: 2\nf: 3\n",
]


@pytest.mark.parametrize("text", ACCEPTED, ids=range(len(ACCEPTED)))
def test_accepted_shapes_read_as_the_full_loader_reads_them(text: str) -> None:
    assert _typed(_block(text)) == _typed(_full(text)) == _typed(_fast(text))


# --- what the line reader leaves to the others ------------------------------------------------

LIST = "apiVersion: v1\nkind: List\nitems:\n"
NODE = "- apiVersion: v1\n  kind: Node\n  metadata:\n    name: n1\n"
UNUSUAL = {
    "tab": LIST + NODE + "  \tx: 1\n",
    "tab in a value": LIST + NODE + "    x: a\tb\n",
    "comment line": LIST + "# a comment\n" + NODE,
    "comment after a value": LIST + NODE + "    x: 1 # one\n",
    "comment after a key": LIST + NODE + "    x: # one\n",
    "anchor": LIST + "- &n\n  apiVersion: v1\n  kind: Node\n",
    "alias": LIST + NODE + "- *n\n",
    "tag": LIST + "- apiVersion: !!str v1\n  kind: Node\n",
    "complex key": LIST + NODE + "    ? a\n    : b\n",
    "flow mapping": LIST + "- apiVersion: v1\n  kind: Node\n  metadata: {name: n1}\n",
    "flow sequence": LIST + NODE + "    x: [a]\n",
    "folded": LIST + NODE + "    x: >\n      a\n",
    "block indicator": LIST + NODE + "    x: |2\n       a\n",
    "block keep": LIST + NODE + "    x: |+\n      a\n\n",
    "block strip indicator": LIST + NODE + "    x: |-2\n       a\n",
    "block at the end without content": "kind: List\nitems: []\nx: |\n",
    "block without a line": "kind: List\nitems: []\nx: |\ny: 1\n",
    "block starting blank": "kind: List\nitems: []\nx: |\n\n  a\n",
    "multi-line plain": LIST + NODE + "    x: a\n      b\n",
    "multi-line plain key value": LIST + NODE + "    x:\n      b\n",
    "multi-line single quoted": LIST + NODE + "    x: 'a\n      b'\n",
    "multi-line double quoted": LIST + NODE + '    x: "a\\\n      b"\n',
    "directive": "%YAML 1.2\n---\n" + LIST + NODE,
    "document end": LIST + NODE + "...\n",
    "document end marker and text": LIST + NODE + "... # x\n",
    "empty document": "---\n---\n" + LIST + NODE,
    "trailing ---": LIST + NODE + "---\n",
    "marker with content": "--- " + LIST.split("\n")[0] + "\n",
    "quoted key with text after": LIST + NODE + '    "x" y: 1\n',
    "quoted value with text after": LIST + NODE + '    x: "a" b\n',
    "quoted then colon": LIST + NODE + '    x: "a": b\n',
    "colon space in a value": LIST + NODE + "    x: a: b\n",
    "colon at the end of a value": LIST + NODE + "    x: a:\n",
    "key without space": LIST + NODE + "    x:1\n",
    "sequence entry as a value": LIST + NODE + "    x: - a\n",
    "dash as a value": LIST + NODE + "    x: -\n",
    "unknown escape": LIST + NODE + '    x: "\\q"\n',
    "slash escape": LIST + NODE + '    x: "\\/"\n',
    "surrogate escape": LIST + NODE + '    x: "\\ud800"\n',
    "escape past unicode": LIST + NODE + '    x: "\\U00110000"\n',
    "trailing space": LIST + NODE + "    x: a \n",
    "blank line": LIST + NODE + "\n    x: a\n",
    "CR line ends": (LIST + NODE).replace("\n", "\r\n"),
    "NEL": LIST + NODE + "    x: a\x85b\n",
    "line separator": LIST + NODE + "    x: a\u2028b\n",
    "BOM mid-text": LIST + NODE + "    x: a\ufeffb\n",
    "BOM at the start": "\ufeff" + LIST + NODE,
    "control character": LIST + NODE + "    x: a\x07b\n",
    "no final line break": LIST + NODE + "    x: a",
    "duplicate key": LIST + NODE + "    name: n2\n",
    "duplicate key by value": "kind: List\nitems: []\n1: a\n0x1: b\n",
    "merge key": LIST + NODE + "    <<: {}\n",
    "merge key quoted value": LIST + "- apiVersion: v1\n  kind: Node\n  metadata:\n    <<: a\n",
    "indicator @": LIST + NODE + "    x: @a\n",
    "indicator `": LIST + NODE + "    x: `a\n",
    "indicator %": LIST + NODE + "    x: %a\n",
    "indicator ?": LIST + NODE + "    x: ?a\n",
    "indicator :": LIST + NODE + "    x: :a\n",
    "indicator ,": LIST + NODE + "    x: ,a\n",
    "indicator ]": LIST + NODE + "    x: ]\n",
    "two spaces after colon": LIST + NODE + "    x:  a\n",
    "two spaces after dash": LIST + "-  apiVersion: v1\n",
    "bad indentation": LIST + NODE + "   x: a\n",
    "more indented after a scalar": LIST + NODE + "      x: a\n",
    "sequence in a mapping": LIST + NODE + "    - a\n",
    "scalar document": "a\n",
    "indented document": "  a: 1\n",
    "scalar in a mapping": "kind: List\nitems: []\nx\n",
    "long key": "kind: List\nitems: []\n" + "k" * 300 + ": 1\n",
    "timestamp the constructor refuses": LIST + "- x: 2001-13-45\n",
    "too deep": "kind: List\nitems:\n" + "".join("  " * i + "- \n" for i in range(1, 150)).replace(" \n", "\n"),
    "too deep mappings": "kind: List\nitems: []\n" + "".join(" " * i + "k:\n" for i in range(150)) + " " * 150 + "k: 1\n",
    "value tag =": "kind: List\nitems: []\nx: =\n",
}


@pytest.mark.parametrize("text", list(UNUSUAL.values()), ids=list(UNUSUAL))
def test_unusual_text_is_left_to_the_others_with_the_same_outcome(text: str) -> None:
    with pytest.raises(fastload.Unusual):
        _block(text)

    def either(fast: bool) -> Any:
        try:
            return _outcome(text, fast)
        except Exception as e:  # noqa: BLE001 - whatever the full loader does, both do
            return type(e)

    assert either(True) == either(False)


def test_depth_up_to_the_limit_is_read() -> None:
    depth = 20
    text = "".join(" " * i + "k:\n" for i in range(depth - 1)) + " " * (depth - 1) + "k: 1\n"
    reader = blockyaml.yaml_documents
    assert reader(text, _EventBuilder().plain_data, depth) == _fast(text)
    with pytest.raises(fastload.Unusual):
        reader(text, _EventBuilder().plain_data, depth - 1)
    with pytest.raises(fastload.Unusual):
        fastload.yaml_documents(text, _EventBuilder().plain_data, depth - 1)


# --- the resolver's pre-filter ----------------------------------------------------------------


def _resolved(builder: _EventBuilder, value: str) -> str:
    try:
        return _typed(builder.plain_data(value))
    except fastload.Unusual:
        return "Unusual"


def _unfiltered() -> _EventBuilder:
    builder = _EventBuilder()
    builder._implicit = None  # every scalar through ruamel's resolver, as before
    return builder


def _check_prefilter(values: list[str]) -> None:
    filtered, reference = _EventBuilder(), _unfiltered()
    matchers = filtered._implicit
    assert matchers is not None
    resolver = reference._yaml.resolver
    for value in values:
        assert _resolved(filtered, value) == _resolved(reference, value), value
        str_tag = str(resolver.resolve(ScalarNode, value, (True, False))) == "tag:yaml.org,2002:str"
        assert fastload.plainly_str(matchers, value) == str_tag, value


def test_the_prefilter_answers_as_the_resolver_for_every_first_character() -> None:
    tails = ["", "0", "1", ".5", "e3", "rue", "ull", "x", ":30", "<", "_000", "-12-14", "nf", "aN", " a"]
    values = [chr(c) + tail for c in range(0x20, 0x250) for tail in tails]
    values += TRICKY + ["", "<<", "=", "~", ".inf", "-.inf", "+.5", "0o7", "2001-12-14", "Null", "FALSE"]
    _check_prefilter(values)


@given(st.lists(st.text(max_size=12) | st.sampled_from(TRICKY) | st.text("0123456789.-+eE_:xobT tnNfF~<=", max_size=12), max_size=30))
@settings(max_examples=200, deadline=None)
def test_the_prefilter_answers_as_the_resolver_for_random_text(values: list[str]) -> None:
    _check_prefilter(values)


def test_the_prefilter_table_is_ruamels() -> None:
    # The characters ruamel lists its YAML 1.2 patterns under (bool, int, float, null,
    # timestamp, merge, value, and the documentation-only yaml one): pinned, so a change is seen.
    matchers = _EventBuilder()._implicit
    assert matchers is not None and set(matchers) == set("tTfF-+0123456789.<~nN=!&*") | {""}


def test_flow_style_text_is_left_to_the_others() -> None:
    # JSON (which _parse never hands it) and other flow style: not the block subset.
    text = json.dumps({"kind": "List", "items": []})
    with pytest.raises(fastload.Unusual):
        _block(text + "\n")
