"""The software switch's gRPC server: a P4Runtime service over real sockets, and its lifecycle.

Why grpc's sync server with a thread pool rather than grpc.aio: the work of a Write or Read is
CPU-bound Python under one device lock, so asyncio would not add throughput; threads let tests
drive faults and inspect state from their own thread without an event loop, and each
StreamChannel simply occupies one worker (plus one reader thread) for its lifetime, which the
16-stream limit per (device, role) keeps bounded.
"""

from __future__ import annotations

import collections
import logging
import queue
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from finsy.proto import U128, p4r, p4r_grpc

from reconciler.protowire import length_delimited, varint
from reconciler.sim.arbitration import ArbitrationError, Arbitrator, Controller
from reconciler.sim.behavior import (
    CANCELLED,
    ERROR_SPACE,
    OK,
    UNAVAILABLE,
    UNKNOWN,
    Behavior,
    behavior_for,
    grpc_code,
)
from reconciler.sim.device import Device, EntryView, RpcError
from reconciler.sim.reads import response_bytes
from reconciler.sim.faults import Faults
from reconciler.sim.writes import UpdateResult

log = logging.getLogger("reconciler.sim")

STATUS_DETAILS_KEY = "grpc-status-details-bin"
READ_CHUNK = 10_000  # spec mode splits large reads; BMv2 always sends one message


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key (PEM); with `client_ca`, clients must present a certificate
    signed by it (mutual TLS)."""

    certificate: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, certificate: str | Path, private_key: str | Path,
                   client_ca: str | Path | None = None) -> "TlsConfig":
        return cls(
            Path(certificate).read_bytes(),
            Path(private_key).read_bytes(),
            Path(client_ca).read_bytes() if client_ca is not None else None,
        )

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


@dataclass
class WriteRecord:
    """What the switch did with one Write RPC (tests: wait_for_writes / write_log). Recorded
    when the handler finishes, also for a Write whose client gave up long before."""

    election_id: int
    updates: int
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    delayed: float = 0.0  # seconds of injected delay served before authorization
    failed_updates: int = 0

    def refused(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message


class SoftwareSwitch:
    """A generic P4Runtime target serving one or more device ids.

    Everything a controller does goes through P4Runtime; the methods below that are not
    lifecycle (faults, inspection, inject) are for tests and the packet model.
    """

    def __init__(
        self,
        device_ids: Iterable[int] = (1,),
        bmv2: bool = False,
        tls: TlsConfig | None = None,
        max_workers: int = 64,
        max_streams: int = 16,
    ) -> None:
        ids = tuple(device_ids)
        if not ids:
            raise ValueError("a switch needs at least one device id")
        if any(i <= 0 for i in ids):
            raise ValueError(f"device ids must be positive integers, not {ids}")
        self.behavior: Behavior = behavior_for(bmv2)
        self.tls = tls
        self.max_workers = max_workers
        self.device_ids = ids
        self._devices: dict[int, Device] = {i: Device(i, self.behavior) for i in ids}
        self._devices_lock = threading.Lock()
        self.arbitrator = Arbitrator(self.behavior, self._is_known_device, max_streams)
        self.faults = Faults()
        self._server: grpc.Server | None = None
        self._streams: set[_StreamSession] = set()
        self._streams_lock = threading.Condition()
        # each open StreamChannel holds a worker thread: keep some for unary RPCs
        self._stream_budget = max(1, max_workers - 8)
        self.port: int | None = None
        self.died = threading.Event()  # set once a crash fault has stopped the server
        self._writes: collections.deque[WriteRecord] = collections.deque(maxlen=1000)
        self._writes_done = 0
        self._writes_cond = threading.Condition()
        self._reads_seen = 0  # Read RPCs received (tests: what was asked, and when)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, address: str = "127.0.0.1:0") -> int:
        """Serve on `address` ("host:port", port 0 picks a free one); returns the bound port."""
        if self._server is not None:
            raise RuntimeError("the switch is already serving")
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="p4rt"),
            options=[("grpc.so_reuseport", 0)],  # a port in use must fail, not be shared
        )
        service = _P4RuntimeService(self)
        p4r_grpc.add_P4RuntimeServicer_to_server(service, server)
        # Read answers with bytes already serialized (the entities' read bytes are cached): it
        # replaces the generated handler, which would parse them into a message and serialize
        # it again. Registered method handlers are asked before generic ones, so it must be one.
        server.add_registered_method_handlers("p4.v1.P4Runtime", {
            "Read": grpc.unary_stream_rpc_method_handler(service.read_bytes, request_deserializer=p4r.ReadRequest.FromString),
        })
        try:
            if self.tls is not None:
                port = server.add_secure_port(address, self.tls.credentials())
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        server.start()
        self._server = server
        self.port = port
        self.died.clear()
        log.info("P4Runtime switch listening on %s (port %d), devices %s, %s mode%s",
                 address, port, list(self.device_ids), "bmv2" if self.behavior.bmv2 else "spec",
                 ", TLS" if self.tls else "")
        return port

    def stop(self, grace: float | None = None) -> None:
        """Stop serving; open streams end. Device state is kept (see reset())."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()
            log.info("P4Runtime switch on port %s stopped", self.port)
        self.arbitrator.clear()

    @property
    def serving(self) -> bool:
        return self._server is not None

    def __enter__(self) -> "SoftwareSwitch":
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(0)

    def reset(self) -> None:
        """Forget all pipelines, entries and counters, like a restarted switch process."""
        with self._devices_lock:
            for device in self._devices.values():
                device.reset()

    # -- devices -----------------------------------------------------------------------------

    def _is_known_device(self, device_id: int) -> bool:
        return self.behavior.unknown_device_is_phantom or device_id in self._devices

    def _device_for(self, device_id: int) -> Device | None:
        device = self._devices.get(device_id)
        if device is None and self.behavior.unknown_device_is_phantom:
            with self._devices_lock:
                device = self._devices.setdefault(
                    device_id, Device(device_id, self.behavior, phantom=True)
                )
        return device

    def device(self, device_id: int) -> Device:
        try:
            return self._devices[device_id]
        except KeyError:
            raise KeyError(f"the switch has no device {device_id}") from None

    # -- packet path and inspection (tests) ---------------------------------------------------

    def inject(self, device_id: int, port: int, data: bytes):  # -> PipelineResult
        """Process one packet arriving on `port` through the device's committed pipeline."""
        from reconciler.sim.pipeline import process_packet  # written separately; import late

        return process_packet(self.device(device_id), port, data)

    def entries(self, device_id: int, table: str) -> list[EntryView]:
        return self.device(device_id).entries(table)

    def default_entry(self, device_id: int, table: str) -> EntryView:
        return self.device(device_id).default_entry(table)

    def counters(self, device_id: int, counter: str) -> list[tuple[int, int]]:
        return self.device(device_id).counters(counter)

    # -- faults (tests) ----------------------------------------------------------------------

    def refuse_writes(self, count: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
                      message: str = "refused by fault injection") -> None:
        self.faults.refuse_writes(count, code, message)

    def set_delay(self, seconds: float) -> None:
        self.faults.set_delay(seconds)

    def delay_writes(self, seconds: float, count: int = 1) -> None:
        """Delay each of the next `count` Writes by `seconds`, before authorizing them."""
        self.faults.delay_writes(seconds, count)

    def crash_after(self, updates: int) -> None:
        self.faults.crash_after(updates)

    # -- Write log (tests) ---------------------------------------------------------------------

    @property
    def writes_processed(self) -> int:
        """How many Write RPCs the handlers have finished (whatever their outcome)."""
        with self._writes_cond:
            return self._writes_done

    def write_log(self) -> list[WriteRecord]:
        """The last (up to 1000) Write RPCs processed, oldest first."""
        with self._writes_cond:
            return list(self._writes)

    def wait_for_writes(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least `count` Write RPCs have been processed in total."""
        with self._writes_cond:
            return self._writes_cond.wait_for(lambda: self._writes_done >= count, timeout)

    @property
    def reads_processed(self) -> int:
        """How many Read RPCs the handlers have received (whatever their outcome)."""
        with self._writes_cond:
            return self._reads_seen

    def wait_reads(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least `count` Read RPCs have been received in total."""
        with self._writes_cond:
            return self._writes_cond.wait_for(lambda: self._reads_seen >= count, timeout)

    def _record_read(self) -> None:
        with self._writes_cond:
            self._reads_seen += 1
            self._writes_cond.notify_all()

    def _record_write(self, record: WriteRecord) -> None:
        with self._writes_cond:
            self._writes.append(record)
            self._writes_done += 1
            self._writes_cond.notify_all()

    def shrink_table(self, device_id: int, table: str, size: int) -> None:
        self.device(device_id).set_table_size(table, size)

    def drop_streams(self) -> int:
        """Abort every open StreamChannel with UNAVAILABLE; returns how many were open."""
        with self._streams_lock:
            sessions = list(self._streams)
        for session in sessions:
            session.close(UNAVAILABLE, "Stream dropped (fault injection)")
        log.info("dropped %d StreamChannel(s)", len(sessions))
        return len(sessions)

    def stream_count(self) -> int:
        with self._streams_lock:
            return len(self._streams)

    def wait_for_streams(self, count: int, timeout: float = 5.0) -> bool:
        """Block until exactly `count` StreamChannels are open (their cleanup done)."""
        with self._streams_lock:
            return self._streams_lock.wait_for(lambda: len(self._streams) == count, timeout)

    def _die(self) -> None:
        server, self._server = self._server, None
        log.warning("switch on port %s dies (fault injection)", self.port)

        def stop() -> None:
            if server is not None:
                server.stop(0).wait()
            self.arbitrator.clear()
            self.died.set()

        threading.Thread(target=stop, name="p4rt-die", daemon=True).start()

    def _add_stream(self, session: "_StreamSession") -> bool:
        with self._streams_lock:
            if len(self._streams) >= self._stream_budget:
                return False
            self._streams.add(session)
            self._streams_lock.notify_all()
            return True

    def _remove_stream(self, session: "_StreamSession") -> None:
        with self._streams_lock:
            self._streams.discard(session)
            self._streams_lock.notify_all()


# -- status trailers ---------------------------------------------------------------------------


_ERROR_TYPE_URL = b"type.googleapis.com/p4.v1.Error"
_detail_cache: dict[UpdateResult, bytes] = {}


def _detail(result: UpdateResult) -> bytes:
    """One google.rpc.Status.details entry: an Any holding a p4.v1.Error (~35 bytes if OK)."""
    cached = _detail_cache.get(result)
    if cached is None:
        code, message = result
        error = p4r.Error(canonical_code=code)
        if code != OK:
            error.message = message
            error.space = ERROR_SPACE
        any_bytes = length_delimited(0x0A, _ERROR_TYPE_URL) + (
            length_delimited(0x12, error.SerializeToString()) if code != OK else b""
        )
        cached = length_delimited(0x1A, any_bytes)
        if len(_detail_cache) < 4096:
            _detail_cache[result] = cached
    return cached


def status_bytes(code: int, message: str, details: Sequence[UpdateResult] = ()) -> bytes:
    """A serialized google.rpc.Status (built by hand: a failing batch of thousands of updates
    must not cost thousands of message constructions)."""
    parts = [b"\x08" + varint(code)] if code else []
    if message:
        parts.append(length_delimited(0x12, message.encode()))
    parts.extend(_detail(r) for r in details)
    return b"".join(parts)


def _fail(context: grpc.ServicerContext, error: RpcError) -> None:
    if error.trailer:
        context.set_trailing_metadata(
            ((STATUS_DETAILS_KEY, status_bytes(error.code, error.message)),)
        )
    context.set_code(grpc_code(error.code))
    context.set_details(error.message)


# -- the service -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Close:
    code: int
    message: str


class _StreamSession:
    """One StreamChannel: its outgoing queue and, once arbitrated, its controller."""

    def __init__(self) -> None:
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.controller: Controller | None = None

    def send(self, message: p4r.StreamMessageResponse) -> None:
        self.outbox.put(message)

    def close(self, code: int, message: str) -> None:
        self.outbox.put(_Close(code, message))


class _P4RuntimeService(p4r_grpc.P4RuntimeServicer):
    def __init__(self, switch: SoftwareSwitch) -> None:
        self.switch = switch
        self.behavior = switch.behavior

    def _device(self, device_id: int, context: grpc.ServicerContext) -> Device:
        device = self.switch._device_for(device_id)
        if device is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Unknown device id {device_id}")
            raise AssertionError("unreachable: abort raises")  # grpc is untyped: its NoReturn is unknown
        return device

    def _delay(self) -> None:
        seconds = self.switch.faults.delay
        if seconds:
            time.sleep(seconds)  # the injected latency itself, not a wait for an event

    def _authorize(self, request, context: grpc.ServicerContext, record: "WriteRecord | None" = None) -> None:
        try:
            self.switch.arbitrator.authorize(
                request.device_id, request.role, request.HasField("election_id"),
                U128.decode(request.election_id),
            )
        except ArbitrationError as exc:
            if record is not None:
                record.refused(grpc_code(exc.code), exc.message)
            context.abort(grpc_code(exc.code), exc.message)

    def Capabilities(self, request, context):
        return p4r.CapabilitiesResponse(p4runtime_api_version=self.behavior.api_version)

    def Write(self, request: p4r.WriteRequest, context: grpc.ServicerContext):
        record = WriteRecord(U128.decode(request.election_id), len(request.updates))
        try:
            return self._write(request, context, record)
        finally:
            self.switch._record_write(record)

    def _write(self, request: p4r.WriteRequest, context: grpc.ServicerContext, record: "WriteRecord"):
        self._delay()
        # A delayed Write is authorized only after its delay, like a request queued in a real
        # target: P4Runtime checks the election id when the Write is processed, so a client
        # that timed out and re-arbitrated with a higher id has fenced it (DESIGN.md 6.1).
        record.delayed = self.switch.faults.take_write_delay()
        if record.delayed:
            time.sleep(record.delayed)  # the injected latency itself, not a wait for an event
        refusal = self.switch.faults.take_refusal()
        if refusal is not None:
            record.refused(refusal.code, refusal.message)
            context.abort(refusal.code, refusal.message)
        device = self._device(request.device_id, context)
        crash = self.switch.faults.take_crash()
        # Authorization and the writes happen under the device lock, atomically with respect
        # to Reads: a Write authorized before a new arbitration is visible to any Read that
        # follows that arbitration, and one processed after it is refused.
        with device.lock:
            self._authorize(request, context, record)
            try:
                results = device.write(request, limit=crash)
            except RpcError as exc:
                if crash is None:
                    record.refused(grpc_code(exc.code), exc.message)
                    _fail(context, exc)
                    return p4r.WriteResponse()
                results = []
        if crash is not None:
            log.warning("applied %d update(s) of %d, then dying", len(results),
                        len(request.updates))
            record.refused(grpc.StatusCode.UNAVAILABLE, "Socket closed (switch died)")
            context.add_callback(self.switch._die)  # once this RPC's status has gone out
            context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed (switch died)")
        failed = sum(1 for code, _ in results if code != OK)
        record.failed_updates = failed
        if failed:
            message = "" if self.behavior.bmv2 else f"{failed} of {len(results)} updates failed"
            record.refused(grpc.StatusCode.UNKNOWN, message)
            context.set_trailing_metadata(
                ((STATUS_DETAILS_KEY, status_bytes(UNKNOWN, message, results)),)
            )
            context.set_code(grpc.StatusCode.UNKNOWN)
            context.set_details(message)
        return p4r.WriteResponse()

    def Read(self, request: p4r.ReadRequest, context: grpc.ServicerContext
             ) -> Iterator[p4r.ReadResponse]:
        """The servicer interface's Read, as messages. Not what is served: start() registers
        read_bytes in its place."""
        for chunk in self.read_bytes(request, context):
            yield p4r.ReadResponse.FromString(chunk)

    def read_bytes(self, request: p4r.ReadRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Read, each ReadResponse as its bytes."""
        self.switch._record_read()
        self._delay()
        device = self._device(request.device_id, context)
        try:
            outcome = device.read(request, encoded=True)
        except RpcError as exc:
            _fail(context, exc)
            return
        # Sent as the bytes of each ReadResponse (the Read handler's serializer passes bytes
        # through): the entities were serialized once, and their table entries are cached.
        entities = outcome.encoded or []
        if self.behavior.single_read_response or len(entities) <= READ_CHUNK:
            yield response_bytes(entities)  # BMv2: one message, also before an error (surprise 30)
        else:
            for start in range(0, len(entities), READ_CHUNK):
                yield response_bytes(entities[start:start + READ_CHUNK])
        if not outcome.failed:
            return
        if self.behavior.read_errors_per_entity:
            per_request = [e if e is not None else (OK, "") for e in outcome.errors]
            failed = sum(1 for e in outcome.errors if e is not None)
            message = f"{failed} of {len(per_request)} read requests failed"
            _fail(context, RpcError(UNKNOWN, message))
            context.set_trailing_metadata(
                ((STATUS_DETAILS_KEY, status_bytes(UNKNOWN, message, per_request)),)
            )
        else:
            code, message = next(e for e in outcome.errors if e is not None)
            _fail(context, RpcError(code, message, trailer=True))

    def SetForwardingPipelineConfig(self, request, context):
        device = self._device(request.device_id, context)
        self._authorize(request, context)
        try:
            device.set_pipeline(request)
        except RpcError as exc:
            _fail(context, exc)
        else:
            log.info("device %d: SetForwardingPipelineConfig %s", request.device_id,
                     p4r.SetForwardingPipelineConfigRequest.Action.Name(request.action)
                     if request.action in p4r.SetForwardingPipelineConfigRequest.Action.values()
                     else request.action)
        return p4r.SetForwardingPipelineConfigResponse()

    def GetForwardingPipelineConfig(self, request, context):
        device = self._device(request.device_id, context)
        try:
            return device.get_pipeline(request.response_type)
        except RpcError as exc:
            _fail(context, exc)
            return p4r.GetForwardingPipelineConfigResponse()

    def StreamChannel(self, request_iterator, context):
        session = _StreamSession()
        if not self.switch._add_stream(session):
            log.warning("refusing a StreamChannel: %d are open", self.switch.stream_count())
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Too many connections")
        # fires when the RPC ends for any reason (client cancel, server stop)
        context.add_callback(lambda: session.close(CANCELLED, "stream ended"))
        reader = threading.Thread(
            target=self._read_stream, args=(request_iterator, session),
            name="p4rt-stream-reader", daemon=True,
        )
        reader.start()
        close = _Close(OK, "")
        try:
            while True:
                item = session.outbox.get()
                if isinstance(item, _Close):
                    close = item
                    break
                yield item
        finally:
            if session.controller is not None:
                self.switch.arbitrator.leave(session.controller)
            self.switch._remove_stream(session)
        if close.code not in (OK, CANCELLED):
            context.abort(grpc_code(close.code), close.message)

    def _read_stream(self, requests, session: _StreamSession) -> None:
        arbitrator = self.switch.arbitrator
        try:
            for request in requests:
                which = request.WhichOneof("update")
                if which == "arbitration":
                    try:
                        session.controller = arbitrator.arbitrate(
                            session.controller, request.arbitration, session.send
                        )
                    except ArbitrationError as exc:
                        session.close(exc.code, exc.message)
                        return
                else:
                    # no CPU port: PacketOut and other messages are dropped, as BMv2 drops a
                    # PacketOut sent before arbitration (surprise 9)
                    log.debug("StreamChannel: ignoring a %s message", which)
        except grpc.RpcError as exc:  # the RPC was cancelled under the iterator
            log.debug("StreamChannel reader ended: %s", exc)
            session.close(CANCELLED, "stream ended")
            return
        except ValueError as exc:  # grpc raises this when the call has already terminated
            log.debug("StreamChannel reader ended: %s", exc)
            session.close(CANCELLED, "stream ended")
            return
        session.close(OK, "")  # the client half-closed: finish with OK (fixture 2r)


def run_forever(
    listen: str,
    device_ids: Iterable[int] = (1,),
    bmv2: bool = False,
    tls: TlsConfig | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT (the `p4kube sim` command). Returns an exit status."""
    switch = SoftwareSwitch(device_ids, bmv2=bmv2, tls=tls)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        switch.start(listen)
        stop.wait()
    finally:
        switch.stop(grace=1.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
