"""`p4kube run` start-up order (issue 13): the workers read the last applied snapshot and both
switches back while the cluster recording is still being read; nothing is rendered or written
from the cluster, and the process is not "started" (/readyz), until the recording is whole.
Real software switches over gRPC on 127.0.0.1, a real Git intent and audit repository; the
recording's first read is held on a threading.Event (it runs in a worker thread)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from test_reconcile_audit import CONFIG, MULTI, intent_repo

from reconciler.app import runtime
from reconciler.cli import build_parser, main
from reconciler.cli.options import settings_from_args
from reconciler.cluster import followed as followed_mod
from reconciler.cluster.recorded import load_cluster_file
from reconciler.cluster.synthetic import cluster_to_list_yaml, with_scaled_service
from reconciler.controller import Outcome, TransactionRecord
from reconciler.diagnostics import InputError
from reconciler.httpserver import decide_ready


@pytest.fixture
def restarted(tmp_path, switch_pair, monkeypatch):
    """v1 applied by `reconcile --once`; `run` settings over a recording with web/frontend scaled
    (v2 once read); the recording's first read held until `gate` is set."""
    standby, primary = switch_pair
    intent = intent_repo(tmp_path / "intent", (standby.port, primary.port))
    audit = tmp_path / "audit.git"
    base = ["--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--audit-repo", str(audit)]
    assert main(["reconcile", "--once", *base, "--cluster", str(MULTI / "cluster.yaml")]) == 0
    scaled = tmp_path / "cluster.yaml"
    scaled.write_text(cluster_to_list_yaml(with_scaled_service(load_cluster_file(MULTI / "cluster.yaml"), "web/frontend", "node-c", +2)))

    gate, entered = threading.Event(), threading.Event()

    class HeldRecording(followed_mod.FollowedRecording):
        def __init__(self, *a, **kw):
            entered.set()
            if not gate.wait(20):  # a load in the loop's thread would block it here
                raise RuntimeError("the recording's read was never released")
            super().__init__(*a, **kw)

    monkeypatch.setattr(followed_mod, "FollowedRecording", HeldRecording)
    settings = settings_from_args(build_parser().parse_args(["run", *base, "--cluster", str(scaled), "--election-id", "3"]))
    try:
        yield settings, scaled, gate, entered, (standby, primary)
    finally:
        gate.set()


def _watch(monkeypatch) -> tuple[dict, asyncio.Queue[TransactionRecord]]:
    """The runtime run() builds, and every record its workers report (through on_result)."""
    seen: dict = {}
    records: asyncio.Queue[TransactionRecord] = asyncio.Queue()
    build = runtime.build_runtime

    async def capture(settings, api=None):
        rt = await build(settings, api)
        seen["rt"] = rt
        make_for = rt.make_worker_for

        def make_worker_for(election_id):
            make = make_for(election_id)

            def worker(config):
                w = make(config)
                report = w.on_result

                async def on_result(record, result, snap):
                    if report is not None:
                        await report(record, result, snap)
                    records.put_nowait(record)

                w.on_result = on_result
                return w
            return worker
        rt.make_worker_for = make_worker_for
        return rt

    monkeypatch.setattr(runtime, "build_runtime", capture)
    return seen, records


def test_switches_are_read_back_while_the_recording_loads_and_nothing_is_written(restarted, monkeypatch):
    settings, _, gate, entered, switches = restarted
    seen, records = _watch(monkeypatch)
    writes_before = [sw.writes_processed for sw in switches]

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(runtime.run(settings, stop))
        try:
            first = await asyncio.wait_for(records.get(), 30)
            rt = seen["rt"]
            # The start-up read-back is done, the recording not yet read: it found both switches
            # holding v1 (no write), and nothing was rendered from a cluster that is not there.
            assert entered.is_set() and not gate.is_set()
            assert (first.outcome, first.version, first.writes) == (Outcome.RESYNCED, 1, 0)
            assert rt.cluster.loaded is None
            assert [sw.writes_processed for sw in switches] == writes_before
            ctl = rt.current["controller"]
            assert ctl.passes == 0
            # Not ready: "started" waits for the cluster, as when it was read before the loop.
            assert rt.status["connected"] and not rt.status["started"]
            assert decide_ready(started=rt.status["started"], leader=rt.status["leader"],
                                switches_connected=rt.status["connected"])[0] is False
            gate.set()
            applied = await asyncio.wait_for(records.get(), 30)
            assert (applied.config, applied.outcome, applied.version) == (CONFIG, Outcome.APPLIED, 2)
            assert rt.status["started"] and rt.cluster.loaded is not None
            assert [sw.writes_processed for sw in switches] > writes_before
        finally:
            gate.set()
            stop.set()
            assert await asyncio.wait_for(task, 30) == 0

    asyncio.run(scenario())


def test_a_recording_that_is_not_whole_at_launch_still_ends_run_with_its_error(restarted, monkeypatch):
    settings, scaled, gate, entered, switches = restarted
    seen, records = _watch(monkeypatch)
    scaled.write_text("apiVersion: v1\nkind: List\nitems:\n- kind: Service\n  metadata: {name: [\n")
    writes_before = [sw.writes_processed for sw in switches]

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(runtime.run(settings, stop))
        first = await asyncio.wait_for(records.get(), 30)
        assert (first.outcome, first.writes) == (Outcome.RESYNCED, 0)
        gate.set()
        with pytest.raises(InputError, match="cluster.yaml"):
            await asyncio.wait_for(task, 30)
        assert not seen["rt"].status["started"] and seen["rt"].current["controller"].passes == 0

    asyncio.run(scenario())
    assert [sw.writes_processed for sw in switches] == writes_before
