"""Observability: the Prometheus registry and its helpers, the /metrics /healthz /readyz endpoint
over real sockets on 127.0.0.1, and log setup (text and JSON)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import PurePosixPath

import pytest
from helpers import run
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from reconciler.apply import ApplyResult, SwitchReport
from reconciler.diff import diff_snapshots
from reconciler.httpserver import Heartbeat, HttpEndpoint, decide_ready, parse_listen_address
from reconciler.logsetup import setup_logging
from reconciler.metrics import Metrics, backend_packet_counts, read_backend_packets
from reconciler.p4info import load_p4info, pipeline_info_from_message
from reconciler.render.engine import RenderIssue
from reconciler.sim.packet import SYN, build_tcp, ip_str, parse_frame
from reconciler.sim.server import SoftwareSwitch
from reconciler.snapshot import Backend, ServiceSnapshot, Snapshot, route_entries
from reconciler.switch import CounterCell, SwitchSession, pipeline_cookie
from reconciler.switch.translate import updates_to_requests

P4INFO = load_p4info()
INFO = pipeline_info_from_message(P4INFO)
WAIT = 5.0
CFG = "p4kube-system/lb"


def result(outcome="applied", *reports: SwitchReport, version=7, reason="") -> ApplyResult:
    return ApplyResult(outcome, version, "sha256:x", tuple(reports), reason)


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


# --- the registry and its helpers -------------------------------------------------------------


def test_record_apply_counts_writes_outcome_version_and_connections():
    m = Metrics()
    r = result(
        "applied",
        SwitchReport("leaf-2", "standby", "applied", {"MyIngress.backend_table": {"MODIFY": 3},
                                                       "MyIngress.vip_table": {"INSERT": 1}},
                     drift=("changed a", "missing b")),
        SwitchReport("leaf-1", "primary", "applied", {"MyIngress.backend_table": {"MODIFY": 3}}),
    )
    m.record_apply(r, CFG)
    m.record_apply(r, CFG)
    assert sample(m, "p4kube_transactions_total", config=CFG, outcome="applied") == 2
    assert sample(m, "p4kube_table_writes_total", config=CFG, switch="leaf-2",
                  table="MyIngress.backend_table", kind="MODIFY") == 6
    assert sample(m, "p4kube_table_writes_total", config=CFG, switch="leaf-2",
                  table="MyIngress.vip_table", kind="INSERT") == 2
    assert sample(m, "p4kube_table_writes_total", config=CFG, switch="leaf-1",
                  table="MyIngress.backend_table", kind="MODIFY") == 6
    assert sample(m, "p4kube_drift_entries_total", config=CFG, switch="leaf-2") == 4
    assert sample(m, "p4kube_snapshot_version", config=CFG) == 7
    assert sample(m, "p4kube_switch_connected", switch="leaf-1", role="primary") == 1
    assert sample(m, "p4kube_rollbacks_total", config=CFG) is None


def test_record_apply_rollback_degraded_and_failed():
    m = Metrics()
    m.set_snapshot_version(CFG, 3)
    m.record_apply(result("rolled-back",
                          SwitchReport("leaf-2", "standby", "rolled-back", {"MyIngress.vip_table": {"DELETE": 1}}),
                          SwitchReport("leaf-1", "primary", "rolled-back"), version=4, reason="probe: x"), CFG)
    assert sample(m, "p4kube_rollbacks_total", config=CFG) == 1
    assert sample(m, "p4kube_snapshot_version", config=CFG) == 3  # the switches hold the last good one
    m.record_apply(result("degraded", SwitchReport("leaf-2", "standby", "unreachable", reason="down"),
                          SwitchReport("leaf-1", "primary", "applied"), version=5), CFG)
    assert sample(m, "p4kube_switch_connected", switch="leaf-2", role="standby") == 0
    assert sample(m, "p4kube_snapshot_version", config=CFG) == 5
    m.record_apply(result("failed", SwitchReport("leaf-1", "primary", "failed", reason="ROLLBACK FAILED"),
                          version=6, reason="x; rollback failed on leaf-1: y"), CFG)
    assert sample(m, "p4kube_rollbacks_total", config=CFG) == 2
    assert sample(m, "p4kube_transactions_total", config=CFG, outcome="failed") == 1
    assert sample(m, "p4kube_snapshot_version", config=CFG) == 5


def test_registries_are_isolated_and_not_the_global_one():
    a, b = Metrics(), Metrics()
    a.set_leader(True)
    a.observe_reconcile(CFG, 0.02)
    assert sample(a, "p4kube_leader") == 1
    assert sample(b, "p4kube_leader") == 0
    assert sample(b, "p4kube_reconcile_duration_seconds_count", config=CFG) is None
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("p4kube_leader") is None


def test_reconcile_histogram_and_timer_also_when_raising():
    m = Metrics()
    m.observe_reconcile(CFG, 0.004)
    with pytest.raises(RuntimeError):
        with m.time_reconcile(CFG):
            raise RuntimeError("render failed")
    assert sample(m, "p4kube_reconcile_duration_seconds_count", config=CFG) == 2
    assert sample(m, "p4kube_reconcile_duration_seconds_bucket", config=CFG, le="0.005") == 2


def test_fallbacks_render_issues_health_and_forget():
    m = Metrics()
    m.record_fallback(CFG, "probe-failed", 2)
    m.record_fallback(CFG, "switch-unhealthy")
    m.record_recovery(CFG, 2)
    with pytest.raises(ValueError, match="not one of"):
        m.record_fallback(CFG, "backend 10.0.0.1 refused")  # free text never becomes a label
    assert sample(m, "p4kube_fallbacks_total", config=CFG, reason="probe-failed") == 2
    assert sample(m, "p4kube_fallback_recoveries_total", config=CFG) == 2
    m.set_render_issues(CFG, [RenderIssue("a/b", "no VIP", "error"), RenderIssue("a/c", "x"), RenderIssue(None, "y")])
    assert sample(m, "p4kube_render_issues", config=CFG, severity="error") == 1
    assert sample(m, "p4kube_render_issues", config=CFG, severity="warning") == 2
    m.set_unhealthy_targets(CFG, {"backend": 3})
    assert sample(m, "p4kube_health_unhealthy_targets", config=CFG, kind="backend") == 3
    assert sample(m, "p4kube_health_unhealthy_targets", config=CFG, kind="switch") == 0
    m.set_snapshot_version(CFG, 9)
    m.set_backend_packets(CFG, {("a/b", "n1"): 5})
    m.forget_config(CFG)
    assert sample(m, "p4kube_snapshot_version", config=CFG) is None
    assert sample(m, "p4kube_render_issues", config=CFG, severity="error") is None
    assert sample(m, "p4kube_backend_packets_total", config=CFG, service="a/b", node="n1") is None
    assert sample(m, "p4kube_fallbacks_total", config=CFG, reason="probe-failed") == 2  # counters stay


def svc(name: str, sid: int, vip: str, nodes: list[tuple[str, str, int]]) -> ServiceSnapshot:
    bs = tuple(Backend(node, addr, port, 1, 16 // len(nodes), sid * 100 + i) for i, (node, addr, port) in enumerate(nodes))
    return ServiceSnapshot(name, sid, vip, 80, "TCP", "replica-weighted", 16, "nodePort", bs,
                           tuple(bs[i % len(bs)].node for i in range(16)))


def test_backend_packet_counts_map_cells_to_service_and_node():
    snap = Snapshot(CFG, 1, None, None, "load_balancer.p4", "sha256:t", (
        svc("ns/a", 1, "203.0.113.1", [("n1", "10.0.0.1", 30001), ("n2", "10.0.0.2", 30001)]),
        svc("ns/b", 2, "203.0.113.2", [("n1", "10.0.0.1", 30002)]),
    ))
    primary = [CounterCell(100, 7, 700), CounterCell(101, 2, 0), CounterCell(999, 50, 0)]  # 999: not ours
    standby = [CounterCell(100, 1, 0)]
    counts = backend_packet_counts(snap, [primary, standby])
    assert counts == {("ns/a", "n1"): 8, ("ns/a", "n2"): 2, ("ns/b", "n1"): 0}


def test_backend_packets_read_from_a_software_switch_after_traffic():
    """Packets through the switch's pipeline model, counters read back over P4Runtime, exposed."""
    snap = Snapshot(CFG, 1, None, None, "load_balancer.p4", "sha256:t", (
        svc("ns/web", 1, "203.0.113.10", [("n1", "10.0.0.1", 30080), ("n2", "10.0.0.2", 30080)]),
    ), route_entries([("0.0.0.0/0", 1, "02:00:00:00:00:01")]))
    sw = SoftwareSwitch()
    sw.start()
    try:
        async def program() -> SwitchSession:
            s = SwitchSession(f"127.0.0.1:{sw.port}", device_id=1, election_id=1, info=INFO, name="leaf-1")
            await s.open()
            await s.ensure_pipeline(P4INFO, b"", pipeline_cookie(P4INFO, b""))
            for requests in updates_to_requests(INFO, diff_snapshots(None, snap).phases, device_id=1,
                                                election_id=1, batch_size=100):
                if requests:
                    assert (await s.write(requests)).ok
            return s

        sent: dict[str, int] = {}

        async def go():
            s = await program()
            try:
                for i in range(200):
                    out = sw.inject(1, 2, build_tcp(f"10.200.{i // 250}.{i % 250 + 1}", "203.0.113.10", 1024 + i, 80, SYN))
                    assert out.egress_port == 1, out.trace
                    node = {"10.0.0.1": "n1", "10.0.0.2": "n2"}[ip_str(parse_frame(out.data).ipv4.dst)]
                    sent[node] = sent.get(node, 0) + 1
                return await read_backend_packets([s], snap)
            finally:
                await s.close()

        counts = run(go())
    finally:
        sw.stop(0)
    assert counts == {("ns/web", "n1"): sent["n1"], ("ns/web", "n2"): sent["n2"]}
    assert sent["n1"] > 0 and sent["n2"] > 0
    m = Metrics()
    m.set_backend_packets(CFG, counts)
    families = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}
    samples = {(s.labels["service"], s.labels["node"]): s.value for s in families["p4kube_backend_packets"].samples}
    assert samples == {("ns/web", "n1"): sent["n1"], ("ns/web", "n2"): sent["n2"]}
    assert families["p4kube_backend_packets"].type == "counter"


# --- the HTTP endpoint ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def test_metrics_healthz_readyz_over_http():
    m = Metrics()
    m.set_leader(True)
    m.set_snapshot_version(CFG, 12)
    clock = FakeClock()
    hb = Heartbeat(30.0, clock=clock)
    state = {"started": False, "leader": True, "connected": False}

    def ready():
        return decide_ready(started=state["started"], leader=state["leader"], switches_connected=state["connected"],
                            detail="leaf-1 unreachable")

    async def go():
        async with HttpEndpoint(m.registry, heartbeat=hb, readiness=ready) as ep:
            port = ep.port
            call = lambda path, method="GET": asyncio.to_thread(get, port, path, method)  # noqa: E731
            out = {"metrics": await call("/metrics")}
            out["healthz"] = await call("/healthz")
            clock.t += 31
            out["stale"] = await call("/healthz")
            hb.beat()
            out["fresh"] = await call("/healthz?verbose=1")
            out["starting"] = await call("/readyz")
            state["started"] = True
            out["no-switches"] = await call("/readyz")
            state["connected"] = True
            out["ready"] = await call("/readyz")
            state["leader"] = False
            out["follower"] = await call("/readyz")
            out["missing"] = await call("/nope")
            out["post"] = await call("/metrics", "POST")
            out["head"] = await call("/healthz", "HEAD")
        assert ep.address == ("127.0.0.1", port)
        return port, out

    port, out = run(go())
    status, body, headers = out["metrics"]
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")
    assert "p4kube_leader 1.0" in body and 'p4kube_snapshot_version{config="p4kube-system/lb"} 12.0' in body
    assert out["healthz"][0] == 200 and out["healthz"][1].startswith("ok")
    assert out["stale"] == (503, "stale: last controller heartbeat 31.0s ago (limit 30s)\n", out["stale"][2])
    assert out["fresh"][0] == 200
    assert out["starting"][:2] == (503, "not ready: starting: leaf-1 unreachable\n")
    assert out["no-switches"][:2] == (503, "not ready: leader, but the switches are not connected: leaf-1 unreachable\n")
    assert out["ready"][:2] == (200, "ready: leader, switches connected\n")
    assert out["follower"][:2] == (200, "ready: standby follower\n")
    assert out["missing"][0] == 404
    assert out["post"][0] == 405 and out["post"][2]["Allow"] == "GET, HEAD"
    assert out["head"][0] == 200 and out["head"][1] == ""
    with pytest.raises(OSError):  # stopped: nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()


def test_endpoint_bad_requests_async_readiness_errors_and_stop_with_idle_client():
    hb = Heartbeat(10.0)

    async def broken():
        raise RuntimeError("lease store down")

    async def raw(port: int, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), WAIT)
        writer.close()
        await writer.wait_closed()
        return reply

    async def go():
        ep = HttpEndpoint(CollectorRegistry(), heartbeat=hb, readiness=broken, request_timeout=WAIT)
        port = await ep.start()
        try:
            garbage = await raw(port, b"HELLO\r\n\r\n")
            long_line = await raw(port, b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n")
            readyz = await raw(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            # a client that connects and says nothing must not keep stop() waiting
            idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0)
        finally:
            await asyncio.wait_for(ep.stop(), WAIT)
        try:
            rest = await asyncio.wait_for(idle_reader.read(), WAIT)
        except ConnectionResetError:
            rest = b""  # stopped before it was even accepted: reset instead of closed
        idle_writer.close()
        return garbage, long_line, readyz, rest

    garbage, long_line, readyz, rest = run(go())
    assert garbage.startswith(b"HTTP/1.1 400 Bad Request") and b"malformed request line" in garbage
    assert long_line.startswith(b"HTTP/1.1 400") and b"longer than 8192" in long_line
    assert readyz.startswith(b"HTTP/1.1 503") and b"the readiness check failed: RuntimeError: lease store down" in readyz
    assert rest == b""


def test_endpoint_request_timeout_answers_408():
    async def go():
        async with HttpEndpoint(CollectorRegistry(), heartbeat=Heartbeat(5), request_timeout=0.1) as ep:
            reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
            writer.write(b"GET /healthz HTTP/1.1\r\n")  # headers never finish
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(), WAIT)
            writer.close()
            return reply

    assert run(go()).startswith(b"HTTP/1.1 408 Request Timeout")


def test_listen_address_and_port_in_use():
    assert parse_listen_address("127.0.0.1:9090") == ("127.0.0.1", 9090)
    assert parse_listen_address("[::1]:9090") == ("::1", 9090)
    assert parse_listen_address(":9090") == ("0.0.0.0", 9090)
    for bad in ("localhost", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="listen address"):
            parse_listen_address(bad)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        ep = HttpEndpoint(CollectorRegistry(), heartbeat=Heartbeat(5), port=taken.getsockname()[1])
        with pytest.raises(OSError, match="cannot listen on 127.0.0.1:.* for /metrics"):
            run(ep.start())
    finally:
        taken.close()


# --- logging ----------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


def test_json_logs_one_object_per_line_with_extra_fields(restore_logging):
    buf = io.StringIO()
    setup_logging("info", "json", stream=buf)
    log = logging.getLogger("reconciler.apply")
    log.debug("hidden")
    log.info("applied v%d", 12, extra={"config": CFG, "version": 12, "switch": "leaf-1"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"path": PurePosixPath("/x")})  # not JSON: written as str()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "applied v12" and first["level"] == "info" and first["logger"] == "reconciler.apply"
    assert (first["config"], first["version"], first["switch"]) == (CFG, 12, "leaf-1")
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert second["level"] == "error" and "ValueError: boom" in second["exception"] and second["path"] == "/x"


def test_text_logs_and_reconfiguration_replaces_only_our_handler(restore_logging):
    other = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(other)
    first, second = io.StringIO(), io.StringIO()
    setup_logging("debug", "json", stream=first)
    setup_logging("WARNING", "text", stream=second)
    log = logging.getLogger("reconciler.health")
    log.info("not shown")
    log.warning("backend down", extra={"config": CFG, "target": "backend 10.0.0.1:30080"})
    assert first.getvalue() == ""
    line = second.getvalue().strip()
    assert " WARNING reconciler.health: backend down config=p4kube-system/lb " in line
    assert 'target="backend 10.0.0.1:30080"' in line
    assert other in logging.getLogger().handlers
    logging.getLogger().removeHandler(other)
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        setup_logging("info", "xml")
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        setup_logging("loud", "text")
