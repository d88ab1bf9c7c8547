"""The fast paths of reading a cluster recording (reconciler.cluster.fastload) give what the full
loaders give (fast=False: ruamel's events and the json module, as before issue 13): the same
ClusterState and byte-identical rendered snapshots for the recorded clusters and generated ones,
the same value for every tricky YAML 1.1/1.2 scalar, and the same error for everything unusual,
which they leave to the full loaders."""

from __future__ import annotations

import gc
import ipaddress
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shared_fixtures import RECORDED_CLUSTER, SHARED_FIXTURES

from reconciler.cluster import fastload
from reconciler.cluster.model import ClusterState
from reconciler.cluster.recorded import _EventBuilder, load_cluster_file, load_cluster_text
from reconciler.cluster.synthetic import cluster_to_list, synthetic_cluster
from reconciler.diagnostics import InputError
from reconciler.inputlimits import RECORDING_MAX_DEPTH
from reconciler.intent.loader import load_intent
from reconciler.intent.model import LoadBalancerConfig, VipPool
from reconciler.render import render

REPO = Path(__file__).resolve().parents[1]
MULTI = REPO / "intent-examples" / "multi-service"
DIGEST = "sha256:" + "0" * 64
RECORDINGS = [RECORDED_CLUSTER / "cluster.yaml", MULTI / "cluster.yaml"]
if (SHARED_FIXTURES / "recorded-cluster" / "cluster.yaml").is_file():
    RECORDINGS.append(SHARED_FIXTURES / "recorded-cluster" / "cluster.yaml")
BENCH_CONFIG = LoadBalancerConfig(
    namespace="p4kube-system",
    name="bench",
    buckets_per_service=64,
    vip_pools=(VipPool("bench", ((ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.19.255.254")),)),),
)


def _snapshot_bytes(config: LoadBalancerConfig, cluster: ClusterState) -> bytes:
    result = render(config, cluster, None, p4info_digest=DIGEST, now=0.0)
    assert result.snapshot.entry_count() > 0  # a render of nothing would prove nothing
    return result.snapshot.to_json_text().encode()


def _outcome(text: str, fast: bool) -> ClusterState | str:
    try:
        return load_cluster_text(text, "rec.yaml", fast=fast)
    except InputError as e:
        return str(e)


def _fast_docs(text: str) -> list[Any]:
    return fastload.yaml_documents(text, _EventBuilder().plain_data, RECORDING_MAX_DEPTH)


def _full_docs(text: str) -> list[Any]:
    return _EventBuilder().documents(text)


# --- the recorded and generated clusters ------------------------------------------------------


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_recorded_clusters_read_the_same_both_ways(path: Path) -> None:
    text = path.read_text()
    assert _fast_docs(text) == _full_docs(text)  # the fast path answered itself: no fallback
    fast, full = load_cluster_file(path), load_cluster_text(text, str(path), fast=False)
    assert fast == full and fast.services
    config = load_intent([MULTI / "lbconfig.yaml"]).config()
    assert _snapshot_bytes(config, fast) == _snapshot_bytes(config, full)


@pytest.fixture(scope="module")
def generated() -> tuple[ClusterState, dict[str, Any]]:
    state = synthetic_cluster(services=1000, nodes=200, endpoints=10000, seed=3)
    return state, cluster_to_list(state)


@pytest.mark.parametrize("form", ["yaml", "json"])
def test_a_generated_1000_service_recording_reads_the_same_both_ways(
    generated: tuple[ClusterState, dict[str, Any]], form: str
) -> None:
    state, listing = generated
    if form == "yaml":  # block style, keys sorted, as kubectl prints it
        text = yaml.dump(listing, Dumper=yaml.CSafeDumper, default_flow_style=False)
        assert _fast_docs(text) == [listing]
    else:
        text = json.dumps(listing, indent=4)
        assert fastload.json_document(text, RECORDING_MAX_DEPTH) == listing
    fast, full = load_cluster_text(text), load_cluster_text(text, fast=False)
    assert fast == full == state
    assert _snapshot_bytes(BENCH_CONFIG, fast) == _snapshot_bytes(BENCH_CONFIG, full)


# --- scalars ----------------------------------------------------------------------------------

# YAML 1.1 and 1.2 disagree on most of these; PyYAML's own loader reads 1.1. Both paths must give
# what the full loader gives (YAML 1.2, as ruamel reads it), type and all.
TRICKY = [
    "yes", "no", "on", "off", "y", "n", "Yes", "NO", "On", "OFF", "true", "True", "TRUE", "false", "False",
    "010", "0o10", "0x1F", "0b101", "-010", "+12", "1_000", "0.", ".5", "1e3", "1E3", "1.0e+3", "-.inf", ".Inf",
    ".NaN", ".nan", "1:30", "190:20:30", "1:30.5", "~", "null", "Null", "NULL", "", "2001-12-14",
    "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10", "=", "0", "-0", "00", "08", "09", "0.1.2",
    "123456789012345678901234567890", "1.7976931348623157e309", "'quoted'", '"dq"', "a: b", "- x", "a#b",
]


# Plain scalars that are not plain data to the full loader (it refuses their tag).
NOT_PLAIN_DATA: set[str] = set()


def _typed(value: Any) -> str:
    return repr(value)  # repr tells True from 1 from 1.0, and NaN from a failed comparison


@pytest.mark.parametrize("scalar", TRICKY)
def test_tricky_scalars_resolve_as_the_full_loader_resolves_them(scalar: str) -> None:
    plain = f"v: {scalar}\nl:\n- {scalar}\n{scalar or 'k'}: 1\n"
    quoted = f"v: {json.dumps(scalar)}\nl:\n- '{scalar.replace(chr(39), chr(39) * 2)}'\n"
    literal = f"v: |\n  {scalar}\n"
    for text in (plain, quoted, literal):
        try:
            full: Any = _typed(_full_docs(text))
        except Exception as e:  # noqa: BLE001 - then the fast path must leave it to the full one
            full = type(e)
        try:
            fast: Any = _typed(_fast_docs(text))
        except fastload.Unusual:
            fast = None
        # The fast path answers for every plain-data scalar, and answers what the full one does.
        assert fast == (None if isinstance(full, type) or scalar in NOT_PLAIN_DATA else full), text
        doc = "kind: List\nitems: []\n" + text
        assert _outcome(doc, True) == _outcome(doc, False)


def test_plain_scalars_are_resolved_as_yaml_1_2() -> None:
    # Pins the resolution both paths share (ruamel's YAML 1.2), so a change of it is seen.
    docs = _fast_docs("a: yes\nb: on\nc: 010\nd: 1:30\ne: 0o10\nf: true\ng: ~\nh: 0x1F\n")
    assert docs == [{"a": "yes", "b": "on", "c": 10, "d": "1:30", "e": 8, "f": True, "g": None, "h": 31}]
    assert type(docs[0]["c"]) is int


@given(
    st.recursive(
        st.one_of(st.sampled_from(TRICKY), st.text(max_size=8), st.integers(), st.booleans(), st.none()),
        lambda kids: st.one_of(
            st.lists(kids, max_size=4), st.dictionaries(st.sampled_from(TRICKY) | st.text(max_size=6), kids, max_size=4)
        ),
        max_leaves=20,
    )
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_block_yaml_of_random_data_reads_the_same_both_ways(data: Any) -> None:
    text = yaml.dump({"kind": "List", "items": [], "x": data}, Dumper=yaml.CSafeDumper, default_flow_style=False)
    try:
        full: Any = _full_docs(text)
    except Exception as e:  # noqa: BLE001
        full = f"{type(e).__name__}: {e}"
    try:
        assert _typed(_fast_docs(text)) == _typed(full)
    except fastload.Unusual:
        pass  # left to the full loader: nothing to compare
    assert _outcome(text, True) == _outcome(text, False)


# --- what the fast path leaves to the full loaders --------------------------------------------

LIST = "apiVersion: v1\nkind: List\nitems:\n"
NODE = "- apiVersion: v1\n  kind: Node\n  metadata: {name: n1}\n"
UNUSUAL_YAML = [
    LIST + "- &n\n  apiVersion: v1\n  kind: Node\n  metadata:\n    name: n1\n- *n\n",  # anchor, alias
    LIST + "- apiVersion: v1\n  kind: Node\n  metadata:\n    <<: {name: n1}\n",  # merge key
    LIST + "- apiVersion: !!str v1\n  kind: Node\n  metadata:\n    name: n1\n",  # a tag
    LIST + "- apiVersion: v1\n  kind: Node\n  metadata:\n    name: !!binary aGk=\n",
    "%YAML 1.1\n---\n" + LIST + "- apiVersion: v1\n  kind: Node\n  metadata:\n    name: 'on'\n",  # directive
    LIST + NODE,  # a flow mapping
    LIST + "- apiVersion: v1\n  kind: Node\n  kind: Node\n  metadata:\n    name: n1\n",  # duplicate key
    LIST + "- apiVersion: v1\n  kind: Node\n  metadata:\n    name: n1\n    ? [a]\n    : b\n",  # complex key
    "kind: List\nitems: " + "[" * 150 + "]" * 150 + "\n",  # deep flow
    "kind: List\nitems:\n" + "".join("  " * i + "- \n" for i in range(1, 150)),  # deep block
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nkind: List\nitems: [*g]\n",
    "kind: List\nitems: [\n",  # syntax error
    "kind: List\nitems:\n- a\n\t- b\n",  # a tab
    LIST + "- x: 2001-13-45\n",  # a timestamp the resolver matches and the constructor refuses
    "kind: List\nitems: []\nx: \ud800\n",  # a lone surrogate (only text from a str, not from a file)
]


@pytest.mark.parametrize("text", UNUSUAL_YAML, ids=range(len(UNUSUAL_YAML)))
def test_unusual_yaml_is_left_to_the_full_loader_with_the_same_outcome(text: str) -> None:
    with pytest.raises(fastload.Unusual):
        _fast_docs(text)
    try:
        fast: Any = _outcome(text, True)
    except Exception as e:  # noqa: BLE001 - whatever the full loader does, both do
        fast = type(e)
    try:
        full: Any = _outcome(text, False)
    except Exception as e:  # noqa: BLE001
        full = type(e)
    assert fast == full


UNUSUAL_JSON = [
    '{"kind": "List", "items": [], "x": NaN}',  # the json module reads NaN and Infinity, orjson not
    '{"kind": "List", "items": [], "x": 1180591620717411303424}',  # past 64 bits
    '{"kind": "List", "items": [], "x": "\\ud800"}',  # a lone surrogate
    '{"kind": "List", "items": []} {}',
    '{"kind": "List", "items": []}, {}',  # two values would be one list inside the depth padding
    '{"kind": "List", "items": [}',
    '{"kind": "List", "items": [' + "[" * RECORDING_MAX_DEPTH + "]" * RECORDING_MAX_DEPTH + "]}",
    '{"kind": "List", "items": [{"kind": ' + "[" * 1010 + "]" * 1010 + "}]}",  # was a RecursionError
    "[" * 100_000 + "]" * 100_000,
]


@pytest.mark.parametrize("text", UNUSUAL_JSON, ids=range(len(UNUSUAL_JSON)))
def test_unusual_json_is_left_to_the_json_module_with_the_same_outcome(text: str) -> None:
    with pytest.raises(fastload.Unusual):
        fastload.json_document(text, RECORDING_MAX_DEPTH)
    assert _outcome(text, True) == _outcome(text, False)


def test_json_up_to_the_depth_limit_is_read_by_orjson() -> None:
    deep = "[" * RECORDING_MAX_DEPTH + "]" * RECORDING_MAX_DEPTH
    value = fastload.json_document(deep, RECORDING_MAX_DEPTH)
    assert value == json.loads(deep)
    with pytest.raises(fastload.Unusual):
        fastload.json_document("[" + deep + "]", RECORDING_MAX_DEPTH)


def test_orjson_refuses_nesting_past_the_limit_the_depth_padding_relies_on() -> None:
    n = fastload.ORJSON_MAX_DEPTH
    assert orjson.loads("[" * n + "]" * n) is not None
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads("[" * (n + 1) + "]" * (n + 1))


def test_the_garbage_collector_is_left_as_it_was() -> None:
    text = (RECORDED_CLUSTER / "cluster.yaml").read_text()
    assert gc.isenabled()
    load_cluster_text(text)
    assert gc.isenabled()
    with pytest.raises(InputError):
        load_cluster_text("kind: List\n")
    assert gc.isenabled()
    gc.disable()
    try:
        load_cluster_text(text)
        assert not gc.isenabled()
    finally:
        gc.enable()


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**63), 2**64 - 1), max_size=20))
@settings(max_examples=200, deadline=None)
def test_json_numbers_read_as_the_json_module_reads_them(numbers: list[float | int]) -> None:
    text = json.dumps({"kind": "List", "items": [], "x": numbers})
    try:
        fast = fastload.json_document(text, RECORDING_MAX_DEPTH)
    except fastload.Unusual:
        assert any(len(str(abs(n)).split(".")[0].split("e")[0]) >= 19 for n in numbers if isinstance(n, int)) or any(
            isinstance(n, float) for n in numbers
        )
        return
    assert repr(fast) == repr(json.loads(text))
