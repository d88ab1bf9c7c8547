"""P4Runtime transport security (H4): TLS is required unless --allow-insecure-switches, a TLS
config never falls back to plaintext, and with mutual TLS a client without a certificate signed
by the switch's client CA can neither become primary nor write. Everything through the real
entry points (`p4kube` main()), real gRPC on loopback and the project's software switch."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pki import Pki, make_pki

from reconciler import p4names as n
from reconciler.cli import build_parser, main
from reconciler.diff import Update
from reconciler.intent.loader import load_intent
from reconciler.p4info import pipeline_info
from reconciler.cli.run import build_runtime
from reconciler.sim import SoftwareSwitch, TlsConfig
from reconciler.snapshot import Entry
from reconciler.switch import NotPrimaryError, SwitchSession, SwitchTlsError
from reconciler.switch.tls import TlsSettings
from reconciler.switch.translate import updates_to_requests

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"
CLUSTER = str(MULTI / "cluster.yaml")
CONFIG = "p4kube-system/p4kube-config"
FLAG = "--allow-insecure-switches"
INFO = pipeline_info()
SERVER_NAME = "p4rt.switch.test"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def _pair(tls: TlsConfig | None) -> Iterator[list[SoftwareSwitch]]:
    pair = [SoftwareSwitch(tls=tls, max_workers=16) for _ in range(2)]
    for sw in pair:
        sw.start("127.0.0.1:0")
    try:
        yield pair
    finally:
        for sw in pair:
            sw.stop(0)


@pytest.fixture
def plain_pair() -> Iterator[list[SoftwareSwitch]]:
    yield from _pair(None)


@pytest.fixture
def mtls_pair(pki: Pki) -> Iterator[list[SoftwareSwitch]]:
    yield from _pair(TlsConfig(pki.server_cert, pki.server_key, client_ca=pki.ca))


def write_intent(dir: Path, ports: tuple[int, int], pki: Pki | None = None, ca: bytes | None = None) -> Path:
    """The multi-service intent pointed at (standby, primary) ports; with `pki`, a
    spec.switchConfig.tls block and its files beside the intent (the CA: `ca`, default pki.ca)."""
    dir.mkdir(parents=True, exist_ok=True)
    text = (MULTI / "lbconfig.yaml").read_text()
    text = text.replace("127.0.0.1:9559", f"127.0.0.1:{ports[1]}").replace("127.0.0.1:9560", f"127.0.0.1:{ports[0]}")
    if pki is not None:
        (dir / "tls").mkdir(exist_ok=True)
        (dir / "tls" / "ca.crt").write_bytes(ca or pki.ca)
        (dir / "tls" / "client.crt").write_bytes(pki.client_cert)
        (dir / "tls" / "client.key").write_bytes(pki.client_key)
        text = text.replace(
            "    routes:\n",
            "    tls:\n      caFile: tls/ca.crt\n      certFile: tls/client.crt\n      keyFile: tls/client.key\n"
            f"      serverName: {SERVER_NAME}\n    routes:\n",
        )
    (dir / "lbconfig.yaml").write_text(text)
    shutil.copy(MULTI / "sim-device-config.json", dir)
    return dir


def dirs(intent: Path) -> list[str]:
    """The operator's directories for the files the intent names (device config, TLS files)."""
    return ["--pipeline-dir", str(intent), "--tls-dir", str(intent)]


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    """Two bare TCP listeners standing in for switches: any connection attempt is visible."""
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        s.setblocking(False)
        socks.append(s)
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def _nobody_connected(socks: list[socket.socket]) -> bool:
    for s in socks:
        try:
            conn, _ = s.accept()
        except BlockingIOError:
            continue
        conn.close()
        return False
    return True


# --- refused without TLS, before any connection -----------------------------------------------


@pytest.mark.parametrize("command", ["reconcile", "apply", "rollback"])
def test_a_config_without_tls_is_refused_before_any_connection(tmp_path, listeners, capsys, command):
    ports = tuple(s.getsockname()[1] for s in listeners)
    intent = write_intent(tmp_path / "intent", ports)  # type: ignore[arg-type]
    audit = tmp_path / "audit.git"
    state = tmp_path / "state"
    if command == "reconcile":
        argv = ["reconcile", "--once", "--intent", str(intent), "--cluster", CLUSTER, "--audit-repo", str(audit)]
    elif command == "rollback":
        argv = ["rollback", "--to", "1", "--intent", str(intent), "--audit-repo", str(audit)]
    else:
        snap = tmp_path / "v1.json"
        assert main(["render", "--pipeline-dir", str(intent), "--intent", str(intent), "--cluster", CLUSTER, "--out", str(snap)]) == 0
        argv = ["apply", "--intent", str(intent), "--snapshot", str(snap), "--state", str(state)]
    argv += dirs(intent)
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"p4kube {command}: error: {intent / 'lbconfig.yaml'}:")
    assert CONFIG in err and "spec.switchConfig.tls is not set" in err and FLAG in err
    assert f"sim-primary (127.0.0.1:{ports[1]})" in err and f"sim-standby (127.0.0.1:{ports[0]})" in err
    assert _nobody_connected(listeners)
    assert not audit.exists() and not state.exists()  # nothing recorded, not even a repository made


def test_allow_insecure_switches_reaches_plaintext_switches(tmp_path, plain_pair, capsys):
    standby, primary = plain_pair
    intent = write_intent(tmp_path / "intent", (standby.port, primary.port))
    argv = ["reconcile", "--once", FLAG, "--intent", str(intent), "--cluster", CLUSTER, "--state", str(tmp_path / "state"),
            *dirs(intent)]
    assert main(argv) == 0, capsys.readouterr()
    assert len(primary.entries(1, n.BACKEND_TABLE)) == len(standby.entries(1, n.BACKEND_TABLE)) > 0


@pytest.mark.parametrize("command", ["reconcile", "apply", "rollback", "run"])
def test_the_flag_says_it_is_for_labs_and_tests(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{FLAG} for labs and tests only: allow plaintext P4Runtime" in text


def test_run_refuses_a_plaintext_config_and_warns_once_when_allowed(tmp_path, caplog):
    intent = write_intent(tmp_path / "intent", (1, 2))  # nothing listens: workers never connect here
    config = load_intent([intent]).config()

    async def workers(*extra: str) -> None:
        args = build_parser().parse_args(
            ["run", *extra, "--intent", str(intent), "--cluster", CLUSTER, "--state", str(tmp_path / "state")])
        args.pipeline_dir, args.tls_dir = str(intent), str(intent)  # where the intent's named files are
        rt = await build_runtime(args)
        try:
            for election_id in (1, 2):  # a new leadership term builds new workers
                for _ in range(2):
                    await rt.make_worker_for(election_id)(config).applier.close()
        finally:
            await rt.aclose()

    from reconciler.controller import WorkerRefused

    # Refused for this config only (the loop keeps the other configs' workers running).
    with pytest.raises(WorkerRefused, match=f"spec.switchConfig.tls is not set.*{FLAG}"):
        asyncio.run(asyncio.wait_for(workers(), 30))
    with caplog.at_level(logging.WARNING, logger="reconciler.run"):
        asyncio.run(asyncio.wait_for(workers(FLAG), 30))
    warnings = [r.getMessage() for r in caplog.records if "plaintext P4Runtime" in r.getMessage()]
    assert len(warnings) == 1 and CONFIG in warnings[0] and FLAG in warnings[0], warnings


# --- TLS never falls back to plaintext ----------------------------------------------------------


def test_a_tls_config_against_plaintext_switches_fails_and_writes_nothing(tmp_path, plain_pair, pki, capsys):
    standby, primary = plain_pair
    intent = write_intent(tmp_path / "intent", (standby.port, primary.port), pki)
    state = tmp_path / "state"
    argv = ["reconcile", "--once", "--intent", str(intent), "--cluster", CLUSTER, "--state", str(state), "--timeout", "5",
            *dirs(intent)]
    assert main(argv) == 1
    out = capsys.readouterr()
    assert "does not speak TLS on this port" in out.out + out.err, out
    for sw in plain_pair:
        assert sw.writes_processed == 0 and sw.stream_count() == 0
        assert sw.device(1).state is None  # not even a pipeline pushed
    assert not (state / "p4kube-system__p4kube-config.applied.json").exists()


def test_a_tls_switch_with_the_wrong_ca_fails_and_writes_nothing(tmp_path, mtls_pair, pki, capsys):
    standby, primary = mtls_pair
    intent = write_intent(tmp_path / "intent", (standby.port, primary.port), pki, ca=pki.other_ca)
    audit = tmp_path / "audit.git"
    argv = ["reconcile", "--once", "--intent", str(intent), "--cluster", CLUSTER, "--audit-repo", str(audit), "--timeout", "5",
            *dirs(intent)]
    assert main(argv) == 1
    out = capsys.readouterr()
    assert "not signed by the CA we trust" in out.err and "nothing was written or recorded" in out.err, out
    for sw in mtls_pair:
        assert sw.writes_processed == 0 and sw.stream_count() == 0
    from reconciler.audit.repo import AuditRepo

    assert AuditRepo.open_or_init(audit, read_only=True).history(config=CONFIG) == []


# --- election ids are fencing; mutual TLS is what keeps bystanders out -------------------------


def _backend(i: int) -> Entry:
    return Entry(n.BACKEND_TABLE, (1, i), n.DNAT, (f"10.0.0.{i + 1}", 30080, i))


def _insert(s: SwitchSession, entries: list[Entry]):  # type: ignore[no-untyped-def]
    (reqs,) = updates_to_requests(INFO, [[Update("INSERT", e) for e in entries]],
                                  device_id=s.device_id, election_id=s.election_id, batch_size=100)
    return reqs


def test_on_plaintext_any_bystander_takes_primacy_with_a_higher_election_id(plain_pair):
    """What --allow-insecure-switches exposes: election ids order honest controllers (fencing),
    they do not authenticate anyone. The legitimate controller notices (its writes are refused)."""
    switch = plain_pair[0]
    address = f"127.0.0.1:{switch.port}"

    async def go() -> None:
        async with SwitchSession(address, device_id=1, election_id=5, info=INFO, name="ours") as ours:
            from reconciler.p4info import load_p4info

            await ours.ensure_pipeline(load_p4info(), b"{}")
            async with SwitchSession(address, device_id=1, election_id=(1 << 128) - 1, info=INFO, name="bystander") as other:
                assert other.is_primary
                assert (await other.write(_insert(other, [_backend(0)]))).ok
                with pytest.raises(NotPrimaryError):
                    await ours.write(_insert(ours, [_backend(1)]))

    asyncio.run(asyncio.wait_for(go(), 30))
    assert [e.key for e in switch.entries(1, n.BACKEND_TABLE)] == [(1, 0)]  # the bystander's write


@pytest.mark.parametrize("client", ["no certificate", "another CA's certificate"])
def test_with_mutual_tls_a_client_without_our_ca_cannot_become_primary_nor_write(mtls_pair, pki, client):
    switch = mtls_pair[0]
    address = f"127.0.0.1:{switch.port}"
    ours_tls = TlsSettings(pki.ca, pki.client_cert, pki.client_key, server_name=SERVER_NAME)
    if client == "no certificate":
        theirs = TlsSettings(pki.ca, server_name=SERVER_NAME)
    else:
        theirs = TlsSettings(pki.ca, pki.other_client_cert, pki.other_client_key, server_name=SERVER_NAME)

    async def go() -> None:
        from reconciler.p4info import load_p4info

        async with SwitchSession(address, device_id=1, election_id=5, info=INFO, tls=ours_tls, name="ours") as ours:
            await ours.ensure_pipeline(load_p4info(), b"{}")
            writes_before = switch.writes_processed
            bystander = SwitchSession(address, device_id=1, election_id=(1 << 128) - 1, info=INFO, tls=theirs,
                                      name="bystander", connect_timeout=5)
            with pytest.raises(SwitchTlsError):
                await bystander.open()
            assert not bystander.is_primary and switch.writes_processed == writes_before
            assert switch.stream_count() == 1  # only ours
            assert ours.is_primary
            assert (await ours.write(_insert(ours, [_backend(1)]))).ok  # still primary: its writes land

    asyncio.run(asyncio.wait_for(go(), 30))
    assert [e.key for e in switch.entries(1, n.BACKEND_TABLE)] == [(1, 1)]
