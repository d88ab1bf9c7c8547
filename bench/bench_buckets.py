"""Bucket assignment: movement when a backend is added, and time per assign() call.

Run: .venv/bin/python bench/bench_buckets.py [--out bench/RESULTS-buckets.md] [--quick]

Movement: N equal backends (N = 2..16) hold a table of B buckets (64, 256, 1024); one backend
is added. The minimum any assignment must move is the newcomer's quota, floor(B / (N+1)) (see
tests/test_buckets.py::test_adding_one_equal_backend_moves_the_ideal_share). We compare
- stateless: a fresh maglev_assign over the N+1 backends, as a restarted controller without
  the previous table would produce, against the old maglev table;
- stateful: rebalance from the old table (what render does).
Results depend on the backend names through their hashes, so each cell is averaged over
several deterministic name sets (worker-0.., plus seeded random names).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconciler.render.buckets import (  # noqa: E402
    apportion,
    assign,
    maglev_assign,
    rebalance,
)

BUCKETS = (64, 256, 1024)
BACKENDS = range(2, 17)


def name_sets(count: int, size: int) -> list[list[str]]:
    sets = [[f"worker-{i}" for i in range(size)]]
    for seed in range(count - 1):
        rng = random.Random(seed)
        sets.append([f"node-{rng.getrandbits(40):010x}" for _ in range(size)])
    return sets


def moved(a, b) -> int:
    return sum(1 for x, y in zip(a, b) if x != y)


def movement(name_set_count: int) -> dict[tuple[int, int], dict[str, float]]:
    results = {}
    sets = name_sets(name_set_count, max(BACKENDS) + 1)
    for bucket_count in BUCKETS:
        for n in BACKENDS:
            stateless, stateful = [], []
            for names in sets:
                old_q = apportion(bucket_count, dict.fromkeys(names[:n], 1))
                old = maglev_assign(bucket_count, old_q)
                weights = dict.fromkeys(names[: n + 1], 1)
                held = Counter(old)
                new_q = apportion(bucket_count, weights, held)
                minimum = sum(max(0, c - new_q[k]) for k, c in held.items())
                fresh = maglev_assign(bucket_count, apportion(bucket_count, weights))
                kept = rebalance(old, new_q)
                assert minimum == bucket_count // (n + 1)
                stateless.append(moved(old, fresh) / minimum)
                stateful.append(moved(old, kept) / minimum)
            results[(bucket_count, n)] = {
                "minimum": bucket_count // (n + 1),
                "stateless_mean": statistics.mean(stateless),
                "stateless_min": min(stateless),
                "stateless_max": max(stateless),
                "stateful_max": max(stateful),
            }
    return results


def services(count: int, seed: int = 7) -> list[dict[str, int]]:
    """Replica spreads of `count` Services over a 20-node cluster (1-6 nodes, 1-4 replicas)."""
    rng = random.Random(seed)
    nodes = [f"worker-{i}" for i in range(20)]
    return [
        {node: rng.randint(1, 4) for node in rng.sample(nodes, rng.randint(1, 6))}
        for _ in range(count)
    ]


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def timing(service_count: int, repeat: int) -> list[tuple[str, float, float]]:
    """(case, total seconds for all services, microseconds per call)."""
    rows = []
    for bucket_count in (64, 1024):
        # 1024 buckets is the rare, large case: measure a tenth of the Services and scale
        specs = services(service_count if bucket_count == 64 else service_count // 10)
        firsts = [assign("replica-weighted", bucket_count, r, None) for r in specs]
        changed = []
        for r in specs:  # one node gains a replica, as churn would
            r2 = dict(r)
            node = min(r2)
            r2[node] += 1
            changed.append(r2)
        conns = [{k: 10 * i for i, k in enumerate(sorted(r))} for r in specs]
        cases = {
            "replica-weighted, first render (maglev_assign)": lambda: [
                assign("replica-weighted", bucket_count, r, None) for r in specs
            ],
            "replica-weighted, unchanged (rebalance fast path)": lambda: [
                assign("replica-weighted", bucket_count, r, p) for r, p in zip(specs, firsts)
            ],
            "replica-weighted, one replica added (rebalance)": lambda: [
                assign("replica-weighted", bucket_count, r, p) for r, p in zip(changed, firsts)
            ],
            "round-robin": lambda: [
                assign("round-robin", bucket_count, r, p) for r, p in zip(specs, firsts)
            ],
            "least-connections, with load (rebalance)": lambda: [
                assign("least-connections", bucket_count, r, p, c)
                for r, p, c in zip(specs, firsts, conns)
            ],
        }
        n = len(specs)
        for case, fn in cases.items():
            total = best_of(repeat, fn)
            rows.append((f"{bucket_count} buckets, {case}", total * service_count / n,
                         total / n * 1e6))
    return rows


def render(move, rows, service_count: int, name_set_count: int) -> str:
    out = [
        "## Bucket assignment (reconciler/render/buckets.py)",
        "",
        f"Measured by `bench/bench_buckets.py` on {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}, {platform.system()}.",
        "",
        "### Buckets moved when one backend joins N equal backends",
        "",
        "Ratio = buckets moved / minimum, minimum = floor(B/(N+1)) (the newcomer's quota).",
        f"Stateless = a fresh `maglev_assign` over N+1 backends; mean [min-max] over "
        f"{name_set_count} deterministic name sets. Stateful = `rebalance` from the old table "
        "(worst case over the same name sets).",
        "",
        "| N | " + " | ".join(f"B={b} min | B={b} stateless | B={b} stateful" for b in BUCKETS)
        + " |",
        "|---|" + "---|---|---|" * len(BUCKETS),
    ]
    for n in BACKENDS:
        cells = []
        for b in BUCKETS:
            r = move[(b, n)]
            cells.append(
                f"{r['minimum']} | {r['stateless_mean']:.2f} "
                f"[{r['stateless_min']:.2f}-{r['stateless_max']:.2f}] | {r['stateful_max']:.2f}"
            )
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    for b in BUCKETS:
        means = [move[(b, n)]["stateless_mean"] for n in BACKENDS]
        stateful = max(move[(b, n)]["stateful_max"] for n in BACKENDS)
        out.append("")
        out.append(
            f"B={b}: stateless mean ratio over N=2..16 ranges {min(means):.2f} to "
            f"{max(means):.2f}; stateful is at most {stateful:.2f} (1.00 = exactly the minimum)."
        )
    all_means = [r["stateless_mean"] for r in move.values()]
    out += [
        "",
        f"Overall the stateless table moves {min(all_means):.2f} to {max(all_means):.2f} times "
        "the minimum (mean per cell): the excess grows with N (each backend's quota shrinks, "
        "so more of its turn-taking order is reshuffled by the newcomer) and shrinks with B. "
        "The stateful `rebalance` always moves exactly the minimum.",
    ]
    out += [
        "",
        f"### Time per assign() call ({service_count} Services, 1-6 nodes each, 1-4 replicas)",
        "",
        "Best of several runs; 1024-bucket rows are measured on a tenth of the Services and "
        "scaled.",
        "",
        f"| case | total for {service_count} Services (s) | per call (us) |",
        "|---|---|---|",
    ]
    for case, total, per_call in rows:
        out.append(f"| {case} | {total:.3f} | {per_call:.1f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the markdown section here")
    parser.add_argument("--quick", action="store_true", help="fewer name sets and repeats")
    args = parser.parse_args(argv)
    name_set_count = 5 if args.quick else 20
    service_count = 5000
    move = movement(name_set_count)
    rows = timing(service_count, repeat=2 if args.quick else 5)
    text = render(move, rows, service_count, name_set_count)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
