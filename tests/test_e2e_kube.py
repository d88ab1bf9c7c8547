"""The reconciler end to end against the test API server (real HTTP, the official client), two
software switches, TCP listeners on 127.0.0.x for the nodes, a Git intent checkout and an audit
repository, wired exactly as `p4kube run` wires them (reconciler.app.runtime.build_runtime).

The product runs as the deployment's service account under deploy/base/rbac.yaml, so any API call the
code makes that the shipped RBAC does not allow fails the test."""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from contextlib import ExitStack
from pathlib import Path

import pygit2
import pytest
from kubernetes import client as k8s

from kubeapi.server import KubeApiServer
from reconciler.audit.repo import AuditRepo
from reconciler.controller import Controller
from reconciler.kube.client import build_api_client
from reconciler.cli.run import build_runtime
from reconciler.sim.server import SoftwareSwitch

ROOT = Path(__file__).resolve().parents[1]
SA = "system:serviceaccount:p4kube-system:p4kube-reconciler"
NODES = {"node-a": "127.0.0.2", "node-b": "127.0.0.3", "node-c": "127.0.0.4"}
CONFIG = "p4kube-system/p4kube-config"


def node_port_free_on_all() -> int:
    """A port in the nodePort range that every node address can listen on."""
    for port in range(30100, 32700, 7):
        socks = []
        try:
            for ip in NODES.values():
                s = socket.socket()
                socks.append(s)
                s.bind((ip, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free nodePort")


def listen_all(port: int) -> list[socket.socket]:
    out = []
    for ip in NODES.values():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        s.listen(64)
        out.append(s)
    return out


def objects(port: int) -> list[dict]:
    nodes = [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}
        for n, ip in NODES.items()
    ]
    svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "apps", "annotations": {"loadbalancer.k8s.io/p4kube": "enabled"}},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": port}]},
    }
    return nodes + [svc, endpoint_slice({"node-a": 2, "node-b": 1})]


def create_objects(server: KubeApiServer, objs: list[dict]) -> None:
    """Create through the API (as admin), so the server fills in its defaults as a real one does."""
    api = build_api_client(configuration=server.client_configuration("admin-token"))
    core, discovery = k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api)
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}})
    for obj in objs:
        if obj["kind"] == "Node":
            core.create_node(obj)
        elif obj["kind"] == "Service":
            core.create_namespaced_service(obj["metadata"]["namespace"], obj)
        else:
            discovery.create_namespaced_endpoint_slice(obj["metadata"]["namespace"], obj)


def endpoint_slice(per_node: dict[str, int]) -> dict:
    eps, i = [], 0
    for node, n in per_node.items():
        for _ in range(n):
            i += 1
            eps.append({"addresses": [f"10.244.0.{i}"], "conditions": {"ready": True}, "nodeName": node})
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "web-abc", "namespace": "apps", "labels": {"kubernetes.io/service-name": "web"}},
        "endpoints": eps, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


# The software switches accept any non-empty device config: the example's placeholder.
SIM_DEVICE_CONFIG = Path(__file__).resolve().parents[1] / "intent-examples" / "multi-service" / "sim-device-config.json"
INTENT = """apiVersion: networking.p4kube.io/v1alpha1
kind: LoadBalancerConfig
metadata:
  name: p4kube-config
  namespace: p4kube-system
spec:
  updateInterval: 200ms
  bucketsPerService: {buckets}
  healthCheck: {{interval: 300ms, timeout: 250ms, failureThreshold: 1, successThreshold: 1}}
  vipPools:
    - name: test
      addresses: ["203.0.113.10-203.0.113.20"]
  switchConfig:
    switches:
      - {{name: sw-standby, role: standby, address: "127.0.0.1:{standby}", deviceId: 1}}
      - {{name: sw-primary, role: primary, address: "127.0.0.1:{primary}", deviceId: 1}}
    deviceConfig: "{device_config}"
"""


def commit_intent(path: Path, text: str, message: str) -> str:
    (path / "lbconfig.yaml").write_text(text)
    repo = pygit2.Repository(str(path)) if (path / ".git").exists() else pygit2.init_repository(str(path), initial_head="main")
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("dev", "dev@example.com", int(time.time()), 0)
    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", sig, sig, message, repo.index.write_tree(), parents))


@pytest.fixture
def world(tmp_path):
    with ExitStack() as stack:
        server = KubeApiServer(
            tokens={"admin-token": ("admin", ["system:masters"]), "sa-token": SA},
            rbac=[ROOT / "deploy" / "base" / "rbac.yaml", ROOT / "deploy" / "base" / "namespace.yaml"],
        )
        server.start()
        stack.callback(server.stop)
        sws = [SoftwareSwitch(), SoftwareSwitch()]
        for sw in sws:
            sw.start()
            stack.callback(sw.stop, 0)
        port = node_port_free_on_all()
        create_objects(server, objects(port))
        listeners = listen_all(port)
        stack.callback(lambda: [s.close() for s in listeners])
        intent = tmp_path / "intent"
        intent.mkdir()
        commit_intent(intent, INTENT.format(buckets=64, standby=sws[0].port, primary=sws[1].port, device_config=SIM_DEVICE_CONFIG.name), "intent")
        yield server, sws, port, listeners, intent, tmp_path


def args_for(intent: Path, audit: Path) -> argparse.Namespace:
    return argparse.Namespace(
        intent=str(intent), intent_from_cluster=False, cluster=None, kubeconfig=None, audit_repo=str(audit),
        audit_workdir=None, state=str(audit.parent / "state"), metrics_address=None, election_id=1,
        leader_elect=False, timeout=5.0, batch_size=None,
        allow_insecure_switches=True,  # plaintext loopback software switches
        pipeline_dir=str(SIM_DEVICE_CONFIG.parent),  # the operator's directory holding the deviceConfig intent names
    )


def service_api(server: KubeApiServer) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(build_api_client(configuration=server.client_configuration("admin-token")))


def test_reconciler_against_the_api_server(world):
    server, sws, port, listeners, intent, tmp = world
    core = service_api(server)
    discovery = k8s.DiscoveryV1Api(core.api_client)
    audit_dir = tmp / "audit.git"

    async def scenario() -> None:
        api = build_api_client(configuration=server.client_configuration("sa-token"))
        rt = await build_runtime(args_for(intent, audit_dir), api=api)
        ctl = rt.current["controller"] = Controller(rt.intent, rt.cluster, make_worker=rt.make_worker_for(5))
        stop = asyncio.Event()
        task = asyncio.create_task(ctl.run(stop))
        loop = asyncio.get_running_loop()

        def applied_after(n: int, **match) -> bool:
            return any(r.outcome == "applied" and all(getattr(r, k) == v for k, v in match.items()) for r in ctl.history[n:])

        try:
            await ctl.wait_until(lambda: applied_after(0), timeout=20)
            svc = await loop.run_in_executor(None, core.read_namespaced_service_status, "web", "apps")
            assert svc.status.load_balancer.ingress[0].ip == "203.0.113.10"

            # Traffic through the primary shows up in the per-backend counters of /metrics.
            from reconciler.sim.packet import SYN, build_tcp

            for i in range(10):
                sws[1].inject(1, 2, build_tcp(f"10.200.0.{i + 1}", "203.0.113.10", 40000 + i, 80, SYN))
            rounds = ctl.health_rounds
            await ctl.wait_until(lambda: ctl.health_rounds > rounds, timeout=20)
            exposition = rt.metrics.exposition().decode()
            counted = sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
                          if line.startswith("p4kube_backend_packets") and 'service="apps/web"' in line)
            assert counted == 10, [line for line in exposition.splitlines() if line.startswith("p4kube_backend_packets")]

            # One EndpointSlice scaled: only that Service's buckets are rewritten.
            n = len(ctl.history)
            await loop.run_in_executor(None, lambda: discovery.patch_namespaced_endpoint_slice(
                "web-abc", "apps", endpoint_slice({"node-a": 2, "node-b": 1, "node-c": 3})))
            await ctl.wait_until(lambda: applied_after(n), timeout=20)
            rec = next(r for r in ctl.history[n:] if r.outcome == "applied")
            assert 0 < rec.writes < 2 * 64 + 2 * 2

            # An intent commit is applied within updateInterval plus a small margin.
            n = len(ctl.history)
            t0 = time.perf_counter()
            sha = commit_intent(intent, INTENT.format(buckets=32, standby=sws[0].port, primary=sws[1].port, device_config=SIM_DEVICE_CONFIG.name), "fewer buckets")
            await ctl.wait_until(lambda: applied_after(n), timeout=20)
            took = time.perf_counter() - t0
            assert took < 0.2 + 5.0, took
            assert AuditRepo.open_or_init(audit_dir, read_only=True).last_applied(CONFIG).intent_commit == sha
            assert len(sws[1].entries(1, "MyIngress.backend_table")) == 32

            # The nodes stop answering: the next change is rolled back and web falls back.
            for s in listeners:
                s.close()
            n = len(ctl.history)
            await loop.run_in_executor(None, lambda: discovery.patch_namespaced_endpoint_slice(
                "web-abc", "apps", endpoint_slice({"node-a": 1, "node-b": 1, "node-c": 3})))
            await ctl.wait_until(lambda: any(r.fell_back == ("apps/web",) for r in ctl.history[n:]), timeout=20)
            # Either the probe after the change fails (rolled back) or a periodic health round
            # sees the dead backends first (fell back); both are data-path evidence.
            how = next(r for r in ctl.history[n:] if r.fell_back == ("apps/web",)).outcome
            svc = await loop.run_in_executor(None, core.read_namespaced_service, "web", "apps")
            ann = svc.metadata.annotations
            assert ann["loadbalancer.k8s.io/p4kube"] == "disabled" and ann["loadbalancer.k8s.io/p4kube-fallback-by"] == "p4kube"
            await ctl.wait_until(lambda: ctl.workers[CONFIG].last is not None and not ctl.workers[CONFIG].last.by_name, timeout=20)
            assert sws[0].entries(1, "MyIngress.vip_table") == sws[1].entries(1, "MyIngress.vip_table") == []
            outcomes = [e.trailers.get("Outcome") for e in AuditRepo.open_or_init(audit_dir, read_only=True).history(config=CONFIG)]
            assert how == "fell-back" or "rolled-back" in outcomes, (how, outcomes)

            # They come back: the fallback is lifted and web is on the switches again.
            listeners[:] = listen_all(port)
            await ctl.wait_until(lambda: "apps/web" in (ctl.workers[CONFIG].last.by_name), timeout=20)
            svc = await loop.run_in_executor(None, core.read_namespaced_service, "web", "apps")
            assert svc.metadata.annotations["loadbalancer.k8s.io/p4kube"] == "enabled"
            assert "loadbalancer.k8s.io/p4kube-fallback-by" not in svc.metadata.annotations
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

        # A restarted reconciler changes nothing on the switches.
        ctl2 = rt.current["controller"] = Controller(rt.intent, rt.cluster, make_worker=rt.make_worker_for(6))
        stop2 = asyncio.Event()
        task2 = asyncio.create_task(ctl2.run(stop2))
        try:
            await ctl2.wait_passes(1, timeout=20)
            assert ctl2.history[0].outcome == "resynced" and all(r.writes == 0 for r in ctl2.history)
        finally:
            stop2.set()
            await asyncio.wait_for(task2, 20)
            await rt.aclose()

    asyncio.run(scenario())
    # Every call the product made was allowed by the shipped RBAC.
    ours = [r for r in server.requests if r.user == SA]
    assert ours, "the product made no API calls as the service account"
    refused = sorted({(r.verb, r.group, r.resource, r.subresource, r.code) for r in ours if not r.allowed})
    assert refused == [], f"deploy/base/rbac.yaml does not allow: {refused}"
    used = {(r.group, r.resource + (f"/{r.subresource}" if r.subresource else ""), r.verb) for r in ours}
    assert ("", "services/status", "patch") in used and ("events.k8s.io", "events", "create") in used


def test_intent_from_custom_resources_with_status(world):
    from reconciler.crd import generate_crd

    server, sws, port, listeners, intent, tmp = world
    admin = build_api_client(configuration=server.client_configuration("admin-token"))
    k8s.ApiextensionsV1Api(admin).create_custom_resource_definition(generate_crd())
    try:
        k8s.CoreV1Api(admin).create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "p4kube-system"}})
    except k8s.ApiException as e:
        assert e.status == 409
    custom = k8s.CustomObjectsApi(admin)

    def cr(name: str, **spec_extra) -> dict:
        spec = {
            "updateInterval": "100ms",
            "healthCheck": {"interval": "300ms", "timeout": "250ms", "failureThreshold": 1},
            "vipPools": [{"name": "test", "addresses": ["203.0.113.10-203.0.113.20"]}],
            "switchConfig": {"switches": [
                {"name": "sw-standby", "role": "standby", "address": f"127.0.0.1:{sws[0].port}", "deviceId": 1},
                {"name": "sw-primary", "role": "primary", "address": f"127.0.0.1:{sws[1].port}", "deviceId": 1},
            ], "deviceConfig": SIM_DEVICE_CONFIG.name},
        }
        spec.update(spec_extra)
        return {"apiVersion": "networking.p4kube.io/v1alpha1", "kind": "LoadBalancerConfig",
                "metadata": {"name": name, "namespace": "p4kube-system"}, "spec": spec}

    custom.create_namespaced_custom_object("networking.p4kube.io", "v1alpha1", "p4kube-system", "loadbalancerconfigs", cr("edge"))
    # Valid for the CRD's schema, refused by the semantic checks (an address without its port).
    custom.create_namespaced_custom_object(
        "networking.p4kube.io", "v1alpha1", "p4kube-system", "loadbalancerconfigs",
        cr("broken",
           vipPools=[{"name": "other", "addresses": ["198.51.100.0/28"]}], switchConfig={"switches": [
            {"name": "other", "role": "primary", "address": "127.0.0.1", "deviceId": 9}],
            "deviceConfig": SIM_DEVICE_CONFIG.name}),
    )

    def status_of(name: str) -> dict:
        obj = custom.get_namespaced_custom_object("networking.p4kube.io", "v1alpha1", "p4kube-system", "loadbalancerconfigs", name)
        return obj.get("status") or {}

    def condition(st: dict, kind: str) -> str | None:
        return next((c["status"] for c in st.get("conditions", []) if c["type"] == kind), None)

    async def scenario() -> None:
        args = args_for(intent, tmp / "audit.git")
        args.intent, args.intent_from_cluster = None, True
        rt = await build_runtime(args, api=build_api_client(configuration=server.client_configuration("sa-token")))
        ctl = rt.current["controller"] = Controller(rt.intent, rt.cluster, make_worker=rt.make_worker_for(9))
        stop = asyncio.Event()
        task = asyncio.create_task(ctl.run(stop))
        loop = asyncio.get_running_loop()
        try:
            try:
                await ctl.wait_until(lambda: any(r.outcome == "applied" for r in ctl.history), timeout=20)
            except TimeoutError:
                raise AssertionError(f"no transaction: intent {rt.intent.current()}, cr {rt.intent.source.current()}, history {ctl.history}, edge status {status_of('edge')}") from None
            # The CR's status is written within the pass (on_result), before it counts as done.
            st = await loop.run_in_executor(None, status_of, "edge")
            assert condition(st, "Ready") == "True" and st["appliedVersion"] == 1
            assert st["observedGeneration"] == 1 and {s["state"] for s in st["switches"]} == {"InSync"}
            broken = await loop.run_in_executor(None, status_of, "broken")
            assert condition(broken, "Stalled") == "True" and "spec.switchConfig.switches[0].address" in json_text(broken)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await rt.aclose()

    asyncio.run(scenario())
    refused = sorted({(r.verb, r.group, r.resource, r.subresource) for r in server.requests if r.user == SA and not r.allowed})
    assert refused == [], f"deploy/base/rbac.yaml does not allow: {refused}"


def json_text(obj: dict) -> str:
    import json

    return json.dumps(obj)
