"""`p4kube run` as a real process: intent from a Git checkout, a cluster recording followed on
disk, two software switches, an audit repository, /metrics over HTTP, and SIGTERM."""

from __future__ import annotations

import shutil
import signal
import urllib.request

import pygit2
from helpers import MULTI, commit_all, multi_lbconfig, p4kube_process, scale_recording

from reconciler.audit.repo import AuditRepo

def test_run_follows_the_recording_records_and_stops_on_sigterm(tmp_path, switch_pair):
    standby, primary = switch_pair
    intent = tmp_path / "intent"
    intent.mkdir()
    (intent / "lbconfig.yaml").write_text(multi_lbconfig(standby.port, primary.port, loop=True))
    shutil.copy(MULTI / "sim-device-config.json", intent)  # its deviceConfig (a placeholder for the software switch)
    commit_all(intent)
    repo = pygit2.Repository(str(intent))
    cluster = tmp_path / "cluster" / "recorded.yaml"
    cluster.parent.mkdir()
    shutil.copy(MULTI / "cluster.yaml", cluster)
    audit_dir = tmp_path / "audit.git"

    with p4kube_process(
        ["--log-level", "info", "run", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--cluster", str(cluster),
         "--audit-repo", str(audit_dir), "--metrics-address", "127.0.0.1:0", "--election-id", "3"],
    ) as (proc, lines):
        host, port = lines.wait(r"serving /metrics, /healthz, /readyz on ([\d.]+):(\d+)").groups()
        lines.wait(r"p4kube-system/p4kube-config v1 applied \(552 writes")  # 276 on each switch
        body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
        assert 'p4kube_transactions_total{config="p4kube-system/p4kube-config",outcome="applied"} 1.0' in body
        assert urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10).status == 200
        # The recording changes on disk: web/frontend scales up; only its buckets are rewritten.
        scale_recording(cluster, "web/frontend", "node-c", +2)
        m = lines.wait(r"p4kube-system/p4kube-config v2 applied \((\d+) writes")
        assert 0 < int(m.group(1)) < 2 * 2 * 64
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    history = AuditRepo.open_or_init(audit_dir, read_only=True).history(config="p4kube-system/p4kube-config")
    assert [(e.version, e.trailers.get("Outcome")) for e in history] == [(2, "applied"), (2, "pending"), (1, "applied"), (1, "pending")]
    assert history[-1].trailers.get("Intent-Commit") == str(repo.head.target)
