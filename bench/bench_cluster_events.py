#!/usr/bin/env python3
"""Cluster-state benchmark (issue 6): the incrementally maintained state under EndpointSlice churn.

A synthetic cluster of 5,000 Services, 50,000 ready endpoints and 1,000 nodes is loaded as the
API's dicts, then a stream of EndpointSlice MODIFIED events is applied (an endpoint turns
ready/not ready, moves to another node, or a replica is added/removed), as the watch hands
them over. Measured:

  direct   events applied to IncrementalState straight from dicts (the watch decode excluded),
           with a snapshot taken every --snapshot-every events (what render picks up);
  server   (with --server) the same kind of stream through the test API server: slices are
           updated in the server's store while LiveClusterSource lists and watches with the
           official client; the rate is end to end (the server's watch stream, HTTP chunks, JSON,
           the reflector thread's hand-off to the loop, the state), all in this one process.

Targets: >= 2,000 events/s processed and peak RSS < 600 MB.

    .venv/bin/python bench/bench_cluster_events.py [--events N] [--server] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import platform
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from reconciler.cluster.incremental import ENDPOINT_SLICE, MODIFIED, NODE, SERVICE, IncrementalState  # noqa: E402
from reconciler.cluster.synthetic import cluster_to_list, synthetic_cluster  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS-cluster.md"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_lists(services: int, nodes: int, endpoints: int) -> dict[str, list[dict[str, Any]]]:
    items = cluster_to_list(synthetic_cluster(services=services, nodes=nodes, endpoints=endpoints, seed=1))["items"]
    out: dict[str, list[dict[str, Any]]] = {SERVICE: [], ENDPOINT_SLICE: [], NODE: []}
    for i, obj in enumerate(items):
        obj.setdefault("metadata", {})["resourceVersion"] = str(i + 1)
        out[obj["kind"]].append(obj)
    return out


def mutate(sl: dict[str, Any], rng: random.Random, node_names: list[str], serial: int) -> dict[str, Any]:
    """A new version of a slice: one realistic change, as the EndpointSlice controller makes."""
    new = copy.deepcopy(sl)
    eps = new["endpoints"]
    roll = rng.random()
    if roll < 0.5 and eps:
        ep = rng.choice(eps)
        ready = ep["conditions"].get("ready", True)
        ep["conditions"] = {"ready": not ready, "serving": not ready, "terminating": False}
    elif roll < 0.7 and eps:
        rng.choice(eps)["nodeName"] = rng.choice(node_names)
    elif roll < 0.85 or not eps:
        eps.append(
            {
                "addresses": [f"198.18.{serial // 250 % 250}.{serial % 250 + 1}"],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": rng.choice(node_names),
            }
        )
    else:
        eps.pop(rng.randrange(len(eps)))
    return new


def bench_direct(lists: dict[str, list[dict[str, Any]]], events: int, snapshot_every: int) -> dict[str, float]:
    t0 = time.perf_counter()
    state = IncrementalState()
    state.replace(NODE, lists[NODE], "1")
    state.replace(SERVICE, lists[SERVICE], "1")
    state.replace(ENDPOINT_SLICE, lists[ENDPOINT_SLICE], "1")
    first = state.snapshot()
    t_load = time.perf_counter() - t0
    rng = random.Random(11)
    node_names = [n["metadata"]["name"] for n in lists[NODE]]
    current = {f"{s['metadata']['namespace']}/{s['metadata']['name']}": s for s in lists[ENDPOINT_SLICE]}
    keys = sorted(current)
    stream = []
    for i in range(events):  # prepared up front: the timing is the state's work only
        key = rng.choice(keys)
        current[key] = mutate(current[key], rng, node_names, i)
        current[key]["metadata"] = dict(current[key]["metadata"], resourceVersion=str(100000 + i))
        stream.append(current[key])
    changed_total = 0
    t0 = time.perf_counter()
    for i, obj in enumerate(stream, 1):
        changed_total += len(state.apply(ENDPOINT_SLICE, MODIFIED, obj))
        if i % snapshot_every == 0:
            state.snapshot()
    t_events = time.perf_counter() - t0
    last = state.snapshot()
    return {
        "load_s": t_load,
        "events": events,
        "events_s": t_events,
        "rate": events / t_events,
        "changed": changed_total,
        "services": len(first.services),
        "endpoints": sum(len(v) for v in first.endpoints.values()),
        "nodes": len(first.nodes),
        "endpoints_after": sum(len(v) for v in last.endpoints.values()),
    }


def bench_server(lists: dict[str, list[dict[str, Any]]], events: int) -> dict[str, float]:
    """End to end through the test API server (tests/kubeapi) with the official client."""
    from kubeapi.server import KubeApiServer  # the test tree's API server

    from reconciler.cluster.live import LiveClusterSource
    from reconciler.kube.client import build_api_client

    server = KubeApiServer()
    with server:
        t0 = time.perf_counter()
        server.load([o for kind in (NODE, SERVICE, ENDPOINT_SLICE) for o in lists[kind]])
        t_load = time.perf_counter() - t0
        api = build_api_client(configuration=server.client_configuration())
        rng = random.Random(5)
        node_names = [n["metadata"]["name"] for n in lists[NODE]]
        slices = lists[ENDPOINT_SLICE]

        async def run() -> dict[str, float]:
            source = LiveClusterSource(api)
            busy = [0.0]
            apply = source._apply

            def timed_apply(item: Any) -> None:  # the source's own work in the loop, per item
                t = time.perf_counter()
                apply(item)
                busy[0] += time.perf_counter() - t

            source._apply = timed_apply  # type: ignore[method-assign]
            t0 = time.perf_counter()
            await source.start()
            await source.wait_synced(timeout=600)
            t_sync = time.perf_counter() - t0
            seen = source.stats.events
            busy[0] = 0.0

            def write_all() -> int:
                # Writes go into the server's store directly (as fast as it commits): what is
                # measured is the watch path, server stream -> official client -> reflector
                # thread -> loop -> state, not a single HTTP writer's round trips.
                last = 0
                for i in range(events):
                    sl = rng.choice(slices)
                    new = mutate(sl, rng, node_names, i)
                    stored = server.load([new])[0]
                    last = max(last, int(stored["metadata"]["resourceVersion"]))
                    sl["endpoints"] = new["endpoints"]
                return last

            t0 = time.perf_counter()
            writer = asyncio.create_task(asyncio.to_thread(write_all))
            # Done when the source holds the last write (a write that changed nothing, e.g. an
            # endpoint "moved" to its own node, makes no event: count the events seen instead).
            while not writer.done() or int(source.state.resource_version or 0) < writer.result():
                await asyncio.sleep(0.05)  # a benchmark's progress poll, not a test wait
            t_events = time.perf_counter() - t0
            events_seen = source.stats.events - seen
            loop_busy = busy[0]
            await source.aclose()
            return {"load_s": t_load, "sync_s": t_sync, "writes": events, "events": events_seen, "events_s": t_events, "rate": events_seen / t_events, "loop_busy_s": loop_busy}

        try:
            return asyncio.run(run())
        finally:
            api.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=50000)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--snapshot-every", type=int, default=100)
    ap.add_argument("--server", action="store_true", help="also run the stream through the test API server")
    ap.add_argument("--server-events", type=int, default=10000)
    ap.add_argument("--record", action="store_true", help=f"append the results to {RESULTS.relative_to(ROOT)}")
    a = ap.parse_args()

    lists = build_lists(a.services, a.nodes, a.endpoints)
    d = bench_direct(lists, a.events, a.snapshot_every)
    peak_direct = rss_mb()
    lines = [
        f"cluster: {d['services']} Services, {d['endpoints']} ready endpoints, {d['nodes']} nodes "
        f"({len(lists[ENDPOINT_SLICE])} EndpointSlices)",
        f"initial load (3 lists -> state + snapshot): {d['load_s']:.2f} s",
        f"direct: {d['events']} EndpointSlice events in {d['events_s']:.2f} s = {d['rate']:.0f} events/s "
        f"(snapshot every {a.snapshot_every}; {d['changed']} Service changes reported)",
        f"peak RSS after direct run (incl. the prepared event stream): {peak_direct:.0f} MB",
    ]
    ok = d["rate"] >= 2000 and peak_direct < 600
    if a.server:
        s = bench_server(lists, a.server_events)
        peak = rss_mb()
        lines.append(
            f"server: {len(lists[SERVICE]) + len(lists[ENDPOINT_SLICE]) + len(lists[NODE])} objects loaded in {s['load_s']:.1f} s, "
            f"initial list+watch sync {s['sync_s']:.1f} s; {s['writes']} slice updates committed in the server ({s['events']} watch events) and "
            f"applied through the watch in {s['events_s']:.2f} s = {s['rate']:.0f} events/s (one writer; server and client in this one process)"
        )
        lines.append(
            f"server: of those {s['events_s']:.2f} s the source's state updates in the loop took {s['loop_busy_s']:.2f} s; the rest is "
            "the in-process test server (store commits, watch rendering) and the HTTP/JSON path, sharing one GIL"
        )
        lines.append(f"peak RSS after server run (server and its copy of the objects included): {peak:.0f} MB")
    verdict = "PASS" if ok else "FAIL"
    lines.append(f"targets (>= 2000 events/s, peak RSS < 600 MB, direct run): {verdict}")
    print("\n".join(lines))
    if a.record:
        with RESULTS.open("a") as f:
            f.write(f"\n## {time.strftime('%Y-%m-%d %H:%M')} ({platform.python_implementation()} {platform.python_version()}, {platform.machine()})\n\n")
            f.write(f"`{' '.join(['bench/bench_cluster_events.py', *sys.argv[1:]])}`\n\n")
            f.writelines(f"- {line}\n" for line in lines)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
