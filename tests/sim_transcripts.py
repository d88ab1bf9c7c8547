"""Replay recorded BMv2 P4Runtime exchanges (fixtures/p4runtime-bmv2/*.txt) against the
software switch, and a small raw-stub P4Runtime test client used by the sim tests.

A transcript is a sequence of events: `#### exchange N: <RPC>` blocks with a `## request`, one
or more `## response` blocks or an `## error` (plus an optional `## grpc-status-details-bin`),
and per-client stream events (`#### client "X": received / cancels / half-closes / ...`).
`# (fresh simple_switch_grpc started ...)` starts a new segment (a fresh switch).
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from finsy.proto import p4i, p4r, p4r_grpc, rpc_status
from google.protobuf import text_encoding, text_format
from google.protobuf.message import Message

from reconciler.sim import SoftwareSwitch

from shared_fixtures import P4RUNTIME_BMV2 as FIXTURES
STATUS_DETAILS_KEY = "grpc-status-details-bin"
BIG_METADATA = 16 * 1024 * 1024
RAISED_LIMITS = (
    ("grpc.max_metadata_size", BIG_METADATA),
    ("grpc.absolute_max_metadata_size", BIG_METADATA),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)

_TYPES: dict[str, type[Message]] = {
    "p4.v1.CapabilitiesRequest": p4r.CapabilitiesRequest,
    "p4.v1.CapabilitiesResponse": p4r.CapabilitiesResponse,
    "p4.v1.WriteRequest": p4r.WriteRequest,
    "p4.v1.WriteResponse": p4r.WriteResponse,
    "p4.v1.ReadRequest": p4r.ReadRequest,
    "p4.v1.ReadResponse": p4r.ReadResponse,
    "p4.v1.SetForwardingPipelineConfigRequest": p4r.SetForwardingPipelineConfigRequest,
    "p4.v1.SetForwardingPipelineConfigResponse": p4r.SetForwardingPipelineConfigResponse,
    "p4.v1.GetForwardingPipelineConfigRequest": p4r.GetForwardingPipelineConfigRequest,
    "p4.v1.GetForwardingPipelineConfigResponse": p4r.GetForwardingPipelineConfigResponse,
    "p4.v1.StreamMessageRequest": p4r.StreamMessageRequest,
    "p4.v1.StreamMessageResponse": p4r.StreamMessageResponse,
    "google.rpc.Status": rpc_status.Status,
}

# P4Info files a NOTE may name as "exactly <file>"
_P4INFO_FILES = {
    "load_balancer.p4info.txtpb": "transcript-program.p4info.txtpb",
    "variant/lb_nocounter.p4info.txtpb": "lb_nocounter.p4info.txtpb",
    "variant/lb_const.p4info.txtpb": "lb_const.p4info.txtpb",
}


def load_p4info(name: str = "transcript-program.p4info.txtpb") -> p4i.P4Info:
    return text_format.Parse((FIXTURES / name).read_text(), p4i.P4Info())


# -- parsing -----------------------------------------------------------------------------------


@dataclass
class Exchange:
    number: int
    rpc: str  # "Write", "Read", "StreamChannel send", ...
    label: str  # the text in [...] after the RPC, if any
    client: str | None  # for StreamChannel sends
    section: str
    request: Message | None = None
    responses: list[Message] = field(default_factory=list)
    response_notes: list[list[str]] = field(default_factory=list)
    error: tuple[str, str] | None = None  # (grpc code name, details)
    status: rpc_status.Status | None = None
    no_trailer: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class StreamEvent:
    client: str
    kind: str  # received | nothing | cancel | half-close | closed-ok | error
    section: str
    message: p4r.StreamMessageResponse | None = None
    error: tuple[str, str] | None = None


@dataclass
class Segment:
    """Everything that happened against one fresh switch process."""

    events: list[Exchange | StreamEvent] = field(default_factory=list)


_HEADER = re.compile(r"^#### exchange (\d+): (\S+(?: send)?)(?:\s+\[(.*)\])?\s*$")
_CLIENT = re.compile(r'^#### client "([^"]+)": (.*)$')
_SECTION = re.compile(r"^# (\d+[a-z]?(?:\.\d+)?'*)\.?\s")


def parse_transcript(path: Path) -> list[Segment]:
    lines = path.read_text().splitlines()
    segments: list[Segment] = []
    current: Segment | None = None
    section = ""
    event: Exchange | StreamEvent | None = None
    block: list[str] | None = None
    block_kind = ""
    block_type = ""
    block_notes: list[str] = []

    def flush() -> None:
        nonlocal block
        if block is None or event is None:
            block = None
            return
        text = "\n".join(block)
        if block_kind == "request":
            assert isinstance(event, Exchange)
            event.request = text_format.Parse(text, _TYPES[block_type]())
        elif block_kind == "response":
            message = text_format.Parse(text, _TYPES[block_type]())
            if isinstance(event, StreamEvent):
                event.message = message
            else:
                event.responses.append(message)
                event.response_notes.append(list(block_notes))
        elif block_kind == "error":
            code = re.search(r"grpc_code: (\w+)", text).group(1)
            raw = re.search(r'grpc_details: "(.*)"', text).group(1)
            details = text_encoding.CUnescape(raw).decode()
            if isinstance(event, StreamEvent):
                event.error = (code, details)
            else:
                event.error = (code, details)
                event.no_trailer = "no grpc-status-details-bin trailer" in text
        elif block_kind == "status":
            assert isinstance(event, Exchange)
            event.status = _expand_details(text)
        block = None

    def finish_event() -> None:
        nonlocal event
        flush()
        if event is not None and current is not None:
            current.events.append(event)
        event = None

    for previous, line in zip([""] + lines, lines):
        if line.startswith("# (fresh simple_switch_grpc started"):
            finish_event()
            current = Segment()
            segments.append(current)
            continue
        if previous.startswith("# ===="):
            match = _SECTION.match(line)
            if match:
                section = match.group(1)
        header = _HEADER.match(line)
        if header:
            finish_event()
            number, rpc, label = header.groups()
            label = label or ""
            client = re.search(r'client "([^"]+)"', label)
            event = Exchange(int(number), rpc, label, client.group(1) if client else None,
                             section)
            continue
        client_line = _CLIENT.match(line)
        if client_line:
            finish_event()
            name, what = client_line.groups()
            kind = (
                "received" if what.startswith("received")
                else "nothing" if what.startswith("nothing received")
                else "cancel" if "cancels its stream" in what
                else "half-close" if "half-closes" in what
                else "closed-ok" if "closed by server with status OK" in what
                else "error" if "terminated by server with a gRPC error" in what
                else "other"
            )
            event = StreamEvent(name, kind, section)
            continue
        if line.startswith("## "):
            flush()
            head = line[3:].split("#")[0].split()
            block_kind = {"request": "request", "response": "response", "error": "error",
                          "grpc-status-details-bin": "status"}[head[0]]
            block_type = head[1] if len(head) > 1 else ""
            block = []
            block_notes = [line]
            continue
        if line.startswith("# NOTE") and isinstance(event, Exchange):
            if block is None or block_kind == "request":
                event.notes.append(line)
            else:
                block_notes.append(line)
            continue
        if block is not None:
            if line.startswith("#"):
                block_notes.append(line)
            if line.startswith("# stream closed") or line.startswith("# round trip"):
                continue
            block.append(line)
    finish_event()
    return segments


def _expand_details(text: str) -> rpc_status.Status:
    """Parse a google.rpc.Status block, re-inserting 'N more details identical ... elided'."""
    out: list[str] = []
    last_detail: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        elided = re.match(r"# \.\.\. (\d+) more details identical", line.strip())
        if elided:
            out.extend(last_detail * int(elided.group(1)))
            continue
        if line.startswith("details {"):
            current = [line]
            continue
        if current is not None:
            current.append(line)
            if line == "}":
                out.extend(current)
                last_detail = current
                current = None
            continue
        out.append(line)
    status = rpc_status.Status()
    text_format.Parse("\n".join(out), status)
    return status


# -- elisions ----------------------------------------------------------------------------------


def p4info_for_note(notes: list[str]) -> p4i.P4Info | None | bool:
    """The full P4Info a NOTE says was elided; None if it was a variant we cannot rebuild;
    False if no P4Info was elided."""
    for note in notes:
        m = re.search(r"p4info (?:elided|below is): it is exactly (\S+)(.*)", note)
        if m is None:
            m = re.search(r"p4info elided: it is exactly (\S+)(.*)", note)
        if m is None:
            continue
        name, rest = m.groups()
        if name in _P4INFO_FILES and rest.strip().startswith("("):
            return load_p4info(_P4INFO_FILES[name])
        return None
    return False


def expand_linear(request: p4r.WriteRequest, total: int) -> p4r.WriteRequest:
    """Rebuild an elided batch from updates [0], [1] and [total-1]: every bytes field steps by
    the same amount (e.g. 10.0.(i/256).(i%256) and set_service(i)); other fields are equal."""
    first, second, last = request.updates
    out = p4r.WriteRequest()
    out.CopyFrom(request)
    del out.updates[:]
    for i in range(total):
        update = p4r.Update()
        update.CopyFrom(first)
        _step(update, first, second, last, i, total - 1)
        out.updates.append(update)
    return out


def _step(target: Message, a: Message, b: Message, z: Message, i: int, n: int) -> None:
    for fd, va in a.ListFields():
        vb = getattr(b, fd.name)
        vz = getattr(z, fd.name)
        if fd.is_repeated:
            if fd.message_type is not None:
                for k, item in enumerate(va):
                    _step(getattr(target, fd.name)[k], item, vb[k], vz[k], i, n)
            continue
        if fd.message_type is not None:
            _step(getattr(target, fd.name), va, vb, vz, i, n)
        elif fd.type == fd.TYPE_BYTES:
            x0, x1, xz = (int.from_bytes(v, "big") for v in (va, vb, vz))
            delta = x1 - x0
            assert x0 + n * delta == xz, f"{fd.name} is not a linear pattern"
            value = x0 + i * delta
            width = len(va) if len(va) == len(vz) else max(1, (value.bit_length() + 7) // 8)
            setattr(target, fd.name, value.to_bytes(width, "big"))


# -- client ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """The result of one RPC as a client sees it."""

    code: grpc.StatusCode
    details: str
    status: rpc_status.Status | None  # the grpc-status-details-bin trailer, if any
    responses: list[Message] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK

    def errors(self) -> list[p4r.Error]:
        out = []
        for any_detail in self.status.details if self.status else ():
            error = p4r.Error()
            assert any_detail.Unpack(error), any_detail.type_url
            out.append(error)
        return out


def _status_from(metadata) -> rpc_status.Status | None:
    for key, value in metadata or ():
        if key == STATUS_DETAILS_KEY:
            return rpc_status.Status.FromString(value)
    return None


class Client:
    """Raw P4RuntimeStub on one channel (metadata limits raised unless `stock`)."""

    def __init__(self, address: str, stock: bool = False,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: tuple = ()) -> None:
        opts = list(options) + ([] if stock else list(RAISED_LIMITS))
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=opts)
        else:
            self.channel = grpc.secure_channel(address, credentials, options=opts)
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        self.streams: list[Stream] = []

    def close(self) -> None:
        for stream in self.streams:
            stream.cancel()
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def unary(self, method: str, request: Message, timeout: float = 10) -> Outcome:
        fn = getattr(self.stub, method)
        try:
            response, call = fn.with_call(request, timeout=timeout)
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "", _status_from(exc.trailing_metadata()))
        return Outcome(grpc.StatusCode.OK, "", _status_from(call.trailing_metadata()),
                       [response])

    def read(self, request: p4r.ReadRequest, timeout: float = 10) -> Outcome:
        call = self.stub.Read(request, timeout=timeout)
        responses = []
        try:
            for response in call:
                responses.append(response)
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "", _status_from(exc.trailing_metadata()),
                           responses)
        return Outcome(grpc.StatusCode.OK, "", _status_from(call.trailing_metadata()),
                       responses)

    def call(self, rpc: str, request: Message) -> Outcome:
        if rpc == "Read":
            return self.read(request)
        return self.unary(rpc, request)

    def stream(self) -> "Stream":
        stream = Stream(self.stub)
        self.streams.append(stream)
        return stream

    def arbitrate(self, election_id: int | None, device_id: int = 1, role: str = "",
                  timeout: float = 5) -> tuple["Stream", p4r.StreamMessageResponse]:
        """Open a stream, send a MasterArbitrationUpdate and wait for the answer."""
        stream = self.stream()
        stream.send(arbitration(election_id, device_id, role))
        return stream, stream.next(timeout)


def arbitration(election_id: int | None, device_id: int = 1, role: str = ""
                ) -> p4r.StreamMessageRequest:
    request = p4r.StreamMessageRequest()
    request.arbitration.device_id = device_id
    if role:
        request.arbitration.role.name = role
    if election_id is not None:
        request.arbitration.election_id.high = election_id >> 64
        request.arbitration.election_id.low = election_id & (2**64 - 1)
    return request


@dataclass(frozen=True)
class StreamEnd:
    code: grpc.StatusCode
    details: str


class Stream:
    """A StreamChannel: send() requests, next() responses (each with a timeout)."""

    def __init__(self, stub: p4r_grpc.P4RuntimeStub) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self.received: queue.SimpleQueue = queue.SimpleQueue()
        self.call = stub.StreamChannel(self._request_iter())
        self.ended = threading.Event()
        self.end: StreamEnd | None = None
        self._thread = threading.Thread(target=self._pump, daemon=True, name="test-stream")
        self._thread.start()

    def _request_iter(self) -> Iterator[p4r.StreamMessageRequest]:
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def _pump(self) -> None:
        try:
            for message in self.call:
                self.received.put(message)
            self.end = StreamEnd(grpc.StatusCode.OK, "")
        except grpc.RpcError as exc:
            self.end = StreamEnd(exc.code(), exc.details() or "")
        finally:
            self.received.put(self.end)
            self.ended.set()

    def send(self, request: p4r.StreamMessageRequest) -> None:
        self._requests.put(request)

    def next(self, timeout: float = 5) -> p4r.StreamMessageResponse:
        """The next message; raises AssertionError on timeout or if the stream ended."""
        try:
            item = self.received.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no stream message within {timeout} s") from None
        if isinstance(item, StreamEnd):
            self.received.put(item)  # keep the end visible to later calls
            raise AssertionError(f"stream ended: {item}")
        return item

    def wait_end(self, timeout: float = 5) -> StreamEnd:
        assert self.ended.wait(timeout), f"stream did not end within {timeout} s"
        assert self.end is not None
        return self.end

    def drain(self) -> list[p4r.StreamMessageResponse]:
        """Messages received and not yet consumed (call after the stream ended)."""
        out = []
        while True:
            try:
                item = self.received.get_nowait()
            except queue.Empty:
                return out
            if isinstance(item, StreamEnd):
                self.received.put(item)
                return out
            out.append(item)

    def half_close(self) -> None:
        self._requests.put(None)

    def cancel(self) -> None:
        self.call.cancel()
        self._requests.put(None)


# -- replay ------------------------------------------------------------------------------------


@dataclass
class Mismatch:
    where: str
    expected: object
    actual: object

    def __str__(self) -> str:
        return f"{self.where}:\n  expected: {self.expected!r}\n  actual:   {self.actual!r}"


class Replayer:
    """Drives one segment of a transcript against a running switch and collects mismatches.

    `wait_streams(n)` must block until the server has exactly n open StreamChannels (the
    switch's inspection hook), so that a client's cancel is processed before the next step.
    "Nothing received" is checked at the end of the segment (each client's messages must be
    exactly the recorded ones), not by waiting a second per client as the recording did: a
    stray message still in flight at that moment would go unnoticed, never fail falsely.
    """

    def __init__(self, address: str, wait_streams: Callable[[int], bool],
                 skip: Callable[[Exchange], bool] = lambda e: False,
                 unpolled: frozenset[str] = frozenset()) -> None:
        self.address = address
        self.wait_streams = wait_streams
        self.skip = skip
        self.unpolled = unpolled
        self.client = Client(address)
        self.stock: Client | None = None
        self.streams: dict[str, Stream] = {}
        self.expected_stream: dict[str, list[p4r.StreamMessageResponse]] = {}
        self.mismatches: list[Mismatch] = []
        self.replayed = 0

    def close(self) -> None:
        self.client.close()
        if self.stock is not None:
            self.stock.close()

    def _open(self) -> int:
        return sum(1 for s in self.streams.values() if not s.ended.is_set())

    def run(self, segment: Segment) -> None:
        for event in segment.events:
            if isinstance(event, Exchange):
                if self.skip(event):
                    continue
                self.replayed += 1
                if event.rpc.startswith("StreamChannel"):
                    self._stream_send(event)
                else:
                    self._unary(event)
            else:
                self._stream_event(event)
        self._check_streams_complete()

    def _stream_send(self, event: Exchange) -> None:
        name = event.client or "?"
        stream = self.streams.get(name)
        if stream is None:
            stream = self.streams[name] = self.client.stream()
            self.expected_stream[name] = []
        stream.send(event.request)

    def _stream_event(self, event: StreamEvent) -> None:
        stream = self.streams.get(event.client)
        if stream is None:
            return
        where = f"section {event.section}, client {event.client}"
        if event.kind == "received":
            self.expected_stream[event.client].append(event.message)
            try:
                got = stream.next(timeout=5)
            except AssertionError as exc:
                self.mismatches.append(Mismatch(where, event.message, str(exc)))
                return
            if got != event.message:
                self.mismatches.append(Mismatch(where, event.message, got))
        elif event.kind == "cancel":
            stream.cancel()
            stream.wait_end()
            self.wait_streams(self._open())
        elif event.kind == "half-close":
            stream.half_close()
        elif event.kind == "closed-ok":
            end = stream.wait_end()
            if end.code != grpc.StatusCode.OK:
                self.mismatches.append(Mismatch(where, "OK", end))
            self.wait_streams(self._open())
        elif event.kind == "error":
            end = stream.wait_end()
            expected = event.error
            if (end.code.name, end.details) != expected:
                self.mismatches.append(Mismatch(where, expected, (end.code.name, end.details)))
            self.wait_streams(self._open())

    def _check_streams_complete(self) -> None:
        """Nothing was received beyond what the transcript shows ('nothing received')."""
        for name, stream in self.streams.items():
            if name in self.unpolled:
                continue
            extra = stream.drain()
            if extra:
                self.mismatches.append(Mismatch(f"client {name} got unexpected messages",
                                                [], extra))

    def _unary(self, event: Exchange) -> None:
        request = event.request
        client = self.client
        if "stock grpc channel" in event.label:
            if self.stock is None:
                self.stock = Client(self.address, stock=True)
            client = self.stock
        outcome = client.call(event.rpc, request)
        where = f"section {event.section}, exchange {event.number} ({event.rpc} {event.label})"
        if event.error is not None:
            code, details = event.error
            if outcome.code.name != code:
                self.mismatches.append(Mismatch(where + " code", code, outcome.code.name))
            elif "exceeds hard limit" in details:
                if "exceeds hard limit" not in outcome.details:
                    self.mismatches.append(Mismatch(where + " details", details, outcome.details))
            elif outcome.details != details:
                self.mismatches.append(Mismatch(where + " details", details, outcome.details))
            if event.status is not None and outcome.status != event.status:
                self.mismatches.append(Mismatch(where + " status", event.status, outcome.status))
            if event.no_trailer and outcome.status is not None:
                self.mismatches.append(Mismatch(where + " trailer", None, outcome.status))
        elif not outcome.ok:
            self.mismatches.append(Mismatch(where, "OK", (outcome.code.name, outcome.details)))
            return
        self._compare_responses(event, outcome, where)

    def _compare_responses(self, event: Exchange, outcome: Outcome, where: str) -> None:
        if event.rpc == "Read":
            for expected, notes, got in zip(event.responses, event.response_notes,
                                            outcome.responses):
                total = _entity_total(notes)
                elided = any("more entities elided" in n for n in notes)
                if elided:
                    if len(got.entities) != total:
                        self.mismatches.append(Mismatch(where + " entity count", total,
                                                        len(got.entities)))
                    shown = list(expected.entities)
                    if list(got.entities[:len(shown)]) != shown and "count" not in event.label:
                        self.mismatches.append(Mismatch(where + " first entities", shown,
                                                        list(got.entities[:len(shown)])))
                elif got != expected:
                    self.mismatches.append(Mismatch(where, expected, got))
            if len(event.responses) != len(outcome.responses):
                self.mismatches.append(Mismatch(where + " response count", len(event.responses),
                                                len(outcome.responses)))
        elif event.rpc == "GetForwardingPipelineConfig" and event.responses:
            expected = event.responses[0]
            p4info = p4info_for_note(event.response_notes[0] + event.notes)
            if p4info:
                expected = type(expected)()
                expected.CopyFrom(event.responses[0])
                expected.config.p4info.CopyFrom(p4info)
            if outcome.responses[0] != expected:
                self.mismatches.append(Mismatch(where, expected, outcome.responses[0]))
        elif event.responses and outcome.responses:
            if outcome.responses[0] != event.responses[0]:
                self.mismatches.append(Mismatch(where, event.responses[0], outcome.responses[0]))


def _entity_total(notes: list[str]) -> int | None:
    for note in notes:
        m = re.search(r"(\d+) entities", note)
        if m:
            return int(m.group(1))
    return None


def prepare(event: Exchange) -> bool:
    """Undo the transcript's elisions in place; False if the exchange cannot be rebuilt."""
    request = event.request
    if isinstance(request, p4r.SetForwardingPipelineConfigRequest):
        p4info = p4info_for_note(event.notes)
        if p4info is None:
            return False
        if p4info:
            request.config.p4info.CopyFrom(p4info)
    if isinstance(request, p4r.WriteRequest):
        for note in event.notes:
            m = re.search(r"request has (\d+) updates", note)
            if m:
                event.request = expand_linear(request, int(m.group(1)))
    return True


# -- building requests by P4Info names ----------------------------------------------------------


def _bytes(value: int | bytes, bitwidth: int) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.to_bytes(max(1, (bitwidth + 7) // 8), "big")  # full width, as many clients do


class Program:
    """Build P4Runtime messages from P4Info names (values are ints, or raw bytes as given)."""

    def __init__(self, p4info: p4i.P4Info) -> None:
        self.p4info = p4info
        self.tables = {t.preamble.name: t for t in p4info.tables}
        self.actions = {a.preamble.name: a for a in p4info.actions}
        self.counters = {c.preamble.name: c for c in p4info.counters}

    def table_id(self, table: str) -> int:
        return self.tables[table].preamble.id

    def action_id(self, action: str) -> int:
        return self.actions[action].preamble.id

    def counter_id(self, counter: str) -> int:
        return self.counters[counter].preamble.id

    def action(self, name: str, **params: int | bytes) -> p4r.Action:
        info = self.actions[name]
        action = p4r.Action(action_id=info.preamble.id)
        for p in info.params:
            if p.name in params:
                action.params.add(param_id=p.id, value=_bytes(params[p.name], p.bitwidth))
        return action

    def entry(self, table: str, match: dict | None = None, action: str | None = None,
              params: dict | None = None, priority: int = 0, default: bool = False
              ) -> p4r.TableEntry:
        info = self.tables[table]
        entry = p4r.TableEntry(table_id=info.preamble.id, priority=priority,
                               is_default_action=default)
        fields = {f.name: f for f in info.match_fields}
        for name, value in (match or {}).items():
            f = fields[name]
            m = entry.match.add(field_id=f.id)
            if f.match_type == p4i.MatchField.LPM:
                m.lpm.value = _bytes(value[0], f.bitwidth)
                m.lpm.prefix_len = value[1]
            elif f.match_type == p4i.MatchField.TERNARY:
                m.ternary.value = _bytes(value[0], f.bitwidth)
                m.ternary.mask = _bytes(value[1], f.bitwidth)
            else:
                m.exact.value = _bytes(value, f.bitwidth)
        if action is not None:
            entry.action.action.CopyFrom(self.action(action, **(params or {})))
        return entry

    def update(self, kind: str, table: str, match: dict | None = None, action: str | None = None,
               params: dict | None = None, **kw) -> p4r.Update:
        update = p4r.Update(type=p4r.Update.Type.Value(kind))
        update.entity.table_entry.CopyFrom(self.entry(table, match, action, params, **kw))
        return update


def write_request(updates, election_id: int | None = 10, device_id: int = 1,
                  role: str = "", atomicity: int = 0) -> p4r.WriteRequest:
    request = p4r.WriteRequest(device_id=device_id, role=role, atomicity=atomicity)
    if election_id is not None:
        request.election_id.high = election_id >> 64
        request.election_id.low = election_id & (2**64 - 1)
    request.updates.extend(updates)
    return request


def pipeline_request(p4info: p4i.P4Info | None, action: str = "VERIFY_AND_COMMIT",
                     election_id: int | None = 10, device_id: int = 1,
                     cookie: int | None = None, device_config: bytes = b"{}"
                     ) -> p4r.SetForwardingPipelineConfigRequest:
    request = p4r.SetForwardingPipelineConfigRequest(
        device_id=device_id, action=p4r.SetForwardingPipelineConfigRequest.Action.Value(action)
    )
    if election_id is not None:
        request.election_id.low = election_id
    if p4info is not None:
        request.config.p4info.CopyFrom(p4info)
        request.config.p4_device_config = device_config
        if cookie is not None:
            request.config.cookie.cookie = cookie
    return request


def read_request(*entities: p4r.Entity | p4r.TableEntry | p4r.CounterEntry,
                 device_id: int = 1) -> p4r.ReadRequest:
    request = p4r.ReadRequest(device_id=device_id)
    for item in entities:
        if isinstance(item, p4r.TableEntry):
            request.entities.add().table_entry.CopyFrom(item)
        elif isinstance(item, p4r.CounterEntry):
            request.entities.add().counter_entry.CopyFrom(item)
        else:
            request.entities.add().CopyFrom(item)
    return request


def read_entities(outcome: Outcome) -> list[p4r.Entity]:
    return [e for response in outcome.responses for e in response.entities]


# -- a ready session on the transcript program (shared by the sim tests) -----------------------

VIP = "MyIngress.vip_table"
BACKEND = "MyIngress.backend_table"
LPM = "MyIngress.ipv4_lpm"
PROGRAM = Program(load_p4info())


def vip_match(ip: int = 0x0A000001, port: int = 80, proto: int = 6) -> dict:
    return {"h.ipv4.dstAddr": ip, "h.tcp.dstPort": port, "h.ipv4.protocol": proto}


def vip(kind: str = "INSERT", ip: int = 0x0A000001, service: int = 1, **kw) -> p4r.Update:
    return PROGRAM.update(kind, VIP, vip_match(ip), "MyIngress.set_service",
                          {"service_id": service, "bucket_mask": 0xFF}, **kw)


class Session:
    """A switch with a primary (election id 10) and the transcript program committed."""

    def __init__(self, bmv2: bool, p4info=None) -> None:
        self.switch = SoftwareSwitch(bmv2=bmv2)
        self.switch.start()
        self.client = Client(f"127.0.0.1:{self.switch.port}")
        self.stream, _ = self.client.arbitrate(10)
        outcome = self.client.unary("SetForwardingPipelineConfig",
                                    pipeline_request(p4info or load_p4info()))
        assert outcome.ok, outcome

    def write(self, *updates: p4r.Update, **kw):
        return self.client.unary("Write", write_request(updates, **kw))

    def codes(self, *updates: p4r.Update) -> list[tuple[int, str]]:
        outcome = self.write(*updates)
        if outcome.ok:
            return [(0, "")] * len(updates)
        assert outcome.code == grpc.StatusCode.UNKNOWN, outcome
        return [(e.canonical_code, e.message) for e in outcome.errors()]

    def read_table(self, table: str) -> list[p4r.TableEntry]:
        outcome = self.client.read(read_request(p4r.TableEntry(table_id=PROGRAM.table_id(table))))
        assert outcome.ok, outcome
        return [e.table_entry for e in read_entities(outcome)]

    def close(self) -> None:
        self.client.close()
        self.switch.stop(0)


