"""The fault matrix (DESIGN.md 6 and 6.1): one row per fault, each run through the real
`p4kube` command in its own process against two software P4Runtime switches on 127.0.0.1, a
real Git intent repository made from intent-examples/multi-service and a real Git audit
repository.

Every row ends by reading both switches back over P4Runtime and comparing what each holds with
the snapshot that must be there, and by reading the audit history (AuditRepo) for the records
the row may, and may not, add.

Set-up: `world` gives each row its own switch pair, intent repository, recording and audit
repository; `world.baseline()` runs the first `reconcile --once` (v1 applied on both switches),
in this process through the same entry point to save a Python start-up per row. What a row
asserts about always runs as a real process.
"""

from __future__ import annotations

import contextlib
import copy
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pygit2
import pytest
from finsy.proto import p4r, p4r_grpc
from ruamel.yaml import YAML
from test_reconcile_audit import CONFIG, MULTI, entries_of, intent_repo, switch_entries

from reconciler import p4names as n
from reconciler.audit.repo import AuditRepo
from reconciler.cli import main
from reconciler.sim.server import SoftwareSwitch
from reconciler.snapshot import Snapshot

ROOT = Path(__file__).resolve().parents[1]
P4KUBE = ROOT / ".venv" / "bin" / "p4kube"
if not P4KUBE.exists():  # another venv layout: the command installed beside this interpreter
    P4KUBE = Path(sys.executable).with_name("p4kube")
CLUSTER_TEXT = (MULTI / "cluster.yaml").read_text()
LBCONFIG_TEXT = (MULTI / "lbconfig.yaml").read_text()
SERVED = ("payments/dns-cache", "payments/ledger", "web/api", "web/frontend")
RUN_TIMEOUT = 90  # seconds for one p4kube process; they take about 2 s


def _yaml() -> YAML:
    y = YAML(typ="safe", pure=True)
    y.default_flow_style = False
    y.width = 4096
    return y


CLUSTER_DOC = _yaml().load(CLUSTER_TEXT)


# --- the recording ---------------------------------------------------------------------------


def recording() -> dict:
    """A fresh copy of the recorded `kubectl get services,endpointslices,nodes -A -o yaml`."""
    return copy.deepcopy(CLUSTER_DOC)


def service_obj(doc: dict, key: str) -> dict:
    ns, name = key.split("/")
    for item in doc["items"]:
        if item["kind"] == "Service" and item["metadata"]["namespace"] == ns and item["metadata"]["name"] == name:
            return item
    raise KeyError(key)


def slices_of(doc: dict, key: str) -> list[dict]:
    ns, name = key.split("/")
    return [
        item for item in doc["items"]
        if item["kind"] == "EndpointSlice" and item["metadata"]["namespace"] == ns
        and item["metadata"].get("labels", {}).get("kubernetes.io/service-name") == name
    ]


def node_obj(doc: dict, name: str) -> dict:
    for item in doc["items"]:
        if item["kind"] == "Node" and item["metadata"]["name"] == name:
            return item
    raise KeyError(name)


def delete_services(doc: dict, *keys: str) -> dict:
    """The Services deleted, with their EndpointSlices (Kubernetes garbage-collects those)."""
    gone = {id(service_obj(doc, k)) for k in keys} | {id(s) for k in keys for s in slices_of(doc, k)}
    doc["items"] = [item for item in doc["items"] if id(item) not in gone]
    return doc


def add_ready_endpoint(doc: dict, key: str, node: str, address: str) -> dict:
    """One more ready replica of Service `key` on `node` (in its first EndpointSlice)."""
    sl = slices_of(doc, key)[0]
    sl["endpoints"].append({
        "addresses": [address],
        "conditions": {"ready": True, "serving": True, "terminating": False},
        "nodeName": node,
        "targetRef": {"kind": "Pod", "name": f"{key.split('/')[1]}-extra", "namespace": key.split("/")[0]},
    })
    return doc


def internal_ip(doc: dict, node: str) -> str:
    return next(a["address"] for a in node_obj(doc, node)["status"]["addresses"] if a["type"] == "InternalIP")


def dump(doc: dict) -> str:
    import io

    buf = io.StringIO()
    _yaml().dump(doc, buf)
    return buf.getvalue()


def cut_at_item_boundary(text: str, kind: str, nth: int) -> str:
    """The recording as a writer interrupted at the start of the nth item of `kind` left it:
    whole items up to there, nothing after (no `kind: List`, no metadata): still valid YAML."""
    starts = [m.start() for m in re.finditer(rf"^- apiVersion: v1\n  kind: {kind}\n", text, re.MULTILINE)]
    return text[: starts[nth]]


# --- processes and read-back -----------------------------------------------------------------


@dataclass
class Run:
    args: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float = 0.0

    @property
    def out(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:  # what a failed assertion shows
        return f"$ p4kube {' '.join(self.args)}\nexit {self.code} after {self.seconds:.1f} s\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def p4kube(*args: str | os.PathLike[str], cwd: Path) -> Run:
    """One `p4kube` process, run in `cwd` (a test's directory: relative defaults such as
    --state stay there)."""
    argv = [str(a) for a in args]
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(P4KUBE), *argv], check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    run = Run(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)
    print(run)  # shown with a failing row
    return run


def held(sw: SoftwareSwitch) -> set[tuple]:
    """What the switch holds, read over P4Runtime; a switch with no pipeline holds nothing."""
    try:
        return switch_entries(sw)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.FAILED_PRECONDITION:  # no forwarding pipeline yet
            return set()
        raise


def records(audit_dir: Path) -> list[tuple[int | None, str | None]]:
    """(version, outcome) of every record of the config, newest first."""
    if not audit_dir.is_dir():
        return []
    audit = AuditRepo.open_or_init(audit_dir, read_only=True)
    return [(e.version, e.outcome) for e in audit.history(config=CONFIG)]


def last_applied(audit_dir: Path) -> Snapshot | None:
    return AuditRepo.open_or_init(audit_dir, read_only=True).last_applied(CONFIG)


def commit_all(repo_dir: Path, message: str) -> str:
    repo = pygit2.Repository(str(repo_dir))
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("dev", "dev@example.com", 1700000100, 0)
    parent = repo.head.target
    return str(repo.create_commit("HEAD", sig, sig, message, repo.index.write_tree(), [parent]))


def service(snap: Snapshot, name: str):
    return next(s for s in snap.services if s.name == name)


def services_of(snap: Snapshot, key: str) -> list:
    return [s for s in snap.services if s.service_key == key]


def entries_of_service(entries: set[tuple], sid: int, vip_key: tuple) -> set[tuple]:
    """A service's vip_table entry and backend_table entries among read-back entries."""
    return {
        e for e in entries
        if (e[0] == n.BACKEND_TABLE and e[1][0] == sid) or (e[0] == n.VIP_TABLE and e[1] == vip_key)
    }


@dataclass
class World:
    """One row's switches, intent, recording and audit repository."""

    tmp: Path
    standby: SoftwareSwitch
    primary: SoftwareSwitch
    intent: Path
    cluster: Path
    audit: Path
    v1: Snapshot | None = None
    extra_switches: list[SoftwareSwitch] = field(default_factory=list)

    def reconcile_args(self, cluster: Path | None = None) -> list:
        return ["reconcile", "--once", "--allow-insecure-switches", "--intent", self.intent, "--pipeline-dir", self.intent, "--cluster", cluster or self.cluster,
                "--audit-repo", self.audit]

    def reconcile(self, cluster: Path | None = None) -> Run:
        return self.p4kube(*self.reconcile_args(cluster))

    def p4kube(self, *args: str | os.PathLike[str]) -> Run:
        return p4kube(*args, cwd=self.tmp)

    def baseline(self) -> Snapshot:
        """v1 applied to both switches (checked by read-back) and recorded."""
        code = main([str(a) for a in self.reconcile_args()])
        assert code == 0, "baseline reconcile failed"
        self.v1 = last_applied(self.audit)
        assert self.v1 is not None and self.v1.version == 1
        self.assert_both_hold(self.v1)
        assert records(self.audit) == [(1, "applied"), (1, "pending")]
        return self.v1

    def write_cluster(self, doc_or_text: dict | str, name: str = "cluster-next.yaml") -> Path:
        path = self.tmp / name
        path.write_text(doc_or_text if isinstance(doc_or_text, str) else dump(doc_or_text))
        return path

    def edit_intent(self, edit, message: str) -> None:
        f = self.intent / "lbconfig.yaml"
        text = f.read_text()
        new = edit(text)
        assert new != text, "the intent edit changed nothing"
        f.write_text(new)
        commit_all(self.intent, message)

    def assert_both_hold(self, snap: Snapshot, why: str = "") -> None:
        want = entries_of(snap)
        got_standby, got_primary = held(self.standby), held(self.primary)
        assert got_standby == want, f"standby does not hold v{snap.version} {why}: " + _delta(got_standby, want)
        assert got_primary == want, f"primary does not hold v{snap.version} {why}: " + _delta(got_primary, want)

    def new_switch(self) -> SoftwareSwitch:
        sw = SoftwareSwitch()
        self.extra_switches.append(sw)
        sw.start("127.0.0.1:0")
        return sw


def _delta(got: set, want: set) -> str:
    missing, extra = want - got, got - want
    return f"{len(got)} entries held, {len(want)} expected; {len(missing)} missing (e.g. {sorted(missing)[:2]}), " \
           f"{len(extra)} unexpected (e.g. {sorted(extra)[:2]})"


@pytest.fixture
def world(tmp_path, switch_pair):
    standby, primary = switch_pair
    intent = intent_repo(tmp_path / "intent", (standby.port, primary.port))
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER_TEXT)
    w = World(tmp_path, standby, primary, intent, cluster, tmp_path / "audit.git")
    try:
        yield w
    finally:
        for sw in w.extra_switches:
            sw.stop(0)


def swap_port(text: str, old: int, new: int) -> str:
    return text.replace(f"127.0.0.1:{old}\n", f"127.0.0.1:{new}\n")


# --- 1. a config error is refused before anything is written -----------------------------------


@pytest.mark.slow
def test_unknown_algorithm_is_refused_by_validate_render_and_reconcile(world):
    v1 = world.baseline()
    world.edit_intent(lambda t: t.replace("algorithm: replica-weighted", "algorithm: round-robn"), "typo")
    text = (world.intent / "lbconfig.yaml").read_text()
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.strip().startswith("algorithm:"))
    col = text.splitlines()[line - 1].index("round-robn") + 1

    r = world.p4kube("validate", world.intent)
    assert r.code == 1, r
    assert re.search(rf"lbconfig\.yaml:{line}:{col}: spec\.algorithm", r.out), r

    out = world.tmp / "snap.json"
    r = world.p4kube("render", "--intent", world.intent, "--cluster", world.cluster, "--out", out)
    assert r.code == 1, r
    assert not out.exists(), f"render wrote {out} for an invalid config\n{r}"

    writes = (world.standby.writes_processed, world.primary.writes_processed)
    r = world.reconcile()
    assert r.code == 1, r
    assert "spec.algorithm" in r.out, r
    assert "Traceback" not in r.out, r
    assert (world.standby.writes_processed, world.primary.writes_processed) == writes, "a switch was written"
    world.assert_both_hold(v1, "after a refused config")
    assert records(world.audit) == [(1, "applied"), (1, "pending")]


# --- 2. input that is not a whole cluster is an error -----------------------------------------

CUT_SHORT = cut_at_item_boundary(CLUSTER_TEXT, "Node", 3)  # Services, slices, 3 of the 7 Nodes


@pytest.mark.parametrize(
    "text",
    ["", "null\n", "# kubectl get services,endpointslices,nodes -A -o yaml\n# (nothing yet)\n", CUT_SHORT],
    ids=["empty", "null", "comment-only", "cut-short-in-items"],
)
def test_a_recording_that_is_not_a_whole_cluster_is_an_error(world, text):
    v1 = world.baseline()
    if text is CUT_SHORT:  # the premise: a real List cut at an item boundary still parses
        cut = _yaml().load(text)
        assert isinstance(cut, dict) and "kind" not in cut and len(cut["items"]) < len(CLUSTER_DOC["items"])
    bad = world.write_cluster(text, "cluster-bad.yaml")
    writes = (world.standby.writes_processed, world.primary.writes_processed)
    r = world.reconcile(bad)
    assert r.code == 1, r
    assert "cluster-bad.yaml" in r.out, r
    assert "Traceback" not in r.out, r
    assert (world.standby.writes_processed, world.primary.writes_processed) == writes, "a switch was written"
    world.assert_both_hold(v1, "after a broken recording")
    assert records(world.audit) == [(1, "applied"), (1, "pending")]


# --- 3, 4. the switches' own state decides ----------------------------------------------------


def _writes_named(out: str, name: str) -> list[int]:
    """The write counts the output's lines about switch `name` state ("... name ...: N writes")."""
    return [int(m.group(1)) for line in out.splitlines() if name in line for m in re.finditer(r"(\d+) writes", line)]


def _assert_repaired(world: World, r: Run, v1: Snapshot, name: str, other: str) -> None:
    assert r.code == 0, r
    assert "up to date" not in r.out, f"said up to date with a switch that was not holding v1\n{r}"
    assert "repair" in r.out.lower(), r
    # It says what it repaired: the emptied switch took writes, the other one none.
    assert any(_writes_named(r.out, name)), f"the output does not say {name} was written\n{r}"
    assert not any(_writes_named(r.out, other)), f"the output says {other}, which held v1, was written\n{r}"
    world.assert_both_hold(v1, "after the repair")
    new = records(world.audit)[:-2]
    # A repair may be recorded (as the same version, applied); nothing else is.
    assert all(rec == (1, "applied") for rec in new), new
    assert last_applied(world.audit).digest == v1.digest


def test_primary_restarted_empty_is_read_back_and_repaired(world):
    v1 = world.baseline()
    port = world.primary.port
    world.primary.stop(0)
    world.primary.reset()
    world.primary.start(f"127.0.0.1:{port}")
    assert held(world.primary) == set()
    standby_writes = world.standby.writes_processed
    r = world.reconcile()
    _assert_repaired(world, r, v1, "sim-primary", "sim-standby")
    assert world.standby.writes_processed == standby_writes, "the standby, which held v1, was written"


def test_standby_emptied_is_read_back_and_repaired(world):
    v1 = world.baseline()
    world.standby.reset()  # in place: same process, same stream, tables gone
    assert held(world.standby) == set()
    primary_writes = world.primary.writes_processed
    r = world.reconcile()
    _assert_repaired(world, r, v1, "sim-standby", "sim-primary")
    assert world.primary.writes_processed == primary_writes, "the primary, which held v1, was written"


@pytest.mark.parametrize("role", ["standby", "primary"])
def test_switch_replaced_at_a_new_address_is_written_in_full(world, role):
    v1 = world.baseline()
    old = getattr(world, role)
    fresh = world.new_switch()
    world.edit_intent(lambda t: swap_port(t, old.port, fresh.port), f"{role} replaced")
    old_writes = old.writes_processed
    r = world.reconcile()
    assert old.writes_processed == old_writes, f"the replaced {role}, no longer in intent, was written"
    assert r.code == 0, r
    assert "up to date" not in r.out, r
    name = "sim-" + role
    assert sum(_writes_named(r.out, name)) > 0, f"the output does not say {name} was written\n{r}"
    setattr(world, role, fresh)
    now = last_applied(world.audit)
    # The address is not in the tables: same entries as v1, on the new switch too.
    assert entries_of(now) == entries_of(v1)
    world.assert_both_hold(now, f"after the {role} moved to a new address")
    assert [rec for rec in records(world.audit) if rec[1] not in ("applied", "pending")] == [], records(world.audit)


# --- 5. the removal guard ---------------------------------------------------------------------


def test_removal_guard_refuses_then_intent_raises_the_limit(world):
    v1 = world.baseline()
    gone = ("payments/dns-cache", "payments/ledger", "web/api")
    shrunk = world.write_cluster(delete_services(recording(), *gone))
    writes = (world.standby.writes_processed, world.primary.writes_processed)
    r = world.reconcile(shrunk)
    assert r.code == 1, r
    assert "removal guard" in r.out, r
    for key in gone:
        assert key in r.out, r
    assert "Traceback" not in r.out, r
    assert (world.standby.writes_processed, world.primary.writes_processed) == writes, "a switch was written"
    world.assert_both_hold(v1, "after a refused removal")
    assert records(world.audit) == [(1, "applied"), (1, "pending")]

    world.edit_intent(
        lambda t: t.replace("  algorithm: replica-weighted\n",
                            "  algorithm: replica-weighted\n  safety:\n    maxRemovalPercent: 100\n"),
        "Confirm: take dns-cache, ledger and api off the switches",
    )
    r = world.reconcile(shrunk)
    assert r.code == 0, r
    now = last_applied(world.audit)
    assert now.version == 2 and {s.service_key for s in now.services} == {"web/frontend"}
    assert service(now, "web/frontend") == service(v1, "web/frontend")
    world.assert_both_hold(now, "after the confirmed removal")
    assert records(world.audit) == [(2, "applied"), (2, "pending"), (1, "applied"), (1, "pending")]


def test_one_service_may_always_leave(world):
    world.baseline()
    r = world.reconcile(world.write_cluster(delete_services(recording(), "web/api")))
    assert r.code == 0, r
    now = last_applied(world.audit)
    assert now.version == 2 and {s.service_key for s in now.services} == set(SERVED) - {"web/api"}
    world.assert_both_hold(now, "after one Service left")
    assert records(world.audit)[:2] == [(2, "applied"), (2, "pending")]


# --- 6. a dual-stack node listing its IPv6 InternalIP first -----------------------------------


def test_node_with_ipv6_internal_ip_first_uses_its_ipv4_address(world):
    doc = recording()
    ipv4 = internal_ip(doc, "node-c")
    node_obj(doc, "node-c")["status"]["addresses"].insert(0, {"address": "fd00:20::13", "type": "InternalIP"})
    world.cluster.write_text(dump(doc))
    r = world.reconcile()
    assert r.code == 0, r
    snap = last_applied(world.audit)
    assert snap is not None and snap.version == 1, r
    on_c = [b for s in snap.services for b in s.backends if b.node == "node-c"]
    assert on_c, "node-c serves web/frontend in the recording"
    assert {b.address for b in on_c} == {ipv4}
    world.assert_both_hold(snap)
    assert records(world.audit) == [(1, "applied"), (1, "pending")]
    dnat_addresses = {e[3][0] for e in held(world.primary) if e[0] == n.BACKEND_TABLE}
    assert ipv4 in dnat_addresses and not any(":" in str(a) for a in dnat_addresses)


# --- 7, 8, 9. an error is never a removal ------------------------------------------------------


def test_opt_in_annotation_true_warns_and_keeps_the_service(world):
    v1 = world.baseline()
    doc = recording()
    service_obj(doc, "web/frontend")["metadata"]["annotations"]["loadbalancer.k8s.io/p4kube"] = "true"
    r = world.reconcile(world.write_cluster(doc))
    assert r.code == 0, r
    warning = next((l for l in r.out.splitlines() if "web/frontend" in l and "true" in l), None)
    assert warning is not None, f"no warning names web/frontend's value 'true'\n{r}"
    assert "enabled" in warning and "disabled" in warning, r
    now = last_applied(world.audit)
    assert service(now, "web/frontend") == service(v1, "web/frontend")
    world.assert_both_hold(now)
    assert entries_of(now) == entries_of(v1)
    assert [rec for rec in records(world.audit) if rec[1] not in ("applied", "pending")] == []


def test_second_port_leaves_the_first_ports_entries_untouched(world):
    v1 = world.baseline()
    before_svc = service(v1, "web/frontend")
    vip_key = (before_svc.vip, before_svc.port, 6)
    before = {sw: entries_of_service(held(getattr(world, sw)), before_svc.service_id, vip_key) for sw in ("standby", "primary")}
    assert len(before["primary"]) == 1 + before_svc.bucket_count

    doc = recording()
    service_obj(doc, "web/frontend")["spec"]["ports"].append(
        {"name": "alt", "nodePort": 31010, "port": 8080, "protocol": "TCP", "targetPort": 1081})
    for sl in slices_of(doc, "web/frontend"):
        sl["ports"].append({"name": "alt", "port": 1081, "protocol": "TCP"})
    r = world.reconcile(world.write_cluster(doc))
    assert r.code == 0, r
    now = last_applied(world.audit)
    assert now.version == 2, r
    ports = {s.port: s for s in services_of(now, "web/frontend")}
    assert set(ports) == {80, 8080}, [s.name for s in now.services]
    assert (ports[80].service_id, ports[80].vip, ports[80].assignment) == (before_svc.service_id, before_svc.vip, before_svc.assignment)
    assert ports[8080].vip == before_svc.vip
    world.assert_both_hold(now)
    for sw in ("standby", "primary"):
        assert entries_of_service(held(getattr(world, sw)), before_svc.service_id, vip_key) == before[sw], sw
    assert records(world.audit)[:2] == [(2, "applied"), (2, "pending")]


def test_requested_ip_outside_every_pool_keeps_that_service(world):
    v1 = world.baseline()
    doc = recording()
    service_obj(doc, "web/api")["spec"]["loadBalancerIP"] = "203.0.113.99"
    add_ready_endpoint(doc, "web/frontend", "node-c", "10.244.0.99")  # and an unrelated change
    r = world.reconcile(world.write_cluster(doc))
    assert r.code == 0, r
    assert "web/api" in r.out and "203.0.113.99" in r.out, r
    now = last_applied(world.audit)
    assert now.version == 2, r
    assert service(now, "web/api") == service(v1, "web/api"), "web/api was not kept as in v1"
    for key in ("payments/dns-cache", "payments/ledger"):
        assert service(now, key) == service(v1, key)
    fe_before, fe_now = service(v1, "web/frontend"), service(now, "web/frontend")
    assert fe_now.service_id == fe_before.service_id and fe_now.assignment != fe_before.assignment
    assert {b.node: b.replicas for b in fe_now.backends}["node-c"] == {b.node: b.replicas for b in fe_before.backends}["node-c"] + 1
    world.assert_both_hold(now)
    assert records(world.audit)[:2] == [(2, "applied"), (2, "pending")]


# --- 10. a write refused during a change: rolled back, recorded ---------------------------------


def test_a_dead_primary_is_not_called_up_to_date(world):
    """Nothing changed, but the primary cannot be read: degraded (exit 3), never "both switches
    read back"; the standby keeps v1 and nothing is recorded."""
    v1 = world.baseline()
    world.primary.stop(0)
    r = world.reconcile()
    assert r.code == 3, r
    assert "on the switches that answer" in r.out and "both switches read back" not in r.out, r
    assert held(world.standby) == entries_of(v1)
    assert records(world.audit) == [(1, "applied"), (1, "pending")]


def test_primary_refusing_a_write_rolls_both_back(world):
    v1 = world.baseline()
    changed = world.write_cluster(add_ready_endpoint(recording(), "web/frontend", "node-c", "10.244.0.99"))
    def refusals() -> int:
        return len([w for w in world.primary.write_log() if w.message == "refused by fault injection"])

    world.primary.refuse_writes(1)
    r = world.reconcile(changed)
    assert r.code == 1, r
    assert refusals() == 1, "the primary's refusal never fired"
    assert "sim-primary" in r.out and "Traceback" not in r.out, r
    world.assert_both_hold(v1, "after the rollback")
    assert records(world.audit) == [(2, "rolled-back"), (2, "pending"), (1, "applied"), (1, "pending")]
    assert last_applied(world.audit).digest == v1.digest


@pytest.mark.slow
def test_primary_dying_mid_batch_is_repaired_when_it_returns(world):
    """Beyond the brief's rows, the crash_after fault: the primary applies part of a Write and
    dies. The run fails (exit 1) with the standby back on v1; the primary keeps the half-written
    tables it had when it died (a switch process whose control channel died, not a reboot).
    When it returns, the next run reads it back, so the retried change lands whole on both."""
    v1 = world.baseline()
    changed = world.write_cluster(add_ready_endpoint(recording(), "web/frontend", "node-c", "10.244.0.99"))
    port = world.primary.port
    world.primary.crash_after(5)
    r = world.reconcile(changed)
    assert world.primary.died.wait(10), "the crash fault never fired"
    assert r.code == 1, r
    assert "sim-primary" in r.out and "Traceback" not in r.out, r
    assert held(world.standby) == entries_of(v1), "the standby was not rolled back to v1"
    assert [rec for rec in records(world.audit) if rec[1] == "applied"] == [(1, "applied")], records(world.audit)
    assert last_applied(world.audit).digest == v1.digest

    world.primary.start(f"127.0.0.1:{port}")
    half = held(world.primary)
    assert half != entries_of(v1), "the premise: the primary holds part of the change"
    r = world.reconcile(changed)
    assert r.code == 0, r
    now = last_applied(world.audit)
    assert now.digest != v1.digest and service(now, "web/frontend") != service(v1, "web/frontend")
    world.assert_both_hold(now, "after the primary returned")
    assert records(world.audit)[0] == (now.version, "applied")
    assert world.p4kube("audit", "verify", "--repo", world.audit).code == 0


@contextlib.contextmanager
def another_controller(sw: SoftwareSwitch, election_high: int):
    """Another controller (a newer leader) holding the switch's primary role with election id
    election_high << 64, over its own StreamChannel, until the block ends."""
    requests: queue.Queue = queue.Queue()
    arbitration = p4r.StreamMessageRequest()
    arbitration.arbitration.device_id = 1
    arbitration.arbitration.election_id.high = election_high
    requests.put(arbitration)

    def stream():
        while (item := requests.get()) is not None:
            yield item

    with grpc.insecure_channel(f"127.0.0.1:{sw.port}") as channel:
        replies = p4r_grpc.P4RuntimeStub(channel).StreamChannel(stream(), timeout=RUN_TIMEOUT * 2)
        try:
            first = next(replies)
            assert first.arbitration.status.code == 0, f"the other controller is not primary: {first}"
            yield
        finally:
            requests.put(None)
            replies.cancel()
    # Gone for the switch too: its stream cleanup is done (the condition, not a sleep).
    assert sw.wait_for_streams(0, timeout=10), f"the other controller's stream is still open on {sw.port}"


def _wait_for_write(sw: SoftwareSwitch, match, timeout: float) -> bool:
    """Wait (on the switch's Write-finished condition, no sleep) until a finished Write matches."""
    deadline = time.monotonic() + timeout
    while not any(match(w) for w in sw.write_log()):
        left = deadline - time.monotonic()
        if left <= 0 or not sw.wait_for_writes(sw.writes_processed + 1, timeout=left):
            return any(match(w) for w in sw.write_log())
    return True


@pytest.mark.slow
def test_primary_stream_dropped_while_its_write_is_queued(world):
    """The primary's StreamChannel drops while our first Write to it is still queued in the
    switch (delayed 2 s before the switch authorizes it). Whatever the product decides (roll
    back, or re-arbitrate and finish), the queued Write must never land after that decision (no
    late writes: it is refused), and at the end both switches hold the snapshot the audit
    history says was last applied."""
    v1 = world.baseline()
    changed = world.write_cluster(add_ready_endpoint(recording(), "web/frontend", "node-c", "10.244.0.99"))
    # An event for "our Write reached the primary and is being held": the switch takes the
    # armed delay as the Write arrives, just before serving it.
    queued = threading.Event()
    faults = world.primary.faults
    take_write_delay = faults.take_write_delay

    def take_and_tell() -> float:
        delay = take_write_delay()
        if delay:
            queued.set()
        return delay

    faults.take_write_delay = take_and_tell  # type: ignore[method-assign]
    world.primary.delay_writes(2.0, count=1)
    proc = subprocess.Popen([str(P4KUBE), *map(str, world.reconcile_args(changed))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=world.tmp)
    try:
        assert queued.wait(RUN_TIMEOUT), "no Write reached the primary"
        dropped = world.primary.drop_streams()
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    r = Run([str(a) for a in world.reconcile_args(changed)], proc.returncode, stdout, stderr)
    print(r)
    assert dropped >= 1, "the reconciler had no stream open on the primary"
    assert "Traceback" not in r.out, r
    # The queued Write finishes (refused, or applied if it was authorized before the drop)
    # before anything is read: wait for it, so that a late Write cannot hide behind our read.
    assert _wait_for_write(world.primary, lambda w: w.delayed > 0, timeout=10), "the delayed Write never finished"
    late = [w for w in world.primary.write_log() if w.delayed > 0]
    now = last_applied(world.audit)
    world.assert_both_hold(now, f"after the stream drop (exit {r.code})")
    if r.code == 0:
        assert now.version == 2 and now.digest != v1.digest, r
        assert records(world.audit)[:2] == [(2, "applied"), (2, "pending")]
    else:
        assert r.code == 1, r
        assert now.digest == v1.digest, r
        assert records(world.audit)[:2] == [(2, "rolled-back"), (2, "pending")]
        assert all(w.code != grpc.StatusCode.OK for w in late), f"a late Write was applied: {late}"
    assert world.p4kube("audit", "verify", "--repo", world.audit).code == 0


def test_a_write_that_times_out_is_fenced_and_never_lands(world):
    """No late writes (DESIGN.md 6.1): the primary holds our Write past --rpc-timeout. The
    transaction fences it (a new stream with a higher election id) before deciding, rolls
    back, and the held Write, served after the fence, is refused."""
    v1 = world.baseline()
    changed = world.write_cluster(add_ready_endpoint(recording(), "web/frontend", "node-c", "10.244.0.99"))
    world.primary.delay_writes(1.5, count=1)
    r = world.p4kube(*world.reconcile_args(changed), "--rpc-timeout", "0.3")
    assert r.code == 1 and "Traceback" not in r.out, r
    assert _wait_for_write(world.primary, lambda w: w.delayed > 0, timeout=10), "the held Write never finished"
    late = [w for w in world.primary.write_log() if w.delayed > 0]
    assert late and all(w.code == grpc.StatusCode.PERMISSION_DENIED for w in late), late
    world.assert_both_hold(v1, "after the fenced, late Write")
    assert records(world.audit) == [(2, "rolled-back"), (2, "pending"), (1, "applied"), (1, "pending")]
    assert world.p4kube("audit", "verify", "--repo", world.audit).code == 0


@pytest.mark.slow
def test_a_newer_controller_holding_the_primary_fences_us(world):
    """Fencing: another controller (a newer leader, election id (2**32) << 64) became primary on
    the primary switch. Our change (election id 1) is refused there; the standby is left on (or
    put back to) v1; nothing is recorded as applied. After the newer leader's stream is gone we
    stay fenced (the switch remembers the highest id it made primary): still nothing written.
    A reconciler with a higher election id (the next term) applies the change on both."""
    v1 = world.baseline()
    changed = world.write_cluster(add_ready_endpoint(recording(), "web/frontend", "node-c", "10.244.0.99"))

    def ok_writes() -> int:
        return len([w for w in world.primary.write_log() if w.code == grpc.StatusCode.OK])

    applied_on_primary = ok_writes()
    with another_controller(world.primary, election_high=1 << 32):
        r = fenced = world.reconcile(changed)
        assert r.code == 1, r
        assert "sim-primary" in r.out and "Traceback" not in r.out, r
        assert ok_writes() == applied_on_primary, "a Write of ours was applied on the primary while another controller held it"
        world.assert_both_hold(v1, "while another controller holds the primary")
    new = records(world.audit)[:-2]
    assert new in ([], [(2, "rolled-back"), (2, "pending")]), new
    assert last_applied(world.audit).digest == v1.digest

    r = world.reconcile(changed)  # the deposed reconciler again: still fenced
    assert r.code == 1, r
    assert ok_writes() == applied_on_primary, "a deposed reconciler wrote the primary"
    world.assert_both_hold(v1, "after a deposed reconciler retried")
    assert last_applied(world.audit).digest == v1.digest

    r = world.p4kube(*world.reconcile_args(changed), "--election-id", str((1 << 32) + 1))
    assert r.code == 0, r
    now = last_applied(world.audit)
    assert now.digest != v1.digest
    world.assert_both_hold(now, "once the next term's reconciler ran")
    # Last, the message: it must say why the switch refused us (docs/apply.md: another controller
    # holds a higher election id), not send the operator after a network outage.
    assert re.search(r"not (the )?primary|another controller|higher election id|PERMISSION_DENIED", fenced.out), \
        f"the fenced run does not say another controller holds sim-primary\n{fenced}"


# --- 11. the audit repository fails: nothing is written -----------------------------------------


def _no_audit_dir(path: Path) -> None:
    shutil.rmtree(path)


def _file_instead(path: Path) -> None:
    shutil.rmtree(path)
    path.write_text("not a repository\n")


def _objects_lost(path: Path) -> None:
    """The repository is there, its branch too, but its objects are gone (a damaged disk, a
    botched restore): the last applied snapshot cannot be read."""
    objects = path / "objects"
    for child in objects.iterdir():
        if child.name not in ("info", "pack"):
            shutil.rmtree(child)
    for pack in (objects / "pack").iterdir():
        pack.unlink()


@pytest.mark.parametrize("damage", [_no_audit_dir, _file_instead, _objects_lost],
                         ids=["deleted-directory", "regular-file", "objects-lost"])
def test_audit_repository_fault_writes_nothing(world, damage):
    v1 = world.baseline()
    # A change is pending, so that a product that skipped the audit would write it.
    changed = world.write_cluster(add_ready_endpoint(recording(), "web/frontend", "node-c", "10.244.0.99"))
    damage(world.audit)
    writes = (world.standby.writes_processed, world.primary.writes_processed)
    r = world.reconcile(changed)
    assert r.code == 1, r
    assert "Traceback" not in r.out, r
    lines = [l for l in r.out.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one clear line\n{r}"
    assert "audit" in lines[0] and str(world.audit) in lines[0], r
    assert (world.standby.writes_processed, world.primary.writes_processed) == writes, "a switch was written"
    world.assert_both_hold(v1, "after an audit fault")
    # Nothing recorded anywhere: the file is as it was, or whatever now stands at the path has no record.
    if world.audit.is_file():
        assert world.audit.read_text() == "not a repository\n"
    elif damage is _no_audit_dir:
        assert records(world.audit) == []


# --- 12. a transaction a crashed run left pending ---------------------------------------------


def _dangling_pending(world: World) -> str:
    audit = AuditRepo.open_or_init(world.audit)
    snap = audit.last_applied(CONFIG)
    return audit.record(snap.with_version(audit.next_version(CONFIG)), "pending")


@pytest.mark.slow
def test_dangling_pending_is_reported(world):
    v1 = world.baseline()
    pending = _dangling_pending(world)
    r = world.reconcile()
    assert r.code == 0, r
    world.assert_both_hold(v1)
    audit = AuditRepo.open_or_init(world.audit, read_only=True)
    newest = audit.history(config=CONFIG)
    v = world.p4kube("audit", "verify", "--repo", world.audit)
    if newest[0].outcome == "pending":  # left open by reconcile --once: verify must say so
        assert newest[0].commit == pending and newest[0].version == 2
        assert re.search(r"v2\b.*pending|pending.*\bv2\b", v.out), v
    else:  # closed by reconcile --once: an interrupted record naming it
        closing = next(e for e in newest if e.version == 2 and e.outcome == "interrupted")
        assert closing.trailers.get("Pending-Commit") == pending
        assert v.code == 0, v


@pytest.mark.slow
def test_dangling_pending_is_closed_before_the_next_transaction(world):
    """Beyond the brief's minimum: after the next applied transaction, the history the product
    wrote must verify (no pending left without an outcome behind a newer record)."""
    world.baseline()
    pending = _dangling_pending(world)
    r = world.reconcile(world.write_cluster(add_ready_endpoint(recording(), "web/frontend", "node-c", "10.244.0.99")))
    assert r.code == 0, r
    now = last_applied(world.audit)
    world.assert_both_hold(now)
    v = world.p4kube("audit", "verify", "--repo", world.audit)
    assert v.code == 0, f"{v}\nhistory: {records(world.audit)}"
    entries = AuditRepo.open_or_init(world.audit, read_only=True).history(config=CONFIG)
    assert any(e.outcome == "interrupted" and e.trailers.get("Pending-Commit") == pending for e in entries), records(world.audit)


# --- the loop: `p4kube run` as a real process --------------------------------------------------


class Running:
    """`p4kube run` on the world's intent, recording and audit repository, as a real process;
    a thread reads its output lines, which the test waits on (the events: no sleeps)."""

    def __init__(self, world: World) -> None:
        self.proc = subprocess.Popen(
            [str(P4KUBE), "--log-level", "info", "run", "--allow-insecure-switches", "--intent", str(world.intent), "--pipeline-dir", str(world.intent), "--cluster",
             str(world.cluster), "--audit-repo", str(world.audit)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=world.tmp,
        )
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, name="p4kube-run-output", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line)
        self.lines.put(None)

    @property
    def text(self) -> str:
        return "".join(self.seen)

    def wait_for(self, predicate, what: str, timeout: float = RUN_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"p4kube run: no {what} within {timeout:g} s:\n{self.text}")
            if line is None:
                pytest.fail(f"p4kube run ended (exit {self.proc.wait()}) before {what}:\n{self.text}")
            self.seen.append(line)
            if predicate(line):
                return line

    def stop(self) -> int:
        """SIGTERM, and the exit code; kills it when it does not stop in time. Idempotent."""
        if self.proc.stdout.closed:  # type: ignore[union-attr]
            return self.proc.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=RUN_TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(timeout=10)
            self.proc.stdout.close()  # type: ignore[union-attr]
            while not self.lines.empty():
                line = self.lines.get_nowait()
                if line is not None:
                    self.seen.append(line)
            print(self.text)
        return self.proc.returncode


@contextlib.contextmanager
def running(world: World):
    run = Running(world)
    try:
        yield run
    finally:
        run.stop()


def _synced_v1(line: str) -> bool:
    return "v1" in line and ("resynced" in line or "up to date" in line)


@pytest.mark.slow
def test_run_closes_a_dangling_pending_as_interrupted_at_start(world):
    """Row 12 for the loop: `p4kube run` closes the pending a crashed run left with an
    `interrupted` record before anything else, reads both switches back, and exits 0 on SIGTERM."""
    v1 = world.baseline()
    pending = _dangling_pending(world)
    with running(world) as run:
        run.wait_for(lambda line: "interrupted" in line and "v2" in line, "interrupted record for v2")
        run.wait_for(_synced_v1, "read-back of both switches at v1")
        code = run.stop()
    assert code == 0, run.text
    world.assert_both_hold(v1, "after p4kube run")
    entries = AuditRepo.open_or_init(world.audit, read_only=True).history(config=CONFIG)
    assert [(e.version, e.outcome) for e in entries] == [(2, "interrupted"), (2, "pending"), (1, "applied"), (1, "pending")]
    assert entries[0].trailers.get("Pending-Commit") == pending
    v = world.p4kube("audit", "verify", "--repo", world.audit)
    assert v.code == 0 and "pending" not in v.out, v


@pytest.mark.slow
def test_run_keeps_the_switches_when_the_recording_breaks_or_loses_most_services(world):
    """Rows 2 and 5 for the loop: the followed recording is cut short (an error, the last good
    state is kept), then whole again but with 3 of 4 Services gone (the removal guard refuses):
    the switches keep v1 throughout, and no transaction is recorded."""
    v1 = world.baseline()
    with running(world) as run:
        run.wait_for(_synced_v1, "read-back of both switches at v1")
        world.cluster.write_text(CUT_SHORT)
        run.wait_for(lambda line: "not a whole cluster" in line or "cut short" in line, "error for the cut recording")
        world.assert_both_hold(v1, "while the recording is cut short")
        world.cluster.write_text(dump(delete_services(recording(), "payments/dns-cache", "payments/ledger", "web/api")))
        line = run.wait_for(lambda line: "removal guard" in line, "removal guard refusal")
        assert all(key in line for key in ("payments/dns-cache", "payments/ledger", "web/api")), line
        world.assert_both_hold(v1, "after the removal guard refused")
        code = run.stop()
    assert code == 0, run.text
    world.assert_both_hold(v1, "after p4kube run stopped")
    assert [rec for rec in records(world.audit) if rec[1] in ("applied", "pending", "rolled-back")] == [(1, "applied"), (1, "pending")]
