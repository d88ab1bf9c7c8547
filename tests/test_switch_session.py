"""SwitchSession against the real software switch (reconciler/sim) over 127.0.0.1 gRPC, in the
specification's mode and in BMv2 mode: arbitration, pipeline, writes, per-update errors, reads,
fencing, TLS."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers import run
from pki import Pki, make_pki
from finsy.proto import U128, p4r, p4r_grpc

from reconciler import p4names as n
from reconciler.cluster.recorded import load_cluster_file
from reconciler.diff import Update, diff_snapshots
from reconciler.intent.loader import load_intent
from reconciler.p4info import load_p4info, pipeline_info
from reconciler.paths import REPO_ROOT
from reconciler.pipeline_io import config_p4info_digest
from reconciler.render import render
from reconciler.sim import SoftwareSwitch, TlsConfig
from reconciler.snapshot import Entry
from reconciler.switch import (
    ArbitrationError,
    CounterCell,
    NotPrimaryError,
    ReadError,
    SwitchError,
    SwitchSession,
    SwitchTlsError,
    SwitchUnreachable,
    WriteError,
    pipeline_cookie,
)
from reconciler.switch.tls import TlsError, TlsSettings
from reconciler.switch.translate import updates_to_requests

INFO = pipeline_info()
P4INFO = load_p4info()
DEVICE_CONFIG = b'{"program": "load_balancer.p4 (opaque to the software switch)"}'


@pytest.fixture(params=["spec", "bmv2"])
def switch(request: pytest.FixtureRequest) -> Iterator[SoftwareSwitch]:
    sw = SoftwareSwitch(bmv2=request.param == "bmv2", max_workers=32)
    sw.start("127.0.0.1:0")
    try:
        yield sw
    finally:
        sw.stop(0)


@pytest.fixture
def bmv2_switch() -> Iterator[SoftwareSwitch]:
    sw = SoftwareSwitch(bmv2=True, max_workers=32)
    sw.start("127.0.0.1:0")
    try:
        yield sw
    finally:
        sw.stop(0)


def session(sw: SoftwareSwitch, election_id: int, **kw: Any) -> SwitchSession:
    return SwitchSession(f"127.0.0.1:{sw.port}", device_id=1, election_id=election_id, info=INFO, **kw)


def backends(count: int, start: int = 0, service: int = 1) -> list[Entry]:
    return [
        Entry(n.BACKEND_TABLE, (service, b), n.DNAT, (f"10.0.{b >> 8 & 255}.{b & 255}", 30000 + b % 2000, b % 100))
        for b in range(start, start + count)
    ]


def ordered(entries: Iterator[Entry] | list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (e.table, e.sort_key()))


def requests(s: SwitchSession, entries: list[Entry], kind: str = "INSERT", batch: int = 500) -> list[p4r.WriteRequest]:
    (reqs,) = updates_to_requests(
        INFO, [[Update(kind, e) for e in entries]],  # type: ignore[arg-type]
        device_id=s.device_id, election_id=s.election_id, batch_size=batch,
    )
    return reqs


class RawStream:
    """Another controller's StreamChannel, driven by hand, to watch what the switch tells it."""

    def __init__(self, sw: SoftwareSwitch) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{sw.port}")
        self.call = p4r_grpc.P4RuntimeStub(self.channel).StreamChannel()

    async def arbitrate(self, election_id: int) -> p4r.MasterArbitrationUpdate:
        req = p4r.StreamMessageRequest()
        req.arbitration.device_id = 1
        req.arbitration.election_id.CopyFrom(U128.encode(election_id))
        await self.call.write(req)
        return await self.next()

    async def next(self) -> p4r.MasterArbitrationUpdate:
        msg = await asyncio.wait_for(self.call.read(), 5)
        assert msg is not grpc.aio.EOF
        return msg.arbitration

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


# --- connect and arbitration ------------------------------------------------------------------


def test_becomes_primary(switch: SoftwareSwitch) -> None:
    async def go() -> None:
        async with session(switch, 10) as s:
            assert s.is_primary and s.lost_reason is None
            assert s.primary_election_id == 10
            assert s.api_version == ("1.3.0" if switch.behavior.bmv2 else "1.4.0")
            assert switch.arbitrator.primary_election_id(1) == 10
        assert not s.is_primary and not s.is_open

    run(go())


def test_lower_election_id_is_not_primary_and_leaves_no_stream(switch: SoftwareSwitch) -> None:
    async def go() -> None:
        async with session(switch, 1 << 100) as holder:
            with pytest.raises(NotPrimaryError) as info:
                await session(switch, 5).open()
            assert info.value.primary_election_id == 1 << 100
            assert "another controller holds a higher election id" in str(info.value)
            assert str(1 << 100) in str(info.value)
            assert holder.is_primary

    run(go())


def test_duplicate_election_id_is_an_arbitration_error(switch: SoftwareSwitch) -> None:
    async def go() -> None:
        async with session(switch, 10):
            with pytest.raises(ArbitrationError, match="already used by another controller"):
                await session(switch, 10).open()

    run(go())


def test_unreachable_switch() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = SwitchSession(f"127.0.0.1:{port}", device_id=1, election_id=1, info=INFO, connect_timeout=3)
    with pytest.raises(SwitchUnreachable, match="is unreachable") as info:
        run(s.open())
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert not s.is_open


class _SilentSwitch(p4r_grpc.P4RuntimeServicer):
    """Answers Capabilities, never answers arbitration."""

    def Capabilities(self, request: Any, context: Any) -> p4r.CapabilitiesResponse:
        return p4r.CapabilitiesResponse(p4runtime_api_version="1.3.0")

    def StreamChannel(self, request_iterator: Any, context: Any) -> Iterator[p4r.StreamMessageResponse]:
        for _ in request_iterator:  # read until the client goes away
            pass
        return
        yield  # a generator that yields nothing


def test_arbitration_timeout() -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    p4r_grpc.add_P4RuntimeServicer_to_server(_SilentSwitch(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        s = SwitchSession(f"127.0.0.1:{port}", device_id=1, election_id=1, info=INFO, arbitration_timeout=0.3)
        with pytest.raises(ArbitrationError, match="no arbitration response within 0.3s"):
            run(s.open())
        assert not s.is_open
    finally:
        server.stop(0).wait()


# --- fencing ----------------------------------------------------------------------------------


def test_deposed_session_stops_writing_and_the_switch_refuses_it(switch: SoftwareSwitch) -> None:
    async def go() -> None:
        async with session(switch, 10) as old:
            await old.ensure_pipeline(P4INFO, DEVICE_CONFIG)
            async with session(switch, 20) as new:
                reason = await asyncio.wait_for(old.wait_lost(), 5)
                assert "deposed" in reason and "20" in reason
                assert not old.is_primary and new.is_primary
                assert old.primary_election_id == 20
                # refused before anything is sent
                with pytest.raises(NotPrimaryError) as info:
                    await old.write(requests(old, backends(2)))
                assert isinstance(info.value, WriteError)
                assert info.value.outcome is not None and info.value.outcome.requests_sent == 0
                # and, had the stream's news not arrived yet, the switch's own refusal
                old._require_primary = lambda what: None  # type: ignore[method-assign]
                with pytest.raises(NotPrimaryError) as info:
                    await old.write(requests(old, backends(2)))
                assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
                assert "not primary" in str(info.value)
                assert await new.read_entries() == []

    run(go())


def test_close_releases_primacy_at_once(switch: SoftwareSwitch) -> None:
    """A deposed leader closes its streams (DESIGN.md 8): the switch sees the primary leave
    immediately. BMv2 promotes the next stream; the specification leaves no primary."""

    async def go() -> None:
        other = RawStream(switch)
        try:
            s = session(switch, 10)
            await s.open()
            answer = await other.arbitrate(5)
            assert answer.status.code == grpc.StatusCode.ALREADY_EXISTS.value[0]  # backup
            await s.close()
            update = await other.next()
            if switch.behavior.bmv2:
                assert update.status.code == 0 and update.status.message == "Is primary"
            else:
                assert update.status.code == grpc.StatusCode.NOT_FOUND.value[0]
            with pytest.raises(SwitchError, match="not open"):
                await s.write([])
        finally:
            await other.close()

    run(go())


# --- pipeline ---------------------------------------------------------------------------------


def test_pipeline_is_pushed_once_and_entries_survive(switch: SoftwareSwitch) -> None:
    cookie = pipeline_cookie(P4INFO, DEVICE_CONFIG)
    entries = backends(10)

    async def go() -> None:
        async with session(switch, 10) as s:
            assert await s.get_pipeline() is None
            assert await s.ensure_pipeline(P4INFO, DEVICE_CONFIG) is True
            status = await s.get_pipeline()
            assert status is not None and status.cookie == cookie
            assert (await s.write(requests(s, entries))).ok
        async with session(switch, 11) as s:  # a new leader, or the next reconcile
            assert await s.ensure_pipeline(P4INFO, DEVICE_CONFIG) is False
            assert ordered(await s.read_entries()) == ordered(entries)  # not cleared
            full = await s.get_pipeline(full=True)
            assert full is not None and full.cookie == cookie
            assert full.p4info == P4INFO and full.device_config == DEVICE_CONFIG
            # a different device config is a different pipeline: pushed, and that clears the
            # tables, which is why a matching pipeline is never pushed again
            assert await s.ensure_pipeline(P4INFO, DEVICE_CONFIG + b" ") is True
            assert await s.read_entries() == []
            assert (await s.get_pipeline()).cookie == pipeline_cookie(P4INFO, DEVICE_CONFIG + b" ")  # type: ignore[union-attr]

    run(go())


def test_pipeline_cookie_depends_on_both_parts() -> None:
    other = load_p4info()
    other.tables[0].size += 1
    cookies = {pipeline_cookie(P4INFO, b"a"), pipeline_cookie(P4INFO, b"b"), pipeline_cookie(other, b"a")}
    assert len(cookies) == 3
    assert pipeline_cookie(load_p4info(), b"a") == pipeline_cookie(P4INFO, b"a")
    assert all(0 <= c < 1 << 64 for c in cookies)


def test_pipeline_mismatching_the_session_info_is_refused(switch: SoftwareSwitch) -> None:
    other = load_p4info()
    other.tables[0].preamble.id += 1

    async def go() -> None:
        async with session(switch, 10) as s:
            with pytest.raises(ValueError, match="differs from the session's"):
                await s.ensure_pipeline(other, DEVICE_CONFIG)
            assert await s.get_pipeline() is None

    run(go())


# --- write and read ---------------------------------------------------------------------------


def _rendered_snapshot():
    example = REPO_ROOT / "intent-examples" / "multi-service"
    config = load_intent([example]).config()
    cluster = load_cluster_file(example / "cluster.yaml")
    return render(config, cluster, None, p4info_digest=config_p4info_digest(config)).snapshot


def test_write_phases_then_read_back_equal(switch: SoftwareSwitch) -> None:
    snap = _rendered_snapshot()
    expected = ordered(Entry(e.table, e.key, e.action, e.args) for es in snap.tables().values() for e in es)
    assert {e.table for e in expected} >= {n.VIP_TABLE, n.BACKEND_TABLE, n.REVERSE_NAT}

    async def go() -> None:
        async with session(switch, 10) as s:
            await s.ensure_pipeline(P4INFO, DEVICE_CONFIG)
            phases = updates_to_requests(
                INFO, diff_snapshots(None, snap).phases, device_id=1, election_id=10, batch_size=5
            )
            for reqs in phases:
                outcome = await s.write(reqs)
                assert outcome.ok and outcome.applied == sum(len(r.updates) for r in reqs)
            assert ordered(await s.read_entries()) == expected
            vip = await s.read_entries([n.VIP_TABLE])
            assert ordered(vip) == [e for e in expected if e.table == n.VIP_TABLE]
            # and away again
            assert (await s.write(requests(s, expected, "DELETE"))).ok
            assert await s.read_entries() == []

    run(go())


def test_default_route_and_macs_read_back(switch: SoftwareSwitch) -> None:
    routes = [
        Entry(n.IPV4_LPM, ("0.0.0.0/0",), n.FWD, (0, "02:00:c0:00:02:01")),
        Entry(n.IPV4_LPM, ("10.20.0.0/16",), n.FWD, (511, "ff:ff:ff:ff:ff:ff")),
        Entry(n.IPV4_LPM, ("10.20.30.40/32",), n.FWD, (1, "00:00:00:00:00:00")),
    ]

    async def go() -> None:
        async with session(switch, 10) as s:
            await s.ensure_pipeline(P4INFO, DEVICE_CONFIG)
            assert (await s.write(requests(s, routes))).ok
            assert ordered(await s.read_entries([n.IPV4_LPM])) == ordered(routes)

    run(go())


def test_read_keys(switch: SoftwareSwitch) -> None:
    default_route = Entry(n.IPV4_LPM, ("0.0.0.0/0",), n.FWD, (0, "02:00:c0:00:02:01"))
    route = Entry(n.IPV4_LPM, ("10.20.0.0/16",), n.FWD, (1, "02:00:0a:14:00:01"))
    held = backends(5) + [route, default_route]

    async def go() -> None:
        async with session(switch, 10) as s:
            await s.ensure_pipeline(P4INFO, DEVICE_CONFIG)
            assert (await s.write(requests(s, held))).ok
            absent = backends(2, start=100) + [Entry(n.IPV4_LPM, ("10.30.0.0/16",), n.FWD, (1, "02:00:0a:14:00:01"))]
            # the actions asked with are not what is compared: the switch's are returned
            changed = Entry(n.BACKEND_TABLE, (1, 3), n.DNAT, ("192.0.2.1", 1, 1))
            got = await s.read_keys(backends(2, start=1) + [changed, default_route] + absent)
            assert ordered(got) == ordered(backends(3, start=1) + [default_route])
            assert await s.read_keys([]) == []
            assert ordered(await s.read_keys([route])) == [route]

    run(go())


def test_failing_batch_of_500_in_bmv2_mode(bmv2_switch: SoftwareSwitch) -> None:
    """BMv2: UNKNOWN with an empty message and one p4.v1.Error per update in the trailer,
    which for 500 failed updates is far beyond gRPC's default 16 KiB metadata limit."""
    first = backends(500)

    async def go() -> None:
        async with session(bmv2_switch, 10) as s:
            await s.ensure_pipeline(P4INFO, DEVICE_CONFIG)
            assert (await s.write(requests(s, first))).ok
            outcome = await s.write(requests(s, first))
            assert not outcome.ok and outcome.applied == 0
            assert len(outcome.errors) == 500
            assert [e.index for e in outcome.errors] == list(range(500))
            assert {e.code for e in outcome.errors} == {"ALREADY_EXISTS"}
            assert all("Match entry exists" in e.message for e in outcome.errors)
            assert outcome.errors[7].update == "INSERT MyIngress.backend_table (1, 7)"
            assert "500 of 500 update(s) refused" in outcome.summary()

            # half old, half new, interleaved: exactly the old ones fail, the new ones land
            mixed = [e for pair in zip(first[:250], backends(250, start=1000)) for e in pair]
            outcome = await s.write(requests(s, mixed))
            assert [e.index for e in outcome.errors] == list(range(0, 500, 2))
            assert outcome.applied == 250
            assert len(await s.read_entries()) == 750

    run(go())


def test_stock_metadata_limit_cannot_read_the_errors(bmv2_switch: SoftwareSwitch) -> None:
    """Why the session raises grpc.max_metadata_size: with gRPC's default the same batch fails
    client-side, and the error says what to do."""
    entries = backends(500)

    async def go() -> None:
        async with session(bmv2_switch, 10) as s:
            await s.ensure_pipeline(P4INFO, DEVICE_CONFIG)
            await s.write(requests(s, entries))
        async with session(bmv2_switch, 11, max_metadata_size=16 * 1024) as s:
            with pytest.raises(WriteError, match="metadata limit") as info:
                await s.write(requests(s, entries))
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    run(go())


def test_stop_on_error(switch: SoftwareSwitch) -> None:
    async def go() -> None:
        async with session(switch, 10) as s:
            await s.ensure_pipeline(P4INFO, DEVICE_CONFIG)
            await s.write(requests(s, backends(1)))
            reqs = requests(s, backends(1) + backends(3, start=1), batch=2)  # [dup, new], [new, new]
            outcome = await s.write(reqs)
            assert (outcome.requests_sent, outcome.requests_total, outcome.updates_sent) == (1, 2, 2)
            assert not outcome.ok and [(e.request, e.index) for e in outcome.errors] == [(0, 0)]
            assert len(await s.read_entries()) == 2  # the second request was not sent
            outcome = await s.write(reqs, stop_on_error=False)
            assert outcome.requests_sent == 2
            assert [(e.request, e.index) for e in outcome.errors] == [(0, 0), (0, 1)]
            assert len(await s.read_entries()) == 4

    run(go())


def test_whole_request_failures(switch: SoftwareSwitch) -> None:
    async def go() -> None:
        async with session(switch, 10) as s:
            with pytest.raises(WriteError) as info:
                await s.write(requests(s, backends(1)))
            assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert info.value.outcome is not None and info.value.outcome.requests_sent == 0
            with pytest.raises(ReadError) as rinfo:
                await s.read_entries()
            assert rinfo.value.code == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(ValueError, match="election id"):
                await s.write(requests(session(switch, 11), backends(1)))

    run(go())


def test_switch_dying_mid_batch(switch: SoftwareSwitch) -> None:
    async def go() -> None:
        async with session(switch, 10) as s:
            await s.ensure_pipeline(P4INFO, DEVICE_CONFIG)
            assert (await s.write(requests(s, backends(3)))).ok
            switch.crash_after(2)
            with pytest.raises(WriteError, match="read back") as info:
                await s.write(requests(s, backends(5, start=10)) + requests(s, backends(5, start=20)))
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            assert info.value.outcome is not None and info.value.outcome.requests_sent == 0
            assert await asyncio.to_thread(switch.died.wait, 10)
            reason = await asyncio.wait_for(s.wait_lost(), 10)
            assert "StreamChannel" in reason
            with pytest.raises(NotPrimaryError, match="open a new session"):
                await s.write(requests(s, backends(1, start=30)))

    run(go())


def test_read_counters(switch: SoftwareSwitch) -> None:
    counter = INFO.counter(n.BACKEND_PACKETS)

    async def go() -> None:
        async with session(switch, 10) as s:
            await s.ensure_pipeline(P4INFO, DEVICE_CONFIG)
            update = p4r.Update(type=p4r.Update.MODIFY)
            ce = update.entity.counter_entry
            ce.counter_id = counter.id
            ce.index.index = 5
            ce.data.packet_count = 7
            write = p4r.WriteRequest(device_id=1, election_id=U128.encode(10), updates=[update])
            assert (await s.write([write])).ok
            assert await s.read_counters(n.BACKEND_PACKETS, [6, 5]) == [CounterCell(5, 7, 0), CounterCell(6, 0, 0)]
            cells = await s.read_counters(n.BACKEND_PACKETS)
            assert len(cells) == counter.size
            assert [c.index for c in cells] == list(range(counter.size))
            assert [c for c in cells if c.packets] == [CounterCell(5, 7, 0)]

    run(go())


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture
def tls_switch(pki: Pki) -> Iterator[SoftwareSwitch]:
    sw = SoftwareSwitch(tls=TlsConfig(pki.server_cert, pki.server_key, client_ca=pki.ca), max_workers=16)
    sw.start("127.0.0.1:0")
    try:
        yield sw
    finally:
        sw.stop(0)


def _tls_files(tmp_path: Path, pki: Pki, ca: bytes) -> dict[str, Path]:
    files = {"ca_file": ("ca.crt", ca), "cert_file": ("tls.crt", pki.client_cert), "key_file": ("tls.key", pki.client_key)}
    out = {}
    for arg, (name, data) in files.items():
        (tmp_path / name).write_bytes(data)
        out[arg] = tmp_path / name
    return out


def test_mutual_tls_with_server_name_override(tls_switch: SoftwareSwitch, pki: Pki, tmp_path: Path) -> None:
    tls = TlsSettings.from_files(**_tls_files(tmp_path, pki, pki.ca), server_name="p4rt.switch.test")

    async def go() -> None:
        async with session(tls_switch, 10, tls=tls) as s:
            assert s.is_primary
            assert await s.ensure_pipeline(P4INFO, DEVICE_CONFIG) is True
            assert (await s.write(requests(s, backends(3)))).ok
            assert ordered(await s.read_entries()) == ordered(backends(3))

    run(go())


def test_wrong_ca_is_named(tls_switch: SoftwareSwitch, pki: Pki, tmp_path: Path) -> None:
    files = _tls_files(tmp_path, pki, pki.other_ca)
    tls = TlsSettings.from_files(**files, server_name="p4rt.switch.test")
    with pytest.raises(SwitchTlsError) as info:
        run(session(tls_switch, 10, tls=tls, connect_timeout=5).open())
    text = str(info.value)
    assert "not signed by the CA we trust" in text and str(files["ca_file"]) in text
    assert "CERTIFICATE_VERIFY_FAILED" in text  # gRPC's own words are kept


def test_wrong_server_name_is_named(tls_switch: SoftwareSwitch, pki: Pki) -> None:
    tls = TlsSettings(pki.ca, pki.client_cert, pki.client_key, server_name="leaf-9.example")
    with pytest.raises(SwitchTlsError, match="does not name 'leaf-9.example'; set serverName"):
        run(session(tls_switch, 10, tls=tls, connect_timeout=5).open())


@pytest.mark.parametrize("client", ["none", "other-ca"])
def test_client_certificate_required(tls_switch: SoftwareSwitch, pki: Pki, client: str) -> None:
    if client == "none":
        tls = TlsSettings(pki.ca, server_name="p4rt.switch.test")
        expected = "requires a client certificate"
    else:
        tls = TlsSettings(pki.ca, pki.other_client_cert, pki.other_client_key, server_name="p4rt.switch.test")
        expected = "does not accept our client certificate"
    with pytest.raises(SwitchTlsError, match=expected):
        run(session(tls_switch, 10, tls=tls, connect_timeout=5).open())


def test_plaintext_client_to_tls_switch(tls_switch: SoftwareSwitch) -> None:
    with pytest.raises(SwitchUnreachable, match="does it require TLS"):
        run(session(tls_switch, 10, connect_timeout=5).open())


def test_tls_settings_errors(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(TlsError, match="cannot read the CA certificate file .*missing.crt"):
        TlsSettings.from_files(ca_file=tmp_path / "missing.crt")
    (tmp_path / "junk.crt").write_text("not a certificate\n")
    with pytest.raises(TlsError, match="holds no PEM block"):
        TlsSettings.from_files(ca_file=tmp_path / "junk.crt")
    (tmp_path / "tls.crt").write_bytes(pki.client_cert)
    with pytest.raises(TlsError, match="go together"):
        TlsSettings.from_files(cert_file=tmp_path / "tls.crt")
    with pytest.raises(TlsError, match="needs its private key"):
        TlsSettings(certificate=pki.client_cert)
