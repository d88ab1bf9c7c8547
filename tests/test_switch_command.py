"""`p4kube switch` as a real process: it serves P4Runtime on loopback and stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from finsy.proto import p4r, p4r_grpc


def test_switch_command_serves_until_sigterm(tmp_path):
    exe = Path(sys.executable).with_name("p4kube")
    if not exe.exists():
        pytest.skip("console script not installed")
    proc = subprocess.Popen(
        [str(exe), "switch", "--listen", "127.0.0.1:0", "--device-id", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        port = None
        for line in proc.stdout:  # the log line names the bound port
            if "listening on" in line:
                port = int(line.split("(port ")[1].split(")")[0])
                break
        assert port, "the switch never said it was listening"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            grpc.channel_ready_future(ch).result(timeout=10)
            caps = p4r_grpc.P4RuntimeStub(ch).Capabilities(p4r.CapabilitiesRequest(), timeout=10)
            assert caps.p4runtime_api_version
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_switch_command_refuses_half_tls(capsys):
    from reconciler.cli import main

    assert main(["switch", "--tls-cert", "x.pem"]) == 1
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
