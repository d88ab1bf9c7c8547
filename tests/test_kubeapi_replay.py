"""Replay the recorded kube-apiserver transcripts against the test API server.

Every exchange of ../shared/fixtures/kube-api/*.json is sent as recorded (method, path, headers,
body) in recording order (02 first: file 01 lists what 02 created), with the setup steps the
recording describes between files. Compared: status code, Content-Type (and Warning,
X-Content-Type-Options, Cache-Control; Transfer-Encoding for watches), and the bodies field by field.
Values the server picks (uid, timestamps, clusterIP, continue tokens, generated names) are
compared by shape and remembered so later requests that carry them are rewritten.
resourceVersions are compared by relation: equal recorded values must map to equal values, and
the order must be preserved (strictly between object versions, weakly for list/bookmark RVs).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest
from kubeapi import KubeApiServer, WatchOptions
from shared_fixtures import KUBE_API as FIXTURES

ORDER = ["02", "01", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12"]
USER_AGENT = "tx-recorder/1.0 (linux/amd64) python-requests"
TOKENS = {"<token>": ("tx-admin", ["system:masters"]), "<dev-user-token>": "dev-user"}

# Exchanges whose recorded answer depends on things this server does not model, with the reason.
SKIPPED = {
    "10/22": "Table output (Accept: as=Table) is not modeled",
}
# Watch timeouts shortened to keep the replay fast (the recorded ones are up to 70 s).
WATCH_TIMEOUT = {"04/1": 2}
DEFAULT_WATCH_TIMEOUT = 1
# Exchanges that only read (no writes in between): replayed at the same time to save the waits.
CONCURRENT = (
    ("04/6", "04/7", "04/8", "04/9", "04/10", "04/11", "04/12", "04/13"),
    ("05/5", "05/6", "05/7", "05/8"),
)
# Like the recorded cluster: etcd 3.4 could not serve WatchList requests (fixture 04/7-12).
REPLAY_WATCH_OPTIONS = WatchOptions(bookmark_lead=1.0, too_large_wait=0.3, watch_list=False)
BAD_JSON_BODY = b'{"apiVersion":"v1","kind":"Service","metadata":{"name":'
VOLATILE = {"uid", "creationTimestamp", "time", "deletionTimestamp"}


def load(file_prefix: str) -> dict[str, Any]:
    [path] = sorted(FIXTURES.glob(f"{file_prefix}-*.json"))
    return json.loads(path.read_text())


# ---- HTTP -----------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any
    closed_after: float = 0.0


def send(
    server: KubeApiServer,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    *,
    watch: bool = False,
    on_headers: Any = None,
) -> Answer:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        hdrs = dict(headers)
        hdrs["User-Agent"] = USER_AGENT
        started = time.monotonic()
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        merged: dict[str, str] = {}
        for k, val in resp.getheaders():
            merged[k] = f"{merged[k]}, {val}" if k in merged else val
        if on_headers is not None:
            on_headers()
        if watch and resp.status == 200:
            events = []
            while line := resp.readline():
                events.append(json.loads(line))
            return Answer(resp.status, merged, events, time.monotonic() - started)
        raw = resp.read()
        ctype = merged.get("Content-Type", "")
        parsed: Any = json.loads(raw) if ctype.startswith("application/json") else {"_raw_text": raw.decode()}
        return Answer(resp.status, merged, parsed)
    finally:
        conn.close()


# ---- rewriting and comparison ---------------------------------------------------------------


@dataclass
class Replay:
    server: KubeApiServer
    values: dict[str, str] = field(default_factory=dict)  # recorded volatile value -> ours
    managed: dict[str, Any] = field(default_factory=dict)  # recorded managedFields JSON -> ours
    rv_pairs: list[tuple[int, int, bool]] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)

    # -- resourceVersions --
    def pair_rv(self, recorded: Any, ours: Any, strict: bool, where: str, out: list[str]) -> None:
        try:
            r, o = int(recorded), int(ours)
        except (TypeError, ValueError):
            out.append(f"{where}: resourceVersion {ours!r} is not a decimal string")
            return
        if not isinstance(ours, str):
            out.append(f"{where}: resourceVersion must be a string, got {ours!r}")
        for r2, o2, s2 in self.rv_pairs:
            if r == r2 and o != o2:
                out.append(f"{where}: recorded RV {r} maps to {o} here but to {o2} before")
            elif r < r2 and not (o < o2 if (strict and s2) else o <= o2):
                out.append(f"{where}: RV order broken: recorded {r} < {r2} but ours {o} vs {o2}")
            elif r > r2 and not (o > o2 if (strict and s2) else o >= o2):
                out.append(f"{where}: RV order broken: recorded {r} > {r2} but ours {o} vs {o2}")
        self.rv_pairs.append((r, o, strict))
        self.values.setdefault(f"rv:{r}", str(o))

    def map_rv(self, recorded: str) -> str:
        if f"rv:{recorded}" in self.values:
            return self.values[f"rv:{recorded}"]
        known = [r for r, _, _ in self.rv_pairs]
        if known and int(recorded) > max(known):
            return str(self.server.resource_version)  # "a fresh RV": from a list not recorded
        return recorded  # older than anything this replay made: keep (2, 300)

    # -- requests --
    def rewrite_path(self, path_and_query: str, key: str, watch: bool) -> str:
        split = urlsplit(path_and_query)
        parts = [self.values.get(f"name:{p}", p) for p in split.path.split("/")]
        query = []
        for k, val in parse_qsl(split.query, keep_blank_values=True):
            if k == "resourceVersion" and val not in ("", "0"):
                val = self.map_rv(val)
            elif k == "continue":
                val = self.values.get(f"continue:{val}", val)
            elif k == "timeoutSeconds" and watch:
                val = str(WATCH_TIMEOUT.get(key, DEFAULT_WATCH_TIMEOUT))
            query.append((k, val))
        path = "/".join(quote(p, safe="") for p in parts)
        return path + ("?" + urlencode(query, safe="") if query else "")

    def rewrite_body(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            out = {}
            for k, val in value.items():
                if k == "managedFields" and json.dumps(val, sort_keys=True) in self.managed:
                    out[k] = self.managed[json.dumps(val, sort_keys=True)]
                else:
                    out[k] = self.rewrite_body(val, k)
            return out
        if isinstance(value, list):
            return [self.rewrite_body(v, key) for v in value]
        if isinstance(value, str):
            if key == "resourceVersion":
                return self.map_rv(value)
            if key in ("uid", "clusterIP", "clusterIPs"):
                return self.values.get(f"{key.rstrip('s')}:{value}", value)
        return value

    def substitute(self, text: str) -> str:
        """A recorded message with our values for the volatile parts."""
        for k, ours in self.values.items():
            kind, _, recorded = k.partition(":")
            if kind in ("uid", "name", "clusterIP") and recorded in text:
                text = text.replace(recorded, ours)
        return text

    # -- responses --
    def compare(
        self, exp: Any, act: Any, where: str, out: list[str], *, list_meta: bool = False, bookmark: bool = False
    ) -> None:
        if isinstance(exp, dict):
            if not isinstance(act, dict):
                out.append(f"{where}: expected an object, got {act!r:.200}")
                return
            missing = [k for k in exp if k not in act]
            extra = [k for k in act if k not in exp]
            if missing or extra:
                out.append(f"{where}: keys differ: missing {missing}, unexpected {extra}")
            if "generateName" in exp and exp.get("generateName") == act.get("generateName") and "name" in act:
                self.values.setdefault(f"name:{exp['name']}", act["name"])
            for k in exp:
                if k not in act:
                    continue
                weak = list_meta or bookmark or (k == "metadata" and ("items" in exp or exp.get("kind") == "Status"))
                self.compare_key(
                    k,
                    exp[k],
                    act[k],
                    f"{where}.{k}",
                    out,
                    exp,
                    list_meta=weak,
                    bookmark=bookmark or exp.get("type") == "BOOKMARK",
                )
            return
        if isinstance(exp, list):
            if not isinstance(act, list) or len(exp) != len(act):
                out.append(f"{where}: expected a list of {len(exp)}, got {act!r:.300}")
                return
            for i, (e, a) in enumerate(zip(exp, act, strict=True)):
                self.compare(e, a, f"{where}[{i}]", out, bookmark=bookmark)
            return
        if isinstance(exp, str):
            exp = self.values.get(f"name:{exp}", exp)
        if exp != act:
            out.append(f"{where}: expected {exp!r:.300}, got {act!r:.300}")

    def compare_key(
        self,
        k: str,
        exp: Any,
        act: Any,
        where: str,
        out: list[str],
        parent: dict[str, Any],
        *,
        list_meta: bool,
        bookmark: bool,
    ) -> None:
        if k in VOLATILE:
            if not isinstance(act, type(exp)):
                out.append(f"{where}: expected a {type(exp).__name__}, got {act!r}")
            elif isinstance(exp, str) and exp:
                self.values[f"{k}:{exp}"] = act
            return
        if k == "resourceVersion" and isinstance(exp, str):
            self.pair_rv(exp, act, not (list_meta or bookmark), where, out)
            return
        if k == "continue":
            if (exp == "") != (act == ""):
                out.append(f"{where}: expected continue {'empty' if exp == '' else 'set'}, got {act!r}")
            elif exp:
                self.values[f"continue:{exp}"] = act
            return
        if k in ("clusterIP", "clusterIPs"):
            for e, a in zip(
                exp if isinstance(exp, list) else [exp], act if isinstance(act, list) else [act], strict=False
            ):
                if e == "None" or e == a:
                    continue
                try:
                    ipaddress.ip_address(a)
                except ValueError:
                    out.append(f"{where}: {a!r} is not an IP address")
                self.values[f"clusterIP:{e}"] = a
            return
        if k == "name" and "generateName" in parent:
            if not (isinstance(act, str) and act.startswith(parent["generateName"]) and len(act) == len(exp)):
                out.append(f"{where}: generated name {act!r} does not look like {exp!r}")
            return
        if k == "items" and isinstance(exp, list):
            # generated names sort differently here: order the recording by our names
            def order(item: Any) -> tuple[str, str]:
                meta = item.get("metadata", {}) if isinstance(item, dict) else {}
                return (meta.get("namespace", ""), self.values.get(f"name:{meta.get('name')}", meta.get("name", "")))

            if any(f"name:{(e.get('metadata') or {}).get('name')}" in self.values for e in exp if isinstance(e, dict)):
                exp = sorted(exp, key=order)
        if k == "managedFields" and isinstance(exp, list):
            self.managed[json.dumps(exp, sort_keys=True)] = act
            if isinstance(act, list):
                # The server orders entries by their `time`, which has 1-second resolution:
                # whether two writes fall in the same second (then the manager name decides)
                # depends on timing, so the recording and a replay may differ in order only.
                # Compare the entries, matched by manager, operation and subresource.
                def entry_key(e: Any) -> tuple[str, str, str]:
                    return (str(e.get("manager")), str(e.get("operation")), str(e.get("subresource", ""))) if isinstance(e, dict) else ("", "", "")

                exp, act = sorted(exp, key=entry_key), sorted(act, key=entry_key)
        if (
            k == "conditions"
            and parent.get("acceptedNames") is not None
            and isinstance(exp, list)
            and isinstance(act, list)
        ):
            # CRD status conditions are written by the server: their times are its own
            exp = [
                {**e, "lastTransitionTime": a.get("lastTransitionTime")} if isinstance(a, dict) else e
                for e, a in zip(exp, act, strict=False)
            ] + exp[len(act) :]
        if k == "message" and isinstance(exp, str) and isinstance(act, str) and parent.get("kind") == "Status":
            if self.substitute(exp) != act:
                out.append(f"{where}: expected {self.substitute(exp)!r:.400}, got {act!r:.400}")
            return
        self.compare(exp, act, where, out, list_meta=list_meta, bookmark=bookmark)


# ---- special comparisons --------------------------------------------------------------------


def _status_msg_prefix_suffix(exp: dict[str, Any], act: dict[str, Any], out: list[str], where: str) -> None:
    """09/6: the message embeds the whole patched object; compare around it."""
    e, a = exp["message"], act.get("message", "")
    head, tail = e.split('Invalid value: "', 1)[0], e.rsplit('\\"}}": ', 1)[-1]
    if not a.startswith(head + 'Invalid value: "') or not a.endswith('": ' + tail):
        out.append(f"{where}: message {a[:200]!r}... does not frame the patched object like {head!r}...{tail!r}")
    embedded = json.loads(json.loads(a[len(head) + len("Invalid value: ") : -len(tail) - 2]))
    if embedded.get("spec", {}).get("renewTime") != "2026-11-22T10:30:00.123456789Z":
        out.append(f"{where}: embedded object lacks the bad renewTime: {embedded}")
    for k in ("kind", "apiVersion", "status", "reason", "code"):
        if exp.get(k) != act.get(k):
            out.append(f"{where}.{k}: expected {exp.get(k)!r}, got {act.get(k)!r}")
    if [c["field"] for c in exp["details"]["causes"]] != [c["field"] for c in act.get("details", {}).get("causes", [])]:
        out.append(f"{where}: causes differ: {act.get('details')}")


def _crd_invalid(exp: dict[str, Any], act: dict[str, Any], out: list[str], where: str) -> None:
    """10/1: the same causes; their order follows Go map iteration on the real server."""

    def key(c: dict[str, Any]) -> str:
        return json.dumps(c, sort_keys=True)

    if sorted(map(key, exp["details"]["causes"])) != sorted(map(key, act.get("details", {}).get("causes", []))):
        out.append(f"{where}: causes differ: {act.get('details')}")
    head = exp["message"].split("[", 1)[0]
    if not act.get("message", "").startswith(head):
        out.append(f"{where}: message {act.get('message')!r:.300} does not start with {head!r}")
    for k in ("code", "reason", "status"):
        if exp[k] != act.get(k):
            out.append(f"{where}.{k}: expected {exp[k]!r}, got {act.get(k)!r}")


def _too_old(exp: dict[str, Any], act: dict[str, Any], sent_rv: str, out: list[str], where: str) -> None:
    m = re.fullmatch(r"too old resource version: (\d+) \((\d+)\)", act.get("message", ""))
    if not m or m.group(1) != sent_rv or int(m.group(2)) < int(sent_rv):
        out.append(
            f"{where}: message {act.get('message')!r} is not 'too old resource version: {sent_rv} (>= {sent_rv})'"
        )
    for k in ("kind", "apiVersion", "status", "reason", "code", "metadata"):
        if exp.get(k) != act.get(k):
            out.append(f"{where}.{k}: expected {exp.get(k)!r}, got {act.get(k)!r}")


def _filter_discovery(key: str, exp: Any, served: set[str]) -> Any:
    """12/5-8: keep only what this server serves (the recording lists every kind of a full cluster)."""
    exp = json.loads(json.dumps(exp))
    if key == "12/5":
        exp["resources"] = [r for r in exp["resources"] if r["name"] in served]
    elif key == "12/6":
        exp["groups"] = [g for g in exp["groups"] if g["name"] in served]
    elif key in ("12/7", "12/8"):
        for item in exp["items"]:
            for ver in item["versions"]:
                ver["resources"] = [r for r in ver["resources"] if r["resource"] in served]
                for r in ver["resources"]:
                    if "subresources" in r:
                        r["subresources"] = [
                            s for s in r["subresources"] if f"{r['resource']}/{s['subresource']}" in served
                        ]
    return exp


# ---- setup steps between files --------------------------------------------------------------

ADMIN = {"Authorization": "Bearer <token>", "Accept": "application/json", "Content-Type": "application/json"}


def _ok(ans: Answer, what: str) -> Any:
    assert ans.status in (200, 201), f"setup {what}: {ans.status} {ans.body}"
    return ans.body


def setup_cluster(rp: Replay) -> None:
    """What existed before the recording: namespace tx, and a permissive shared CRD (10/0)."""
    s = rp.server
    _ok(send(s, "POST", "/api/v1/namespaces", ADMIN, json.dumps({"metadata": {"name": "tx"}}).encode()), "namespace tx")
    shared = load("10")["exchanges"][0]["response"]["body"]
    body = {
        "apiVersion": shared["apiVersion"],
        "kind": shared["kind"],
        "metadata": {"name": shared["metadata"]["name"]},
        "spec": {k: val for k, val in shared["spec"].items() if k != "conversion"},
    }
    conn_headers = dict(ADMIN)
    conn = http.client.HTTPConnection(s.host, s.port, timeout=10)
    conn.request(
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        json.dumps(body).encode(),
        {**conn_headers, "User-Agent": "OpenAPI-Generator/37.0.2/python"},
    )
    resp = conn.getresponse()
    assert resp.status == 201, resp.read()
    conn.close()


def before_file(rp: Replay, prefix: str) -> None:
    s = rp.server
    if prefix == "01":
        for i in (1, 2, 3):
            body = {
                "metadata": {"name": f"tx-page-{i}"},
                "spec": {"selector": {"app": "tx-page"}, "ports": [{"port": 8000 + i}]},
            }
            _ok(send(s, "POST", "/api/v1/namespaces/tx/services", ADMIN, json.dumps(body).encode()), "tx-page")
    if prefix == "03":
        for i in (1, 2, 3):
            _ok(send(s, "DELETE", f"/api/v1/namespaces/tx/services/tx-page-{i}", ADMIN, None), "delete tx-page")
    if prefix == "04":  # the recorder recreated the slice (fixture 05/8 shows DELETED 1022, ADDED 1023)
        _ok(
            send(s, "DELETE", "/apis/discovery.k8s.io/v1/namespaces/tx/endpointslices/tx-web-abc12", ADMIN, None),
            "delete slice",
        )
        body = load("03")["exchanges"][0]["request"]["body"]
        _ok(
            send(s, "POST", "/apis/discovery.k8s.io/v1/namespaces/tx/endpointslices", ADMIN, json.dumps(body).encode()),
            "slice",
        )


def before_exchange(rp: Replay, key: str, state: dict[str, Any]) -> None:
    s = rp.server
    if key == "04/6":  # the recorder wrote a ConfigMap so the revision moved past the last slice write
        bump = json.dumps({"metadata": {"labels": {"tx-bump": "1"}}}).encode()
        _ok(
            send(s, "PATCH", "/api/v1/namespaces/tx", {**ADMIN, "Content-Type": "application/merge-patch+json"}, bump),
            "bump",
        )
    if key == "05/6":  # the Lease watch cache had rolled over (kube-apiserver renews its own Lease)
        s.expire_watch_cache(["leases"])
    if key == "05/9":  # served from watch-cache snapshots down to here; older Exact lists hit etcd
        s.compact(int(state["05/0 list rv"]))
    if key == "05/15":  # kube-apiserver's own compaction passed the old revision
        s.compact()


# ---- the replay -----------------------------------------------------------------------------


def _headers(exp: dict[str, str], act: dict[str, str], watch: bool, out: list[str], where: str) -> None:
    names = ["Content-Type", "Warning", "X-Content-Type-Options", "Cache-Control"]
    if watch:
        names.append("Transfer-Encoding")
    if exp.get("ETag"):
        names.append("Vary")
        if not act.get("ETag"):
            out.append(f"{where}: ETag missing")
    for name in names:
        if exp.get(name) != act.get(name):
            out.append(f"{where}: header {name}: expected {exp.get(name)!r}, got {act.get(name)!r}")


def replay_exchange(rp: Replay, key: str, ex: dict[str, Any], state: dict[str, Any]) -> Answer:
    req, rec = ex["request"], ex["response"]
    watch = isinstance(rec["body"], list) and "event_arrival_s" in rec
    path = rp.rewrite_path(req["path_and_query"], key, watch)
    if req.get("body_raw") is not None:
        body: bytes | None = req["body_raw"].encode()
    elif req["body"] is not None:
        body = json.dumps(rp.rewrite_body(req["body"])).encode()
    elif req["method"] in ("POST", "PUT"):
        body = BAD_JSON_BODY  # 08/22: the recorder sent a truncated JSON document
    else:
        body = None
    return send(rp.server, req["method"], path, req["headers"], body, watch=watch)


def compare_exchange(rp: Replay, key: str, ex: dict[str, Any], ans: Answer, out: list[str]) -> None:
    rec = ex["response"]
    watch = isinstance(rec["body"], list) and "event_arrival_s" in rec
    if ans.status != rec["status"]:
        out.append(f"status: expected {rec['status']}, got {ans.status}: {json.dumps(ans.body)[:600]}")
        return
    _headers(rec["headers"], ans.headers, watch, out, "headers")
    exp = rec["body"]
    if key == "09/6":
        _status_msg_prefix_suffix(exp, ans.body, out, "body")
    elif key == "10/1":
        _crd_invalid(exp, ans.body, out, "body")
    elif key in ("05/6", "05/7"):
        [event] = ans.body if len(ans.body) == 1 else [{}]
        if event.get("type") != "ERROR":
            out.append(f"events: expected one ERROR event, got {ans.body}")
        else:
            _too_old(exp[0]["object"], event["object"], "300", out, "events[0].object")
    elif key in ("04/8", "04/10"):  # 504 Too large resource version: <current revision>, current: <slice cache>
        events = ans.body
        got = events[0]["object"].get("message", "") if len(events) == 1 else ""
        m = re.fullmatch(r"Timeout: Too large resource version: (\d+), current: (\d+)", got)
        if m is None:
            out.append(f"events: expected one ERROR 504 event, got {events}")
        else:
            e = re.fullmatch(r"Timeout: Too large resource version: (\d+), current: (\d+)", exp[0]["object"]["message"])
            assert e is not None
            rp.pair_rv(e.group(1), m.group(1), False, "message", out)
            rp.pair_rv(e.group(2), m.group(2), False, "message", out)
            exp_obj = {k: val for k, val in exp[0]["object"].items() if k != "message"}
            rp.compare(
                exp_obj, {k: val for k, val in events[0]["object"].items() if k != "message"}, "events[0].object", out
            )
    elif key == "05/8":  # the recording also replays earlier runs' events: compare this run's tail
        tail = [e for e in exp if int(e["object"]["metadata"]["resourceVersion"]) >= 1014]
        rp.compare([e["type"] for e in tail], [e.get("type") for e in ans.body], "event types", out)
        rp.compare(
            [e["object"]["metadata"]["name"] for e in tail],
            [e["object"]["metadata"]["name"] for e in ans.body],
            "event names",
            out,
        )
        rp.compare(
            [rp.values.get(f"uid:{e['object']['metadata']['uid']}") for e in tail],
            [e["object"]["metadata"]["uid"] for e in ans.body],
            "event uids",
            out,
        )
    elif key == "12/3":
        if sorted(exp) != sorted(ans.body) or (exp["major"], exp["minor"]) != (ans.body["major"], ans.body["minor"]):
            out.append(f"body: {ans.body}")
    elif key == "12/4":
        if exp["kind"] != ans.body.get("kind") or exp["versions"] != ans.body.get("versions"):
            out.append(f"body: {ans.body}")
    elif key in ("12/5", "12/6", "12/7", "12/8"):
        served = {t.resource for t in rp.server.api.types.values()} | {t.group for t in rp.server.api.types.values()}
        served |= {f"{t.resource}/{s}" for t in rp.server.api.types.values() for s in t.subresources}
        rp.compare(_filter_discovery(key, exp, served), ans.body, "body", out)
    else:
        rp.compare(exp, ans.body, "body", out, bookmark=False)
    if watch and ans.closed_after > 0:
        limit = WATCH_TIMEOUT.get(key, DEFAULT_WATCH_TIMEOUT) + 3
        if rec.get("stream_closed_by_server_after_s", 0) > 1 and ans.closed_after > limit:
            out.append(f"stream took {ans.closed_after:.1f} s to close")


def run_file(rp: Replay, prefix: str, state: dict[str, Any]) -> None:
    data = load(prefix)
    exchanges = data["exchanges"]
    before_file(rp, prefix)
    i = 0
    while i < len(exchanges):
        key = f"{prefix}/{i}"
        ex = exchanges[i]
        if key in SKIPPED:
            i += 1
            continue
        before_exchange(rp, key, state)
        if key == "04/1":  # a watch with 4 concurrent writes (exchanges 2-5) sent once its headers arrived
            i = _concurrent_watch(rp, prefix, exchanges, i, state)
            continue
        group = next((g for g in CONCURRENT if g[0] == key), None)
        if group is not None:
            i = _concurrent_reads(rp, prefix, exchanges, group, state)
            continue
        out: list[str] = []
        ans = replay_exchange(rp, key, ex, state)
        compare_exchange(rp, key, ex, ans, out)
        if key == "05/0":
            state["05/0 list rv"] = ans.body["metadata"]["resourceVersion"]
        rp.problems[key] = out
        i += 1


def _concurrent_watch(rp: Replay, prefix: str, exchanges: list[dict[str, Any]], i: int, state: dict[str, Any]) -> int:
    watch_key = f"{prefix}/{i}"
    headers_in = threading.Event()
    result: dict[str, Any] = {}
    ex = exchanges[i]
    path = rp.rewrite_path(ex["request"]["path_and_query"], watch_key, True)

    def run() -> None:
        try:
            result["answer"] = send(
                rp.server, "GET", path, ex["request"]["headers"], None, watch=True, on_headers=headers_in.set
            )
        except Exception as e:  # noqa: BLE001 - reported as a replay problem below
            result["error"] = e
            headers_in.set()

    t = threading.Thread(target=run)
    t.start()
    assert headers_in.wait(10), "watch headers never arrived"
    writes = []
    for j in range(i + 1, i + 5):
        key = f"{prefix}/{j}"
        ans = replay_exchange(rp, key, exchanges[j], state)
        writes.append((key, exchanges[j], ans))
    t.join(30)
    assert not t.is_alive(), "watch stream did not end"
    if "error" in result:
        raise result["error"]
    out: list[str] = []
    compare_exchange(rp, watch_key, ex, result["answer"], out)
    rp.problems[watch_key] = out
    for key, wex, ans in writes:
        out = []
        compare_exchange(rp, key, wex, ans, out)
        rp.problems[key] = out
    return i + 5


def _concurrent_reads(
    rp: Replay, prefix: str, exchanges: list[dict[str, Any]], group: tuple[str, ...], state: dict[str, Any]
) -> int:
    answers: dict[str, Any] = {}
    threads = []
    for key in group:
        before_exchange(rp, key, state)
        ex = exchanges[int(key.split("/")[1])]

        def run(key: str = key, ex: dict[str, Any] = ex) -> None:
            try:
                answers[key] = replay_exchange(rp, key, ex, state)
            except Exception as e:  # noqa: BLE001 - reported below
                answers[key] = e

        threads.append(threading.Thread(target=run))
        threads[-1].start()
    for t in threads:
        t.join(30)
    for key in group:
        ans = answers.get(key)
        if isinstance(ans, Exception) or ans is None:
            raise AssertionError(f"[{key}] request failed: {ans!r}")
        out: list[str] = []
        compare_exchange(rp, key, exchanges[int(key.split("/")[1])], ans, out)
        rp.problems[key] = out
    return int(group[-1].split("/")[1]) + 1


@pytest.fixture(scope="module")
def replay() -> Any:
    server = KubeApiServer(
        tokens=TOKENS,
        rbac=[],
        allow_all=False,
        initial_resource_version=1000,
        watch_options=REPLAY_WATCH_OPTIONS,
    )
    server.start()
    try:
        rp = Replay(server)
        setup_cluster(rp)
        state: dict[str, Any] = {}
        for prefix in ORDER:
            run_file(rp, prefix, state)
        yield rp
    finally:
        server.stop()


@pytest.mark.parametrize("prefix", ORDER)
def test_replay_file(replay: Replay, prefix: str) -> None:
    problems = {k: v for k, v in replay.problems.items() if k.startswith(prefix + "/") and v}
    assert not problems, "\n".join(f"[{k}] " + "\n      ".join(v) for k, v in sorted(problems.items()))


def test_every_exchange_replayed_or_skipped_with_reason(replay: Replay) -> None:
    for prefix in ORDER:
        for i, _ in enumerate(load(prefix)["exchanges"]):
            key = f"{prefix}/{i}"
            assert key in replay.problems or key in SKIPPED, key
    assert all(reason for reason in SKIPPED.values())
