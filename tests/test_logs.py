"""Logs that tell (issue 12, item 3): `p4kube run` speaks at info by default, one line per
transaction and per state change, nothing per quiet health round; with `--log-format json`
every line is one JSON object whose context (config, version, switch, Service) are fields."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import signal
from pathlib import Path

import pytest
from helpers import MULTI, commit_all, multi_lbconfig, p4kube_process, run_cli

from reconciler.cluster.scripted import ScriptedCluster
from reconciler.logsetup import DETAIL_LOGGERS, setup_logging

CONFIG = "p4kube-system/p4kube-config"


def _run_args(tmp_path: Path, standby_port: int, primary_port: int) -> list[str]:
    """`run` over the multi-service example (Git intent, a recording, an audit repository), with
    health rounds every 200 ms so that a switch outage is seen at once."""
    intent = tmp_path / "intent"
    intent.mkdir()
    text = multi_lbconfig(standby_port, primary_port, loop=True)
    (intent / "lbconfig.yaml").write_text(text.replace("interval: 5s", "interval: 200ms").replace("timeout: 2s", "timeout: 100ms"))
    shutil.copy(MULTI / "sim-device-config.json", intent)
    commit_all(intent)
    cluster = tmp_path / "cluster.yaml"
    shutil.copy(MULTI / "cluster.yaml", cluster)
    return ["run", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent),
            "--cluster", str(cluster), "--audit-repo", str(tmp_path / "audit.git"), "--election-id", "3"]


def test_run_json_at_the_default_level_one_line_per_transaction_and_state_change(tmp_path, switch_pair, monkeypatch):
    # gRPC's C core writes its own lines to stderr, bypassing Python's logging (GRPC_VERBOSITY).
    monkeypatch.setenv("GRPC_VERBOSITY", "ERROR")
    standby, primary = switch_pair
    with p4kube_process(["--log-format", "json", *_run_args(tmp_path, standby.port, primary.port)]) as (proc, lines):
        lines.wait(r'"message": "p4kube-system/p4kube-config v1 applied \(552 writes')
        standby.stop(0)  # a state change: the health round sees the standby go
        lines.wait(r'"outcome": "degraded"', timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        lines.wait(r'"message": "stopped"')
    records = [json.loads(line) for line in lines.seen if line.strip()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert {r["level"] for r in records} <= {"info", "warning"}  # info by default for `run`
    # The steps inside a transaction (audit commits, arbitration, pipeline checks) are not said.
    assert not [r for r in records if r["logger"].startswith(DETAIL_LOGGERS) and r["level"] == "info"]
    transactions = [r for r in records if r.get("outcome") == "applied"]
    assert len(transactions) == 1  # one line for v1, not one per switch or per step
    tx = transactions[0]
    assert (tx["config"], tx["version"], tx["writes"]) == (CONFIG, 1, 552)
    assert tx["switches"] == ["sim-standby", "sim-primary"] and isinstance(tx["seconds"], float)
    connected = [r for r in records if "connected" in r["message"]]
    assert sorted(r["switch"] for r in connected) == ["sim-primary", "sim-standby"]
    assert all(r["config"] == CONFIG for r in connected)
    degraded = [r for r in records if r.get("outcome") == "degraded"]
    assert len(degraded) == 1 and degraded[0]["switch"] == "sim-standby" and degraded[0]["version"] == 1
    assert degraded[0]["level"] == "warning" and "unreachable" in degraded[0]["message"]


def test_run_text_at_the_default_level_shows_the_transaction_line_with_its_fields(tmp_path, switch_pair):
    standby, primary = switch_pair
    with p4kube_process(_run_args(tmp_path, standby.port, primary.port)) as (proc, lines):
        m = lines.wait(r" INFO reconciler\.controller: p4kube-system/p4kube-config v1 applied \(552 writes, \d+ ms\) (.*)$")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    fields = dict(kv.split("=", 1) for kv in m.group(1).split())
    assert fields["config"] == CONFIG and fields["version"] == "1" and fields["outcome"] == "applied"
    assert fields["switches"] == "sim-standby,sim-primary"
    assert not [line for line in lines.seen if " INFO p4kube.audit" in line or " INFO reconciler.switch" in line]


def test_one_shot_commands_keep_warning_by_default(capsys):
    code, out, err = run_cli(capsys, "--log-format", "json", "plan", "--intent", str(MULTI), "--cluster", str(MULTI / "cluster.yaml"))
    assert code == 2 and out  # the plan on stdout
    assert err == ""  # nothing at info from a one-shot command unless asked
    assert logging.getLogger().level == logging.WARNING
    assert all(logging.getLogger(name).level == logging.NOTSET for name in DETAIL_LOGGERS)  # no global state


@pytest.fixture
def json_log():
    """The product's JSON logging into a buffer at info, with `run`'s defaults; undone afterwards."""
    buf = io.StringIO()
    handler = setup_logging("info", "json", buf, quiet=DETAIL_LOGGERS)
    try:
        yield buf
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)


def test_a_quiet_health_round_logs_nothing_at_info(loop_world, json_log):
    from test_controller import make_controller, running

    _sws, _backends, _ports, config, state, tmp = loop_world  # backends up: every probe passes

    async def scenario() -> int:
        ctl, _ = make_controller(config, ScriptedCluster(state), tmp / "audit.git")
        async with running(ctl):
            await ctl.wait_until(lambda: any(r.outcome == "applied" for r in ctl.history))
            rounds = ctl.health_rounds
            said = json_log.tell()
            await ctl.wait_until(lambda: ctl.health_rounds >= rounds + 5, timeout=15)
            quiet = json_log.getvalue()[said:]
        assert quiet == "", quiet
        return rounds

    asyncio.run(scenario())
    records = [json.loads(line) for line in json_log.getvalue().splitlines()]
    applied = [r for r in records if r.get("outcome") == "applied"]
    assert [(r["config"], r["version"]) for r in applied] == [("p4kube-system/loop", 1)]


def test_leadership_gained_and_lost_are_one_line_each_with_their_fields(json_log):
    from kubeapi.server import KubeApiServer
    from test_kube_leader import NS, FakeClock, elector

    from reconciler.kube.client import build_api_client

    clock = FakeClock()
    with KubeApiServer() as srv:
        srv.load([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        apis = [build_api_client(configuration=srv.client_configuration()) for _ in range(2)]
        try:
            async def handover() -> None:
                a, b = elector(apis[0], "a", clock), elector(apis[1], "b", clock)
                assert await a.try_acquire_or_renew()
                assert not await b.try_acquire_or_renew()  # held: b starts waiting
                clock.advance(20)  # a stops renewing: b takes the Lease over, a learns it lost
                assert await b.try_acquire_or_renew()
                assert not await a.try_acquire_or_renew()

            asyncio.run(handover())
        finally:
            for api in apis:
                api.close()
    records = [json.loads(line) for line in json_log.getvalue().splitlines()]
    said = [(r["level"], r["identity"], r["election_id"], "leads" in r["message"]) for r in records if "identity" in r]
    assert said == [("info", "a", 1, True), ("info", "b", 2, True), ("warning", "a", 1, False)]
    assert {r["lease"] for r in records if "identity" in r} == {f"{NS}/p4kube-reconciler"}


@pytest.fixture
def server():
    from kubeapi.server import KubeApiServer
    from ruamel.yaml import YAML

    with KubeApiServer() as srv:
        srv.load(YAML(typ="safe").load((MULTI / "cluster.yaml").read_text())["items"])
        yield srv


def test_a_fallback_and_its_recovery_name_the_service_as_a_field(api, json_log):
    from reconciler.kube.events import EventRecorder
    from reconciler.kube.fallback import Fallback

    fallback = Fallback(api, EventRecorder(api, instance="test"))

    async def both() -> None:
        assert (await fallback.fall_back("web/frontend", "every backend failed its TCP probe")).action == "fell-back"
        assert (await fallback.recover("web/frontend")).changed

    asyncio.run(both())
    records = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert [(r["service"], r["message"].split(" (")[0]) for r in records] == [
        ("web/frontend", "Service web/frontend: fell-back"), ("web/frontend", "Service web/frontend: recovered")]
