"""The demo's scenario: its steps in order, each saying what happens and why, making it happen
to the stand-ins, and checking that it did (see reconciler.demo for the whole story)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import shlex
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from ..apply import ApplyResult
from ..audit.message import AuditEntry
from ..audit.repo import AuditRepo
from ..cluster.model import ClusterState, Node
from ..cluster.recorded import load_cluster_file
from ..cluster.scripted import ScriptedCluster
from ..cluster.synthetic import with_scaled_service
from ..controller import TransactionRecord
from ..health import ProbeReport
from ..intent.files import OperatorDirs
from ..intent.loader import validate_paths
from ..intent.watch import DirectoryIntent
from ..paths import DEMO_EXAMPLE_DIR
from ..sim.server import SoftwareSwitch
from ..snapshot import Snapshot
from .checks import SwitchCheck, check_packet, check_switches
from .connections import Connection, Traffic
from .errors import DemoFailed
from .intent_repo import (
    DEMO_TIMINGS,
    INTENT_FILE,
    demo_intent,
    init_intent_repo,
    intent_yaml,
    land_commit,
    with_buckets,
)
from .narrator import Narrator, plan_lines, short, total, writes_text
from .nodes import NodeListeners, listen_on_a_free_block, on_loopback, tcp_node_ports
from .wiring import start_controller

EXAMPLE = DEMO_EXAMPLE_DIR  # intent-examples/multi-service, shipped in the package
WAIT_S = 20.0  # the longest any step waits for the loop; a normal run needs well under a second
SCALED = "web/frontend"
FAILING = "web/api"
LOST_NODE = "node-g"
OLD_CLIENTS, NEW_CLIENTS = "10.200.1.7", "10.200.2.7"  # clients of the connections the drain keeps / opens

FALLBACK_PREFIX = "loadbalancer.k8s.io/p4kube-fallback"  # the fallback's own annotations


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
    # Step 3's drains: the versions that started drains and the ones that ended them (step 2),
    # and the connections of the drained scale event (kept: established ones in moved buckets).
    drains_started: tuple[int, ...] = ()
    drains_finished: tuple[int, ...] = ()
    connections_kept: int = 0
    connections_new: int = 0


@dataclass(frozen=True)
class _Seen:
    """One pass of the loop as the worker reported it (ConfigWorker.on_result)."""

    record: TransactionRecord
    result: ApplyResult | None
    snapshot: Snapshot | None
    previous: Snapshot | None  # what the switches held before
    probe: ProbeReport | None


async def play(work: Path, say: Narrator) -> DemoReport:
    """Every step in order; whatever happens, everything they started is stopped."""
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


def _starts_drains(seen: _Seen) -> bool:
    """Whether the pass's snapshot has a drain its previous one did not."""
    assert seen.snapshot is not None
    before = {(s.name, d.bucket, d.generation) for s in seen.previous.services for d in s.drains} if seen.previous else set()
    return any((s.name, d.bucket, d.generation) not in before for s in seen.snapshot.services for d in s.drains)


def _ends_drains(seen: _Seen) -> bool:
    """Whether a drain of the previous snapshot is gone from the pass's snapshot (step 2)."""
    assert seen.snapshot is not None
    if seen.previous is None:
        return False
    after = {(s.name, d.bucket, d.generation) for s in seen.snapshot.services for d in s.drains}
    return any((s.name, d.bucket, d.generation) not in after for s in seen.previous.services for d in s.drains)


def _expect_assigned(conns: tuple[Connection, ...], assignment: tuple[str | None, ...], version: str,
                     when: str) -> None:
    """Every connection reached the node `assignment` names for its bucket, else DemoFailed."""
    wrong = [f"{c} reached {c.node}, not {assignment[c.bucket]}" for c in conns if c.node != assignment[c.bucket]]
    if wrong:
        raise DemoFailed(f"connections {when} did not follow {version}'s buckets: {'; '.join(wrong)}")


def _per_node(conns: tuple[Connection, ...] | list[Connection]) -> str:
    """ "12 on node-e, 3 on node-c" """
    return ", ".join(f"{c} on {node}" for node, c in sorted(Counter(x.node for x in conns).items()))


def _without_node(state: ClusterState, name: str) -> ClusterState:
    """The cluster after a node is lost: its endpoints are gone and its Node object removed."""
    endpoints = {k: tuple(ep for ep in eps if ep.node != name) for k, eps in state.endpoints.items()}
    nodes: dict[str, Node] = {k: v for k, v in state.nodes.items() if k != name}
    return dataclasses.replace(state, endpoints=endpoints, nodes=nodes)


class _Demo:
    """The steps, in order, and what they share: the stand-ins, the loop's passes as the
    worker reported them, and what the switches hold."""

    def __init__(self, work: Path, narrator: Narrator, stack: AsyncExitStack) -> None:
        self.work = work
        self.n = narrator
        self.stack = stack
        self.intent_dir = work / "intent"
        self.audit_dir = work / "audit.git"
        self.switches: dict[str, SoftwareSwitch] = {}
        self.listeners = NodeListeners()
        self.seen: list[_Seen] = []  # every pass the worker reported, in order
        self._mark = 0  # seen[:_mark] has been narrated
        self.checks: list[SwitchCheck] = []
        self.commits: list[str] = []
        self.held: Snapshot | None = None  # what the switches hold, as the demo follows it
        self.node_ip: dict[str, str] = {}
        self.fallback_annotations: dict[str, str] = {}
        self.recovered_annotations: dict[str, str] = {}
        self.drains_started: list[int] = []
        self.drains_finished: list[int] = []
        self.connections_kept = self.connections_new = 0
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
        for spec in intent_yaml().load(text)["spec"]["switchConfig"]["switches"]:
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
        ports = tcp_node_ports(recorded)
        self.stack.push_async_callback(self.listeners.close)
        self.node_ip = await listen_on_a_free_block(self.listeners, sorted(recorded.nodes), ports)
        self.cluster = ScriptedCluster(on_loopback(recorded, self.node_ip))
        first, last = sorted(self.node_ip)[0], sorted(self.node_ip)[-1]
        n.item("nodes", f"{first}..{last} moved from {recorded.nodes[first].internal_ip}.. to "
               f"{self.node_ip[first]}..{self.node_ip[last].rsplit('.', 1)[1]}; a TCP listener on each node "
               f"for nodePorts {', '.join(map(str, ports))} ({len(self.listeners.servers)} listeners)")

        node_net = str(ipaddress.IPv4Network(f"{self.node_ip[first]}/24", strict=False))
        self.intent_text, vip_net = demo_intent(text, addresses, node_net)
        self.commits.append(init_intent_repo(
            self.intent_dir, self.intent_text, "Load balancing for payments and web (from intent-examples/multi-service)"))
        t = DEMO_TIMINGS
        n.item("intent", f"{self.intent_dir}: {INTENT_FILE} committed as {self.commits[0][:12]}; the example with "
               f"the switches' addresses, routes {node_net} (the nodes) and {vip_net} (VIPs not on the switches, "
               f"for kube-proxy) to port 1, updateInterval {t['updateInterval']}, health checks every "
               f"{t['interval']} (timeout {t['timeout']}, {t['failureThreshold']} failures to fail, "
               f"{t['successThreshold']} success to recover), connectionDrainTimeout {t['connectionDrainTimeout']}")
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
        n.say(self.plan_lines(seen, full=True), indent=13)
        self.audit_lines(seen.snapshot.version, "pending", "the snapshot is committed before any switch is written")
        for sw in seen.result.switches:
            n.item("write", f"{sw.name} ({sw.role}): {total(sw.writes)} writes ({writes_text(sw.writes)})"
                   f"{', pipeline pushed first' if sw.pipeline_pushed else ''}; read back and compared")
        if seen.probe is not None:
            ok = sum(1 for r in seen.probe.results if r.ok)
            n.item("probe", f"{ok} of {len(seen.probe.results)} backends (node IP:nodePort of the TCP Services) "
                   f"answer a TCP connect")
        self.audit_lines(seen.snapshot.version, "applied")
        self.check(seen.snapshot)
        self.packet(seen.snapshot, SCALED)

    def _start_controller(self) -> None:
        running = start_controller(self.config, self.intent, self.cluster, self.audit, EXAMPLE, self.stack,
                                   self._observe, stop_timeout=WAIT_S)
        self.ctl, self.task, self.tables = running.controller, running.task, running.tables

    def _observe(self, record: TransactionRecord, result: ApplyResult | None, snap: Snapshot | None,
                 probe: ProbeReport | None) -> None:
        """Every pass the worker reports, with what the switches held before it."""
        self.seen.append(_Seen(record, result, snap, self.held, probe))
        if result is not None and result.ok:
            self.held = snap

    # -- 3 ----------------------------------------------------------------------------------------

    async def churn(self) -> None:
        n = self.n
        n.step(3, "Cluster churn: each change is one small transaction",
               "Endpoints come and go. The loop coalesces changes for updateInterval, re-renders only the "
               "Services that changed, and rewrites only the buckets whose backend changed: the fewest "
               "moves the new replica shares allow, so flows on the other buckets keep their node.")
        node = "node-c"
        await self.scale_with_drain(f"{SCALED} scales up: 2 more ready replicas on {node}",
                                    lambda s: with_scaled_service(s, SCALED, node, +2))
        changes: list[tuple[str, Callable[[ClusterState], ClusterState]]] = [
            (f"{SCALED} scales back down: 2 fewer on {node}", lambda s: with_scaled_service(s, SCALED, node, -2)),
            (f"{LOST_NODE} is lost: its endpoints are gone and its Node is removed", lambda s: _without_node(s, LOST_NODE)),
        ]
        for title, change in changes:
            keys = self.cluster.replace(change(self.cluster.snapshot()))
            if not keys:
                raise DemoFailed(f"{title}: the cluster did not change")
            n.item("*", f"{title} (changed: {', '.join(sorted(keys))})", width=1)
            seen = await self.transaction("applied", f"the transaction after: {title}")
            n.say(self.plan_lines(seen), indent=4)
            self.narrate(seen)
        await self.drain_finished("these drains")  # reads both switches back
        assert self.held is not None
        stale = [s.name for s in self.held.services if any(b.node == LOST_NODE for b in s.backends)]
        if stale:
            raise DemoFailed(f"{LOST_NODE} is gone but still holds buckets of {', '.join(stale)}")

    async def scale_with_drain(self, title: str, change: Callable[[ClusterState], ClusterState]) -> None:
        """A scale event with long-lived connections open: established ones keep their node while
        the moved buckets drain, new ones go to the new assignment, then the drain ends."""
        n = self.n
        assert self.held is not None
        before = self.held.by_name[SCALED]
        primary = self.primary()
        traffic = Traffic(self.switches[primary], before.vip, before.port, before.bucket_count,
                          {v: k for k, v in self.node_ip.items()}, before.backends[0].port)
        old = traffic.open(OLD_CLIENTS, range(before.bucket_count))
        _expect_assigned(old, before.assignment, f"v{self.held.version}", "opened")
        n.item("open", f"{len(old)} long-lived TCP connections from {OLD_CLIENTS} to {SCALED} at {before.vip}:"
               f"{before.port}, one in each bucket: their SYNs through {primary} reach the nodes "
               f"v{self.held.version} assigns ({_per_node(old)})")
        keys = self.cluster.replace(change(self.cluster.snapshot()))
        if not keys:
            raise DemoFailed(f"{title}: the cluster did not change")
        n.item("*", f"{title} (changed: {', '.join(sorted(keys))})", width=1)
        seen = await self.transaction("applied", f"the transaction after: {title}")
        assert seen.snapshot is not None
        n.say(self.plan_lines(seen), indent=4)
        self.narrate(seen)
        step1 = seen.snapshot
        after = step1.by_name[SCALED]
        draining = {d.bucket for d in after.drains}
        if not draining:
            raise DemoFailed(f"v{step1.version} moved buckets of {SCALED} without draining them")
        # While the drain runs (nothing awaits between these packets, so the loop cannot write).
        moved = [f"{c} from {c.node} to {node}" for c in old if (node := traffic.data(c)) != c.node]
        if moved:
            raise DemoFailed(f"{len(moved)} established connection(s) moved during the drain: {'; '.join(moved)}")
        kept = [c for c in old if c.bucket in draining]
        new = traffic.open(NEW_CLIENTS, sorted(draining))
        _expect_assigned(new, after.assignment, f"v{step1.version}", "opened during the drain")
        strayed = [f"{c} to {node}" for c in new if (node := traffic.data(c)) != c.node]
        if strayed:
            raise DemoFailed(f"new connection(s) left their node during the drain: {'; '.join(strayed)}")
        n.item("kept", f"{len(kept)} established connections kept their node in the {len(draining)} draining "
               f"buckets ({_per_node(kept)}), and the other {len(old) - len(kept)} in buckets that did not move: "
               f"a data packet of each of the {len(old)} reached the node its SYN reached")
        n.item("new", f"{len(new)} new connections from {NEW_CLIENTS}, one in each draining bucket, went to the new "
               f"assignment ({_per_node(new)}); their SYNs marked them in the switch's conn_gen register, so "
               f"their data packets followed them there")
        n.explain(f"The loop wakes when the drain ends ({DEMO_TIMINGS['connectionDrainTimeout']} after it started, "
                  f"at a whole second) and writes the plain entries: step 2, an ordinary transaction.", indent=4)
        step2 = await self.drain_finished(f"the drain of v{step1.version}")
        plain = step2.by_name[SCALED]
        _expect_assigned(tuple(Connection(c.src, c.sport, c.bucket, traffic.data(c)) for c in new),
                         plain.assignment, f"v{step2.version}", "after the drain")
        followed = sum(1 for c in kept if traffic.data(c) == plain.assignment[c.bucket])
        n.item("after", f"the {len(new)} new connections stay on their node; the {followed} older ones still open "
               f"in the moved buckets now follow the plain entries (to live through a move, a connection must end "
               f"within connectionDrainTimeout)")
        self.connections_kept, self.connections_new = len(kept), len(new)

    async def drain_finished(self, what: str) -> Snapshot:
        """Wait for the passes that end every drain (step 2; one per distinct end time), narrating each."""
        mark = self._mark

        def done() -> bool:
            return any(s.result is not None and s.snapshot is not None and s.snapshot.drain_until() is None
                       for s in self.seen[mark:])

        await self.wait(done, f"{what} to finish")
        for s in self.seen[mark:]:
            if s.result is None:
                continue
            seen = self.consume(s)
            if seen.record.outcome != "applied" or seen.snapshot is None:
                raise DemoFailed(f"expected {what} to finish: v{seen.record.version} was {seen.record.outcome}: "
                                 f"{seen.record.reason}")
            self.n.item("drain", f"finished, v{seen.snapshot.version}: the plain entries are in place"
                        if seen.snapshot.drain_until() is None else
                        f"partly finished, v{seen.snapshot.version}", indent=4)
            self.narrate(seen)
            if seen.snapshot.drain_until() is None:
                self.check(seen.snapshot)  # only now: after a partial end the loop may be writing the next
                return seen.snapshot
        raise AssertionError("unreachable: done() found a pass without drains")

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
        self.intent_text = with_buckets(self.intent_text, new)
        mark = len(self.seen)
        commit = land_commit(self.intent_dir, self.intent_text, message)
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
        n.say(self.plan_lines(seen), indent=4)
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
            n.item("rollback", f"{sw.name}: back on v{last_good.version} with {total(sw.writes)} compensating "
                   f"writes ({writes_text(sw.writes)}), confirmed by a full read-back")
        self.audit_lines(v, "rolled-back")
        self.check(last_good, f"v{last_good.version}, the last good snapshot")
        if seen.record.fell_back != (FAILING,):
            raise DemoFailed(f"expected {FAILING} to fall back; the loop fell back {seen.record.fell_back or 'nothing'}")
        self.fallback_annotations = dict(self.cluster.snapshot().services[FAILING].annotations)
        n.item("fallback", f"{FAILING} is annotated for kube-proxy:")
        for k, val in sorted(self.fallback_annotations.items()):
            if k.startswith("loadbalancer.k8s.io/"):
                n.say(f"{k}: {short(val, 110 - len(k))}", indent=13)

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
        n.item("refused", short(refused.record.reason, 300))
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
        n.item("repair", short(repaired.record.reason, 300))
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
            drains_started=tuple(self.drains_started), drains_finished=tuple(self.drains_finished),
            connections_kept=self.connections_kept, connections_new=self.connections_new,
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
        if _starts_drains(seen):
            self.drains_started.append(v)
        elif _ends_drains(seen):
            self.drains_finished.append(v)
        per_switch = {sw.name: sw.writes for sw in seen.result.switches}
        first = next(iter(per_switch.values()))
        if all(w == first for w in per_switch.values()):
            writes = f"{total(first)} writes on each switch ({writes_text(first)})"
        else:
            writes = "; ".join(f"{k}: {total(w)} writes ({writes_text(w)})" for k, w in per_switch.items())
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
            self.n.item("audit", f"{e.commit[:12]} v{version} {outcome}{f' ({note})' if note else ''}{short(why, 120)}")

    def check(self, snap: Snapshot, label: str = "") -> None:
        """Read both switches' tables and compare them with the snapshot."""
        result = check_switches(self.switches, self.tables, snap, label)
        self.checks.append(result)
        self.n.item("check", f"both switches hold exactly {result.label} ({len(result.expected)} entries, read from "
                    f"each switch and compared with the snapshot)")

    def primary(self) -> str:
        return next(s.name for s in self.config.switch_config.switches if s.role == "primary")

    def packet(self, snap: Snapshot, service: str, vip: tuple[str, int] | None = None) -> None:
        """One TCP SYN through the primary's pipeline (checks.check_packet says what must happen)."""
        primary = self.primary()
        self.n.item("packet", check_packet(self.switches[primary], primary, snap, service, vip))

    def plan_lines(self, seen: _Seen, *, full: bool = False) -> str:
        assert seen.snapshot is not None
        return plan_lines(self.config.key, seen.previous, seen.snapshot, seen.record.issues, full=full)


__all__ = ["DemoReport", "play"]
