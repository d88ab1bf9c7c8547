"""`p4kube sim` (the software switch) as a real process: it serves P4Runtime on loopback and stops on SIGTERM."""

from __future__ import annotations

from helpers import console_script
from switch_process import assert_switch_serves_until_sigterm


def test_switch_command_serves_until_sigterm(tmp_path):
    exe = console_script()
    assert_switch_serves_until_sigterm([str(exe), "sim", "--listen", "127.0.0.1:0", "--device-id", "1"])


def test_switch_command_refuses_half_tls(capsys):
    from reconciler.cli import main

    assert main(["sim", "--tls-cert", "x.pem"]) == 1
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
