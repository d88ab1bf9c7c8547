"""`p4kube demo`: the reconciler end to end on one machine, narrated.

What runs is the product's own loop (reconciler.controller: render -> audit -> apply -> probe ->
rollback and fallback -> recovery) against stand-ins that behave like the real thing:

- two software P4Runtime switches (reconciler.sim) on 127.0.0.1, ephemeral ports;
- a Git intent repository made from intent-examples/multi-service/lbconfig.yaml, followed by
  watchdog (reconciler.intent.watch.DirectoryIntent), and changed by a commit;
- the cluster recorded beside it (a real kube-apiserver's Services, EndpointSlices and Nodes),
  its nodes moved onto loopback addresses 127.0.0.11.., with a TCP listener on every node IP and
  nodePort standing in for the node (the health probes connect to them), churned in memory
  (reconciler.cluster.scripted, which also takes the kube-proxy fallback annotations);
- an audit repository, kept afterwards for `p4kube audit log`.

Each step says what happens and why, then checks that it happened (the switches are read and
compared with the snapshot, packets are sent through the primary's pipeline). The demo exits 0
only when every step did what it said; every wait has a timeout; everything it started is
stopped, whatever happens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import itertools
import logging
import os
import shlex
import sys
import tempfile
import textwrap
import time
from collections import Counter
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TextIO

import pygit2
from ruamel.yaml import YAML

from .apply import ApplyResult, TwoSwitchApplier, default_session_factory
from .audit.errors import AuditError
from .audit.message import AuditEntry
from .audit.repo import AuditRepo
from .cluster.model import ClusterState, Node
from .cluster.recorded import load_cluster_file
from .cluster.scripted import ScriptedCluster
from .cluster.synthetic import with_scaled_service
from .controller import ConfigWorker, Controller, TransactionRecord
from .diagnostics import InputError
from .diff import diff_snapshots
from .health import ProbeReport, make_post_apply_probe
from .intent.files import DEVICE_CONFIG, OperatorDirs, read_named
from .intent.loader import validate_paths
from .intent.model import LoadBalancerConfig
from .intent.watch import DirectoryIntent
from .p4info import load_p4info, pipeline_info_from_message
from .paths import DEMO_EXAMPLE_DIR
from .pipeline_io import config_p4info_digest, p4info_path
from .plan import ConfigPlan, format_text
from .sim.packet import SYN, build_tcp, ip, ip_str, parse_frame
from .sim.pipeline import flow_bucket
from .sim.server import SoftwareSwitch
from .snapshot import Snapshot

EXAMPLE = DEMO_EXAMPLE_DIR  # intent-examples/multi-service, shipped in the package
INTENT_FILE = "lbconfig.yaml"
WAIT_S = 20.0  # the longest any step waits for the loop; a normal run needs well under a second
NODE_HOST = 11  # node-a -> 127.0.0.11, node-b -> 127.0.0.12, ...
CLIENT = ("10.200.0.7", 40001)  # one fixed flow, so the node it lands on is the same every run
CLIENT_PORT = 2  # the switch port clients arrive on; the nodes are behind port 1 (the route)
SCALED = "web/frontend"
FAILING = "web/api"
LOST_NODE = "node-g"
# Short timings so the demo takes seconds; the comments in the committed intent say so.
DEMO_TIMINGS = {"updateInterval": "100ms", "interval": "1s", "timeout": "500ms", "failureThreshold": 2, "successThreshold": 1}

FALLBACK_PREFIX = "loadbalancer.k8s.io/p4kube-fallback"  # the fallback's own annotations

Entries = frozenset[tuple[Any, ...]]


class DemoFailed(Exception):
    """A step did not do what it says: the demo stops and exits 1 with this message."""


@dataclass(frozen=True)
class SwitchCheck:
    """Both switches' tables, read from the switches at one moment, against the snapshot."""

    label: str
    version: int
    held: Mapping[str, Entries]  # switch name -> every entry it holds
    expected: Entries  # the snapshot's entries

    @property
    def ok(self) -> bool:
        return all(h == self.expected for h in self.held.values())


@dataclass(frozen=True)
class DemoReport:
    """What the demo did, for tests and for its summary."""

    workdir: Path
    intent_repo: Path
    audit_repo: Path
    config: str
    transactions: tuple[TransactionRecord, ...]  # the controller's history, in order
    checks: tuple[SwitchCheck, ...]
    intent_commits: tuple[str, ...]  # the intent repository's commits, oldest first
    failed_service: str
    fallback_annotations: Mapping[str, str]  # its annotations once it had fallen back
    recovered_annotations: Mapping[str, str]  # ... and once the fallback was lifted
    final_version: int
    elapsed_s: float


@dataclass(frozen=True)
class _Seen:
    """One pass of the loop as the worker reported it (ConfigWorker.on_result)."""

    record: TransactionRecord
    result: ApplyResult | None
    snapshot: Snapshot | None
    previous: Snapshot | None  # what the switches held before
    probe: ProbeReport | None


# --- the public face ----------------------------------------------------------------------------


def run_demo(
    workdir: str | None = None,
    out: TextIO = sys.stdout,
    err: TextIO | None = None,
    *,
    on_report: Callable[[DemoReport], None] | None = None,
) -> int:
    """Run the demo; 0 when every step did what it says, else 1 with the reason on `err`.

    Without `workdir` the intent and audit repositories go to a new /tmp/p4kube-demo-* directory,
    which is kept (the audit repository is for `p4kube audit log`) and named at the end."""
    err = err or sys.stderr
    try:
        work = _prepare_workdir(workdir)
    except DemoFailed as e:
        print(f"p4kube demo: {e}", file=err)
        return 1
    narrator = _Narrator(out)
    with _held_logs() as logs:
        try:
            report = asyncio.run(_play(work, narrator))
        except (DemoFailed, InputError, AuditError, OSError) as e:
            print(f"\np4kube demo FAILED: {e}", file=err)
            for line in logs:
                print("  log: " + line.replace("\n", "\n       "), file=err)
            print(f"  what it wrote so far is in {work}", file=err)
            return 1
    if on_report is not None:
        on_report(report)
    return 0


def _prepare_workdir(workdir: str | None) -> Path:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="p4kube-demo-"))
    work = Path(workdir).resolve()
    for name in ("intent", "audit.git"):
        if (work / name).exists():
            raise DemoFailed(
                f"{work / name} already exists (an earlier demo?): pass an empty or new --workdir, or remove it"
            )
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DemoFailed(f"cannot create --workdir {work}: {e.strerror or e}") from e
    return work


# --- narration ----------------------------------------------------------------------------------


class _Narrator:
    WIDTH = 100

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def say(self, text: str = "", indent: int = 2) -> None:
        pad = " " * indent
        print("\n".join(pad + line if line else "" for line in text.split("\n")), file=self.out, flush=True)

    def explain(self, text: str, indent: int = 2) -> None:
        """A short paragraph: what happens and why, wrapped."""
        pad = " " * indent
        print(textwrap.fill(" ".join(text.split()), self.WIDTH, initial_indent=pad, subsequent_indent=pad),
              file=self.out, flush=True)

    def item(self, label: str, text: str, indent: int = 2, width: int = 10) -> None:
        """A labelled line, wrapped under its text: `  label      text ...`."""
        head = " " * indent + label.ljust(width) + " "
        print(textwrap.fill(" ".join(text.split()), self.WIDTH, initial_indent=head, subsequent_indent=" " * len(head),
                            break_long_words=False, break_on_hyphens=False), file=self.out, flush=True)

    def step(self, n: int | None, title: str, why: str = "") -> None:
        print(f"\n== {n}. {title}" if n is not None else f"\n== {title}", file=self.out)
        if why:
            self.explain(why)


@contextmanager
def _held_logs() -> Iterator[list[str]]:
    """The loop logs every rollback and fallback as a warning; the demo narrates them instead.
    Unless the user asked for logs (--log-level info or debug), hold the project's log records
    and show the warnings only if the demo fails."""
    if logging.getLogger().getEffectiveLevel() < logging.WARNING:
        yield []
        return
    held: list[str] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                held.append(f"{record.levelname.lower()} {record.name}: {record.getMessage()}")

    handler = Hold()
    loggers = [logging.getLogger(name) for name in ("reconciler", "p4kube", "finsy")]
    saved = [(lg, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
    try:
        yield held
    finally:
        for lg, propagate in saved:
            lg.removeHandler(handler)
            lg.propagate = propagate


# --- the stand-ins ------------------------------------------------------------------------------


class _NodeListeners:
    """A TCP listener on every (node IP, nodePort): what the health probes connect to. A listener
    accepts and closes at once, like a node whose kube-proxy forwards to a healthy pod."""

    def __init__(self) -> None:
        self.servers: dict[tuple[str, int], asyncio.AbstractServer] = {}

    async def up(self, host: str, port: int) -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        try:
            self.servers[(host, port)] = await asyncio.start_server(answer, host, port, reuse_address=True)
        except OSError as e:
            hint = ""
            if e.errno == errno.EADDRNOTAVAIL:  # only 127.0.0.1 exists on this loopback (macOS)
                hint = f" (this system needs a loopback alias for {host}, e.g. `sudo ifconfig lo0 alias {host} up`)"
            raise DemoFailed(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from e

    async def down(self, host: str, port: int) -> None:
        server = self.servers.pop((host, port))
        server.close()
        await server.wait_closed()

    async def close(self) -> None:
        for key in list(self.servers):
            await self.down(*key)


async def _listen_on_a_free_block(
    listeners: _NodeListeners, names: Sequence[str], ports: Sequence[int]
) -> dict[str, str]:
    """Node name -> loopback IP: 127.0.0.11.. unless a nodePort is taken there (another demo
    running?), then 127.0.1.11.., and so on."""
    last: DemoFailed | None = None
    for third in range(10):
        ips = {name: f"127.0.{third}.{NODE_HOST + i}" for i, name in enumerate(names)}
        try:
            for host in ips.values():
                for port in ports:
                    await listeners.up(host, port)
            return ips
        except DemoFailed as e:
            last = e
            await listeners.close()
    raise DemoFailed(f"no free loopback block for the nodes: {last}")


def _on_loopback(state: ClusterState, ips: Mapping[str, str]) -> ClusterState:
    nodes = {name: dataclasses.replace(node, internal_ip=ips[name]) for name, node in state.nodes.items()}
    return dataclasses.replace(state, nodes=nodes)


def _without_node(state: ClusterState, name: str) -> ClusterState:
    """The cluster after a node is lost: its endpoints are gone and its Node object removed."""
    endpoints = {k: tuple(ep for ep in eps if ep.node != name) for k, eps in state.endpoints.items()}
    nodes: dict[str, Node] = {k: v for k, v in state.nodes.items() if k != name}
    return dataclasses.replace(state, endpoints=endpoints, nodes=nodes)


def _tcp_node_ports(state: ClusterState) -> list[int]:
    """The nodePorts of the opted-in TCP Services (what the probes reach on each node)."""
    return sorted({
        p.node_port for s in state.services.values() if s.opt_in == "enabled"
        for p in s.ports if p.protocol == "TCP" and p.node_port
    })


# --- the intent repository ------------------------------------------------------------------------

_SIGNATURE = ("p4kube demo", "demo@p4kube.invalid")


def _yaml() -> YAML:
    y = YAML()  # round trip: the example's comments stay
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)  # the examples' style
    y.width = 4096
    return y


def _demo_intent(text: str, addresses: Mapping[str, str], node_net: str) -> tuple[str, str]:
    """The example pointed at this machine: the switches' real addresses, the route to the
    nodes' loopback block, a route for the VIP pool towards the nodes (the path of a VIP that
    is not on the switches: kube-proxy on the nodes answers it), and timings short enough for
    a demo. Returns the text and the VIP route's prefix."""
    y = _yaml()
    doc = y.load(text)
    spec = doc["spec"]
    spec["updateInterval"] = DEMO_TIMINGS["updateInterval"]
    hc = spec.setdefault("healthCheck", {})
    for k in ("interval", "timeout", "failureThreshold", "successThreshold"):
        hc[k] = DEMO_TIMINGS[k]
    for sw in spec["switchConfig"]["switches"]:
        sw["address"] = addresses[sw["name"]]
    # deviceConfig stays a name: the demo is its own operator, and its --pipeline-dir is the
    # example's directory, which holds the (placeholder) device config (intent names files only).
    routes = spec["switchConfig"]["routes"]
    routes[0]["prefix"] = node_net
    first_vip = str(spec["vipPools"][0]["addresses"][0]).split("-")[0].split("/")[0]
    vip_net = str(ipaddress.IPv4Network(f"{first_vip}/24", strict=False))
    routes.append({"prefix": vip_net, "port": routes[0]["port"], "nextHopMac": routes[0]["nextHopMac"]})
    routes.yaml_set_comment_before_after_key(
        len(routes) - 1, before="VIPs without a vip_table entry (fallen back) go to the nodes: kube-proxy.", indent=6)
    doc.yaml_set_start_comment(
        "Made by `p4kube demo` from intent-examples/multi-service/lbconfig.yaml: the switches'\n"
        "addresses, the routes (the nodes are on loopback) and the timings are the demo's.",
    )
    return _dump(y, doc), vip_net


def _with_buckets(text: str, buckets: int) -> str:
    y = _yaml()
    doc = y.load(text)
    doc["spec"]["bucketsPerService"] = buckets
    return _dump(y, doc)


def _dump(y: YAML, doc: Any) -> str:
    buf = StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


def _init_intent_repo(path: Path, text: str, message: str) -> str:
    repo = pygit2.init_repository(str(path), bare=False, initial_head="main")
    (path / INTENT_FILE).write_text(text)
    repo.index.add(INTENT_FILE)
    repo.index.write()
    sig = pygit2.Signature(*_SIGNATURE)
    return str(repo.create_commit("HEAD", sig, sig, message, repo.index.write_tree(), []))


def _land_commit(path: Path, text: str, message: str) -> str:
    """What merging a pull request does to the checkout the reconciler follows. The commit lands
    first, then the file is replaced in one rename: the reconciler may briefly see the new
    commit with the old file (nothing to do, the same tables) but never the new file under the
    old commit, so the transaction's audit record names the commit that asked for it."""
    repo = pygit2.Repository(str(path))
    blob = repo.create_blob(text.encode())
    repo.index.read()
    repo.index.add(pygit2.IndexEntry(INTENT_FILE, blob, pygit2.enums.FileMode.BLOB))
    sig = pygit2.Signature(*_SIGNATURE)
    oid = repo.create_commit("HEAD", sig, sig, message, repo.index.write_tree(), [repo.head.target])
    repo.index.write()
    staged = path.parent / f".{INTENT_FILE}.new"  # outside the watched checkout
    staged.write_text(text)
    os.replace(staged, path / INTENT_FILE)
    return str(oid)


# --- reading the switches -------------------------------------------------------------------------


def _value(v: Any) -> Any:
    """A snapshot value as the switch holds it: IPv4 and MAC as integers, a prefix as (int, len)."""
    if isinstance(v, int):
        return v
    if "/" in v:
        net = ipaddress.IPv4Network(v)
        return (int(net.network_address), net.prefixlen)
    if ":" in v:
        return int(v.replace(":", ""), 16)
    return int(ipaddress.IPv4Address(v))


def _snapshot_entries(snap: Snapshot) -> Entries:
    return frozenset(
        (e.table, tuple(map(_value, e.key)), e.action, tuple(map(_value, e.args)))
        for es in snap.tables().values() for e in es
    )


def _switch_entries(sw: SoftwareSwitch, tables: Sequence[str]) -> Entries:
    return frozenset(
        (t, tuple(v.key), v.action, tuple(v.params.values())) for t in tables for v in sw.entries(1, t)
    )


# --- formatting -------------------------------------------------------------------------------------


def _writes(per_table: Mapping[str, Mapping[str, int]]) -> str:
    parts = []
    for table, kinds in sorted(per_table.items()):
        counts = " ".join(
            f"{sign}{kinds[kind]}" for kind, sign in (("INSERT", "+"), ("MODIFY", "~"), ("DELETE", "-")) if kinds.get(kind)
        )
        parts.append(f"{table.split('.')[-1]} {counts}")
    return ", ".join(parts) or "nothing"


def _total(per_table: Mapping[str, Mapping[str, int]]) -> int:
    return sum(sum(k.values()) for k in per_table.values())


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plan_lines(seen: _Seen, config: str, *, full: bool = False) -> str:
    """The plan of the transaction, as `p4kube plan` prints it; without `full`, only the
    Services' share changes and the writes (the transaction line says the rest)."""
    assert seen.snapshot is not None
    snap = seen.snapshot
    plan = ConfigPlan(config, seen.previous, snap, diff_snapshots(seen.previous, snap), seen.record.issues, snap.intent_commit)
    lines = format_text([plan]).rstrip("\n").split("\n")
    if not full:
        lines = [line[2:] for line in lines[2:] if line.strip() and not line.startswith("Plan:")]
    return "\n".join(lines)


# --- the demo ---------------------------------------------------------------------------------------


class _Demo:
    def __init__(self, work: Path, narrator: _Narrator, stack: AsyncExitStack) -> None:
        self.work = work
        self.n = narrator
        self.stack = stack
        self.intent_dir = work / "intent"
        self.audit_dir = work / "audit.git"
        self.switches: dict[str, SoftwareSwitch] = {}
        self.listeners = _NodeListeners()
        self.seen: list[_Seen] = []  # every pass the worker reported, in order
        self._mark = 0  # seen[:_mark] has been narrated
        self.checks: list[SwitchCheck] = []
        self.commits: list[str] = []
        self.held: Snapshot | None = None  # what the switches hold, as the demo follows it
        self.node_ip: dict[str, str] = {}
        self.fallback_annotations: dict[str, str] = {}
        self.recovered_annotations: dict[str, str] = {}
        self.t0 = time.perf_counter()

    # -- 1 ----------------------------------------------------------------------------------------

    async def set_up(self) -> None:
        n = self.n
        n.say("p4kube demo: the reconciler end to end on this machine", indent=0)
        n.step(1, "Set up: two switches, the nodes, the cluster, an intent and an audit repository",
               "Everything is local and real: the switches speak P4Runtime over gRPC, the intent is a Git "
               "repository, the nodes are TCP listeners the health probes connect to, and the audit "
               "repository is a Git repository the reconciler commits to.")
        text = (EXAMPLE / INTENT_FILE).read_text()
        addresses = {}
        for spec in _yaml().load(text)["spec"]["switchConfig"]["switches"]:
            sw = SoftwareSwitch()
            port = sw.start("127.0.0.1:0")
            self.stack.callback(sw.stop, 1.0)  # a grace period: no GOAWAY errors for closing clients
            self.switches[spec["name"]] = sw
            addresses[spec["name"]] = f"127.0.0.1:{port}"
        n.item("switches", ", ".join(f"{k} on {v}" for k, v in addresses.items())
               + " (software P4Runtime switches modelling p4/load_balancer.p4)")

        recorded = load_cluster_file(EXAMPLE / "cluster.yaml")
        opted = sorted(k for k, s in recorded.services.items() if s.opt_in == "enabled")
        n.item("cluster", f"intent-examples/multi-service/cluster.yaml, recorded from a real kube-apiserver: "
               f"{len(recorded.services)} Services, {len(opted)} opted in: {', '.join(opted)}")
        ports = _tcp_node_ports(recorded)
        self.stack.push_async_callback(self.listeners.close)
        self.node_ip = await _listen_on_a_free_block(self.listeners, sorted(recorded.nodes), ports)
        self.cluster = ScriptedCluster(_on_loopback(recorded, self.node_ip))
        first, last = sorted(self.node_ip)[0], sorted(self.node_ip)[-1]
        n.item("nodes", f"{first}..{last} moved from {recorded.nodes[first].internal_ip}.. to "
               f"{self.node_ip[first]}..{self.node_ip[last].rsplit('.', 1)[1]}; a TCP listener on each node "
               f"for nodePorts {', '.join(map(str, ports))} ({len(self.listeners.servers)} listeners)")

        node_net = str(ipaddress.IPv4Network(f"{self.node_ip[first]}/24", strict=False))
        self.intent_text, vip_net = _demo_intent(text, addresses, node_net)
        self.commits.append(_init_intent_repo(
            self.intent_dir, self.intent_text, "Load balancing for payments and web (from intent-examples/multi-service)"))
        t = DEMO_TIMINGS
        n.item("intent", f"{self.intent_dir}: {INTENT_FILE} committed as {self.commits[0][:12]}; the example with "
               f"the switches' addresses, routes {node_net} (the nodes) and {vip_net} (VIPs not on the switches, "
               f"for kube-proxy) to port 1, updateInterval {t['updateInterval']}, health checks every "
               f"{t['interval']} (timeout {t['timeout']}, {t['failureThreshold']} failures to fail, "
               f"{t['successThreshold']} success to recover)")
        self.audit = AuditRepo.open_or_init(self.audit_dir)
        n.item("audit", f"{self.audit_dir} (a new bare Git repository)")

    # -- 2 ----------------------------------------------------------------------------------------

    async def first_transaction(self) -> None:
        n = self.n
        n.step(2, "Validate, render, and the first transaction",
               "The intent is validated as CI validates a pull request. Then the controller starts: it "
               "renders the snapshot (pure and deterministic), commits it to the audit repository as "
               "pending, writes it to the standby switch and then the primary (each read back and "
               "compared), probes every backend, and records the outcome.")
        problems = validate_paths([self.intent_dir], dirs=OperatorDirs(pipeline_dir=EXAMPLE))
        if problems:
            raise DemoFailed("the demo's intent is invalid: " + "; ".join(map(str, problems)))
        n.item("validate", f"{INTENT_FILE}: valid")
        self.intent = DirectoryIntent(self.intent_dir)
        self.config = self.intent.current().config()
        self._start_controller()
        seen = await self.transaction("applied", "the first snapshot to be applied")
        assert seen.snapshot is not None and seen.result is not None
        n.item("plan", "what the transaction writes, against empty switches:")
        n.say(_plan_lines(seen, self.config.key, full=True), indent=13)
        self.audit_lines(seen.snapshot.version, "pending", "the snapshot is committed before any switch is written")
        for sw in seen.result.switches:
            n.item("write", f"{sw.name} ({sw.role}): {_total(sw.writes)} writes ({_writes(sw.writes)})"
                   f"{', pipeline pushed first' if sw.pipeline_pushed else ''}; read back and compared")
        if seen.probe is not None:
            ok = sum(1 for r in seen.probe.results if r.ok)
            n.item("probe", f"{ok} of {len(seen.probe.results)} backends (node IP:nodePort of the TCP Services) "
                   f"answer a TCP connect")
        self.audit_lines(seen.snapshot.version, "applied")
        self.check(seen.snapshot)
        self.packet(seen.snapshot, SCALED)

    def _start_controller(self) -> None:
        p4info = load_p4info(p4info_path(self.config))
        info = pipeline_info_from_message(p4info)
        self.tables = sorted(info.tables)
        digest = config_p4info_digest(self.config)
        # Each worker arbitrates with a higher election id: the loop closes a replaced worker's
        # streams without waiting, and a new stream with the same id would be refused
        # (INVALID_ARGUMENT) while the old one is still open on the switch.
        election_ids = itertools.count(1)
        named = self.config.switch_config.device_config
        device_config = read_named(EXAMPLE, named, DEVICE_CONFIG) if named else b""

        def make_worker(cfg: LoadBalancerConfig) -> ConfigWorker:
            applier = TwoSwitchApplier(cfg, p4info=p4info, info=info, device_config=device_config, election_id=next(election_ids),
                                       # plaintext is fine here: the demo's own switches, on loopback only
                                       session_factory=default_session_factory(cfg, info, connect_timeout=5.0,
                                                                               require_tls=False))
            probe = make_post_apply_probe(cfg.health_check, retry_delay=0.05)

            async def on_result(record: TransactionRecord, result: ApplyResult | None, snap: Snapshot | None) -> None:
                ran_probe = result is not None and record.outcome != "resynced"
                self.seen.append(_Seen(record, result, snap, self.held, probe.last_report if ran_probe else None))
                if result is not None and result.ok:
                    self.held = snap

            return ConfigWorker(cfg, applier, digest, audit=self.audit, probe=probe, fallback=self.cluster,
                                on_result=on_result)

        self.ctl = Controller(self.intent, self.cluster, make_worker=make_worker)
        stop = asyncio.Event()
        self.task = asyncio.create_task(self.ctl.run(stop))
        self.intent.start()  # watchdog on the checkout
        self.stack.callback(self.intent.stop)
        self.stack.push_async_callback(self._stop_controller, stop)

    # -- 3 ----------------------------------------------------------------------------------------

    async def churn(self) -> None:
        n = self.n
        n.step(3, "Cluster churn: each change is one small transaction",
               "Endpoints come and go. The loop coalesces changes for updateInterval, re-renders only the "
               "Services that changed, and rewrites only the buckets whose backend changed: the fewest "
               "moves the new replica shares allow, so flows on the other buckets keep their node.")
        node = "node-c"
        changes: list[tuple[str, Callable[[ClusterState], ClusterState]]] = [
            (f"{SCALED} scales up: 2 more ready replicas on {node}", lambda s: with_scaled_service(s, SCALED, node, +2)),
            (f"{SCALED} scales back down: 2 fewer on {node}", lambda s: with_scaled_service(s, SCALED, node, -2)),
            (f"{LOST_NODE} is lost: its endpoints are gone and its Node is removed", lambda s: _without_node(s, LOST_NODE)),
        ]
        for title, change in changes:
            keys = self.cluster.replace(change(self.cluster.snapshot()))
            if not keys:
                raise DemoFailed(f"{title}: the cluster did not change")
            n.item("*", f"{title} (changed: {', '.join(sorted(keys))})", width=1)
            seen = await self.transaction("applied", f"the transaction after: {title}")
            n.say(_plan_lines(seen, self.config.key), indent=4)
            self.narrate(seen)
        assert self.held is not None
        stale = [s.name for s in self.held.services if any(b.node == LOST_NODE for b in s.backends)]
        if stale:
            raise DemoFailed(f"{LOST_NODE} is gone but still holds buckets of {', '.join(stale)}")
        self.check(self.held)

    # -- 4 ----------------------------------------------------------------------------------------

    async def intent_change(self) -> None:
        n = self.n
        old = self.config.buckets_per_service
        new = old * 2
        message = f"Finer shares: bucketsPerService {new}"
        n.step(4, "An intent change through Git",
               f"A pull request doubles bucketsPerService ({old} -> {new}) for finer shares and is merged into "
               f"the intent repository the reconciler follows. Watchdog sees the checkout change; the changed "
               f"config gets a new worker whose new switch sessions trust nothing: each reads its switch "
               f"back in full, then writes only the difference.")
        self.intent_text = _with_buckets(self.intent_text, new)
        mark = len(self.seen)
        commit = _land_commit(self.intent_dir, self.intent_text, message)
        self.commits.append(commit)
        n.item("commit", f"{commit[:12]} \"{message}\" lands on main")

        def wrote() -> bool:
            return any(s.result is not None for s in self.seen[mark:])

        try:
            await self.wait(wrote, "watchdog to report the commit", timeout=WAIT_S / 2)
        except DemoFailed:
            # Watchdog missed it (an overloaded machine): read the checkout as it would have.
            n.item("reload", "watchdog did not report the change in time; the checkout is read again explicitly")
            self.intent.reload()
        seen = await self.transaction("applied", "the intent change to be applied")
        assert seen.snapshot is not None
        if seen.snapshot.intent_commit != commit:
            raise DemoFailed(f"v{seen.snapshot.version} names intent commit {seen.snapshot.intent_commit}, not {commit}")
        counts = {s.bucket_count for s in seen.snapshot.services}
        if counts != {new}:
            raise DemoFailed(f"after the change the Services have {sorted(counts)} buckets, not {new}")
        n.item("render", f"v{seen.snapshot.version}: {len(seen.snapshot.services)} Services with {new} buckets each, "
               f"rendered for intent commit {commit[:12]}")
        self.narrate(seen)
        self.check(seen.snapshot)

    # -- 5 ----------------------------------------------------------------------------------------

    async def failure_and_recovery(self) -> None:
        n = self.n
        assert self.held is not None
        last_good = self.held
        svc = last_good.by_name[FAILING]
        nodes = sorted({b.node for b in svc.backends if b.buckets})
        port = svc.backends[0].port
        n.step(5, f"Injected failure: {FAILING}'s nodes stop answering, rollback, fallback, recovery",
               f"The listeners for {FAILING}'s nodePort {port} close on its nodes; the other Services' "
               f"listeners stay up. The next change to {FAILING} is written to both switches, but the probe "
               f"after the write reaches none of its backends: both switches are rolled back to the last "
               f"good snapshot (and read back to confirm), the audit repository records 'rolled-back', and "
               f"{FAILING} falls back to kube-proxy, marked by annotations on the Service.")
        for node in nodes:
            await self.listeners.down(self.node_ip[node], port)
        n.item("failure", f"listeners on {', '.join(f'{self.node_ip[x]}:{port}' for x in nodes)} "
               f"({', '.join(nodes)}) closed")
        self.cluster.replace(with_scaled_service(self.cluster.snapshot(), FAILING, nodes[0], +1))
        n.item("*", f"{FAILING} scales up: 1 more ready replica on {nodes[0]}", width=1)
        seen = await self.transaction("rolled-back", f"the change to {FAILING} to be rolled back")
        assert seen.result is not None and seen.snapshot is not None
        v = seen.snapshot.version
        n.say(_plan_lines(seen, self.config.key), indent=4)
        self.audit_lines(v, "pending")
        n.item("write", " and ".join(f"{sw.name} ({sw.role})" for sw in seen.result.switches)
               + f" took v{v}, each read back and compared")
        failing = seen.probe.failing_backends if seen.probe is not None else ()
        n.item("probe", f"FAILED: Services failing: {', '.join(seen.probe.failing_services) if seen.probe else '?'}")
        for r in failing:
            n.say(f"{r.key.removeprefix('backend ')}: {r.reason} after {r.attempts} attempt(s)", indent=13)
        for sw in seen.result.switches:
            if sw.state != "rolled-back":
                raise DemoFailed(f"{sw.name} was not rolled back: {sw.describe()}")
            n.item("rollback", f"{sw.name}: back on v{last_good.version} with {_total(sw.writes)} compensating "
                   f"writes ({_writes(sw.writes)}), confirmed by a full read-back")
        self.audit_lines(v, "rolled-back")
        self.check(last_good, f"v{last_good.version}, the last good snapshot")
        if seen.record.fell_back != (FAILING,):
            raise DemoFailed(f"expected {FAILING} to fall back; the loop fell back {seen.record.fell_back or 'nothing'}")
        self.fallback_annotations = dict(self.cluster.snapshot().services[FAILING].annotations)
        n.item("fallback", f"{FAILING} is annotated for kube-proxy:")
        for k, val in sorted(self.fallback_annotations.items()):
            if k.startswith("loadbalancer.k8s.io/"):
                n.say(f"{k}: {_short(val, 110 - len(k))}", indent=13)

        n.explain(f"The annotation change is itself a cluster change: the next pass renders without {FAILING}, "
                  f"so its VIP leaves vip_table, and its traffic is routed to the nodes, where kube-proxy serves "
                  f"the load-balancer IP.")
        seen = await self.transaction("applied", f"{FAILING} to leave the switches")
        assert seen.snapshot is not None
        if FAILING in seen.snapshot.by_name:
            raise DemoFailed(f"v{seen.snapshot.version} still carries {FAILING}")
        self.narrate(seen)
        self.check(seen.snapshot)
        self.packet(seen.snapshot, FAILING, vip=(svc.vip, svc.port))

        n.explain(f"The listeners come back. While a Service is fallen back, the loop probes its backends every "
                  f"health interval ({DEMO_TIMINGS['interval']}); when they answer it lifts its own fallback (a "
                  f"person's \"disabled\" is never touched) and the Service returns to the switches.")
        for node in nodes:
            await self.listeners.up(self.node_ip[node], port)
        n.item("restore", f"listeners on {', '.join(f'{self.node_ip[x]}:{port}' for x in nodes)} answer again")
        mark = len(self.seen)

        def back() -> bool:
            return any(s.record.outcome == "applied" and s.snapshot is not None and FAILING in s.snapshot.by_name
                       for s in self.seen[mark:])

        await self.wait(back, f"{FAILING} to recover")
        seen = self.consume(next(s for s in self.seen[mark:] if s.record.outcome == "applied"))
        assert seen.snapshot is not None
        svc_now = self.cluster.snapshot().services[FAILING]
        self.recovered_annotations = dict(svc_now.annotations)
        if svc_now.opt_in != "enabled" or any(k.startswith(FALLBACK_PREFIX) for k in self.recovered_annotations):
            raise DemoFailed(f"{FAILING}'s fallback was not lifted: {self.recovered_annotations}")
        n.item("recovery", f"{FAILING}: loadbalancer.k8s.io/p4kube is \"enabled\" again and the fallback "
               f"annotations are gone")
        self.narrate(seen)
        self.check(seen.snapshot)
        self.packet(seen.snapshot, FAILING)

    # -- 6 ----------------------------------------------------------------------------------------

    async def safety(self) -> None:
        n = self.n
        assert self.held is not None
        held = self.held
        n.step(6, "Safety: a source that loses every Service, and a switch that reboots empty",
               "The reconciler is level-triggered and conservative (DESIGN.md 6.1). A change that would take "
               "more than spec.safety.maxRemovalPercent of the Services off the switches is refused, and "
               "the switches' own state decides what \"up to date\" means: each health round checks each "
               "switch's pipeline and entry counts, and repairs a switch that lost its tables on its own.")
        # (a) The cluster source suddenly lists none of the served Services: what a truncated
        # recording or a half-listed source looks like.
        before = self.cluster.snapshot()
        served = sorted(s.service_key for s in held.services)
        mark = len(self.seen)
        self.cluster.replace(dataclasses.replace(
            before, services={k: v for k, v in before.services.items() if k not in served}))
        n.item("source", f"the cluster source now lists none of {', '.join(served)}")
        await self.wait(lambda: any(s.record.outcome == "refused" for s in self.seen[mark:]), "the removal guard")
        refused = next(s for s in self.seen[mark:] if s.record.outcome == "refused")
        n.item("refused", _short(refused.record.reason, 300))
        self.check(held)
        mark = len(self.seen)
        self.cluster.replace(before)
        await self.wait(lambda: any(s.record.outcome == "up-to-date" for s in self.seen[mark:]), "the source to return")
        n.item("back", f"the source lists them again: nothing to write, the switches never moved from v{held.version}")

        # (b) The primary reboots and comes back with no pipeline and no tables.
        primary = next(s.name for s in self.config.switch_config.switches if s.role == "primary")
        old = self.switches[primary]
        port = old.port
        old.stop(0)
        fresh = SoftwareSwitch()
        fresh.start(f"127.0.0.1:{port}")
        self.stack.callback(fresh.stop, 1.0)
        self.switches[primary] = fresh
        n.item("reboot", f"{primary} restarts on 127.0.0.1:{port} with no pipeline and empty tables")
        mark = len(self.seen)
        await self.wait(lambda: any(s.record.outcome == "resynced" and s.record.writes for s in self.seen[mark:]),
                        f"{primary} to be read back and repaired")
        repaired = next(s for s in self.seen[mark:] if s.record.outcome == "resynced" and s.record.writes)
        n.item("repair", _short(repaired.record.reason, 300))
        self.check(held)

    # -- summary ----------------------------------------------------------------------------------

    def summary(self) -> DemoReport:
        n = self.n
        history = tuple(self.ctl.history)
        outcomes = Counter(r.outcome for r in history if r.outcome != "up-to-date")
        final = self.audit.last_applied(self.config.key)
        if final is None or self.held is None or final.digest != self.held.digest:
            raise DemoFailed("the audit repository's last applied snapshot is not what the switches hold")
        records = self.audit.history(config=self.config.key)
        elapsed = time.perf_counter() - self.t0
        audit = shlex.quote(str(self.audit_dir))
        n.step(None, "Summary")
        n.item("transactions", ", ".join(f"{c} {o}" for o, c in sorted(outcomes.items())), width=14)
        n.item("table writes", f"{sum(r.writes for r in history)} over both switches, the rollback included", width=14)
        n.item("final", f"v{final.version}: {len(final.services)} Services, {final.entry_count()} entries on each "
               f"switch, {final.digest[:19]}", width=14)
        n.item("read-backs", f"{len(self.checks)}: each time both switches held exactly their snapshot", width=14)
        n.item("audit", f"{self.audit_dir}: {len(records)} records; inspect them with", width=14)
        n.say(f"p4kube audit log --repo {audit}", indent=17)
        n.item("intent", f"{self.intent_dir}: {len(self.commits)} commits", width=14)
        n.item("kept", f"{self.work} (remove it with: rm -rf {shlex.quote(str(self.work))})", width=14)
        n.item("took", f"{elapsed:.1f} s", width=14)
        return DemoReport(
            workdir=self.work, intent_repo=self.intent_dir, audit_repo=self.audit_dir, config=self.config.key,
            transactions=history, checks=tuple(self.checks), intent_commits=tuple(self.commits),
            failed_service=FAILING, fallback_annotations=self.fallback_annotations,
            recovered_annotations=self.recovered_annotations, final_version=final.version, elapsed_s=elapsed,
        )

    # -- helpers ----------------------------------------------------------------------------------

    async def wait(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        """Wait on the loop's pass completions; fail clearly on a timeout or a dead loop."""
        waiter = asyncio.ensure_future(self.ctl.wait_until(predicate, timeout))
        done, _ = await asyncio.wait({waiter, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            try:
                waiter.result()
            except TimeoutError:
                raise DemoFailed(f"timed out after {timeout:g}s waiting for {what}") from None
            return
        waiter.cancel()
        exc = None if self.task.cancelled() else self.task.exception()
        raise DemoFailed(f"the controller stopped while waiting for {what}: {exc!r}")

    async def transaction(self, outcome: str, what: str) -> _Seen:
        """The next pass that wrote (or tried to write) to the switches; it must have `outcome`."""
        mark = self._mark
        await self.wait(lambda: any(s.result is not None for s in self.seen[mark:]), what)
        seen = self.consume(next(s for s in self.seen[mark:] if s.result is not None))
        if seen.record.outcome != outcome:
            raise DemoFailed(f"expected {what}: v{seen.record.version} was {seen.record.outcome}: {seen.record.reason}")
        return seen

    def consume(self, seen: _Seen) -> _Seen:
        self._mark = self.seen.index(seen) + 1
        return seen

    def narrate(self, seen: _Seen) -> None:
        """One transaction in a line or two: version, outcome, time, writes, probe, audit commit."""
        assert seen.result is not None and seen.snapshot is not None
        v = seen.snapshot.version
        per_switch = {sw.name: sw.writes for sw in seen.result.switches}
        first = next(iter(per_switch.values()))
        if all(w == first for w in per_switch.values()):
            writes = f"{_total(first)} writes on each switch ({_writes(first)})"
        else:
            writes = "; ".join(f"{k}: {_total(w)} writes ({_writes(w)})" for k, w in per_switch.items())
        probe = f"; probe: {sum(1 for r in seen.probe.results if r.ok)} backends answer" if seen.probe else ""
        commit = next((e.commit[:12] for e in self.audit_entries(v) if e.outcome == seen.record.outcome), "?")
        self.n.item("->", f"v{v} {seen.record.outcome} in {seen.record.seconds * 1000:.0f} ms: {writes}, standby "
                    f"then primary, read back{probe}; audit {commit}", indent=4, width=3)

    def audit_entries(self, version: int) -> list[AuditEntry]:
        return [e for e in reversed(self.audit.history(config=self.config.key)) if e.version == version]

    def audit_lines(self, version: int, outcome: str, note: str = "") -> None:
        entries = [e for e in self.audit_entries(version) if e.outcome == outcome]
        if not entries:
            raise DemoFailed(f"the audit repository has no {outcome} record of v{version}")
        for e in entries:
            why = f": {e.reason}" if e.reason else ""
            self.n.item("audit", f"{e.commit[:12]} v{version} {outcome}{f' ({note})' if note else ''}{_short(why, 120)}")

    def check(self, snap: Snapshot, label: str = "") -> None:
        """Read both switches' tables and compare them with the snapshot."""
        held = {name: _switch_entries(sw, self.tables) for name, sw in self.switches.items()}
        result = SwitchCheck(label or f"v{snap.version}", snap.version, held, _snapshot_entries(snap))
        self.checks.append(result)
        if not result.ok:
            details = "; ".join(f"{k}: {len(v - result.expected)} extra, {len(result.expected - v)} missing"
                                for k, v in held.items())
            raise DemoFailed(f"the switches do not hold {result.label}: {details}")
        self.n.item("check", f"both switches hold exactly {result.label} ({len(result.expected)} entries, read from "
                    f"each switch and compared with the snapshot)")

    def packet(self, snap: Snapshot, service: str, vip: tuple[str, int] | None = None) -> None:
        """One TCP SYN through the primary's pipeline. A Service on the switches: the node it lands
        on must be the one the snapshot's bucket assignment names for the flow's hash. A fallen
        back Service (`vip` given): the VIP must miss and be routed to the nodes unchanged."""
        primary = next(s.name for s in self.config.switch_config.switches if s.role == "primary")
        src, sport = CLIENT
        svc = snap.by_name.get(service)
        dst_ip, dst_port = vip if vip is not None else (svc.vip, svc.port)  # type: ignore[union-attr]
        out = self.switches[primary].inject(1, CLIENT_PORT, build_tcp(src, dst_ip, sport, dst_port, SYN))
        if out.dropped or out.data is None:
            raise DemoFailed(f"a SYN to {service}'s VIP {dst_ip}:{dst_port} was dropped: {out.trace}")
        frame = parse_frame(out.data)
        assert frame.ipv4 is not None and frame.tcp is not None
        dst, dport = ip_str(frame.ipv4.dst), frame.tcp.dst_port
        flow = f"SYN {src}:{sport} -> {dst_ip}:{dst_port} ({service})"
        if vip is not None:
            if (dst, dport) != (dst_ip, dst_port):
                raise DemoFailed(f"{flow} was balanced to {dst}:{dport} although {service} is not on the switches")
            self.n.item("packet", f"{flow} misses vip_table and leaves {primary} unchanged on port "
                        f"{out.egress_port}, towards the nodes: kube-proxy's path")
            return
        assert svc is not None
        node = {b.address: b.node for b in svc.backends}.get(dst)
        bucket = flow_bucket(ip(src), ip(svc.vip), 6, sport, svc.port, svc.bucket_count - 1)
        if node is None or node != svc.assignment[bucket]:
            raise DemoFailed(f"{flow} went to {dst}:{dport}; the snapshot sends bucket {bucket} to {svc.assignment[bucket]}")
        self.n.item("packet", f"{flow} leaves {primary} on port {out.egress_port} for {node} at {dst}:{dport}: "
                    f"bucket {bucket} of {svc.bucket_count}, the node the snapshot assigns it")

    async def _stop_controller(self, stop: asyncio.Event) -> None:
        stop.set()
        try:
            await asyncio.wait_for(self.task, WAIT_S)
        except TimeoutError:
            self.task.cancel()
            raise DemoFailed(f"the controller did not stop within {WAIT_S:g}s") from None


async def _play(work: Path, say: _Narrator) -> DemoReport:
    async with AsyncExitStack() as stack:
        demo = _Demo(work, say, stack)
        await demo.set_up()
        await demo.first_transaction()
        await demo.churn()
        await demo.intent_change()
        await demo.failure_and_recovery()
        await demo.safety()
        report = demo.summary()
    return report


__all__ = ["DemoFailed", "DemoReport", "SwitchCheck", "run_demo"]
