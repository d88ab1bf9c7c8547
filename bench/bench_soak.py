#!/usr/bin/env python3
"""Soak: memory does not grow with the number of passes (DESIGN.md 6.1, "Bounded").

Runs the real loop of `p4kube run` for many passes with churn and health rounds, and watches the
process's resident memory. The wiring is `p4kube run`'s own (reconciler.app.runtime.build_runtime:
its make_worker_for builds each ConfigWorker with build_applier's TwoSwitchApplier, the post-apply
probe, the audit repository behind ReopeningAudit, the metrics on_result / on_health hooks):

    intent    a LoadBalancerConfig in a Git checkout (DirectoryIntent, followed with watchdog)
    cluster   run's (FollowedRecording), a reconciler.cluster.scripted.ScriptedCluster; the benchmark
              feeds it the changed state with replace(), as the recording's reload would
    switches  two `p4kube sim` processes (bench/benchlib.py)
    nodes     real TCP listeners on 127.0.0.2, 127.0.0.3, ... (one per node and nodePort),
              accepting and closing in this process's event loop, for the post-apply probe and
              the health rounds' backend probes
    audit     a real repository on disk (--no-audit: the --state directory instead)
    time      reconciler.health.ManualClock: every --health-every passes the clock moves by the
              health interval, so a health round (both switches' quick check, a full read-back
              every readBackInterval, backend probes, the metrics hook reading counters) comes
              on schedule without waiting

Each pass is one cluster change: a Service gains one endpoint on one of its nodes, and loses it
again the next pass (the Services take turns), so the snapshot changes every pass and a
transaction with table writes (pending commit, standby, primary, read-back, probe, applied
commit) runs. The benchmark waits on controller.wait_passes / wait_until, never on sleeps.

RSS (VmRSS of /proc/self/status, after gc.collect()) is taken after the warm-up, at every 10%
of the run and at the end; growth from warm-up to end above --max-growth (5%) exits 1. With
--tracemalloc the top allocation growth sites between warm-up and end are printed (slow).

    .venv/bin/python bench/bench_soak.py [--passes 100000] [--no-audit] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import logging
import os
import platform
import socket
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pygit2
from benchlib import start_switch
from reconciler.cluster.model import ClusterState, Node
from reconciler.cluster.synthetic import cluster_to_list_yaml, synthetic_cluster, with_scaled_service
from reconciler.controller import Controller
from reconciler.health import ManualClock
from reconciler.cli.run import build_runtime

REPO = Path(__file__).resolve().parents[1]

CONFIG = "p4kube-system/soak"
HEALTH_INTERVAL_S = 5.0


def rss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    """A kB figure of /proc/PID/status: VmRSS, RssAnon (heap), RssFile (mapped files: libraries, pack files)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


AUDIT_CACHES = ("_services", "_versions", "_entries", "_namespaces", "_snapshots")


def audit_caches(audit: object) -> str:
    """Sizes of the audit repository's in-memory caches (private attributes, read for the report
    only; absent ones are skipped, as the repository's internals change)."""
    repo = getattr(audit, "_repo", audit)
    if repo is None:
        return "-"
    sizes = [f"{name.strip('_')} {len(c)}" for name in AUDIT_CACHES if (c := getattr(repo, name, None)) is not None]
    return ", ".join(sizes) or "-"


def disk_usage(path: Path) -> tuple[int, int, int]:
    """(apparent bytes, allocated bytes, files) under path."""
    apparent = blocks = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            apparent += st.st_size
            blocks += st.st_blocks * 512
            files += 1
    return apparent, blocks, files


class Listeners:
    """Listening sockets for (node address, nodePort), accepting and closing in the event loop."""

    def __init__(self, ips: list[str]) -> None:
        self.ips = ips
        self.socks: list[socket.socket] = []
        self.accepted = 0

    def port_on_all(self) -> int:
        """A port bound (and listening) on every node address: a nodePort."""
        for _ in range(100):
            first = socket.socket()
            first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            first.bind((self.ips[0], 0))
            port = first.getsockname()[1]
            got = [first]
            try:
                for ip in self.ips[1:]:
                    s = socket.socket()
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    got.append(s)
                    s.bind((ip, port))
            except OSError:
                for s in got:
                    s.close()
                continue
            for s in got:
                s.listen(1024)
                s.setblocking(False)
            self.socks.extend(got)
            return port
        raise RuntimeError("no port free on every node address")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        for s in self.socks:
            loop.add_reader(s.fileno(), self._accept, s)

    def _accept(self, s: socket.socket) -> None:
        while True:
            try:
                conn, _ = s.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.close()
            self.accepted += 1

    def close(self, loop: asyncio.AbstractEventLoop | None) -> None:
        for s in self.socks:
            if loop is not None:
                loop.remove_reader(s.fileno())
            s.close()


def soak_cluster(a: argparse.Namespace, listeners: Listeners) -> ClusterState:
    """synthetic_cluster's Services and endpoints on nodes at 127.0.0.x with nodePorts that listen."""
    import dataclasses

    base = synthetic_cluster(services=a.services, nodes=a.nodes, endpoints=a.endpoints, seed=a.seed)
    nodes = {name: Node(name, listeners.ips[i]) for i, name in enumerate(sorted(base.nodes))}
    services = {}
    for key, svc in base.services.items():
        port = listeners.port_on_all()
        services[key] = dataclasses.replace(svc, ports=tuple(dataclasses.replace(p, node_port=port) for p in svc.ports))
    return dataclasses.replace(base, services=services, nodes=nodes)


def write_intent(path: Path, ports: list[int], a: argparse.Namespace) -> None:
    path.mkdir(parents=True)
    (path / "lbconfig.yaml").write_text(f"""\
apiVersion: networking.p4kube.io/v1alpha1
kind: LoadBalancerConfig
metadata:
  name: soak
  namespace: p4kube-system
spec:
  algorithm: replica-weighted
  updateInterval: 0s
  bucketsPerService: 64
  backendMode: nodePort
  healthCheck:
    interval: {HEALTH_INTERVAL_S:g}s
    timeout: 2s
    readBackInterval: {a.read_back_interval:g}s
  vipPools:
    - name: soak
      addresses:
        - 198.51.100.1-198.51.100.250
  switchConfig:
    switchType: bmv2
    deviceConfig: sim-device-config.json  # the software switch's placeholder (see intent-examples/multi-service)
    switches:
      - name: sw-primary
        role: primary
        address: 127.0.0.1:{ports[1]}
      - name: sw-standby
        role: standby
        address: 127.0.0.1:{ports[0]}
    routes:
      - prefix: 127.0.0.0/24
        port: 1
        nextHopMac: "02:00:7f:00:00:01"
""")
    (path / "sim-device-config.json").write_bytes((REPO / "intent-examples" / "multi-service" / "sim-device-config.json").read_bytes())
    repo = pygit2.init_repository(str(path), initial_head="main")
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("soak", "soak@example.com", 1700000000, 0)
    repo.create_commit("HEAD", sig, sig, "intent", repo.index.write_tree(), [])


@dataclass
class Sample:
    passes: int
    elapsed: float  # seconds since the churn began
    rss: int  # kB, this process
    anon: int  # kB of it anonymous (the heaps)
    file: int  # kB of it mapped files (shared libraries, the audit repository's pack files)
    switch_rss: list[int]  # kB, the switch processes
    history: int  # len(controller.history): every record ever noted
    retained: int  # the records it keeps
    health: int  # health rounds so far
    objects: int  # objects the cyclic GC tracks
    traced: int  # bytes traced by tracemalloc (0 without it)
    audit_bytes: int  # apparent size of the audit repository (or state directory)
    audit_files: int
    caches: str  # the audit repository's cache sizes
    git_cache: int  # bytes in libgit2's object cache (process-wide; native memory, invisible to tracemalloc)


async def run(a: argparse.Namespace, workdir: Path) -> tuple[str, bool]:
    switches = []
    listeners = Listeners([f"127.0.0.{2 + i}" for i in range(a.nodes)])
    loop = asyncio.get_running_loop()
    try:
        for _ in range(2):
            switches.append(start_switch())
        ports = [port for _, port in switches]
        state = soak_cluster(a, listeners)
        listeners.start(loop)
        write_intent(workdir / "intent", ports, a)
        (workdir / "cluster").mkdir()
        (workdir / "cluster" / "cluster.yaml").write_text(cluster_to_list_yaml(state))
        audit_dir = workdir / "audit.git"
        args = argparse.Namespace(
            intent=str(workdir / "intent"), intent_from_cluster=False, cluster=str(workdir / "cluster" / "cluster.yaml"),
            kubeconfig=None, audit_repo=str(audit_dir) if a.audit else None, audit_workdir=None,
            state=str(workdir / "state"), metrics_address=None, election_id=1, leader_elect=False,
            leader_elect_namespace="p4kube-system", leader_elect_lease_name="p4kube-reconciler",
            leader_elect_identity=None, timeout=10.0, batch_size=None,
            allow_insecure_switches=True,  # plaintext loopback software switches
            pipeline_dir=str(workdir / "intent"),  # where the intent's deviceConfig is found by name
        )
        rt = await build_runtime(args)
        try:
            return await soak(a, rt, args, listeners, [p for p, _ in switches], workdir)
        finally:
            await rt.aclose()
    finally:
        listeners.close(loop)
        for proc, _ in switches:
            proc.terminate()
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()


async def soak(a, rt, args, listeners, procs, workdir) -> tuple[str, bool]:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    cluster = rt.cluster  # run's (FollowedRecording): a ScriptedCluster
    ctl = Controller(rt.intent, cluster, make_worker=rt.make_worker_for(args.election_id), clock=clock)
    rt.current["controller"] = ctl
    gc.collect()
    gc.freeze()  # as `p4kube run` does before the loop
    stop = asyncio.Event()
    t_start = time.perf_counter()
    task = asyncio.create_task(ctl.run(stop))
    await ctl.wait_until(lambda: any(r.outcome == "applied" for r in ctl.history) or task.done(), timeout=120)
    if task.done():
        task.result()
    t_first = time.perf_counter() - t_start

    base = cluster.snapshot()
    # Churn: each Service in turn gains an endpoint on the node holding most of its endpoints,
    # and loses it the next pass (two nodes or more per Service, so its buckets move).
    turns = []
    for key in sorted(k for k, eps in base.endpoints.items() if len({e.node for e in eps}) >= 2):
        counts = collections.Counter(e.node for e in base.endpoints[key])
        turns.append((key, counts.most_common(1)[0][0]))
    if not turns:
        raise SystemExit("no Service has endpoints on two nodes: raise --endpoints")

    outcomes: collections.Counter[str] = collections.Counter()
    writes: collections.Counter[int] = collections.Counter()
    pass_ms: collections.Counter[int] = collections.Counter()  # per-pass wall time, 1 ms bins
    samples: list[Sample] = []
    checkpoints = sorted({a.warmup} | {a.passes * k // 10 for k in range(1, 11) if a.passes * k // 10 > a.warmup}
                         | ({a.settled} if a.warmup < a.settled < a.passes else set()))
    traces: dict[int, Path] = {}  # pass -> tracemalloc snapshot dumped there (kept out of this process's memory)
    seen = len(ctl.history)
    p0 = ctl.passes
    h_rounds = 0

    def sample(done: int) -> Sample:
        gc.collect()
        apparent, _, files = disk_usage(workdir / "audit.git") if a.audit else disk_usage(workdir / "state")
        return Sample(
            passes=done, elapsed=time.perf_counter() - t_loop, rss=rss_kb(), anon=rss_kb(field="RssAnon"), file=rss_kb(field="RssFile"), switch_rss=[rss_kb(p.pid) for p in procs],
            history=len(ctl.history), retained=ctl.history.retained, health=ctl.health_rounds,
            objects=len(gc.get_objects()), traced=tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0,
            audit_bytes=apparent, audit_files=files, caches=audit_caches(rt.audit) if a.audit else "-",
            git_cache=pygit2.settings.cached_memory[0],
        )

    t_loop = time.perf_counter()
    for i in range(1, a.passes + 1):
        key, node = turns[(i - 1) // 2 % len(turns)]
        delta = 1 if i % 2 else -1
        t0 = time.perf_counter()
        cluster.replace(with_scaled_service(cluster.snapshot(), key, node, delta))
        await ctl.wait_passes(p0 + i, timeout=a.timeout)
        pass_ms[int((time.perf_counter() - t0) * 1000)] += 1
        for r in ctl.history[seen:]:
            outcomes[r.outcome.value] += 1
            if r.outcome.value == "applied":
                writes[r.writes] += 1
        seen = len(ctl.history)
        if i % a.health_every == 0:
            h = ctl.health_rounds
            clock.advance(HEALTH_INTERVAL_S)
            await ctl.wait_until(lambda h=h: ctl.health_rounds > h, timeout=a.timeout)
            h_rounds += 1
            for r in ctl.history[seen:]:
                outcomes["health: " + r.outcome.value] += 1
            seen = len(ctl.history)
        if i in checkpoints:
            s = sample(i)
            samples.append(s)
            seg = s.elapsed - (samples[-2].elapsed if len(samples) > 1 else 0.0)
            seg_passes = i - (samples[-2].passes if len(samples) > 1 else 0)
            print(f"[{time.strftime('%H:%M:%S')}] pass {i}: RSS {s.rss / 1024:.1f} MB (anon {s.anon / 1024:.1f}, "
                  f"file {s.file / 1024:.1f}), switches "
                  f"{'/'.join(f'{x / 1024:.0f}' for x in s.switch_rss)} MB, {seg_passes / seg:.1f} passes/s, "
                  f"history {s.history} (retained {s.retained}), health rounds {s.health}, gc objects {s.objects}, "
                  f"{'audit' if a.audit else 'state'} {s.audit_bytes / 1e6:.1f} MB in {s.audit_files} files, "
                  f"audit caches: {s.caches}, libgit2 object cache {s.git_cache / 1e6:.1f} MB"
                  + (f", traced {s.traced / 1e6:.1f} MB" if s.traced else ""), flush=True)
            if tracemalloc.is_tracing() and (i == a.warmup or (i >= a.settled and len(traces) < 2)):
                traces[i] = workdir / f"trace-{i}.bin"
                tracemalloc.take_snapshot().dump(str(traces[i]))
                gc.collect()
    total = time.perf_counter() - t_loop
    snap_end = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
    stop.set()
    await asyncio.wait_for(task, 60)
    commits = 0
    if a.audit:
        repo = pygit2.Repository(str(workdir / "audit.git"))
        commits = sum(1 for _ in repo.walk(repo.head.target))
    apparent, blocks, files = disk_usage(workdir / "audit.git") if a.audit else (0, 0, 0)

    warm, end = samples[0], samples[-1]
    growth = (end.rss - warm.rss) / warm.rss * 100
    ok = growth <= a.max_growth
    later = next((s for s in samples if s.passes >= a.settled and s is not end), None)
    rate_all = a.passes / total

    def pctl(q: float) -> int:
        n, acc = sum(pass_ms.values()), 0
        for ms in sorted(pass_ms):
            acc += pass_ms[ms]
            if acc >= q * n:
                return ms
        return 0

    rows = []
    for k, s in enumerate(samples):
        prev = samples[k - 1] if k else None
        rate = (s.passes - (prev.passes if prev else 0)) / (s.elapsed - (prev.elapsed if prev else 0.0))
        rows.append(
            f"| {s.passes:,}{' (warm-up)' if k == 0 else ''} | {s.elapsed / 60:.1f} | {rate:.1f} | {s.rss / 1024:.1f} | "
            f"{s.anon / 1024:.1f} / {s.file / 1024:.1f} | {s.git_cache / 1e6:.1f} | {(s.rss - warm.rss) / warm.rss * 100:+.2f}% | {'/'.join(f'{x / 1024:.0f}' for x in s.switch_rss)} | "
            f"{s.history:,} / {s.retained:,} | {s.health:,} | {s.objects:,} | {s.audit_bytes / 1e6:.1f} MB, {s.audit_files:,} files |"
            + (f" {s.traced / 1e6:.2f} |" if a.tracemalloc else "")
        )
    cmd = "bench/bench_soak.py " + " ".join(sys.argv[1:])
    lines = [
        (f"### Soak: {a.passes:,} passes, {a.services} Services, {a.nodes} nodes, {a.endpoints} endpoints, "
         f"{'audit repository' if a.audit else 'no audit (--state)'}, health round every {a.health_every} passes "
         f"({time.strftime('%Y-%m-%d %H:%M')} UTC, {platform.python_implementation()} {platform.python_version()}, "
         f"{platform.machine()}, {os.cpu_count()} cores)"),
        "",
        f"`.venv/bin/python {cmd}`",
        "",
        (f"| passes | minutes | passes/s (segment) | RSS MB | anon / file MB | libgit2 cache MB | vs warm-up | switch RSS MB (standby/primary) | "
         f"len(history) / retained | health rounds | gc objects | {'audit repo' if a.audit else 'state dir'} |"
         + (" traced MB |" if a.tracemalloc else "")),
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if a.tracemalloc else ""),
        *rows,
        "",
        "| measure | result | target |",
        "|---|---|---|",
        (f"| RSS growth, warm-up ({a.warmup:,} passes) to end ({a.passes:,}) | {growth:+.2f}% "
         f"({warm.rss / 1024:.1f} -> {end.rss / 1024:.1f} MB) | < {a.max_growth:g}% |"),
        *([(f"| RSS growth from pass {later.passes:,} (the audit caches full) to end | "
            f"{(end.rss - later.rss) / later.rss * 100:+.2f}% ({later.rss / 1024:.1f} -> {end.rss / 1024:.1f} MB) | - |")]
          if later is not None else []),
        f"| audit repository caches at warm-up / end (entries) | {warm.caches} / {end.caches} | - |",
        f"| pass rate, whole run | {rate_all:.1f} passes/s ({total / 60:.1f} min) | - |",
        (f"| one pass (change -> both switches -> probe -> commits): median / p99 / max | "
         f"{pctl(.5)} / {pctl(.99)} / {max(pass_ms)} ms | - |"),
        f"| first pass (full apply of the snapshot) | {t_first:.1f} s | - |",
        (f"| writes per applied pass (both switches): median / max | "
         f"{sorted(writes.elements())[sum(writes.values()) // 2] if writes else 0} / {max(writes) if writes else 0} | - |"),
        f"| outcomes | {', '.join(f'{k} {v:,}' for k, v in sorted(outcomes.items()))} | every pass applied |",
        f"| health rounds driven / counted by the loop | {h_rounds:,} / {ctl.health_rounds:,} | - |",
        f"| backend probe connections accepted by the node listeners | {listeners.accepted:,} | - |",
    ]
    if a.audit:
        lines.append(f"| audit repository at the end: commits / apparent / on disk / files | {commits:,} / "
                     f"{apparent / 1e6:.1f} MB / {blocks / 1e6:.1f} MB / {files:,} | - |")
    lines.append("")
    if snap_end is not None:
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
                  tracemalloc.Filter(False, "<unknown>")]
        snap_end = snap_end.filter_traces(ignore)
        for at, path in sorted(traces.items()):
            before = tracemalloc.Snapshot.load(str(path)).filter_traces(ignore)
            for key_type in ("lineno", "traceback") if a.tracemalloc_frames > 1 else ("lineno",):
                diff = snap_end.compare_to(before, key_type)
                grew = sum(st.size_diff for st in diff)
                lines += [(f"tracemalloc ({a.tracemalloc_frames} frame(s)), top growth sites by {key_type} from pass {at:,} "
                           f"to {a.passes:,} (traced total {grew / 1024:+.1f} KiB):"), "", "```"]
                for st in diff[: a.top]:
                    if key_type == "traceback":
                        lines.append(f"{st.size_diff / 1024:+.1f} KiB, {st.count_diff:+d} blocks (now {st.size / 1024:.1f} KiB)")
                        lines.extend("    " + ln for ln in st.traceback.format(most_recent_first=True))
                    else:
                        lines.append(str(st))
                lines += ["```", ""]
            del before
    lines.append(f"Result: {'PASS' if ok else 'FAIL'} (RSS growth {growth:+.2f}%, limit {a.max_growth:g}%)")
    return "\n".join(lines), ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=100_000)
    ap.add_argument("--warmup", type=int, default=1000, help="passes before the first RSS sample (default: %(default)s)")
    ap.add_argument("--services", type=int, default=50)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--endpoints", type=int, default=200, help="ready endpoints over all Services (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--health-every", type=int, default=10, metavar="K", help="a health round every K passes (default: %(default)s)")
    ap.add_argument("--read-back-interval", type=float, default=60.0, metavar="S",
                    help=f"healthCheck.readBackInterval in seconds of the manual clock; the clock moves {HEALTH_INTERVAL_S:g} s "
                         "per health round (default: %(default)s)")
    ap.add_argument("--no-audit", dest="audit", action="store_false", help="no audit repository (the --state directory)")
    ap.add_argument("--settled", type=int, default=5000, metavar="N",
                    help="a second reference point, once the audit repository's caches are full: they keep up to 4,096 "
                         "versions and service files, about one of each per pass here (default: %(default)s)")
    ap.add_argument("--tracemalloc", action="store_true", help="trace allocations and print the top growth sites (slow)")
    ap.add_argument("--tracemalloc-frames", type=int, default=1)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--max-growth", type=float, default=5.0, metavar="PERCENT")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one pass or health round")
    ap.add_argument("--log-level", default="warning")
    a = ap.parse_args()
    if a.nodes > 250:
        ap.error("--nodes: at most 250 (127.0.0.2 ... 127.0.0.251)")
    if a.passes <= a.warmup:
        ap.error("--passes must exceed --warmup")
    logging.basicConfig(level=getattr(logging, a.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.tracemalloc:
        tracemalloc.start(a.tracemalloc_frames)
    with tempfile.TemporaryDirectory(prefix="p4kube-soak-") as tmp:
        report, ok = asyncio.run(run(a, Path(tmp)))
    print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
