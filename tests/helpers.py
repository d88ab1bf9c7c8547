"""Helpers shared by the test files: run a coroutine, run the CLI in-process, find the console
script and the command-line tools the tests need, follow a process's log, commit an intent
directory.

A missing tool or console script fails the test with what to install: CI has them all, and a skip
would hide that a test never ran."""

from __future__ import annotations

import asyncio
import importlib
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Coroutine, TypeVar

import pygit2
import pytest

T = TypeVar("T")

# Long enough for a slow shared CI machine; a hang still ends as a failure, not a stuck run.
TIMEOUT = 30.0


def run(coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
    """Run a coroutine on a fresh event loop, failing it after `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`p4kube *argv` in this process: its exit code, stdout and stderr."""
    from reconciler.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def console_script() -> Path:
    """The installed `p4kube` console script (pyproject's entry point) next to this Python."""
    exe = Path(sys.executable).with_name("p4kube")
    if not exe.exists():
        pytest.fail(f"the p4kube console script is not installed next to {sys.executable}: "
                    f"install the project (`pip install -e .`, as dev.py does)", pytrace=False)
    return exe


def require_tool(name: str, install: str) -> str:
    """The path of the command-line tool `name`; fails the test, saying what to install, when it
    is not on PATH."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {install}", pytrace=False)
    return path


def require_module(name: str, install: str) -> Any:
    """The imported module `name`; fails the test, saying what to install, when it cannot be
    imported."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pytest.fail(f"{name} cannot be imported ({e}): {install}", pytrace=False)


def require_ssh_keygen() -> str:
    return require_tool("ssh-keygen", "install OpenSSH's client tools (apt-get install openssh-client)")


def require_gpg() -> str:
    require_tool("gpgconf", "install GnuPG (apt-get install gnupg)")
    return require_tool("gpg", "install GnuPG (apt-get install gnupg)")


def require_git() -> str:
    return require_tool("git", "install git (apt-get install git)")


def recorded_files(folder: Path, pattern: str) -> list[Path]:
    """The recorded fixture files in `folder` matching `pattern`. None is an error at collection:
    a deleted fixture must fail, not turn its parametrized tests into a skip."""
    found = sorted(folder.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no {pattern} in {folder}: the recorded fixtures are missing (tests/fixtures/README.md)")
    return found


def require_node() -> str:
    return require_tool("node", "install Node.js (apt-get install nodejs)")


# Markers for tests that need a tool: the fixtures (conftest.py) fail, with what to install, when
# it is missing.
needs_ssh = pytest.mark.usefixtures("ssh_keygen_tool")
needs_gpg = pytest.mark.usefixtures("gpg_tool")
needs_git = pytest.mark.usefixtures("git_tool")


class Lines:
    """The process's log lines, read by a thread; wait for one matching a pattern (timeout)."""

    def __init__(self, stream: IO[str]) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.q.put(line)
        self.q.put("")

    def wait(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
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


def commit_all(path: Path, message: str = "intent") -> str:
    """Commit every file under `path` (a Git repository, created on first use) as dev, at a fixed
    time so that commit ids repeat; returns the commit id."""
    repo = pygit2.Repository(str(path)) if (path / ".git").exists() else pygit2.init_repository(str(path), initial_head="main")
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("dev", "dev@example.com", 1700000000, 0)
    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", sig, sig, message, repo.index.write_tree(), parents))


REPO = Path(__file__).resolve().parents[1]
MULTI = REPO / "intent-examples" / "multi-service"


def multi_lbconfig(standby_port: int, primary_port: int, *, loop: bool = False) -> str:
    """The multi-service example's lbconfig.yaml pointed at two local switches; with `loop`, as
    `p4kube run` tests want it: no health check (the recorded nodes are not reachable here) and
    no pause between updates."""
    text = (MULTI / "lbconfig.yaml").read_text()
    text = text.replace("127.0.0.1:9559", f"127.0.0.1:{primary_port}").replace("127.0.0.1:9560", f"127.0.0.1:{standby_port}")
    if loop:
        text = text.replace("  healthCheck:\n", "  healthCheck:\n    enabled: false  # the recorded nodes are not reachable here\n")
        text = text.replace("updateInterval: 1s", "updateInterval: 0s")
    return text


def scale_recording(cluster: Path, service: str, node: str, delta: int) -> None:
    """Change the cluster recording on disk as a follower sees it: `service` gets `delta` more
    ready replicas on `node`, the file replaced at once (never seen half written)."""
    from reconciler.cluster.recorded import load_cluster_file
    from reconciler.cluster.synthetic import cluster_to_list_yaml, with_scaled_service

    scaled = with_scaled_service(load_cluster_file(cluster), service, node, delta)
    tmp = cluster.with_suffix(".tmp")
    tmp.write_text(cluster_to_list_yaml(scaled))
    tmp.replace(cluster)


async def write_multi_statuses(api: Any, events: Any, source: Any) -> None:
    """Render the multi-service example over `source`'s (a synced LiveClusterSource) cluster and
    write the Services' VIP status and Events through `api`: every write must succeed (the kube
    permission and admission tests run it as the reconciler's ServiceAccount)."""
    from reconciler.intent.loader import load_intent
    from reconciler.kube.status import ServiceStatusWriter
    from reconciler.render import Renderer

    config = load_intent([MULTI / "lbconfig.yaml"]).config()
    cluster = source.snapshot()
    result = Renderer().render(config, cluster, None, p4info_digest="sha256:" + "0" * 64)
    report = await ServiceStatusWriter(api, events, status_managers=source.state.status_managers).sync(cluster, result.snapshot, result.issues)
    assert report.written and not report.failed


@contextmanager
def p4kube_process(argv: list[str]) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """The console script running `argv`, its log (stderr) followed; killed on the way out when
    the test did not stop it."""
    proc = subprocess.Popen([str(console_script()), *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        yield proc, Lines(proc.stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
