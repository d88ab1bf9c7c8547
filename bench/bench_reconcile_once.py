"""`p4kube reconcile --once` as users run it, at 5,000 Services, under the faults of DESIGN.md 6.1.

Two `p4kube sim` processes, a Git intent repository, a kubectl-style recording of a synthetic
cluster (5,000 Services, 1,000 nodes, 50,000 endpoints by default) and an audit repository; every
step is the real command in its own process, timed whole (wall; its own CPU and peak RSS from
/usr/bin/time; the software switches' CPU meanwhile from /proc, so the client's share can be told from
the switches'), and followed by reading both switches (entry counts per table over P4Runtime):

    1. first apply to empty switches
    2. nothing changed: the command reads both switches back before it says "up to date"
    3. the primary restarted empty: the same command repairs it
    4. a typo in intent (algorithm), an empty recording, a dead primary: refused, exit 1, and
       both switches still hold what they held (a dead primary with nothing to change: degraded)

    .venv/bin/python bench/bench_reconcile_once.py [--services N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pygit2
from benchlib import cpu_seconds_of, start_switch
from finsy.proto import p4r, p4r_grpc

from reconciler.cluster.synthetic import cluster_to_list_yaml, synthetic_cluster
from reconciler.p4info import pipeline_info
from reconciler import p4names as n

REPO = Path(__file__).resolve().parents[1]
P4KUBE = Path(sys.executable).with_name("p4kube")
INFO = pipeline_info()

INTENT = """\
apiVersion: networking.p4kube.io/v1alpha1
kind: LoadBalancerConfig
metadata: {{name: bench, namespace: p4kube-system}}
spec:
  algorithm: {algorithm}
  vipPools:
    - name: bench
      addresses: ["198.18.0.1-198.19.255.254"]
  switchConfig:
    deviceConfig: sim-device-config.json
    switches:
      - {{name: standby, role: standby, address: "127.0.0.1:{standby}"}}
      - {{name: primary, role: primary, address: "127.0.0.1:{primary}"}}
"""


def counts(port: int) -> dict[str, int]:
    """Entries per table the switch on `port` holds, read over P4Runtime (no pipeline: {})."""
    out = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = p4r_grpc.P4RuntimeStub(ch)
        for table in (n.VIP_TABLE, n.BACKEND_TABLE, n.REVERSE_NAT):
            req = p4r.ReadRequest(device_id=1)
            req.entities.add().table_entry.table_id = INFO.table(table).id
            try:
                out[table] = sum(len(r.entities) for r in stub.Read(req, timeout=120))
            except grpc.RpcError:
                return {}
    return out


def commit(repo_dir: Path, text: str, message: str) -> None:
    (repo_dir / "lbconfig.yaml").write_text(text)
    repo = pygit2.Repository(str(repo_dir))
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("bench", "bench@example.com")
    parents = [] if repo.head_is_unborn else [repo.head.target]
    repo.create_commit("HEAD", sig, sig, message, repo.index.write_tree(), parents)


def run(args: list[str], cwd: Path, switch_pids: tuple[int, ...] = ()) -> tuple[int, float, str, float, float, float]:
    """exit code, wall seconds, output, the command's own CPU seconds (user + sys),
    its peak RSS in MB, and the CPU seconds the switch processes spent meanwhile."""
    before = sum(cpu_seconds_of(p) for p in switch_pids)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile("r") as usage:
        # Through /usr/bin/time, a small process: Linux keeps ru_maxrss across execve, so a
        # command forked straight from this (large) process would report this one's peak RSS.
        proc = subprocess.Popen(["/usr/bin/time", "-o", usage.name, "-f", "%U %S %M", str(P4KUBE), *args], cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT)
        proc.wait()
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode(errors="replace").strip()
        fields = usage.read().split()[-3:]  # a signal adds a line before them
    switch_cpu = sum(cpu_seconds_of(p) for p in switch_pids) - before
    return proc.returncode, wall, text, float(fields[0]) + float(fields[1]), int(fields[2]) / 1024, switch_cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=50000)
    a = ap.parse_args()
    rows: list[tuple[str, int, float, float, float, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="p4kube-bench-once-") as tmp:
        work = Path(tmp)
        (sb, sb_port), (pr, pr_port) = start_switch(), start_switch()
        procs = [sb, pr]
        try:
            intent = work / "intent"
            intent.mkdir()
            pygit2.init_repository(str(intent), initial_head="main")
            (intent / "sim-device-config.json").write_bytes(
                (REPO / "intent-examples" / "multi-service" / "sim-device-config.json").read_bytes())
            text = INTENT.format(algorithm="replica-weighted", standby=sb_port, primary=pr_port)
            commit(intent, text, "bench intent")
            cluster = work / "cluster.yaml"
            t0 = time.perf_counter()
            cluster.write_text(cluster_to_list_yaml(synthetic_cluster(services=a.services, nodes=a.nodes, endpoints=a.endpoints, seed=1)))
            print(f"recording: {cluster.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            once = ["reconcile", "--once", "--intent", str(intent), "--cluster", str(cluster), "--audit-repo", str(work / "audit.git"),
                    "--allow-insecure-switches",  # plaintext loopback software switches
                    "--pipeline-dir", str(intent)]  # where the intent's deviceConfig is found by name

            def step(what: str, args: list[str]) -> tuple[int, str]:
                code, secs, out, cpu, rss, switch_cpu = run(args, work, tuple(p.pid for p in procs if p.poll() is None))
                held = f"standby {counts(sb_port)} / primary {counts(pr_port)}"
                rows.append((what, code, secs, cpu, rss, switch_cpu, held))
                print(f"{what}: exit {code} in {secs:.1f} s (client CPU {cpu:.1f} s, {rss:.0f} MB; switches' CPU "
                      f"{switch_cpu:.1f} s); {held}\n  {out.splitlines()[-1] if out else ''}", file=sys.stderr)
                return code, out

            step("1. first apply to empty switches", once)
            full = counts(pr_port)
            step("2. nothing changed: both switches read back", once)
            pr.kill()
            pr.wait()
            pr, _ = start_switch(f"127.0.0.1:{pr_port}")  # returns once it listens
            procs[1] = pr
            code, out = step("3. primary restarted empty: repaired", once)
            assert code == 0 and counts(pr_port) == full, out
            commit(intent, INTENT.format(algorithm="round-robn", standby=sb_port, primary=pr_port), "typo")
            step("4a. algorithm typo in intent: refused", once)
            commit(intent, text, "fix the typo")
            empty = work / "empty.yaml"
            empty.write_text("")
            step("4b. empty recording: refused", [*once[:5], str(empty), *once[6:]])
            pr.kill()
            pr.wait()
            step("4c. primary dead, nothing changed: degraded (exit 3)", once)
            commit(intent, text.replace("algorithm: replica-weighted", "algorithm: replica-weighted\n  bucketsPerService: 32"), "finer")
            step("4d. primary dead, an intent change: refused, nothing written", once)
            after = counts(sb_port)
            assert after == full, f"the standby changed: {after} != {full}"
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    p.wait(timeout=10)
    print(f"\n### `p4kube reconcile --once` at {a.services} Services, {a.nodes} nodes, {a.endpoints} endpoints "
          f"({time.strftime('%Y-%m-%d')}, two `p4kube sim` processes)\n")
    print("| step | exit | whole command | client CPU | client peak RSS | both switches' CPU | what the switches hold after "
          "(entries per table, read over P4Runtime) |")
    print("|---|---|---|---|---|---|---|")
    for what, code, secs, cpu, rss, switch_cpu, held in rows:
        print(f"| {what} | {code} | {secs:.1f} s | {cpu:.1f} s | {rss:.0f} MB | {switch_cpu:.1f} s | {held.replace('MyIngress.', '')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
