"""Shared by the benchmarks: software switches in their own processes, percentiles."""

from __future__ import annotations

import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def start_switch(listen: str = "127.0.0.1:0", *, bmv2: bool = False) -> tuple[subprocess.Popen, int]:
    """`p4kube sim` on `listen` (default an ephemeral loopback port; `bmv2`: in BMv2 mode), in
    its own process; returns it and the port once it listens."""
    exe = Path(sys.executable).with_name("p4kube")
    cmd = [str(exe), "sim", "--listen", listen] + (["--bmv2"] if bmv2 else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"\(port (\d+)\)", line)
        if m:
            return proc, int(m.group(1))
    raise RuntimeError("software switch did not start")


@contextmanager
def switch_processes(n: int = 2) -> Iterator[list[int]]:
    """`n` switch processes; yields their ports and stops them afterwards."""
    procs = []
    try:
        for _ in range(n):
            procs.append(start_switch())
        yield [port for _, port in procs]
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds process `pid` has used so far (Linux /proc), e.g. a switch's
    share of a command's time; 0.0 once it is gone."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the ")" of comm: state is field 3, so utime (14) and stime (15) are at 11 and 12
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kubectl_yaml(data: object) -> str:
    """`data` as `kubectl -o yaml` prints it (block style, keys sorted, sequences not indented
    under their key), with libyaml's emitter when PyYAML has it: the pure-Python emitters take
    minutes at 5,000 Services, and only the reader is being measured."""
    import yaml  # type: ignore[import-untyped,unused-ignore]  # PyYAML, in the environment through the kubernetes client

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, default_flow_style=False, sort_keys=True, allow_unicode=True, width=2**31 - 1)
