"""The snapshot schema check, compiled and incremental (issue 13 item 1), keeps the schema's meaning.

The reference is python-jsonschema checking the whole document at once (`full` below), the check
every snapshot went through before. Over random mutations of rendered snapshot documents (a type
changed, a required field dropped, an integer out of range, a bad IPv4 address, an extra property,
wrong action parameters, broken drains, bad names and table names), the compiled check refuses
exactly what the full check refuses and says the same ("path: message", same order). The
in-memory check of a Snapshot (`snapshot_schema_errors`: header, then each Service not checked
before, by fragment digest) says what the full check says of its document. And nothing is checked
twice: a Service checked once is a look-up afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
from typing import Any, Callable

import jsonschema
import pytest
from helpers_render import do_render, make_cluster, make_config, make_service
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import snapshot as snapshot_mod
from reconciler import snapshot_schema
from reconciler.intent.model import Route
from reconciler.snapshot import (
    Drain,
    ServiceSnapshot,
    Snapshot,
    SnapshotError,
    check_service_schema,
    from_document,
    schema_errors,
    schema_validator,
    service_schema_errors,
    snapshot_schema_errors,
)

T0 = 1_765_000_000.0


def full(doc: Any) -> list[str]:
    """The reference: python-jsonschema over the whole document in one pass, as before."""
    errors = sorted(schema_validator().iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{snapshot_schema.format_path(e.absolute_path)}: {e.message}" for e in errors]


# --- rendered snapshots to mutate ----------------------------------------------------------------


def _routed(buckets: int, **kw: Any) -> Any:
    cfg = make_config(buckets=buckets, **kw)
    routes = (Route(ipaddress.IPv4Network("10.1.0.0/24"), 1, "02:00:00:00:00:01"), Route(ipaddress.IPv4Network("0.0.0.0/0"), 2))
    return dataclasses.replace(cfg, switch_config=dataclasses.replace(cfg.switch_config, routes=routes))


def _varied() -> Snapshot:
    web = make_service("web", ports=(("http", 80, "TCP"), ("dns", 53, "UDP")))
    idle = make_service("idle", node_port_base=30100)
    return do_render(_routed(4), make_cluster({web: {"node-0": 2, "node-1": 1}, idle: {}}, nodes=3)).snapshot


def _podip() -> Snapshot:
    svc = make_service("pods")
    return do_render(make_config(buckets=4, backend_mode="podIP"), make_cluster({svc: {"node-0": 2, "node-2": 1}}, nodes=3)).snapshot


def _draining() -> Snapshot:
    cfg = dataclasses.replace(_routed(8), connection_drain_timeout_s=60.0)
    svc = make_service("web")
    v1 = do_render(cfg, make_cluster({svc: {"node-0": 1, "node-1": 2, "node-2": 3}}, nodes=3), None, now=T0 - 100).snapshot
    v2 = do_render(cfg, make_cluster({svc: {"node-0": 3, "node-1": 2, "node-2": 1}}, nodes=3), v1, now=T0).snapshot
    assert any(s.drains for s in v2.services)
    return v2


SNAPSHOTS: dict[str, Snapshot] = {}


def base(name: str) -> Snapshot:
    if name not in SNAPSHOTS:
        SNAPSHOTS[name] = {"varied": _varied, "podip": _podip, "draining": _draining}[name]()
    return SNAPSHOTS[name]


BASES = ("varied", "podip", "draining")


# --- mutations ------------------------------------------------------------------------------------

Loc = tuple[Any, Any]  # (container, key): the value at container[key]


def _locations(doc: Any) -> list[Loc]:
    out: list[Loc] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            out.append((node, k))
            walk(v)

    walk(doc)
    return out


OTHER_TYPES = [None, True, False, 1, -1, 0, 1.5, 80.0, "x", "", [], {}, 2**70, [1], {"a": 1}]
INTS = [0, -1, 1, 16383, 16384, 65535, 65536, 2**32 - 1, 2**32, 2**63, -(2**63), 64.0, 65535.5]
BAD_IPS = ["256.1.1.1", "1.2.3", "01.2.3.4", "1.2.3.4\n", " 1.2.3.4", "1.2.3.4.5", "١.2.3.4", "1.2.3.-1", "10.0.0.1/32"]
BAD_NAMES = ["Default/web", "default/web\n", "default", "default/web:", "default/-web", "a/b/c", "default/web:HTTP", "", 5]
BAD_TABLES = ["bad-name", "1table", "MyIngress.ok", "", "with space"]
TIMES = ["2026-12-06T04:01:00", "2026-1-06T04:01:00Z", "2026-12-06 04:01:00Z", "2026-12-06T04:01:00Z\n", 1765000000]


@st.composite
def mutated(draw: Callable[..., Any]) -> dict[str, Any]:
    doc = copy.deepcopy(base(draw(st.sampled_from(BASES))).to_document())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["retype", "drop", "extra", "int", "ip", "params", "drains", "name", "table"]))
        locs = _locations(doc)
        if kind == "retype":
            node, k = draw(st.sampled_from(locs))
            node[k] = copy.deepcopy(draw(st.sampled_from(OTHER_TYPES)))
        elif kind == "drop":
            dicts = [(n, k) for n, k in locs if isinstance(n, dict)] or [(doc, next(iter(doc), None))]
            node, k = draw(st.sampled_from(dicts))
            node.pop(k, None)
        elif kind == "extra":
            objects = [n for n, _ in locs if isinstance(n, dict)] + [doc]
            node = draw(st.sampled_from(objects))
            node[draw(st.sampled_from(["unexpected", "activeConnections", "backendMode", "service", "extra"]))] = draw(
                st.sampled_from(["x", 1, "podIP", None])
            )
        elif kind == "int":
            ints = [(n, k) for n, k in locs if type(n[k]) is int]
            if ints:
                node, k = draw(st.sampled_from(ints))
                node[k] = draw(st.sampled_from(INTS))
        elif kind == "ip":
            ips = [(n, k) for n, k in locs if isinstance(n[k], str) and n[k].count(".") == 3 and n[k][0].isdigit()]
            if ips:
                node, k = draw(st.sampled_from(ips))
                node[k] = draw(st.sampled_from(BAD_IPS))
        elif kind == "params":
            entries = [es[i] for es in doc.get("tables", {}).values() if isinstance(es, list) for i in range(len(es))]
            entries = [e for e in entries if isinstance(e, dict)]
            if entries:
                e = draw(st.sampled_from(entries))
                how = draw(st.sampled_from(["drop", "add", "float", "list", "null", "action", "nomatch", "matchval", "service"]))
                params = e.get("params") if isinstance(e.get("params"), dict) else None
                if how == "drop" and params:
                    params.pop(draw(st.sampled_from(sorted(params))))
                elif how == "add" and params is not None:
                    params["extra"] = 1
                elif how in ("float", "list", "null") and params:
                    params[draw(st.sampled_from(sorted(params)))] = {"float": 1.5, "list": [1], "null": None}[how]
                elif how == "action":
                    e["action"] = draw(st.sampled_from(["", 5, None, "MyIngress.unknown"]))
                elif how == "nomatch":
                    e["match"] = {}
                elif how == "matchval" and isinstance(e.get("match"), dict) and e["match"]:
                    e["match"][draw(st.sampled_from(sorted(e["match"])))] = draw(st.sampled_from([True, 2.5, None, {}]))
                elif how == "service":
                    e["service"] = draw(st.sampled_from([1, None, ""]))
        elif kind == "drains":
            services = [s for s in doc.get("services", []) if isinstance(s, dict)]
            if services:
                s = draw(st.sampled_from(services))
                drains = s.get("drains")
                if not isinstance(drains, list) or not drains or draw(st.booleans()):
                    s["drains"] = draw(st.sampled_from([[], [{"bucket": 0, "from": "node-0", "generation": 1, "until": "2026-12-06T04:01:00Z"}], "x"]))
                else:
                    d = draw(st.sampled_from(drains))
                    if isinstance(d, dict):
                        field = draw(st.sampled_from(["bucket", "from", "generation", "until", "extra", "drop"]))
                        if field == "drop":
                            d.pop(draw(st.sampled_from(sorted(d))), None) if d else None
                        elif field == "until":
                            d["until"] = draw(st.sampled_from(TIMES))
                        elif field == "extra":
                            d["note"] = "x"
                        else:
                            d[field] = draw(st.sampled_from([0, -1, 16384, 2**32 - 1, 2**32, "", "node-9", 1.0]))
        elif kind == "name":
            targets = [s for s in doc.get("services", []) if isinstance(s, dict)]
            if targets and draw(st.booleans()):
                draw(st.sampled_from(targets))["name"] = draw(st.sampled_from(BAD_NAMES))
            else:
                doc["config"] = draw(st.sampled_from(BAD_NAMES))
        elif kind == "table":
            if isinstance(doc.get("tables"), dict):
                doc["tables"][draw(st.sampled_from(BAD_TABLES))] = draw(st.sampled_from([[], {}, [{"match": {"a": 1}, "action": "x", "params": {}}], "x"]))
    return doc


@settings(max_examples=250, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_compiled_check_refuses_exactly_what_the_full_check_refuses(doc: dict[str, Any]) -> None:
    expected = full(doc)
    assert snapshot_schema.is_valid(doc) == (expected == [])
    assert schema_errors(doc) == expected


def test_the_mutations_mostly_break_the_schema() -> None:
    """The property above is not vacuous: its mutations are refused, with many kinds of errors."""
    refused, messages = 0, set[str]()

    @settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutated())
    def collect(doc: dict[str, Any]) -> None:
        nonlocal refused
        errors = schema_errors(doc)
        refused += bool(errors)
        messages.update(e.split(": ", 1)[1].split(" ")[-1] for e in errors)

    collect()
    assert refused >= 30
    assert len(messages) >= 5


def test_a_refused_document_is_explained_in_its_failing_parts_only(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = copy.deepcopy(base("varied").to_document())
    doc["services"][1]["port"] = "80"
    doc["tables"]["MyIngress.backend_table"][2]["params"]["port"] = 1.5
    explained: list[Any] = []
    real = snapshot_schema.explain

    def noted(instance: Any, part: str | None = None, at: snapshot_schema.Loc = ()) -> list[tuple[snapshot_schema.Loc, str]]:
        explained.append(at)
        return real(instance, part, at)

    monkeypatch.setattr(snapshot_schema, "explain", noted)
    assert schema_errors(doc) == full(doc)
    assert explained == [(), ("services", 1), ("tables", "MyIngress.backend_table", 2)]
    assert schema_errors(doc)[0] == "services[1].port: '80' is not of type 'integer'"


def test_dollar_anchors_at_the_end_as_in_ecma_262() -> None:
    """python-jsonschema's re.search lets "$" match before a final newline; the schema's patterns
    are ECMA-262, as jsonschema-rs reads them: both checks refuse "default/web\\n" now."""
    svc = base("podip").services[0].to_json()
    svc["name"] = "default/pods\n"
    stock = jsonschema.Draft202012Validator(snapshot_schema._part_schema("service"))
    assert stock.is_valid(svc)  # what the checks accepted before
    assert not snapshot_schema.is_valid(svc, "service")
    assert schema_errors(svc, subschema="service") == [r"name: 'default/pods\n' does not match " + repr(snapshot_schema.schema()["$defs"]["service"]["properties"]["name"]["pattern"])]
    assert snapshot_schema._ecma_anchors(r"^a[$]b\$c$") == r"^a[$]b\$c\Z"


# --- the in-memory check of a Snapshot --------------------------------------------------------------


def _with_service(snap: Snapshot, i: int, **changes: Any) -> Snapshot:
    """Service i (counting those with backends) changed."""
    services = list(snap.services)
    at = [j for j, s in enumerate(services) if s.backends][i]
    services[at] = dataclasses.replace(services[at], **changes)
    return dataclasses.replace(snap, services=tuple(services))


def _with_backend(snap: Snapshot, **changes: Any) -> Snapshot:
    svc = next(s for s in snap.services if s.backends)
    backends = (dataclasses.replace(svc.backends[0], **changes),) + svc.backends[1:]
    return _with_service(snap, 0, backends=backends)


BROKEN: list[tuple[str, Callable[[Snapshot], Snapshot]]] = [
    ("port as a bool", lambda s: _with_service(s, 0, port=True)),
    ("algorithm as a number", lambda s: _with_service(s, 0, algorithm=5)),
    ("port 0", lambda s: _with_service(s, 0, port=0)),
    ("port 65536", lambda s: _with_service(s, 0, port=65536)),
    ("service id 0", lambda s: _with_service(s, 0, service_id=0)),
    ("name", lambda s: _with_service(s, 0, name="Default/Web")),
    ("algorithm", lambda s: _with_service(s, 0, algorithm="")),
    ("bucket count", lambda s: _with_service(s, 0, bucket_count=3)),
    ("backend port", lambda s: _with_backend(s, port=0)),
    ("backend replicas", lambda s: _with_backend(s, replicas=-1)),
    ("backend node", lambda s: _with_backend(s, node="")),
    ("backend id", lambda s: _with_backend(s, backend_id=65536)),
    ("active connections", lambda s: _with_backend(s, active_connections=-5)),
    ("drain generation", lambda s: _with_service(s, 0, drains=(Drain(0, "node-0", 2**32, T0),))),
    ("drain bucket", lambda s: _with_service(s, 0, drains=(Drain(16384, "node-0", 1, T0),))),
    ("drain from", lambda s: _with_service(s, 0, drains=(Drain(0, "", 1, T0),))),
    ("config", lambda s: dataclasses.replace(s, config="Bad/Config")),
    ("version", lambda s: dataclasses.replace(s, version=0)),
    ("intent commit", lambda s: dataclasses.replace(s, intent_commit="abc")),
    ("extra", lambda s: dataclasses.replace(s, extra={"unexpected": 1})),
    ("route", lambda s: dataclasses.replace(s, global_entries=(dataclasses.replace(s.global_entries[0], args=(1.5, "x")),))),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("name", [b for b in BASES if b != "podip"])
@pytest.mark.parametrize("case", [c for c, _ in BROKEN])
def test_snapshot_check_says_what_the_full_check_says(name: str, case: str) -> None:
    snap = dict(BROKEN)[case](base(name))
    try:
        doc = snap.to_document()
    except (KeyError, IndexError):  # its entries cannot be built: the full check of what can be
        doc = dict(base(name).to_document(), services=[s.to_json() for s in snap.services])
    expected = full(doc)
    assert expected, "the case breaks the schema"
    assert snapshot_schema_errors(snap) == expected
    assert snapshot_schema_errors(snap) == expected  # and again: a refused Service is not cached


@pytest.mark.parametrize("name", BASES)
def test_valid_snapshots_pass_every_check(name: str) -> None:
    snap = base(name)
    doc = snap.to_document()
    assert full(doc) == [] and schema_errors(doc) == [] and snapshot_schema_errors(snap) == []
    # The entries a valid Service object implies satisfy $defs/entry (why only objects are checked).
    for es in snap.tables().values():
        for e in es:
            assert snapshot_schema.errors(e.to_json(), "entry") == []


def test_check_service_schema_raises_with_the_explanation() -> None:
    svc = dataclasses.replace(base("podip").services[0], port=0, vip="10.0.0.256")
    assert service_schema_errors(svc) == [f"{p}: {m}" for p, m in [(".".join(map(str, e.absolute_path)), e.message) for e in
                                          schema_validator().evolve(schema=snapshot_schema._part_schema("service")).iter_errors(svc.to_json())]]
    assert len(service_schema_errors(svc)) == 2
    with pytest.raises(SnapshotError, match=r"rendered service default/pods fails snapshot.schema.json \(a bug\): .*port: 0 is less than the minimum of 1"):
        check_service_schema(svc)


# --- each Service is checked once ----------------------------------------------------------------


class Count:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.parts: list[str | None] = []
        real = snapshot_schema.is_valid

        def counted(instance: Any, part: str | None = None) -> bool:
            self.parts.append(part)
            return real(instance, part)

        monkeypatch.setattr(snapshot_schema, "is_valid", counted)
        monkeypatch.setattr(snapshot_mod, "_VALID_FRAGMENTS", set())


def _fresh(svc: ServiceSnapshot) -> ServiceSnapshot:
    """The same Service as a new object (no cached digest)."""
    return dataclasses.replace(svc)


def test_render_checks_each_service_once_and_the_whole_check_is_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    count = Count(monkeypatch)
    web = make_service("web", ports=(("http", 80, "TCP"), ("dns", 53, "UDP")))
    other = make_service("other", node_port_base=30200)
    cluster = make_cluster({web: {"node-0": 2, "node-1": 1}, other: {"node-2": 1}}, nodes=3)
    snap = do_render(make_config(buckets=4), cluster).snapshot
    assert count.parts == ["service"] * 3  # render: each of the three Service ports
    assert snapshot_schema_errors(snap) == []
    assert count.parts == ["service"] * 3 + [None]  # then the header only
    # One Service changes: render checks it alone, and so does the whole check afterwards.
    changed = make_cluster({web: {"node-0": 2, "node-1": 1}, other: {"node-2": 2}}, nodes=3)
    count.parts.clear()
    again = do_render(make_config(buckets=4), changed, snap).snapshot
    assert count.parts == ["service"]
    assert snapshot_schema_errors(again) == []
    assert count.parts == ["service", None]


def test_a_loaded_document_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    count = Count(monkeypatch)
    snap = from_document(json.loads(base("draining").to_json_text()))
    assert count.parts == [None]  # the whole document, compiled, once
    assert snapshot_schema_errors(snap) == [] and count.parts == [None, None]  # its header again, no Service
    check_service_schema(snap.services[0])
    assert count.parts == [None, None]
    # A new object with the same content is known by its digest once that is computed.
    twin = _fresh(snap.services[0])
    _ = twin.fragment_digest
    check_service_schema(twin)
    assert count.parts == [None, None]


def test_a_refused_document_changes_nothing_and_names_the_field() -> None:
    doc = json.loads(base("draining").to_json_text())
    doc["services"][0]["backends"][0]["address"] = "10.0.0.256"
    with pytest.raises(SnapshotError) as e:
        from_document(doc, source="snap.json")
    assert "snap.json: not a valid snapshot:\n  services[0].backends[0].address: '10.0.0.256' does not match" in str(e.value)


def test_the_compiled_validator_never_fetches() -> None:
    with pytest.raises(ValueError, match="not fetched"):
        snapshot_schema._no_remote("https://example.invalid/x.json")
    with pytest.raises(Exception, match="not fetched"):
        import jsonschema_rs

        jsonschema_rs.validator_for({"$ref": "https://example.invalid/x.json"}, retriever=snapshot_schema._no_remote)


# --- from_document's fast path for canonical documents gives what the reference path gives ----------


def _outcome(doc: dict[str, Any], fast: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(snapshot_mod, "_from_canonical_document", lambda doc: None)
        try:
            snap = from_document(copy.deepcopy(doc), source="s.json")
        except SnapshotError as e:
            return str(e)
        return (snap.digest, snap.services, snap.global_entries, snap.version, snap.config)


@st.composite
def reshaped(draw: Callable[..., Any]) -> dict[str, Any]:
    """Schema-valid changes: the fast path must take the canonical ones and leave the rest."""
    doc = json.loads(base(draw(st.sampled_from(BASES))).to_json_text())
    tables = doc["tables"]
    for _ in range(draw(st.integers(0, 2))):
        t = draw(st.sampled_from(sorted(t for t in tables if tables[t])))
        es = tables[t]
        j = draw(st.integers(0, len(es) - 1))
        how = draw(st.sampled_from(["swap", "dup", "drop", "float", "other-backend", "service", "generation", "digest", "order", "extra-service"]))
        if how == "swap" and len(es) > 1:
            es[j], es[-1] = es[-1], es[j]
        elif how == "dup":
            es.append(copy.deepcopy(es[j]))
        elif how == "drop":
            es.pop(j)
        elif how == "float":
            k = draw(st.sampled_from(sorted(es[j]["params"]) or ["x"]))
            if isinstance(es[j]["params"].get(k), int):
                es[j]["params"][k] = float(es[j]["params"][k])
        elif how == "other-backend" and t.endswith("backend_table") and len(es) > 1:
            es[j]["params"] = copy.deepcopy(es[(j + 1) % len(es)]["params"])
        elif how == "service":
            es[j]["service"] = draw(st.sampled_from(["", "default/absent"]))
        elif how == "generation":
            for s in doc["services"]:
                for d in s.get("drains", []):
                    d["generation"] += 1
        elif how == "digest":
            doc["digest"] = "sha256:" + "1" * 64
        elif how == "order" and len(doc["services"]) > 1:
            doc["services"].reverse()
        elif how == "extra-service":
            es[j].pop("service", None)
    return doc


@settings(max_examples=120, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reshaped())
def test_from_document_fast_path_agrees_with_the_reference_path(doc: dict[str, Any]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        assert _outcome(doc, True, mp) == _outcome(doc, False, mp)


@pytest.mark.parametrize("name", BASES)
def test_canonical_documents_take_the_fast_path(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = json.loads(base(name).to_json_text())
    fast = snapshot_mod._from_canonical_document(doc)
    assert fast is not None and fast.services == base(name).services and fast.digest == base(name).digest
