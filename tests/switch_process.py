"""`p4kube sim` as a real process: started, asked for its Capabilities, stopped by SIGTERM."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from finsy.proto import p4r, p4r_grpc


def wait_for_port(proc: subprocess.Popen[str], timeout: float) -> tuple[int | None, list[str]]:
    """The port from the switch's "listening on ... (port N)" log line, read off a thread so the
    wait has a deadline."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            return None, seen
        if line is None:
            return None, seen
        seen.append(line)
        if "listening on" in line:
            return int(line.split("(port ")[1].split(")")[0]), seen


def assert_switch_serves_until_sigterm(
    cmd: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 30
) -> None:
    """Run `cmd` (a `p4kube sim --listen 127.0.0.1:0 ...`): it must answer a P4Runtime
    Capabilities call on the port it logs, and exit 0 on SIGTERM. The process never outlives it."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env) if env is not None else None,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port, seen = wait_for_port(proc, timeout=timeout)
        assert port, "the switch never said it was listening: " + "".join(seen)
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
        assert proc.stdout is not None
        proc.stdout.close()
