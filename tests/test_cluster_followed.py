"""A recording followed on disk (reconciler.cluster.followed): a real file, rewritten in chunks by
the test as `kubectl get ... -o yaml > FILE` rewrites it, followed through watchdog. The test
waits on the source's own counters, never by sleeping."""

from __future__ import annotations

import asyncio
import io
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from reconciler.cluster.followed import FollowedRecording
from reconciler.cluster.recorded import load_cluster_file, load_cluster_text
from reconciler.diagnostics import InputError
from shared_fixtures import RECORDED_CLUSTER

FIXTURE = RECORDED_CLUSTER / "cluster.yaml"
TEXT = FIXTURE.read_text()
# The same cluster with node-c moved to another address: the Services with replicas there change.
MOVED = TEXT.replace("172.20.0.13", "172.20.0.99")


def _run(coro: Any, timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _item_boundary(text: str) -> int:
    """An offset in the middle of `items` where an item starts: cut there, the YAML still parses."""
    starts = [i for i in range(len(text)) if text.startswith("\n- apiVersion", i)]
    return starts[len(starts) // 2] + 1


def _write(path: Path, text: str, mode: str = "w") -> None:
    with open(path, mode) as f:
        f.write(text)
        f.flush()


def _services_on_node_c() -> set[str]:
    state = load_cluster_file(FIXTURE)
    return {k for k, eps in state.endpoints.items() if any(ep.node == "node-c" for ep in eps)}


def test_a_file_rewritten_in_chunks_is_loaded_only_when_whole(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(TEXT)
    cut = _item_boundary(MOVED)

    async def go() -> None:
        rec = FollowedRecording(path, settle_s=0.05)
        original = rec.snapshot()
        assert original.nodes["node-c"].internal_ip == "172.20.0.13"
        changes = rec.changes().__aiter__()
        changed = asyncio.ensure_future(changes.__anext__())  # subscribed while the test waits below
        rec.start()
        try:
            _write(path, MOVED[:cut])  # `>` truncates, then the first chunk lands
            await rec.wait_settled(1)
            # Half a List parses as a shorter List: refused, the last good state kept.
            assert rec.snapshot() is original and rec.loads == 0
            assert rec.error is not None and str(path) in rec.error and "cut short" in rec.error
            _write(path, MOVED[cut:], "a")  # the rest
            await rec.wait_loaded(1)
            assert rec.error is None
            assert rec.snapshot().nodes["node-c"].internal_ip == "172.20.0.99"
            assert rec.snapshot().services == original.services
            assert await asyncio.wait_for(changed, 5) == _services_on_node_c() != set()
        finally:
            changed.cancel()
            rec.stop()

    _run(go())


def test_a_file_still_changing_is_not_read_even_when_it_parses(tmp_path: Path) -> None:
    """Multi-document YAML cut at a document boundary is a valid, smaller cluster: only the
    settling keeps it out. Each chunk lands right after the source looked at the file, so every
    look sees new content until the last chunk."""
    doc = YAML(typ="safe").load(MOVED)
    dump = YAML(typ="safe", pure=True)
    dump.default_flow_style = False
    parts = []
    for item in doc["items"]:
        out = io.StringIO()
        dump.dump(item, out)
        parts.append("---\n" + out.getvalue())
    # Nodes first, so that every prefix of whole documents is a valid cluster on its own.
    parts.sort(key=lambda p: "kind: Node" not in p)
    chunks = ["".join(parts[:5]), "".join(parts[5:12]), "".join(parts[12:])]
    first = load_cluster_text(chunks[0])  # alone, the first chunk reads: a cluster without Services
    assert first.nodes and not first.services
    path = tmp_path / "cluster.yaml"
    path.write_text(TEXT)

    async def go() -> None:
        rec = FollowedRecording(path, settle_s=0.5)
        original = rec.snapshot()
        rec.start()
        try:
            _write(path, chunks[0])
            for n, chunk in enumerate(chunks[1:], start=1):
                await rec.wait_looked(n)
                assert rec.loads == 0 and rec.snapshot() is original and rec.error is None
                _write(path, chunk, "a")
            await rec.wait_loaded(1)
            assert rec.loads == 1 and rec.error is None
            whole = load_cluster_file(path)
            assert rec.snapshot() == whole
            assert len(whole.services) == len(original.services)
            assert rec.snapshot().nodes["node-c"].internal_ip == "172.20.0.99"
        finally:
            rec.stop()

    _run(go())


def test_an_invalid_file_keeps_the_state_and_is_logged_once_per_distinct_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(TEXT)
    caplog.set_level(logging.INFO, logger="reconciler.cluster")

    def logged_errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]

    async def go() -> None:
        rec = FollowedRecording(path, settle_s=0.05)
        original = rec.snapshot()
        rec.start()
        try:
            _write(path, "")  # truncated by `>` and nothing written yet
            await rec.wait_settled(1)
            assert rec.error is not None and "the file is empty" in rec.error
            assert rec.snapshot() is original
            for n in (2, 3):  # more events, the same problem: not logged again
                st = os.stat(path)
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
                await rec.wait_settled(n)
            assert len(logged_errors()) == 1
            _write(path, "null\n")  # another problem: logged
            await rec.wait_settled(4)
            assert "only null" in (rec.error or "")
            assert len(logged_errors()) == 2
            # Services on nodes but no Node at all: not a whole cluster either.
            without_nodes = TEXT[: TEXT.index("\n- apiVersion: v1\n  kind: Node") + 1] + "kind: List\nmetadata:\n  resourceVersion: \"\"\n"
            _write(path, without_nodes)
            await rec.wait_settled(5)
            assert "no Node objects" in (rec.error or "") and rec.snapshot() is original
            assert rec.loads == 0
            _write(path, MOVED)
            await rec.wait_loaded(1)
            assert rec.error is None
        finally:
            rec.stop()

    _run(go())


def test_an_atomic_replace_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(TEXT)

    async def go() -> None:
        rec = FollowedRecording(path, settle_s=0.05)
        rec.start()
        try:
            tmp = tmp_path / ".cluster.yaml.tmp"
            tmp.write_text(MOVED)
            tmp.replace(path)
            await rec.wait_loaded(1)
            assert rec.snapshot().nodes["node-c"].internal_ip == "172.20.0.99"
        finally:
            rec.stop()

    _run(go())


@pytest.mark.parametrize("text", ["", "  \n", "# nothing yet\n", "null\n", TEXT[: _item_boundary(TEXT)]])
def test_a_recording_that_is_not_whole_at_start_is_an_input_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        FollowedRecording(path)
    assert all(d.file == str(path) for d in e.value.diagnostics)
    with pytest.raises(InputError, match="cannot read the file"):
        FollowedRecording(tmp_path / "missing.yaml")


def test_waiting_times_out_with_what_it_saw(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(TEXT)

    async def go() -> None:
        rec = FollowedRecording(path)
        with pytest.raises(TimeoutError, match="loads=0"):
            await rec.wait_loaded(1, timeout=0.01)

    _run(go())
