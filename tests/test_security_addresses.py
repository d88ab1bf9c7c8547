"""H1: addresses and namespaces named by intent are untrusted.

- A switch address must match the operator's --allowed-switches (default loopback only) before
  any connection is made; the refusal names the switch, the address and the flag.
- LoadBalancerConfig CRs are read only in the reconciler's namespace(s) (--intent-namespace),
  with namespaced list/watch, under the namespaced RBAC of deploy/base/rbac.yaml.
- CR status and Events say "unreachable at ADDRESS" for a switch that cannot be reached, the
  same whatever the peer answered (refused, closed, not gRPC): no port-scan oracle.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubeapi.server import KubeApiServer
from kubernetes import client as k8s
from ruamel.yaml import YAML

from reconciler.cli import main
from reconciler.crd import generate_crd
from reconciler.intent.files import OperatorDirs
from reconciler.kube.client import build_api_client
from reconciler.kube.crstatus import ConfigStatusWriter, plain_unreachable
from reconciler.kube.intent_source import GROUP, PLURAL, VERSION, CRIntentSource, intent_namespaces
from reconciler.switch.allowlist import AllowlistError, parse_allowlist

REPO = Path(__file__).resolve().parents[1]
MULTI = REPO / "intent-examples" / "multi-service"
NS = "p4kube-system"
SA_USER = f"system:serviceaccount:{NS}:p4kube-reconciler"


# --- the allowlist (pure) ------------------------------------------------------------------------------


def test_allowlist_forms_and_matching() -> None:
    default = parse_allowlist(None)
    assert default.allows("127.0.0.1", 9559) and default.allows("127.9.9.9", 1) and default.allows("::1", 9559)
    assert default.allows("::ffff:127.0.0.1", 9559)  # an IPv4-mapped address is that IPv4 address
    assert not default.allows("10.0.0.1", 9559) and not default.allows("0.0.0.0", 9559)
    assert not default.allows("localhost", 9559)  # a name matches only a name entry
    rules = parse_allowlist(["10.0.0.0/8:9559,[fd00::/8]:9559", "leaf-1.example.net", "sw.example:9560"])
    assert rules.allows("10.1.2.3", 9559) and not rules.allows("10.1.2.3", 22)
    assert rules.allows("fd00::1", 9559) and not rules.allows("fd00::1", 9560)
    assert rules.allows("leaf-1.example.net", 1) and rules.allows("LEAF-1.example.net.", 1)
    assert rules.allows("sw.example", 9560) and not rules.allows("sw.example", 9559)
    assert not rules.allows("10.0.0.1.example.net", 9559) and not rules.allows("127.0.0.1", 9559)
    for bad in ("10.0.0.1/8", "10.0.0.0/8:0", "[fd00::/8]", "a b", "x/y:1"):
        with pytest.raises(AllowlistError):
            parse_allowlist([bad])


# --- refused before any connection ----------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A plain TCP listener standing in for whatever the intent names: it records any connection."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    try:
        yield s
    finally:
        s.close()


def connected(s: socket.socket) -> bool:
    try:
        conn, _ = s.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def intent_at(tmp_path: Path, standby: str, primary: str) -> Path:
    intent = tmp_path / "intent"
    intent.mkdir(exist_ok=True)
    text = (MULTI / "lbconfig.yaml").read_text().replace("127.0.0.1:9559", primary).replace("127.0.0.1:9560", standby)
    (intent / "lbconfig.yaml").write_text(text)
    return intent


def reconcile(intent: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(MULTI),
            "--cluster", str(MULTI / "cluster.yaml"), "--state", str(tmp_path / "state"), "--timeout", "5", *extra]


def test_a_switch_outside_the_allowlist_is_refused_before_connecting(tmp_path: Path, listener, capsys) -> None:
    port = listener.getsockname()[1]
    intent = intent_at(tmp_path, "127.0.0.1:1", f"127.0.0.1:{port}")
    code = main(reconcile(intent, tmp_path, "--allowed-switches", "127.0.0.2/32", "--allowed-switches", "10.0.0.0/8:9559"))
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == (
        f"p4kube reconcile: error: p4kube-system/p4kube-config: switch 'sim-primary' address '127.0.0.1:{port}' is not "
        "allowed by --allowed-switches (127.0.0.2/32, 10.0.0.0/8:9559): refused before connecting; the operator allows it "
        "with --allowed-switches; switch 'sim-standby' address '127.0.0.1:1' is not allowed by --allowed-switches "
        "(127.0.0.2/32, 10.0.0.0/8:9559): refused before connecting; the operator allows it with --allowed-switches"
    )
    assert not connected(listener)
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


def test_by_default_only_loopback_switches_are_allowed(tmp_path: Path, capsys) -> None:
    intent = intent_at(tmp_path, "10.255.0.2:9559", "switch.example.net:9559")
    code = main(reconcile(intent, tmp_path))
    err = capsys.readouterr().err
    assert code == 1
    assert "switch 'sim-standby' address '10.255.0.2:9559' is not allowed by --allowed-switches (127.0.0.0/8, ::1)" in err
    assert "switch 'sim-primary' address 'switch.example.net:9559' is not allowed" in err


def test_an_allowed_switch_is_connected(tmp_path: Path, switch_pair, capsys) -> None:
    standby, primary = switch_pair
    intent = intent_at(tmp_path, f"127.0.0.1:{standby.port}", f"127.0.0.1:{primary.port}")
    code = main(reconcile(intent, tmp_path, "--allowed-switches", f"127.0.0.1/32:{standby.port},127.0.0.1:{primary.port}"))
    assert code == 0, capsys.readouterr()
    assert primary.device(1)._config is not None


# --- CRs only from the allowed namespaces, with namespaced RBAC ---------------------------------------------


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    rbac = [d for d in YAML(typ="safe").load_all((REPO / "deploy" / "base" / "rbac.yaml").read_text()) if d]
    tokens = {"admin-token": ("admin", ["system:masters"]), "sa-token": (SA_USER, ["system:serviceaccounts"])}
    with KubeApiServer(tokens=tokens, rbac=rbac) as srv:
        srv.load([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in (NS, "team-a")])
        admin = build_api_client(configuration=srv.client_configuration("admin-token"))
        try:
            k8s.ApiextensionsV1Api(admin).create_custom_resource_definition(generate_crd(), _preload_content=False)
        finally:
            admin.close()
        yield srv


def cr(name: str, namespace: str, addresses: tuple[str, str] = ("127.0.0.1:9560", "127.0.0.1:9559")) -> dict[str, Any]:
    """The multi-service config as a CR in `namespace`; addresses: (standby, primary)."""
    doc = YAML(typ="safe").load((MULTI / "lbconfig.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    for sw in doc["spec"]["switchConfig"]["switches"]:
        sw["name"] = f"{name}-{sw['role']}"
        sw["address"] = addresses[0] if sw["role"] == "standby" else addresses[1]
    doc["spec"]["vipPools"] = [{"name": "p", "addresses": [f"203.0.113.{8 if namespace == NS else 40}/30"]}]
    return doc


def create(srv: KubeApiServer, obj: dict[str, Any]) -> None:
    admin = build_api_client(configuration=srv.client_configuration("admin-token"))
    try:
        k8s.CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, obj["metadata"]["namespace"], PLURAL, obj,
                                                                     _preload_content=False)
    finally:
        admin.close()


def test_crs_in_other_namespaces_are_ignored_and_the_source_works_with_namespaced_rbac(
    kube: KubeApiServer, caplog, monkeypatch
) -> None:
    create(kube, cr("own", NS))
    create(kube, cr("foreign", "team-a", ("10.9.9.9:22", "10.9.9.9:23")))
    monkeypatch.setenv("POD_NAMESPACE", NS)
    assert intent_namespaces(None) == [NS] and intent_namespaces(["a,b", "c"]) == ["a", "b", "c"]
    api = build_api_client(configuration=kube.client_configuration("sa-token"))  # the shipped ServiceAccount

    async def go() -> None:
        with caplog.at_level(logging.INFO, logger="reconciler.kube.intent_source"):
            async with CRIntentSource(api, namespaces=intent_namespaces(None), dirs=OperatorDirs(pipeline_dir=MULTI)) as source:
                crs = await source.wait_synced(timeout=10)
                assert [c.key for c in crs.intent.configs] == [f"{NS}/own"]
                assert list(crs.resources) == [f"{NS}/own"]
                # Defense in depth: an object of another namespace that reached the source anyway is dropped, said once.
                from reconciler.cluster.live import WatchEvent

                for _ in range(2):
                    source._apply(WatchEvent("LoadBalancerConfig", "ADDED", cr("sneaky", "team-a")), NS)
                assert [c.key for c in source.current().intent.configs] == [f"{NS}/own"]
        said = [r.getMessage() for r in caplog.records]
        assert sum("only in namespace(s) p4kube-system" in m for m in said) == 1
        assert sum("team-a/sneaky ignored: namespace team-a is not allowed" in m for m in said) == 1

    try:
        asyncio.run(go())
    finally:
        api.close()


# --- unreachable reads the same whatever the peer answered ----------------------------------------------


def test_plain_unreachable_drops_the_peers_answer_and_names_the_address() -> None:
    addresses = {"sw-a": "10.0.0.9:22", "sw-b": "[fd00::1]:9559"}
    text = ("sw-a unreachable (failed to connect to all addresses; last error: UNAVAILABLE: ipv4:10.0.0.9:22: "
            "Connection refused (111)); re-synced when it returns; sw-b: unreachable: TLS alert: handshake failure")
    assert plain_unreachable(text, addresses, ["TLS alert: handshake failure"]) == (
        "sw-a unreachable at 10.0.0.9:22; re-synced when it returns; sw-b: unreachable at [fd00::1]:9559"
    )


@pytest.fixture
def not_grpc() -> Iterator[int]:
    """A TCP server that answers every connection with a line of text and closes (an SSH-like banner)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    stop = threading.Event()

    def serve() -> None:
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = s.accept()
            except OSError:
                continue
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield s.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        s.close()


def test_cr_status_says_unreachable_the_same_for_refused_and_not_grpc(kube: KubeApiServer, not_grpc: int) -> None:
    from reconciler.app import Settings, build_applier
    from reconciler.cluster.recorded import load_cluster_file
    from reconciler.controller import TransactionRecord
    from reconciler.pipeline_io import render_one
    from reconciler.app.reports import CRStatus

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connections are refused
    create(kube, cr("edge", NS, (f"127.0.0.1:{refused}", f"127.0.0.1:{not_grpc}")))
    api = build_api_client(configuration=kube.client_configuration("sa-token"))
    args = Settings(timeout=2.0, rpc_timeout=2.0, election_id=1, batch_size=None, allow_insecure_switches=True,
                    pipeline_dir=str(MULTI), tls_dir=None, allowed_switches=None)

    async def go() -> dict[str, Any]:
        async with CRIntentSource(api, namespaces=[NS], dirs=OperatorDirs(pipeline_dir=MULTI)) as source:
            crs = await source.wait_synced(timeout=10)
            (config,) = crs.intent.configs
            rendered = render_one(crs.intent, config, load_cluster_file(MULTI / "cluster.yaml"), None)
            applier = build_applier(config, args)
            try:
                result = await applier.sync(rendered.snapshot)
            finally:
                await applier.close()
            details = " ".join(r.reason for r in result.switches)
            assert all(r.state == "unreachable" for r in result.switches) and details  # the log has the detail
            record = TransactionRecord(config.key, 1, result.outcome, result.reason)
            await CRStatus(source, ConfigStatusWriter(api)).report(record, result, None)
        admin = build_api_client(configuration=kube.client_configuration("admin-token"))
        try:
            return k8s.CustomObjectsApi(admin).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "edge")["status"]
        finally:
            admin.close()

    try:
        status = asyncio.run(go())
    finally:
        api.close()
    switches = {s["name"]: s["message"] for s in status["switches"]}
    assert switches == {"edge-standby": f"unreachable at 127.0.0.1:{refused}", "edge-primary": f"unreachable at 127.0.0.1:{not_grpc}"}
    messages = " ".join(c["message"] for c in status["conditions"])
    assert f"edge-standby: unreachable at 127.0.0.1:{refused}" in messages
    assert f"edge-primary: unreachable at 127.0.0.1:{not_grpc}" in messages
    for leak in ("refused", "Connection", "SSH", "Socket", "deadline", "UNAVAILABLE", "ipv4"):
        assert leak not in messages, messages


def test_a_cr_naming_a_disallowed_switch_or_an_unconfigured_file_is_stalled_not_fatal() -> None:
    from reconciler.kube.intent_source import intent_from_objects

    objs = [cr("edge", NS, ("127.0.0.1:9560", "10.9.9.9:22")), cr("lab", NS, ("127.0.0.1:9561", "127.0.0.1:9562"))]
    objs[1]["spec"]["vipPools"][0]["addresses"] = ["203.0.113.64/30"]
    result = intent_from_objects(objs, dirs=OperatorDirs(pipeline_dir=MULTI), allowed=parse_allowlist(None))
    assert [c.name for c in result.intent.configs] == ["lab"]
    (bad,) = result.invalid
    assert [(d.field, d.message) for d in bad.diagnostics] == [
        ("spec.switchConfig.switches[0].address",
         "'10.9.9.9:22' is not allowed by --allowed-switches (127.0.0.0/8, ::1): the reconciler does not connect to it"),
    ]
    # Without --pipeline-dir the reconciler cannot read the deviceConfig a CR names: that CR is Stalled too.
    (bad,) = intent_from_objects(objs[1:], dirs=OperatorDirs()).invalid
    assert [d.field for d in bad.diagnostics] == ["spec.switchConfig.deviceConfig"] and bad.diagnostics[0].severity == "error"
