"""`p4kube run` as a real process: intent from a Git checkout, a cluster recording followed on
disk, two software switches, an audit repository, /metrics over HTTP, and SIGTERM."""

from __future__ import annotations

import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pygit2
import pytest

from reconciler.audit.repo import AuditRepo
from reconciler.cluster.recorded import load_cluster_file
from reconciler.cluster.synthetic import cluster_to_list_yaml, with_scaled_service

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"


class Lines:
    """The process's log lines, read by a thread; wait for one matching a pattern (timeout)."""

    def __init__(self, stream) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.q.put(line)
        self.q.put("")

    def wait(self, pattern: str, timeout: float = 30.0) -> re.Match:
        rx = re.compile(pattern)
        while True:
            try:
                line = self.q.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s; log:\n" + "".join(self.seen[-40:])) from None
            self.seen.append(line)
            if line == "":
                raise AssertionError("process ended; log:\n" + "".join(self.seen[-40:]))
            m = rx.search(line)
            if m:
                return m


def test_run_follows_the_recording_records_and_stops_on_sigterm(tmp_path, switch_pair):
    exe = Path(sys.executable).with_name("p4kube")
    if not exe.exists():
        pytest.skip("console script not installed")
    standby, primary = switch_pair
    intent = tmp_path / "intent"
    intent.mkdir()
    text = (MULTI / "lbconfig.yaml").read_text()
    text = text.replace("127.0.0.1:9559", f"127.0.0.1:{primary.port}").replace("127.0.0.1:9560", f"127.0.0.1:{standby.port}")
    text = text.replace("  healthCheck:\n", "  healthCheck:\n    enabled: false  # the recorded nodes are not reachable here\n")
    text = text.replace("updateInterval: 1s", "updateInterval: 0s")
    (intent / "lbconfig.yaml").write_text(text)
    shutil.copy(MULTI / "sim-device-config.json", intent)  # its deviceConfig (a placeholder for the software switch)
    repo = pygit2.init_repository(str(intent), initial_head="main")
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("dev", "dev@example.com", 1700000000, 0)
    repo.create_commit("HEAD", sig, sig, "intent", repo.index.write_tree(), [])
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
