"""The fast read of index shards (reconciler/audit/index.py `_ordinary_shard`) against the path every
shard took before it (`_parse_shard_json`, then `rebuild`): for valid shards and for thousands of
mutated ones (wrong types, bools for ints, floats, extra and missing keys, duplicate keys, NaN,
integers past 64 bits, BOMs, lone surrogates, nesting json cannot follow, ...), parse_shard + rebuild
accept exactly what the old path accepted, giving the identical Services, and refuse exactly what it
refused, with the same message. Also: a restart really takes the fast path, and blob_data reads what
repo[oid].data read and fails as it failed."""

from __future__ import annotations

import json
import logging
import math
import random
import sys
from typing import Any, Callable, cast

import pygit2
import pytest
from test_audit_index import _recorded, _rewrite_tip, Files

from reconciler.audit import AuditRepo
from reconciler.audit import index as idx
from reconciler.audit.index import IndexEntry, parse_shard, rebuild, shard_bytes, shard_of, shard_path
from reconciler.gitobjects import blob_data
from reconciler.snapshot import Backend, Drain, ServiceSnapshot, SnapshotError, parse_time

WHERE = "configs/ns/c/index/a/b.json"


def _service(
    name: str, sid: int, *, mode: str = "nodePort", backends: int = 3, conns: bool = False, drains: bool = False
) -> ServiceSnapshot:
    bs = tuple(
        Backend(f"node-{i}", f"10.0.{sid}.{i + 1}", 30000 + sid, i + 1, 0, 100 * sid + i, (7 * i) if conns else None)
        for i in range(backends)
    )
    keys = [b.address if mode == "podIP" else b.node for b in bs]
    assignment = tuple(keys[b % len(keys)] for b in range(8)) if keys else (None,) * 8
    ds = (
        (Drain(1, keys[0], 3, parse_time("2026-12-06T04:01:00Z")), Drain(5, keys[-1], 4, parse_time("2027-01-01T00:00:00Z")))
        if drains
        else ()
    )
    svc = ServiceSnapshot(name, sid, f"198.18.0.{sid}", 80, "TCP", "replica-weighted", 8, mode, bs, assignment, ds)
    svc.__dict__["fragment_digest"] = f"{sid:064x}"
    return svc


SERVICES = [
    _service("ns/plain", 1),
    _service("ns/pod", 2, mode="podIP", backends=4),
    _service("ns/conns", 3, conns=True),
    _service("ns/drains", 4, drains=True),
    _service("ns/empty", 5, backends=0),
    _service("ns/one", 6, backends=1, mode="podIP", drains=True, conns=True),
]


def _shard_doc() -> dict[str, Any]:
    lines = [(s.name, idx.entry_line(s, f"{s.service_id:040x}")) for s in SERVICES]
    return json.loads(shard_bytes(lines))


# --- a JSON writer that can also write what json.dumps cannot: duplicate keys, raw text --------


class Dup:
    """An object written with these (key, value) pairs, repeats included."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


class Raw:
    """Text written as it is (a number json.dumps would write otherwise, a bad escape ...)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _write(v: Any) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, Dup):
        return "{" + ",".join(f"{json.dumps(k)}:{_write(x)}" for k, x in v.pairs) + "}"
    if isinstance(v, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_write(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_write(x) for x in v) + "]"
    return json.dumps(v)  # NaN and Infinity as the json module writes them


# --- the two paths -------------------------------------------------------------------------------


def _outcome(data: bytes, parse: Callable[[bytes, str], dict[str, IndexEntry]]) -> Any:
    """What parse + rebuild make of a shard, exactly: reprs tell 1 from 1.0 from True."""
    try:
        entries = parse(data, WHERE)
    except SnapshotError as err:
        return ("shard refused", str(err))
    except Exception as err:  # what the old path let through (RecursionError): the same must come through
        return ("raised", type(err).__name__)
    out: list[Any] = []
    for name, e in entries.items():
        got: Any
        try:
            svc = rebuild(e, WHERE)
            got = (repr(svc), svc.fragment_digest, repr(svc.to_json()))
        except SnapshotError as err:
            got = ("refused", str(err))
        out.append((repr(name), e.blob, e.digest, repr(e.service), repr(e.buckets), got))
    return out


def _old(data: bytes, where: str) -> dict[str, IndexEntry]:
    return idx._parse_shard_json(data, where)


def _same(data: bytes) -> Any:
    new, old = _outcome(data, parse_shard), _outcome(data, _old)
    assert new == old, data[:300]
    return new


def test_a_valid_shard_takes_the_fast_path_and_gives_the_same_services() -> None:
    data = shard_bytes((s.name, idx.entry_line(s, f"{s.service_id:040x}")) for s in SERVICES)
    fast = idx._ordinary_shard(data)
    assert fast is not None and all(e.rebuilt is not None for e in fast.values())
    got = _same(data)
    assert all(len(g[-1]) == 3 for g in got)  # all accepted
    for svc in SERVICES:
        assert rebuild(fast[svc.name], WHERE) == svc and rebuild(fast[svc.name], WHERE).fragment_digest == svc.fragment_digest


# Each mutation: (path into the shard document, new value) or a function of the bytes.
_SVC = ("services", "ns/plain", "service")
_BK = (*_SVC, "backends", 0)
_DR = ("services", "ns/drains", "service", "drains", 0)
_VALUES: list[Any] = [
    True, False, None, 0, 1, -1, 1.0, 0.5, "", "x", "0" * 40, [], {}, [1], {"a": 1},
    math.nan, math.inf, -math.inf, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30,
    Raw("1e2"), Raw("1E0"), Raw("-0"), Raw("100000000000000000000000"), Raw("-0.0"), Raw('"\\ud800"'),
    Raw('"\\u0041"'), Raw('"a\\/b"'), Raw("[" * 1010 + "]" * 1010),
]


def _mutations() -> list[tuple[str, Callable[[dict[str, Any]], Any]]]:
    doc = _shard_doc()
    paths: list[tuple[Any, ...]] = []

    def walk(v: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, (*path, k))
        elif isinstance(v, list):
            for i, x in enumerate(v[:3]):
                walk(x, (*path, i))

    walk(doc, ())
    out: list[tuple[str, Callable[[dict[str, Any]], Any]]] = []

    def setter(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], Any]:
        def f(d: dict[str, Any]) -> Any:
            if not path:
                return value
            _get(d, path[:-1])[path[-1]] = value
            return d
        return f

    def deleter(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], Any]:
        def f(d: dict[str, Any]) -> Any:
            del _get(d, path[:-1])[path[-1]]
            return d
        return f

    def adder(path: tuple[Any, ...], key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
        def f(d: dict[str, Any]) -> Any:
            _get(d, path)[key] = value
            return d
        return f

    def duplicate(path: tuple[Any, ...], key: str, value: Any, first: bool) -> Callable[[dict[str, Any]], Any]:
        def f(d: dict[str, Any]) -> Any:
            parent, obj = _get(d, path[:-1]), _get(d, path)
            parent[path[-1]] = Dup([(key, value), *obj.items()] if first else [*obj.items(), (key, value)])
            return d
        return f

    for path in paths:
        for value in _VALUES:
            out.append((f"set {path} = {value!r:.40}", setter(path, value)))
        if path and isinstance(path[-1], str):
            out.append((f"del {path}", deleter(path)))
    dicts = [p for p in paths if isinstance(_get(doc, p), dict)]
    for path in dicts:
        for key, value in [("extra", 1), ("activeConnections", None), ("activeConnections", 3), ("drains", []), ("name", "ns/plain")]:
            out.append((f"add {path}[{key}] = {value!r}", adder(path, key, value)))
        obj = _get(doc, path)
        if path and obj:
            k0 = next(iter(obj))
            for value in (obj[k0], "other", 5, True):
                for first in (True, False):
                    out.append((f"dup {path}[{k0}] = {value!r} first={first}", duplicate(path, k0, value, first)))
    # whole-backend and drain variants record() never writes, but rebuild accepts or refuses
    out += [
        ("all conns", lambda d: [b.__setitem__("activeConnections", 1) for b in _get(d, (*_SVC, "backends"))] and d),
        ("conns bool", lambda d: [b.__setitem__("activeConnections", True) for b in _get(d, (*_SVC, "backends"))] and d),
        ("conns float", lambda d: [b.__setitem__("activeConnections", 1.5) for b in _get(d, (*_SVC, "backends"))] and d),
        ("mixed conns and extra", lambda d: [
            _get(d, _BK).__setitem__("activeConnections", 1), _get(d, (*_SVC, "backends", 1)).update(activeConnections=1, x=2),
        ] and d),
        ("until unpadded", setter((*_DR, "until"), "2026-12-6T04:01:00Z")),
        ("until odd", setter((*_DR, "until"), "2026-02-30T04:01:00Z")),
        ("until no Z", setter((*_DR, "until"), "2026-12-06T04:01:00")),
        ("until year 1", setter((*_DR, "until"), "0001-01-01T00:00:00Z")),
        ("until year 9999", setter((*_DR, "until"), "9999-12-31T23:59:59Z")),
        ("drain bucket bool", setter((*_DR, "bucket"), True)),
        ("drain bucket float", setter((*_DR, "bucket"), 1.0)),
        ("drains empty", setter(("services", "ns/drains", "service", "drains"), [])),
        ("drains dict", setter(("services", "ns/drains", "service", "drains"), {"a": 1})),
        ("drains string", setter(("services", "ns/drains", "service", "drains"), "")),
        ("buckets null", setter(("services", "ns/plain", "buckets"), None)),
        ("buckets null, no backends", setter(("services", "ns/empty", "buckets"), None)),
        ("bucket past backends", lambda d: _get(d, ("services", "ns/plain", "buckets")).__setitem__(0, 3) or d),
        ("bucket null among", lambda d: _get(d, ("services", "ns/plain", "buckets")).__setitem__(0, None) or d),
        ("bucket negative", lambda d: _get(d, ("services", "ns/plain", "buckets")).__setitem__(0, -1) or d),
        ("bucket true", lambda d: _get(d, ("services", "ns/plain", "buckets")).__setitem__(0, True) or d),
        ("bucket one short", lambda d: _get(d, ("services", "ns/plain", "buckets")).pop() and d),
        ("bucket one more", lambda d: _get(d, ("services", "ns/plain", "buckets")).append(0) or d),
        ("bucket count 0", lambda d: _get(d, ("services", "ns/empty")).update(buckets=[])
         or _get(d, ("services", "ns/empty", "service")).update(bucketCount=0) or d),
        ("bucket int in empty", lambda d: _get(d, ("services", "ns/empty", "buckets")).__setitem__(0, 0) or d),
        ("count negative, buckets null", lambda d: _get(d, ("services", "ns/empty")).update(buckets=None)
         or _get(d, ("services", "ns/empty", "service")).update(bucketCount=-1) or d),
        ("mode podIP", setter((*_SVC, "backendMode"), "podIP")),
        ("mode other", setter((*_SVC, "backendMode"), "other")),
        ("name of another", setter((*_SVC, "name"), "ns/pod")),
        ("blob upper", setter(("services", "ns/plain", "blob"), "A" * 40)),
        ("digest short", setter(("services", "ns/plain", "digest"), "0" * 63)),
        ("services list", setter(("services",), [])),
        ("services empty", setter(("services",), {})),
        ("extra top-level key", adder((), "x", [[1]])),
        ("backends dict", setter((*_SVC, "backends"), {"node": "a"})),
        ("backends string", setter((*_SVC, "backends"), "ab")),
        ("backend a list", setter(_BK, ["node", "a"])),
    ]
    return out


def _get(d: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        d = d[k]
    return d


_MUTATIONS = _mutations()


def test_every_mutated_shard_is_accepted_or_refused_as_before() -> None:
    kinds: dict[str, int] = {}
    for what, mutate in _MUTATIONS:
        data = _write(mutate(_shard_doc())).encode()
        got = _same(data)
        kind = got[0] if isinstance(got, tuple) else ("accepted" if all(len(g[-1]) == 3 for g in got) else "entry refused")
        kinds[kind] = kinds.get(kind, 0) + 1
    # the mutations reach every outcome: a whole shard refused, an entry refused, all accepted
    assert set(kinds) == {"shard refused", "entry refused", "accepted"}, kinds


def test_random_combinations_of_mutations_agree() -> None:
    rng = random.Random(13)
    for _ in range(1500):
        doc: Any = _shard_doc()
        for _, mutate in rng.sample(_MUTATIONS, rng.choice((2, 3))):
            try:
                doc = mutate(doc)
            except (KeyError, IndexError, TypeError, AttributeError):  # a path the previous one took away
                pass
        _same(_write(doc).encode())


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b"\xef\xbb\xbf" + b,  # a UTF-8 BOM: json reads it, orjson does not
        lambda b: b.decode().encode("utf-16"),
        lambda b: b.decode().encode("utf-32"),
        lambda b: b.replace(b'"vip":"', b'"vip":"\xed\xa0\x80', 1),  # a surrogate in UTF-8: json reads it
        lambda b: b.replace(b'"vip":"', b'"vip":"\xff', 1),
        lambda b: b.replace(b'"vip":"', b'"vip":"\x01', 1),
        lambda b: b.replace(b'"vip":"', b'"vip":"\\ud83d\\ude00', 1),
        lambda b: b.replace(b'"vip":"', b'"vip":"\\x', 1),
        lambda b: b + b"x",
        lambda b: b + b"\n\t\r ",
        lambda b: b"\x0c" + b,
        lambda b: b.replace(b"}\n}\n}", b"},\n}\n}"),
        lambda b: b[:-5],
        lambda b: b"",
    ],
)
def test_text_level_changes_agree(change: Callable[[bytes], bytes]) -> None:
    data = shard_bytes((s.name, idx.entry_line(s, f"{s.service_id:040x}")) for s in SERVICES)
    _same(change(data))


def test_nesting_json_cannot_follow_still_raises_what_it_raised() -> None:
    # orjson reads up to 1,024 levels; json stops at Python's recursion limit (1,000 by default, less
    # the stack below it; set lower here, the test process runs with a higher one): its error stands
    doc = _shard_doc()
    doc["services"]["ns/plain"]["service"]["vip"] = Raw("[" * 1010 + "]" * 1010)
    data = _write(doc).encode()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(900)
    try:
        assert _same(data) == ("raised", "RecursionError")
    finally:
        sys.setrecursionlimit(limit)


# --- through a real repository -------------------------------------------------------------------


def _edit_shard(name: str, edit: Callable[[bytes], bytes]) -> Callable[[Files], Files]:
    def f(files: Files) -> Files:
        path = shard_path(shard_of(name))
        return {**files, path: edit(files[path])}

    return f


@pytest.mark.parametrize(
    "edit",
    [
        lambda b: b,
        lambda b: b.replace(b'"port":', b'"port":1.0,"x":', 1),
        lambda b: b.replace(b'"protocol":', b'"protocol":NaN,"y":', 1),
        lambda b: b.replace(b'"replicas":', b'"replicas":18446744073709551616,"z":', 1),
        lambda b: b.replace(b'"backendMode":"nodePort"', b'"backendMode":"nodePort","backendMode":"podIP"', 1),
        lambda b: b.replace(b'"buckets":[', b'"buckets":[true,', 1),
        lambda b: b"\xef\xbb\xbf" + b,
    ],
    ids=["unchanged", "float", "nan", "big-int", "duplicate-key", "bool-bucket", "bom"],
)
def test_a_restart_reads_the_same_with_and_without_the_fast_path(tmp_path, caplog, monkeypatch, edit) -> None:
    audit, snaps = _recorded(tmp_path)
    audit.record(snaps[1].with_version(4), "pending")
    audit.record(snaps[1].with_version(4), "applied")
    victim = next(svc.name for svc in snaps[1].services if len(svc.backends) >= 2)
    _rewrite_tip(audit, snaps[1].config, _edit_shard(victim, edit))

    def read(fast: bool) -> tuple[Any, list[str]]:
        caplog.clear()
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(idx, "_ordinary_shard", lambda data: None)
            with caplog.at_level(logging.WARNING, logger="p4kube.audit"):
                got = AuditRepo.open_or_init(tmp_path / "audit", pack_every=0).last_applied(snaps[1].config)
        assert got is not None
        return ([repr(s) for s in got.services], got.digest), [r.getMessage() for r in caplog.records]

    assert read(True) == read(False)


def test_blob_data_reads_as_repo_objects_did(tmp_path) -> None:
    repo = pygit2.init_repository(tmp_path / "r", bare=True)
    blob = repo.create_blob(b'{"a": 1}\n')
    empty = repo.create_blob(b"")
    tb = repo.TreeBuilder()
    tb.insert("f", blob, pygit2.enums.FileMode.BLOB)
    tree = tb.write()
    assert blob_data(repo, blob) == cast(pygit2.Blob, repo[blob]).data == b'{"a": 1}\n'
    assert blob_data(repo, empty) == b""
    # not a blob, not there: the errors repo[oid] always gave
    with pytest.raises(AttributeError):
        cast(pygit2.Blob, repo[tree]).data  # the reference
    with pytest.raises(AttributeError):
        blob_data(repo, tree)
    missing = pygit2.Oid(hex="1" * 40)
    with pytest.raises(KeyError) as old:
        repo[missing]  # the reference
    with pytest.raises(KeyError) as new:
        blob_data(repo, missing)
    assert type(new.value) is type(old.value) and str(new.value) == str(old.value)
