"""The commands as users run them, each a whole new process (issue 13, item 5).

For each size (Services; 1,000 nodes and 10 endpoints per Service by default, so 5,000 Services is
the issue's 5,000 / 1,000 / 50,000), from a YAML and from a JSON (`kubectl -o json` style)
recording of the same synthetic cluster, against two `p4kube sim` processes, a local Git intent
repository and a local audit repository:

    render             p4kube render --out FILE
    plan               p4kube plan --previous SNAPSHOT (the render's output: what the switches hold)
    check              p4kube check --out-dir DIR (what a pull request's CI runs)
    reconcile (first)  p4kube reconcile --once to empty switches (YAML only: it fills them)
    reconcile (same)   p4kube reconcile --once, nothing changed (it reads both switches back). From
                       YAML the recording is the very file the first apply was rendered from, so
                       it is neither parsed nor rendered (`Rendered-From`, docs/audit.md); from
                       JSON it is the same cluster in other bytes: parsed and rendered again
                       (from the pass cache: only Services whose inputs changed, none here). The
                       row says which ("not rendered again" / "rendered").
    reconcile (one)    p4kube reconcile --once, one Service scaled by one endpoint; then the same two
                       changes with --no-cache (no pass cache: every Service rendered, every entry
                       encoded). Every other reconcile row uses the pass cache the last run left.
    run                p4kube run, start to /readyz answering 200 (switches connected and read
                       back), the switches already holding the last applied snapshot: a restart

Each is timed whole (wall), with the child's peak RSS and CPU time from os.wait4 (its own rusage,
not the switches'), and the ratio to `python -c pass` measured in the same run (median of 5).
Right before each row the machine's speed is measured too (a fixed 10M-step Python loop in a
child, median of 3: it moves by half within minutes here), and the row's wall is also given at
the reference speed (the loop taking REFERENCE_S), so that rows taken in a slow minute and in a
quiet one can be compared.
For reconcile, the read-back share comes from the command's own progress lines
(P4KUBE_PROGRESS_SECONDS=0.05: the time its progress says "reading back"/"verifying", which
includes the client's decoding and comparison of what it read), and the software switches' own
CPU seconds during the command are read from /proc, so the client's cost can be told apart from
the switch's.

    .venv/bin/python bench/bench_commands.py --quick              # smoke run, 200 Services
    .venv/bin/python bench/bench_commands.py --sizes 1000,5000 --record
    .venv/bin/python bench/bench_commands.py --sizes 5000 --profile DIR   # one cProfile per command

--record appends the table to bench/RESULTS.md under "## Commands as users run them (issue 13)".
--profile runs each command once under `python -m cProfile -o DIR/<command>.prof` (YAML input)
instead of timing it, and prints each profile's top functions by cumulative time.

The intent sets connectionDrainTimeout: 0s (no drains), so a changed Service costs its rewritten
buckets only; drains (issue 15) add entries of their own and are not measured here.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pygit2
from benchlib import cpu_seconds_of, kubectl_yaml, start_switch

from reconciler.cluster.synthetic import cluster_to_list, synthetic_cluster, with_scaled_service

REPO = Path(__file__).resolve().parents[1]
P4KUBE = Path(sys.executable).with_name("p4kube")
RESULTS = REPO / "bench" / "RESULTS.md"
SECTION = "## Commands as users run them (issue 13)"
PROGRESS_TICK = 0.05

INTENT = """\
apiVersion: networking.p4kube.io/v1alpha1
kind: LoadBalancerConfig
metadata: {{name: bench, namespace: p4kube-system}}
spec:
  algorithm: replica-weighted
  connectionDrainTimeout: 0s
  vipPools:
    - name: bench
      addresses: ["198.18.0.1-198.19.255.254"]
  switchConfig:
    deviceConfig: sim-device-config.json
    switches:
      - {{name: standby, role: standby, address: "127.0.0.1:{standby}"}}
      - {{name: primary, role: primary, address: "127.0.0.1:{primary}"}}
"""

# Issue 13's targets at 5,000 Services (seconds), per command and input.
TARGETS = {
    ("render", "yaml"): 5.0, ("render", "json"): 3.0, ("check", "yaml"): 5.0, ("check", "json"): 5.0,
    ("reconcile --once, nothing changed", "yaml"): 3.0, ("reconcile --once, nothing changed", "json"): 3.0,
    ("reconcile --once, one Service changed", "yaml"): 4.0, ("reconcile --once, one Service changed", "json"): 4.0,
}
RSS_TARGET_MB = 600


@dataclass
class Done:
    """One whole command: exit code, wall seconds, the child's peak RSS and CPU, its stderr lines
    stamped with their arrival (seconds since start), and the switches' CPU during it."""

    code: int
    wall: float
    rss_mb: float
    cpu: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    switch_cpu: float = 0.0
    out: str = ""


def run_whole(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, switch_pids: tuple[int, ...] = (),
              timeout: float = 3600) -> Done:
    """`argv` as its own process; its rusage from os.wait4 (this child only, not the switches)."""
    before = sum(cpu_seconds_of(p) for p in switch_pids)
    stdout = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    reader.join(timeout=10)
    stdout.seek(0)
    out = stdout.read().decode(errors="replace")
    stdout.close()
    return Done(proc.returncode, wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, lines,
                sum(cpu_seconds_of(p) for p in switch_pids) - before, out)


def readback_seconds(lines: list[tuple[float, str]], end: float) -> float:
    """Seconds the command's progress said it was reading a switch back ("reading back",
    "verifying"): each progress line's step holds until the next progress line (the last one,
    one tick)."""
    ticks = [(t, text) for t, text in lines
             if text.startswith("p4kube: ") and any(s in text for s in (": reading back", ": verifying", ": writing"))]
    total = 0.0
    for i, (t, text) in enumerate(ticks):
        if ": writing" not in text:
            total += (ticks[i + 1][0] if i + 1 < len(ticks) else t + PROGRESS_TICK) - t
    return min(total, end)


def commit(repo_dir: Path, text: str, message: str) -> None:
    (repo_dir / "lbconfig.yaml").write_text(text)
    repo = pygit2.Repository(str(repo_dir))
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("bench", "bench@example.com")
    parents = [] if repo.head_is_unborn else [repo.head.target]
    repo.create_commit("HEAD", sig, sig, message, repo.index.write_tree(), parents)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_floor(runs: int = 5) -> float:
    """Median wall seconds of `python -c pass` (the interpreter's own start-up), now."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# The machine's speed right before each row: a fixed pure-Python loop in a child process (its own
# timing, not the start-up), median of 3. This machine's speed moves by half within minutes (other
# tenants), which `python -c pass` (start-up, mostly I/O) hardly shows; the loop moves as the
# commands do. REFERENCE_S is the loop in a quiet minute here: a row's wall x REFERENCE_S / loop
# is what it would have taken at that speed.
_LOOP = "import time\nt = time.perf_counter()\nx = 0\nfor i in range(10_000_000):\n    x += i\nprint(time.perf_counter() - t)"
REFERENCE_S = 1.0


def machine_speed(runs: int = 3) -> float:
    """Median seconds of the calibration loop (_LOOP), now."""
    return statistics.median(
        float(subprocess.run([sys.executable, "-c", _LOOP], check=True, capture_output=True, text=True).stdout)
        for _ in range(runs))


def run_to_ready(argv: list[str], *, cwd: Path, port: int, switch_pids: tuple[int, ...], timeout: float = 1800,
                 profile: bool = False) -> tuple[Done, float]:
    """`p4kube run` until /readyz answers 200; returns the whole process (stopped by SIGTERM
    once ready: its exit code and rusage) and the seconds to ready. The probe is polled every
    20 ms; a refused connection means the endpoint is not up yet."""
    before = sum(cpu_seconds_of(p) for p in switch_pids)
    log = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    ready_at = float("nan")
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    if r.status == 200:
                        ready_at = time.perf_counter() - t0
                        break
            except urllib.error.HTTPError:
                pass  # 503: up, not ready yet
            except OSError:
                pass  # not listening yet
            time.sleep(0.02)
        switch_cpu = sum(cpu_seconds_of(p) for p in switch_pids) - before
        if proc.poll() is None:
            proc.terminate()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    wall = time.perf_counter() - t0
    log.seek(0)
    out = log.read().decode(errors="replace")
    log.close()
    done = Done(proc.returncode, wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, switch_cpu=switch_cpu, out=out)
    if ready_at != ready_at and not profile:  # NaN: never ready
        raise RuntimeError(f"p4kube run never became ready (exit {proc.returncode}):\n{out[-3000:]}")
    return done, ready_at


@dataclass(frozen=True)
class Row:
    services: int
    command: str
    fmt: str
    code: int
    wall: float
    floor: float
    cpu: float
    rss_mb: float
    readback: float | None  # seconds, reconcile only
    switch_cpu: float | None
    loop: float = REFERENCE_S  # machine_speed() right before the row

    @property
    def at_reference(self) -> float:
        """The wall at the reference speed (REFERENCE_S)."""
        return self.wall * REFERENCE_S / self.loop


def write_recordings(work: Path, services: int, nodes: int, endpoints: int) -> dict[str, Path]:
    """base and changed (one Service scaled by one endpoint), each as YAML and JSON."""
    state = synthetic_cluster(services=services, nodes=nodes, endpoints=endpoints, seed=1)
    key = min(k for k in state.endpoints if state.endpoints[k])
    changed = with_scaled_service(state, key, state.endpoints[key][0].node, 1)
    out = {}
    for name, s in (("base", state), ("changed", changed)):
        data = cluster_to_list(s)
        out[f"{name}.yaml"] = work / f"cluster-{name}.yaml"
        out[f"{name}.yaml"].write_text(kubectl_yaml(data))
        out[f"{name}.json"] = work / f"cluster-{name}.json"
        out[f"{name}.json"].write_text(json.dumps(data, indent=4))  # kubectl -o json indents by 4
    return out


def write_recordings_apart(work: Path, services: int, nodes: int, endpoints: int) -> dict[str, Path]:
    """write_recordings in a process of its own. Linux carries a process's peak RSS through fork
    and exec (ru_maxrss starts at the forking parent's size), so a benchmark that held the
    synthetic cluster itself (~600 MB at 5,000 Services) would report that as every command's peak."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; import bench_commands as b; "
            "b.write_recordings(Path(sys.argv[2]), *map(int, sys.argv[3:]))")
    subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(work), str(services), str(nodes), str(endpoints)],
                   check=True)
    return {f"{name}.{fmt}": work / f"cluster-{name}.{fmt}" for name in ("base", "changed") for fmt in ("yaml", "json")}


def measure_size(services: int, nodes: int, per_service: int, profile_dir: Path | None, quick: bool = False,
                 commands: set[str] | None = None) -> list[Row]:
    """Every command at `services`; `quick`: each once (JSON where both exist; render both, one change from YAML);
    `commands`: only these (render, plan, check, reconcile, run; None: all)."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="p4kube-bench-commands-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        rec = write_recordings_apart(work, services, nodes, services * per_service)
        print(f"[{services}] recordings: YAML {rec['base.yaml'].stat().st_size / 1e6:.1f} MB, "
              f"JSON {rec['base.json'].stat().st_size / 1e6:.1f} MB, written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        intent = work / "intent"
        intent.mkdir()
        pygit2.init_repository(str(intent), initial_head="main")
        (intent / "sim-device-config.json").write_bytes(
            (REPO / "intent-examples" / "multi-service" / "sim-device-config.json").read_bytes())
        (sb, sb_port), (pr, pr_port) = start_switch(), start_switch()
        pids = (sb.pid, pr.pid)
        try:
            commit(intent, INTENT.format(standby=sb_port, primary=pr_port), "bench intent")
            audit = work / "audit.git"
            floor = python_floor()
            print(f"[{services}] python -c pass: {floor * 1000:.0f} ms (median of 5)", file=sys.stderr, flush=True)
            env = {**os.environ, "P4KUBE_PROGRESS_SECONDS": str(PROGRESS_TICK)}
            common = ["--intent", str(intent), "--pipeline-dir", str(intent)]
            once = ["reconcile", "--once", *common, "--audit-repo", str(audit), "--allow-insecure-switches"]
            snap = work / "snapshot.json"
            skip_in_quick = {("plan", "yaml"), ("check", "yaml"), ("reconcile --once, nothing changed", "yaml")}

            def cmd(label: str, fmt: str, args: list[str], ok: tuple[int, ...] = (0,)) -> None:
                if (profile_dir is not None and fmt != "yaml") or (quick and fmt != "json" and (label, fmt) in skip_in_quick):
                    return
                if commands is not None and label.split(" ", 1)[0] not in commands:
                    return
                if profile_dir is not None:
                    prof = profile_dir / f"{services}-{label.replace(' ', '_').replace(',', '')}.prof"
                    argv = [sys.executable, "-m", "cProfile", "-o", str(prof), str(P4KUBE), *args]
                else:
                    argv = [str(P4KUBE), *args]
                loop = machine_speed()
                d = run_whole(argv, cwd=work, env=env, switch_pids=pids)
                if d.code not in ok:  # recorded with its exit code; the next steps still run
                    print(f"[{services}] {label} ({fmt}) FAILED, exit {d.code}:\n" + "\n".join(t for _, t in d.lines[-15:]),
                          file=sys.stderr)
                is_reconcile = label.startswith("reconcile")
                if label.startswith("reconcile --once, nothing changed"):
                    skipped = any("not rendered again" in t for _, t in d.lines)
                    label += " [not rendered again]" if skipped else " [rendered]"
                rows.append(Row(services, label, fmt, d.code, d.wall, floor, d.cpu, d.rss_mb,
                                readback_seconds(d.lines, d.wall) if is_reconcile else None,
                                d.switch_cpu if is_reconcile else None, loop))
                print(f"[{services}] {table([rows[-1]], head=False)}", file=sys.stderr, flush=True)

            for fmt in ("yaml", "json"):
                cmd("render", fmt, ["render", *common, "--cluster", str(rec[f"base.{fmt}"]), "--out", str(snap)])
            for fmt in ("yaml", "json"):
                cmd("plan", fmt, ["plan", *common, "--cluster", str(rec[f"base.{fmt}"]), "--previous", str(snap)], ok=(0, 2))
            for fmt in ("yaml", "json"):
                cmd("check", fmt, ["check", *common, "--cluster", str(rec[f"base.{fmt}"]), "--out-dir", str(work / f"check-{fmt}")],
                    ok=(0, 2))
            if commands is not None and not commands & {"reconcile", "run"}:
                return rows
            if profile_dir is not None:
                # the switches are filled without the profiler: the first apply is not what is profiled
                d = run_whole([str(P4KUBE), *once, "--cluster", str(rec["base.yaml"])], cwd=work, env=env)
                assert d.code == 0, d.lines[-10:]
            else:
                cmd("reconcile --once, first apply", "yaml", [*once, "--cluster", str(rec["base.yaml"])])
            for fmt in ("yaml", "json"):
                cmd("reconcile --once, nothing changed", fmt, [*once, "--cluster", str(rec[f"base.{fmt}"])])
            # YAML: one Service scaled up; JSON: the same Service back (again one change)
            cmd("reconcile --once, one Service changed", "yaml", [*once, "--cluster", str(rec["changed.yaml"])])
            if not quick:
                cmd("reconcile --once, one Service changed", "json", [*once, "--cluster", str(rec["base.json"])])
                # The same changes without the pass cache (docs/apply.md): every Service rendered
                # and every entry encoded, as before it.
                cmd("reconcile --once, one Service changed, --no-cache", "yaml",
                    [*once, "--cluster", str(rec["changed.yaml"]), "--no-cache"])
                cmd("reconcile --once, one Service changed, --no-cache", "json",
                    [*once, "--cluster", str(rec["base.json"]), "--no-cache"])
            for fmt in ("yaml", "json"):
                if (profile_dir is not None and fmt != "yaml") or (quick and fmt != "json") or (commands is not None and "run" not in commands):
                    continue
                port = free_port()
                args = ["run", *common, "--cluster", str(rec[f"base.{fmt}"]), "--audit-repo", str(audit),
                        "--allow-insecure-switches", "--metrics-address", f"127.0.0.1:{port}"]
                if profile_dir is not None:
                    argv = [sys.executable, "-m", "cProfile", "-o", str(profile_dir / f"{services}-run.prof"), str(P4KUBE), *args]
                else:
                    argv = [str(P4KUBE), *args]
                loop = machine_speed()
                d, ready = run_to_ready(argv, cwd=work, port=port, switch_pids=pids, profile=profile_dir is not None)
                rows.append(Row(services, "run, start to ready (/readyz 200)", fmt, d.code, ready, floor, d.cpu, d.rss_mb,
                                None, d.switch_cpu, loop))
                print(f"[{services}] {table([rows[-1]], head=False)}", file=sys.stderr, flush=True)
        finally:
            for p in (sb, pr):
                if p.poll() is None:
                    p.terminate()
                    p.wait(timeout=10)
                if p.stdout:
                    p.stdout.close()
    return rows


def table(rows: list[Row], head: bool = True) -> str:
    out = [] if not head else ["| Services | command | input | exit | wall | x `python -c pass` | client CPU | peak RSS | read-back share "
           f"| switches' CPU | loop (speed) | wall at the reference speed | target (5,000) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = TARGETS.get((r.command.split(" [", 1)[0], r.fmt))
        if r.command.startswith("run"):
            target_text = "< 2 s + read-back"
        else:
            target_text = f"< {target:g} s" if target is not None else "-"
        if target is not None and r.services == 5000:
            target_text += " (met)" if r.wall < target else " (MISSED)"
            target_text += "; at the reference speed " + ("met" if r.at_reference < target else "MISSED")
        rss = f"{r.rss_mb:.0f} MB" + (" (MISSED)" if r.services == 5000 and r.rss_mb >= RSS_TARGET_MB else "")
        share = f"{r.readback:.1f} s = {100 * r.readback / r.wall:.0f}%" if r.readback is not None else "-"
        sw = f"{r.switch_cpu:.1f} s" if r.switch_cpu is not None else "-"
        out.append(f"| {r.services:,} | `{r.command}` | {r.fmt.upper()} | {r.code} | {r.wall:.2f} s | {r.wall / r.floor:.0f}x "
                   f"| {r.cpu:.2f} s | {rss} | {share} | {sw} | {r.loop:.2f} s | {r.at_reference:.2f} s | {target_text} |")
    return "\n".join(out)


def hot_spots(prof: Path, top: int = 12) -> str:
    """The profile's hot spots: the reconciler's own functions by cumulative time (what to fix),
    leaving out the wrappers that hold nearly all of it (the CLI's entry), then every function
    by its own time (where the time is actually spent, libraries included)."""
    stats = pstats.Stats(str(prof))
    entries = stats.stats  # type: ignore[attr-defined]
    total = max(max((ct for (_, _, _, ct, _) in entries.values()), default=0.0), 1e-9)
    ours, own = [], []
    for (file, line, fn), (_, _, tt, ct, _) in entries.items():
        name = f"{Path(file).parent.name}/{Path(file).name}:{line}({fn})" if line else fn
        if "/reconciler/" in file and ct < 0.95 * total:
            ours.append((ct, tt, name))
        own.append((tt, ct, name))
    lines = [f"{prof.name}: {total:.2f} s profiled", "  reconciler functions by cumulative time:"]
    lines += [f"  {ct:7.2f} s {100 * ct / total:5.1f}%  {name}" for ct, _, name in sorted(ours, reverse=True)[:top]]
    lines.append("  all functions by own time:")
    lines += [f"  {tt:7.2f} s {100 * tt / total:5.1f}%  {name}" for tt, _, name in sorted(own, reverse=True)[:8]]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,5000", help="Services, comma-separated (default: 1000,5000)")
    ap.add_argument("--quick", action="store_true", help="a smoke run at 200 Services")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--endpoints-per-service", type=int, default=10)
    ap.add_argument("--record", action="store_true", help=f"append the table to bench/RESULTS.md under {SECTION!r}")
    ap.add_argument("--at", metavar="REV", help="measure the reconciler as committed at REV (git archive into a temp "
                    "directory, first on every child's PYTHONPATH) instead of the working tree, which other work may "
                    "hold half-changed")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="run each command once under cProfile (YAML input), "
                    "writing DIR/<size>-<command>.prof, and print the hot spots")
    ap.add_argument("--commands", metavar="LIST", help="only these commands, comma-separated: render, plan, check, "
                    "reconcile, run (default: all; plan needs render's snapshot, so it runs render too)")
    a = ap.parse_args()
    commands = None
    if a.commands:
        commands = {c.strip() for c in a.commands.split(",") if c.strip()}
        unknown = commands - {"render", "plan", "check", "reconcile", "run"}
        if unknown:
            ap.error(f"--commands: unknown {sorted(unknown)}")
        if "plan" in commands:
            commands.add("render")
        if "run" in commands:  # a restart: the switches filled by reconcile first
            commands.add("reconcile")
    sizes = [200] if a.quick else [int(s) for s in a.sizes.split(",") if s.strip()]
    nodes = min(a.nodes, 100) if a.quick else a.nodes
    if a.profile is not None:
        a.profile.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="p4kube-bench-src-") as src:
        code = "the working tree"
        if a.at:
            rev = subprocess.run(["git", "rev-parse", "--short", a.at], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()
            archive = subprocess.run(["git", "archive", rev, "reconciler"], cwd=REPO, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
            # the editable install's finder comes after PYTHONPATH: every p4kube child runs this copy
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
            code = f"commit {rev}"
        # Bytecode as an installed package has it (pip compiles at install; an editable install
        # under PYTHONDONTWRITEBYTECODE=1 would compile every changed module in every process).
        compileall.compile_dir(src if a.at else str(REPO / "reconciler"), quiet=1)
        print(f"measuring the reconciler of {code}", file=sys.stderr)
        for n in sizes:
            rows += measure_size(n, nodes, a.endpoints_per_service, a.profile, quick=a.quick, commands=commands)
    if a.profile is not None:
        for prof in sorted(a.profile.glob("*.prof")):
            print(hot_spots(prof) + "\n")
        return 0
    head = (f"### Whole commands, {', '.join(f'{n:,}' for n in sizes)} Services, {code} ({nodes} nodes, "
            f"{a.endpoints_per_service} endpoints per Service, 64 buckets; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, CPython {platform.python_version()}, "
            f"{platform.machine()}, {os.cpu_count()} cores, two `p4kube sim` processes)")
    floors = sorted({f"{r.floor * 1000:.0f} ms" for r in rows})
    text = (f"{head}\n\n`python -c pass` in the same run (median of 5, per size): {', '.join(floors)}. The machine's "
            f"speed before each row: a 10M-step Python loop (median of 3 child processes; {REFERENCE_S:g} s is the reference "
            f"speed, a quiet minute here).\n\n{table(rows)}\n")
    print(text)
    if a.record:
        body = RESULTS.read_text()
        if SECTION not in body:
            body = body.rstrip("\n") + f"\n\n{SECTION} — `bench/bench_commands.py`\n"
        RESULTS.write_text(body.rstrip("\n") + "\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
