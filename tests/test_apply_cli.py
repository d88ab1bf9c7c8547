"""`p4kube apply` and `p4kube reconcile --once` through the real entry point, against two
software switches on loopback that require mutual TLS, configured the way users do: in intent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pki import make_pki

from reconciler.cli import main
from reconciler.sim.server import SoftwareSwitch, TlsConfig
from reconciler.snapshot import load_snapshot

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"


@pytest.fixture(scope="module")
def pki():
    return make_pki()


@pytest.fixture
def tls_pair(pki):
    pair = [SoftwareSwitch(tls=TlsConfig(pki.server_cert, pki.server_key, client_ca=pki.ca), max_workers=16) for _ in range(2)]
    for sw in pair:
        sw.start()
    try:
        yield pair
    finally:
        for sw in pair:
            sw.stop(0)


def write_intent(dir: Path, pki, ports: tuple[int, int], ca: bytes | None = None) -> Path:
    """The multi-service intent, pointed at the two switches, with TLS files beside it."""
    dir.mkdir(parents=True, exist_ok=True)
    (dir / "tls").mkdir(exist_ok=True)
    (dir / "tls" / "ca.crt").write_bytes(ca or pki.ca)
    (dir / "tls" / "client.crt").write_bytes(pki.client_cert)
    (dir / "tls" / "client.key").write_bytes(pki.client_key)
    text = (MULTI / "lbconfig.yaml").read_text()
    text = text.replace("127.0.0.1:9559", f"127.0.0.1:{ports[1]}").replace("127.0.0.1:9560", f"127.0.0.1:{ports[0]}")
    text = text.replace(
        "    routes:\n",
        "    tls:\n      caFile: tls/ca.crt\n      certFile: tls/client.crt\n      keyFile: tls/client.key\n"
        "      serverName: p4rt.switch.test\n    routes:\n",
    )
    (dir / "lbconfig.yaml").write_text(text)
    shutil.copy(MULTI / "sim-device-config.json", dir)  # its deviceConfig (a placeholder for the software switch)
    return dir


def test_reconcile_once_applies_then_is_up_to_date(tmp_path, tls_pair, pki, capsys):
    standby, primary = tls_pair
    intent = write_intent(tmp_path / "intent", pki, (standby.port, primary.port))
    state = tmp_path / "state"
    cluster = str(MULTI / "cluster.yaml")
    code = main(["reconcile", "--once", "--intent", str(intent), "--pipeline-dir", str(intent), "--tls-dir", str(intent), "--cluster", cluster, "--state", str(state)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "snapshot v1 applied" in out and "sim-primary (primary): applied, 276 writes, pipeline pushed" in out
    recorded = load_snapshot(state / "p4kube-system__p4kube-config.applied.json")
    assert recorded.version == 1
    assert len(standby.entries(1, "MyIngress.backend_table")) == 256
    code = main(["reconcile", "--once", "--intent", str(intent), "--pipeline-dir", str(intent), "--tls-dir", str(intent), "--cluster", cluster, "--state", str(state)])
    assert code == 0
    assert "up to date at v1" in capsys.readouterr().out


def test_apply_a_rendered_snapshot_and_wrong_ca_fails_clearly(tmp_path, tls_pair, pki, capsys):
    standby, primary = tls_pair
    intent = write_intent(tmp_path / "intent", pki, (standby.port, primary.port))
    snap = tmp_path / "v1.json"
    assert main(["render", "--intent", str(intent), "--cluster", str(MULTI / "cluster.yaml"), "--out", str(snap)]) == 0
    capsys.readouterr()
    state = tmp_path / "state"
    assert main(["apply", "--intent", str(intent), "--pipeline-dir", str(intent), "--tls-dir", str(intent), "--snapshot", str(snap), "--state", str(state)]) == 0
    assert "snapshot v1 applied" in capsys.readouterr().out
    # The same intent trusting another CA: the primary is unreachable for TLS reasons, nothing written.
    bad = write_intent(tmp_path / "bad", pki, (standby.port, primary.port), ca=pki.other_ca)
    code = main(["apply", "--intent", str(bad), "--pipeline-dir", str(bad), "--tls-dir", str(bad), "--snapshot", str(snap), "--state", str(tmp_path / "s2"), "--timeout", "5"])
    out = capsys.readouterr().out
    assert code == 1
    assert "not signed by the CA we trust" in out and "nothing was written" in out


def test_apply_refuses_a_snapshot_of_another_config(tmp_path, capsys):
    snap = tmp_path / "v1.json"
    assert main(["render", "--intent", str(MULTI), "--cluster", str(MULTI / "cluster.yaml"), "--out", str(snap)]) == 0
    doc = json.loads(snap.read_text())
    other = tmp_path / "intent"
    shutil.copytree(ROOT / "intent-examples" / "production", other)
    code = main(["apply", "--intent", str(other), "--pipeline-dir", str(other), "--tls-dir", str(other), "--snapshot", str(snap), "--state", str(tmp_path / "st")])
    assert code == 1
    assert doc["config"] in capsys.readouterr().err
