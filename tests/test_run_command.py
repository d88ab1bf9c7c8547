"""`p4kube run` as a real process: intent from a Git checkout, a cluster recording followed on
disk, two software switches, an audit repository, /metrics over HTTP, and SIGTERM."""

from __future__ import annotations

import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pygit2
from helpers import Lines, commit_all, console_script

from reconciler.audit.repo import AuditRepo
from reconciler.cluster.recorded import load_cluster_file
from reconciler.cluster.synthetic import cluster_to_list_yaml, with_scaled_service

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"


def test_run_follows_the_recording_records_and_stops_on_sigterm(tmp_path, switch_pair):
    exe = console_script()
    standby, primary = switch_pair
    intent = tmp_path / "intent"
    intent.mkdir()
    text = (MULTI / "lbconfig.yaml").read_text()
    text = text.replace("127.0.0.1:9559", f"127.0.0.1:{primary.port}").replace("127.0.0.1:9560", f"127.0.0.1:{standby.port}")
    text = text.replace("  healthCheck:\n", "  healthCheck:\n    enabled: false  # the recorded nodes are not reachable here\n")
    text = text.replace("updateInterval: 1s", "updateInterval: 0s")
    (intent / "lbconfig.yaml").write_text(text)
    shutil.copy(MULTI / "sim-device-config.json", intent)  # its deviceConfig (a placeholder for the software switch)
    commit_all(intent)
    repo = pygit2.Repository(str(intent))
    cluster = tmp_path / "cluster" / "recorded.yaml"
    cluster.parent.mkdir()
    shutil.copy(MULTI / "cluster.yaml", cluster)
    audit_dir = tmp_path / "audit.git"

    proc = subprocess.Popen(
        [str(exe), "--log-level", "info", "run", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--cluster", str(cluster),
         "--audit-repo", str(audit_dir), "--metrics-address", "127.0.0.1:0", "--election-id", "3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = Lines(proc.stderr)
        host, port = lines.wait(r"serving /metrics, /healthz, /readyz on ([\d.]+):(\d+)").groups()
        lines.wait(r"p4kube-system/p4kube-config v1 applied \(552 writes")  # 276 on each switch
        body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
        assert 'p4kube_transactions_total{config="p4kube-system/p4kube-config",outcome="applied"} 1.0' in body
        assert urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10).status == 200
        # The recording changes on disk: web/frontend scales up; only its buckets are rewritten.
        scaled = with_scaled_service(load_cluster_file(cluster), "web/frontend", "node-c", +2)
        tmp = cluster.with_suffix(".tmp")
        tmp.write_text(cluster_to_list_yaml(scaled))
        tmp.replace(cluster)
        m = lines.wait(r"p4kube-system/p4kube-config v2 applied \((\d+) writes")
        assert 0 < int(m.group(1)) < 2 * 2 * 64
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    history = AuditRepo.open_or_init(audit_dir, read_only=True).history(config="p4kube-system/p4kube-config")
    assert [(e.version, e.trailers.get("Outcome")) for e in history] == [(2, "applied"), (2, "pending"), (1, "applied"), (1, "pending")]
    assert history[-1].trailers.get("Intent-Commit") == str(repo.head.target)
