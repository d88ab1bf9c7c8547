"""`p4kube run` with a config the operator's settings refuse (a switch outside --allowed-switches):
that config gets no worker and nothing is connected for it, while the other configs keep running;
a running config whose new version is refused keeps its worker on the version it had."""

from __future__ import annotations

import shutil
import signal
import socket

from helpers import MULTI, commit_all, multi_lbconfig, p4kube_process, scale_recording

from reconciler.audit.repo import AuditRepo

FAR = """---
apiVersion: networking.p4kube.io/v1alpha1
kind: LoadBalancerConfig
metadata:
  name: far
  namespace: p4kube-system
spec:
  vipPools:
    - name: far
      addresses: [203.0.113.10-203.0.113.19]
  serviceSelector:
    namespaces: [nowhere]
  switchConfig:
    switchType: bmv2
    deviceConfig: sim-device-config.json
    switches:
      - {name: far-primary, role: primary, address: "127.0.0.1:FARPORT", deviceId: 1}
      - {name: far-standby, role: standby, address: "10.255.0.2:9559", deviceId: 1}
"""


def test_a_refused_config_does_not_stop_the_others_and_a_refused_change_keeps_the_running_version(tmp_path, switch_pair):
    standby, primary = switch_pair
    # A listener the refused config names on loopback: it must never see a connection.
    far = socket.socket()
    far.bind(("127.0.0.1", 0))
    far.listen(1)
    far.settimeout(0)
    intent = tmp_path / "intent"
    intent.mkdir()
    text = multi_lbconfig(standby.port, primary.port, loop=True)
    good = intent / "lbconfig.yaml"
    good.write_text(text)
    (intent / "far.yaml").write_text(FAR.replace("FARPORT", str(far.getsockname()[1])))
    shutil.copy(MULTI / "sim-device-config.json", intent)
    cluster = tmp_path / "recorded.yaml"
    shutil.copy(MULTI / "cluster.yaml", cluster)
    first = commit_all(intent, "intent")

    try:
        with p4kube_process(
            ["--log-level", "info", "run", "--allow-insecure-switches", "--intent", str(intent),
             "--pipeline-dir", str(intent), "--cluster", str(cluster), "--audit-repo", str(tmp_path / "audit.git"),
             # Loopback allowed only where our switches listen: the far config's loopback port is not.
             "--allowed-switches", f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"],
        ) as (proc, lines):
            m = lines.wait(r"p4kube-system/far: refused, nothing is connected or written for it: (.*)")
            assert "far-primary" in m.group(1) and "--allowed-switches" in m.group(1)
            lines.wait(r"p4kube-system/p4kube-config v1 applied \(552 writes")
            held = [len(sw.entries(1, "MyIngress.vip_table")) for sw in switch_pair]
            assert held == [4, 4]

            # The running config's new version names a switch the operator did not allow: refused,
            # and the worker keeps v1's switches and config.
            good.write_text(text.replace(f"127.0.0.1:{standby.port}", "10.255.0.9:9559"))
            refused = commit_all(intent, "move the standby")
            lines.wait(r"p4kube-system/p4kube-config: refused, nothing is connected or written for it "
                       r"\(its running worker keeps the previous config\): .*sim-standby")
            # ...and keeps working: a scale event is applied to both switches.
            scale_recording(cluster, "web/frontend", "node-c", +2)
            lines.wait(r"p4kube-system/p4kube-config v2 applied")
            assert [len(sw.entries(1, "MyIngress.vip_table")) for sw in switch_pair] == [4, 4]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    finally:
        try:
            conn, _ = far.accept()  # non-blocking: raises when nobody connected
            conn.close()
            connected = True
        except BlockingIOError:
            connected = False
        far.close()
    assert not connected, "the refused config's switch was connected to"
    # The audit trail names the intent commit the applied config was read at, not the refused one.
    history = AuditRepo.open_or_init(tmp_path / "audit.git", read_only=True).history(config="p4kube-system/p4kube-config")
    assert [(e.version, e.trailers.get("Outcome"), e.trailers.get("Intent-Commit")) for e in history][:2] == [
        (2, "applied", first), (2, "pending", first)]
    assert refused != first
