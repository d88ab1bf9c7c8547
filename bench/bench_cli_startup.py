"""Start-up of the `p4kube` command as a shell runs it: a whole new process each time.

Measures `p4kube --help` and `p4kube validate --help` against `python -c pass` (the floor: the
interpreter's own start-up), median and max of N runs, and prints a Markdown table for
bench/RESULTS.md. The target (issue 12): `p4kube --help` under 0.2 s.

    python bench/bench_cli_startup.py [--runs 21]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _p4kube() -> list[str]:
    # The installed console script when it is there (what users run), else the module.
    script = Path(sys.executable).with_name("p4kube")
    return [str(script)] if script.exists() else [sys.executable, "-m", "reconciler.cli"]


def time_runs(argv: list[str], runs: int) -> list[float]:
    times = []
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=ROOT, env=env)
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=21)
    a = ap.parse_args()
    p4kube = _p4kube()
    cases = [
        ("`python -c pass` (the floor)", [sys.executable, "-c", "pass"], None),
        ("`p4kube --help`", [*p4kube, "--help"], 0.2),
        ("`p4kube validate --help`", [*p4kube, "validate", "--help"], 0.2),
        ("`p4kube --version`", [*p4kube, "--version"], None),
    ]
    for _, argv, _ in cases:  # warm the bytecode caches once: a user's second run, not a fresh install
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=ROOT)
    rows = []
    for label, argv, target in cases:
        t = time_runs(argv, a.runs)
        med = statistics.median(t)
        ok = "" if target is None else (" (met)" if med < target else " (MISSED)")
        rows.append(f"| {label} | {med * 1000:.0f} ms | {max(t) * 1000:.0f} ms | {f'< {target * 1000:.0f} ms' if target else '-'}{ok} |")
    cpus = os.cpu_count()
    print(f"### CLI start-up, whole process, median of {a.runs} runs ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"CPython {platform.python_version()}, {platform.machine()}, {cpus} cores)")
    print()
    print(f"Command: {' '.join(Path(p).name if i == 0 else p for i, p in enumerate(p4kube))}"
          f"{' (console script)' if shutil.which(p4kube[0]) else ''}")
    print()
    print("| command | median | max | target |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
