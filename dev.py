#!/usr/bin/env python3
"""Set-up and entry point for a fresh machine: needs only Python 3.11+ and the package registry.

    python3 dev.py demo      create .venv if needed, install, run `p4kube demo`
    python3 dev.py test      create .venv if needed, install with test extras, run the whole suite
    python3 dev.py lint      type-check reconciler/ with mypy ([tool.mypy] in pyproject.toml)
    python3 dev.py bench     run the benchmarks under bench/ (slow; results in bench/RESULTS.md)

Extra arguments go to the command (e.g. `python3 dev.py test -k render -x`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".p4kube-installed"


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


# Every dependency (runtime and test, with setuptools and wheel to build the project) pinned with
# its sha256 hashes: pip refuses a file that differs from the one locked. Regenerate after a
# change to pyproject.toml (docs/deploy.md "Dependencies"):
#   pip-compile --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
#       --extra test --output-file requirements-test.lock pyproject.toml
LOCK = ROOT / "requirements-test.lock"


def ensure_env() -> None:
    """Create the virtualenv and install the locked dependencies and the project, again whenever
    pyproject.toml or the lock changes."""
    if sys.version_info < (3, 11):
        sys.exit(f"p4kube needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + LOCK.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet"]
    _run([*pip, "--require-hashes", "-r", str(LOCK)])
    # The project itself, editable, from the locked setuptools (no isolated build env fetching
    # unpinned build tools) and without dependencies (all of them came from the lock).
    _run([*pip, "--no-deps", "--no-build-isolation", "-e", "."])
    # finsy bundles google/rpc/status.proto; googleapis-common-protos collides with it (DESIGN.md 8).
    check = subprocess.run([str(BIN / "python"), "-m", "pip", "show", "googleapis-common-protos"], capture_output=True)
    if check.returncode == 0:
        sys.exit("googleapis-common-protos is installed in .venv and breaks finsy's imports: remove it")
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    ensure_env()
    if cmd == "demo":
        return subprocess.call([str(BIN / "p4kube"), "demo", *rest], cwd=ROOT)
    if cmd == "test":
        return subprocess.call([str(BIN / "python"), "-m", "pytest", "-n", "2", *rest], cwd=ROOT)
    if cmd == "lint":
        # The import-layers contract is a test (tests/test_layers.py), so `test` checks it.
        return subprocess.call([str(BIN / "python"), "-m", "mypy", *rest], cwd=ROOT)
    if cmd == "bench":
        code = 0
        for script in sorted((ROOT / "bench").glob("bench_*.py")):
            code |= subprocess.call([str(BIN / "python"), str(script), *rest], cwd=ROOT)
        return code
    print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
