"""Server lifecycle, TLS/mTLS, run_forever, and the faults the switch injects on request."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from finsy.proto import p4r
from helpers import require_tool
from sim_transcripts import (
    VIP,
    Client,
    Session,
    load_p4info,
    pipeline_request,
    vip,
    write_request,
)

from reconciler.sim import SoftwareSwitch, TlsConfig

REPO = Path(__file__).resolve().parents[1]


def capabilities(client: Client):
    return client.unary("Capabilities", p4r.CapabilitiesRequest(), timeout=5)


# -- lifecycle ---------------------------------------------------------------------------------


def test_start_binds_an_ephemeral_port_and_stop_closes_it() -> None:
    switch = SoftwareSwitch()
    port = switch.start()
    assert port > 0 and switch.serving
    with Client(f"127.0.0.1:{port}") as client:
        assert capabilities(client).ok
        switch.stop(0)
        assert not switch.serving
        assert capabilities(client).code == grpc.StatusCode.UNAVAILABLE


def test_start_twice_and_port_in_use() -> None:
    with SoftwareSwitch() as first:
        with pytest.raises(RuntimeError, match="already serving"):
            first.start()
        second = SoftwareSwitch()
        with pytest.raises(OSError, match=f"127.0.0.1:{first.port}"):
            second.start(f"127.0.0.1:{first.port}")


def test_invalid_device_ids() -> None:
    with pytest.raises(ValueError, match="positive"):
        SoftwareSwitch(device_ids=(0,))
    with pytest.raises(ValueError, match="at least one"):
        SoftwareSwitch(device_ids=())


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (EC P-256)."""
    require_tool("openssl", "install OpenSSL's command-line tool (apt-get install openssl)")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=test-ca", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)
    return d


def test_tls(pki: Path) -> None:
    tls = TlsConfig.from_files(pki / "server.crt", pki / "server.key")
    with SoftwareSwitch(tls=tls) as switch:
        creds = grpc.ssl_channel_credentials((pki / "ca.crt").read_bytes())
        with Client(f"127.0.0.1:{switch.port}", credentials=creds) as client:
            assert capabilities(client).ok
        with Client(f"127.0.0.1:{switch.port}") as plaintext:
            assert capabilities(plaintext).code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(pki: Path) -> None:
    tls = TlsConfig.from_files(pki / "server.crt", pki / "server.key", pki / "ca.crt")
    with SoftwareSwitch(tls=tls) as switch:
        address = f"127.0.0.1:{switch.port}"
        ca = (pki / "ca.crt").read_bytes()
        anonymous = grpc.ssl_channel_credentials(ca)
        with Client(address, credentials=anonymous) as client:
            assert capabilities(client).code == grpc.StatusCode.UNAVAILABLE
        mutual = grpc.ssl_channel_credentials(ca, (pki / "client.key").read_bytes(),
                                              (pki / "client.crt").read_bytes())
        with Client(address, credentials=mutual) as client:
            assert capabilities(client).ok


def test_run_forever_serves_until_sigterm(tmp_path: Path) -> None:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True)\n"
        "from reconciler.sim import run_forever\n"
        "sys.exit(run_forever('127.0.0.1:0', device_ids=(1, 2), bmv2=True))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline()  # blocks until the switch logs that it listens
        assert "listening" in line and "bmv2 mode" in line and "[1, 2]" in line, line
        port = int(line.split("(port ")[1].split(")")[0])
        with Client(f"127.0.0.1:{port}") as client:
            answer = capabilities(client).responses[0]
        assert answer.p4runtime_api_version == "1.3.0"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "SIGTERM" in rest and "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- faults ------------------------------------------------------------------------------------


@pytest.fixture
def session():
    s = Session(bmv2=False)
    yield s
    s.close()


def test_refuse_writes(session) -> None:
    session.switch.refuse_writes(2, grpc.StatusCode.UNAVAILABLE, "try later")
    for _ in range(2):
        outcome = session.write(vip())
        assert (outcome.code, outcome.details) == (grpc.StatusCode.UNAVAILABLE, "try later")
    assert session.switch.entries(1, VIP) == []  # nothing was applied
    assert session.write(vip()).ok


def test_delay_applies_to_writes_and_reads(session) -> None:
    session.switch.set_delay(0.1)
    start = time.monotonic()
    assert session.write(vip()).ok
    assert session.client.read(p4r.ReadRequest(device_id=1)).ok
    assert time.monotonic() - start >= 0.2
    session.switch.set_delay(0)


@pytest.mark.parametrize("bmv2", [False, True])
def test_a_delayed_write_is_authorized_after_its_delay_and_logged(bmv2: bool) -> None:
    """delay_writes holds the Write *before* authorization, like a request queued in a real
    target: a client that timed out and re-arbitrated higher meanwhile has fenced it."""
    s = Session(bmv2=bmv2)
    try:
        done = s.switch.writes_processed
        s.switch.delay_writes(1.0)
        late = s.client.unary("Write", write_request([vip()], election_id=10), timeout=0.2)
        assert late.code == grpc.StatusCode.DEADLINE_EXCEEDED  # the client gave up
        s.stream.cancel()
        s.stream.wait_end()
        _, answer = s.client.arbitrate(11)  # the fence: a higher id, before the switch gets to it
        assert answer.arbitration.status.code == 0
        assert s.switch.wait_for_writes(done + 1, timeout=10)
        record = s.switch.write_log()[-1]
        assert (record.code, record.message) == (grpc.StatusCode.PERMISSION_DENIED, "Not primary")
        assert (record.election_id, record.updates, record.delayed) == (10, 1, 1.0)
        assert s.switch.entries(1, VIP) == []
        assert s.write(vip(), election_id=11).ok  # only the next Write was delayed
        assert s.switch.write_log()[-1].code == grpc.StatusCode.OK
    finally:
        s.close()


def test_drop_streams(session) -> None:
    backup, _ = session.client.arbitrate(5)
    assert session.switch.drop_streams() == 2
    for stream in (session.stream, backup):
        end = stream.wait_end()
        assert end.code == grpc.StatusCode.UNAVAILABLE
    assert session.switch.wait_for_streams(0)
    outcome = session.write(vip())  # the primary is gone: writes are refused (spec mode)
    assert outcome.code == grpc.StatusCode.PERMISSION_DENIED
    stream, answer = session.client.arbitrate(10)  # reconnecting restores it
    assert answer.arbitration.status.code == 0
    assert session.write(vip()).ok


def test_crash_mid_batch_and_restart(session) -> None:
    switch = session.switch
    port = switch.port
    switch.crash_after(3)
    outcome = session.write(*[vip(ip=i) for i in range(10)])
    assert outcome.code == grpc.StatusCode.UNAVAILABLE
    assert switch.died.wait(5)
    assert not switch.serving
    assert [e.key[0] for e in switch.entries(1, VIP)] == [0, 1, 2]  # exactly 3 applied
    with Client(f"127.0.0.1:{port}") as fresh:
        assert capabilities(fresh).code == grpc.StatusCode.UNAVAILABLE
    # a real switch process comes back empty: reset, then serve on the same port again
    switch.reset()
    assert switch.start(f"127.0.0.1:{port}") == port
    with Client(f"127.0.0.1:{port}") as client:
        client.arbitrate(10)
        after = client.unary("Write", write_request([vip()]))
        assert after.code == grpc.StatusCode.FAILED_PRECONDITION
        assert client.unary("SetForwardingPipelineConfig",
                            pipeline_request(load_p4info())).ok
        assert client.unary("Write", write_request([vip()])).ok


def test_streams_beyond_the_worker_budget_are_refused() -> None:
    with SoftwareSwitch(max_workers=10) as switch, Client(f"127.0.0.1:{switch.port}") as c:
        c.arbitrate(1)
        c.arbitrate(2)  # the budget is max_workers - 8 = 2 streams
        extra = c.stream()
        end = extra.wait_end()
        assert (end.code, end.details) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                           "Too many connections")
        assert capabilities(c).ok  # unary RPCs still have workers


def test_fault_arguments_are_checked(session) -> None:
    with pytest.raises(ValueError):
        session.switch.refuse_writes(1, grpc.StatusCode.OK)
    with pytest.raises(ValueError):
        session.switch.set_delay(-1)
    with pytest.raises(ValueError):
        session.switch.crash_after(-1)
    with pytest.raises(ValueError):
        session.switch.shrink_table(1, VIP, -1)
    with pytest.raises(KeyError, match="no table named 'nope'"):
        session.switch.shrink_table(1, "nope", 1)
