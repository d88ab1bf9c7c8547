"""`p4kube status` through the command, against two software switches on loopback after a real
`reconcile --once`: in sync, then drift injected behind the reconciler's back (a delete and a
changed bucket through the software switch's own write path), counted per table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from finsy.proto import p4r

from reconciler import p4names as n
from reconciler.cli import main
from reconciler.snapshot import Entry, load_snapshot

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"
STATE_FILE = "p4kube-system__p4kube-config.applied.json"


def write_intent(dir: Path, ports: tuple[int, int]) -> Path:
    """The multi-service intent (no TLS: the tests pass --allow-insecure-switches), pointed at
    (standby, primary)."""
    dir.mkdir(parents=True, exist_ok=True)
    text = (MULTI / "lbconfig.yaml").read_text()
    text = text.replace("127.0.0.1:9559", f"127.0.0.1:{ports[1]}").replace("127.0.0.1:9560", f"127.0.0.1:{ports[0]}")
    (dir / "lbconfig.yaml").write_text(text)
    shutil.copy(MULTI / "sim-device-config.json", dir)
    return dir


def applied_world(tmp_path: Path, switch_pair, capsys) -> tuple[Path, Path, list[str]]:
    """Reconcile once; returns (intent, state, the flags every command of the tests shares)."""
    standby, primary = switch_pair
    intent = write_intent(tmp_path / "intent", (standby.port, primary.port))
    state = tmp_path / "state"
    common = ["--pipeline-dir", str(intent), "--allow-insecure-switches"]
    code = main(["reconcile", "--once", "--intent", str(intent), "--cluster", str(MULTI / "cluster.yaml"),
                 "--state", str(state), *common])
    assert code == 0, capsys.readouterr()
    capsys.readouterr()
    return intent, state, common


def drift(switch, snap_file: Path) -> None:
    """Behind the reconciler's back: one vip_table entry deleted, one bucket changed."""
    from reconciler.p4info import pipeline_info
    from reconciler.switch.translate import entry_to_proto

    info = pipeline_info()
    snap = load_snapshot(snap_file)
    tables = snap.tables()
    vip, bucket = tables[n.VIP_TABLE][0], tables[n.BACKEND_TABLE][0]
    req = p4r.WriteRequest(device_id=1)
    u = req.updates.add()
    u.type = p4r.Update.DELETE
    u.entity.table_entry.CopyFrom(entry_to_proto(info, vip))
    u = req.updates.add()
    u.type = p4r.Update.MODIFY
    u.entity.table_entry.CopyFrom(entry_to_proto(info, Entry(bucket.table, bucket.key, bucket.action, ("10.9.9.9", 1, 1))))
    switch.device(1).write(req)


def status(capsys, *argv: str) -> tuple[int, str]:
    code = main(["status", *argv])
    return code, capsys.readouterr().out


def test_status_in_sync_then_drift_counted_per_table(tmp_path, switch_pair, capsys):
    standby, primary = switch_pair
    intent, state, common = applied_world(tmp_path, switch_pair, capsys)
    argv = ["--intent", str(intent), "--state", str(state), "--cluster", str(MULTI / "cluster.yaml"), *common]

    code, out = status(capsys, *argv, "-o", "json")
    assert code == 0, out
    [cfg] = json.loads(out)["configs"]
    snap = load_snapshot(state / STATE_FILE)
    assert cfg["healthy"] and cfg["applied"]["version"] == snap.version and cfg["applied"]["digest"] == snap.digest
    assert {s["name"]: s["state"] for s in cfg["switches"]} == {"sim-primary": "in-sync", "sim-standby": "in-sync"}
    for sw in cfg["switches"]:
        assert sw["connected"] and sw["drift"] == [] and sw["pipelineCookie"] == sw["expectedCookie"]
        assert sw["entries"] == snap.table_counts
    assert cfg["fallenBack"] == []

    drift(primary, state / STATE_FILE)
    code, out = status(capsys, *argv, "-o", "json")
    assert code == 1
    [cfg] = json.loads(out)["configs"]
    by = {s["name"]: s for s in cfg["switches"]}
    assert by["sim-standby"]["state"] == "in-sync"
    assert by["sim-primary"]["state"] == "drifted"
    assert by["sim-primary"]["drift"] == [
        {"table": n.BACKEND_TABLE, "missing": 0, "extra": 0, "different": 1},
        {"table": n.VIP_TABLE, "missing": 1, "extra": 0, "different": 0},
    ]
    assert by["sim-primary"]["entries"][n.VIP_TABLE] == snap.table_counts[n.VIP_TABLE] - 1

    code, out = status(capsys, *argv)  # the text table
    assert code == 1
    assert "p4kube-system/p4kube-config:  NOT OK" in out
    assert "sim-primary    primary" in out and "drifted" in out
    assert "drift vip_table: 1 missing, 0 extra, 0 different" in out
    assert "drift backend_table: 0 missing, 0 extra, 1 different" in out


def test_status_unreachable_switch_and_yaml(tmp_path, switch_pair, capsys):
    standby, primary = switch_pair
    intent, state, common = applied_world(tmp_path, switch_pair, capsys)
    standby.stop(0)
    code, out = status(capsys, "--intent", str(intent), "--state", str(state), "--timeout", "1", *common, "-o", "yaml")
    assert code == 1
    assert "state: unreachable" in out and "state: in-sync" in out and "connected: false" in out


def test_status_is_read_only_and_never_takes_primacy(tmp_path, switch_pair, capsys):
    """Reads need no arbitration: while a controller holds primacy on the primary switch, status
    opens no StreamChannel and writes nothing, and that controller stays primary."""
    import asyncio

    from reconciler.p4info import pipeline_info
    from reconciler.switch.session import SwitchSession

    standby, primary = switch_pair
    intent, state, common = applied_world(tmp_path, switch_pair, capsys)

    async def scenario() -> int:
        async with SwitchSession(f"127.0.0.1:{primary.port}", device_id=1, election_id=5 << 64, info=pipeline_info()) as s:
            assert s.is_primary and primary.stream_count() == 1
            writes = primary.writes_processed
            code = await asyncio.to_thread(main, ["status", "--intent", str(intent), "--state", str(state), *common])
            assert s.is_primary and s.lost_reason is None
            assert primary.stream_count() == 1 and primary.writes_processed == writes
            return code

    assert asyncio.run(scenario()) == 0


def test_status_refuses_a_switch_outside_the_allowed_addresses(tmp_path, switch_pair, capsys):
    intent, state, common = applied_world(tmp_path, switch_pair, capsys)
    code = main(["status", "--intent", str(intent), "--state", str(state), *common, "--allowed-switches", "10.0.0.0/8"])
    err = capsys.readouterr().err
    assert code == 1 and "p4kube status: error:" in err and "127.0.0.1" in err, err


def test_status_names_the_services_fallen_back_and_why(tmp_path, switch_pair, capsys):
    """From a cluster recording: a Service p4kube's automatic fallback disabled (its marker), with
    the reason and time the fallback wrote; a Service a person disabled is not p4kube's."""
    intent, state, common = applied_world(tmp_path, switch_pair, capsys)
    text = _fallback_cluster_text()
    assert "p4kube-fallback-by: p4kube" in text
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(text)
    code, out = status(capsys, "--intent", str(intent), "--state", str(state), "--cluster", str(cluster), *common, "-o", "json")
    [cfg] = json.loads(out)["configs"]
    assert cfg["fallenBack"] == [{"service": "web/frontend", "reason": "probe failed 3 times: connection refused",
                                  "source": "recording", "since": "2026-12-06T01:02:03Z"}]
    code, out = status(capsys, "--intent", str(intent), "--state", str(state), "--cluster", str(cluster), *common)
    assert "fallen back:  1" in out and "web/frontend: probe failed 3 times: connection refused (since 2026-12-06T01:02:03Z)" in out


def _fallback_cluster_text() -> str:
    text = (MULTI / "cluster.yaml").read_text()
    old = '      loadbalancer.k8s.io/p4kube: enabled\n    creationTimestamp: "2026-11-22T10:12:05Z"\n    name: frontend\n'
    return text.replace(old, (
        "      loadbalancer.k8s.io/p4kube: disabled\n"
        "      loadbalancer.k8s.io/p4kube-fallback-by: p4kube\n"
        "      loadbalancer.k8s.io/p4kube-fallback-reason: 'probe failed 3 times: connection refused'\n"
        "      loadbalancer.k8s.io/p4kube-fallback-time: '2026-12-06T01:02:03Z'\n"
        '    creationTimestamp: "2026-11-22T10:12:05Z"\n    name: frontend\n'))


def test_status_of_custom_resources_with_fallbacks_from_the_api(tmp_path, switch_pair, capsys):
    """--intent-from-cluster: the configs are the cluster's LoadBalancerConfig resources and the
    fallen-back Services are read from the API (the test API server over real HTTP), with
    --kubeconfig and --context as kubectl takes them."""
    from kubeapi.server import KubeApiServer
    from kubernetes import client as k8s
    from ruamel.yaml import YAML

    from reconciler.crd import generate_crd
    from reconciler.kube.client import build_api_client

    intent, state, common = applied_world(tmp_path, switch_pair, capsys)
    yaml = YAML(typ="safe", pure=True)
    cr = yaml.load((intent / "lbconfig.yaml").read_text())
    cr["status"] = {"observedGeneration": 1, "conditions": [
        {"type": "Stalled", "status": "True", "reason": "RolledBack", "lastTransitionTime": "2026-12-06T01:02:03Z",
         "message": "v2 rolled-back: switch sim-primary: write failed; next try in 30s", "observedGeneration": 1}]}
    with KubeApiServer() as srv:
        srv.load([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in ("p4kube-system", "web", "payments")])
        api = build_api_client(configuration=srv.client_configuration())
        try:
            k8s.ApiextensionsV1Api(api).create_custom_resource_definition(generate_crd(), _preload_content=False)
        finally:
            api.close()
        srv.load([cr, yaml.load(_fallback_cluster_text())])
        token = next(iter(srv.authenticator.tokens))
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "other",
            "clusters": [{"name": "test", "cluster": {"server": srv.url}},
                         {"name": "other", "cluster": {"server": "http://127.0.0.1:1"}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "u", "namespace": "p4kube-system"}},
                         {"name": "other", "context": {"cluster": "other", "user": "u"}}],
        }))
        code, out = status(capsys, "--intent-from-cluster", "--kubeconfig", str(kubeconfig), "--context", "test",
                           "--state", str(state), *common, "-o", "json")
    [cfg] = json.loads(out)["configs"]
    assert cfg["config"] == "p4kube-system/p4kube-config" and cfg["applied"]["version"] == 1
    assert [s["state"] for s in cfg["switches"]] == ["in-sync", "in-sync"]
    assert cfg["fallenBack"] == [{"service": "web/frontend", "reason": "probe failed 3 times: connection refused",
                                  "source": "api", "since": "2026-12-06T01:02:03Z"}]
    assert cfg["nextRetry"] == "30s after the last attempt (Stalled: RolledBack)"
    assert code == 0


def test_status_reads_fallbacks_from_the_audit_record_without_a_cluster(tmp_path, switch_pair, capsys, monkeypatch):
    """No --cluster and no API configuration: the last applied record's Reason, as the loop
    writes it for a version that took Services off for a fallback, names them and why."""
    from reconciler.audit.repo import AuditRepo

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))  # no API here, whatever the machine has
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    intent, state, common = applied_world(tmp_path, switch_pair, capsys)
    audit = tmp_path / "audit.git"
    repo = AuditRepo.open_or_init(str(audit))
    repo.record(load_snapshot(state / STATE_FILE), "applied",
                reason="web/frontend fell back to kube-proxy (probe failed 3 times); web/api fell back to kube-proxy (automatic)")
    code, out = status(capsys, "--intent", str(intent), "--audit-repo", str(audit), *common, "-o", "json")
    [cfg] = json.loads(out)["configs"]
    assert code == 0 and cfg["applied"]["from"] == f"audit {audit}"
    assert [(f["service"], f["reason"], f["source"]) for f in cfg["fallenBack"]] == [
        ("web/frontend", "probe failed 3 times", "audit"), ("web/api", "automatic", "audit")]
