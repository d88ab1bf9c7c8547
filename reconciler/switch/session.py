"""One P4Runtime session with one switch (asyncio): connect, become primary, make sure of the
pipeline, write batches, read back. No transaction logic: the two-switch transaction
(reconciler/apply.py) is built on this.

Why grpc.aio directly rather than finsy's Switch: finsy's Switch runs its own connection loop
(reconnects, re-arbitrates, pushes the pipeline on its own terms and keeps going), whereas the
transaction needs every step to be explicit and to fail loudly: arbitrate once with the id the
Lease gave us and refuse to act as a backup, never push a pipeline that is already there (that
clears the tables), close the stream at once when deposed (BMv2 promotes the next stream). finsy
is still used for the protobuf bindings and google.rpc.Status (DESIGN.md 8).

Targets this is written against (../shared/fixtures/p4runtime-bmv2/README.md): per-update
errors arrive as UNKNOWN with one p4.v1.Error per update in the grpc-status-details-bin trailer,
which grows ~35 bytes per update, so the channel's metadata limit is raised; Reads return one
message however large, so the receive limit is lifted; a Read may stream data and then fail, so
data is only used when the RPC ends OK.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from finsy.proto import U128, p4i, p4r, p4r_grpc, rpc_status

from reconciler.p4info import PipelineInfo, pipeline_info_from_message
from reconciler.snapshot import Entry
from reconciler.switch.tls import TlsSettings
from reconciler.switch.translate import (
    TranslationError,
    describe_update,
    election_id_proto,
    entry_to_proto,
    proto_to_entry,
)

__all__ = [
    "ArbitrationError",
    "CounterCell",
    "NotPrimaryError",
    "PipelineError",
    "PipelineStatus",
    "ReadError",
    "SwitchError",
    "SwitchSession",
    "SwitchTlsError",
    "SwitchUnreachable",
    "UpdateError",
    "WriteError",
    "WriteOutcome",
    "pipeline_cookie",
]

log = logging.getLogger("reconciler.switch")

STATUS_DETAILS_KEY = "grpc-status-details-bin"
# BMv2's trailer is ~86 + 35 bytes per update (a 500-update batch: ~17.6 KB, over gRPC's default
# 16 KiB hard limit). 8 MiB covers batches of 200,000 updates.
DEFAULT_MAX_METADATA = 8 << 20
_ERROR_TYPE = "p4.v1.Error"
_READ_KEYS_CHUNK = 5000  # entities per ReadRequest when reading by key


# --- errors -----------------------------------------------------------------------------------


class SwitchError(Exception):
    """A P4Runtime operation on one switch failed; the message names the switch and says why."""

    def __init__(
        self,
        message: str,
        *,
        switch: str = "",
        code: grpc.StatusCode | None = None,
        outcome: "WriteOutcome | None" = None,
        primary_election_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.switch = switch
        self.code = code  # the gRPC status behind the failure, when there is one
        self.outcome = outcome  # writes: what was sent and what failed before this error
        self.primary_election_id = primary_election_id  # arbitration: the current primary's id


class SwitchUnreachable(SwitchError):
    """No gRPC connection could be made (refused, timed out, name not resolved)."""


class SwitchTlsError(SwitchUnreachable):
    """The TLS handshake failed: untrusted certificate, name mismatch, client certificate refused."""


class ArbitrationError(SwitchError):
    """The StreamChannel arbitration did not complete (no answer, stream refused)."""


class NotPrimaryError(SwitchError):
    """This session is not (or no longer) the primary controller: another controller holds a
    higher election id, or the stream ended. Writes from it are refused (fencing).
    `no_primary`: arbitration said nobody is primary and `primary_election_id` is the highest
    id the switch has seen (specification mode), rather than naming a live primary."""

    no_primary: bool = False


class PipelineError(SwitchError):
    """Get/SetForwardingPipelineConfig failed or did not leave the expected pipeline."""


class WriteError(SwitchError):
    """A Write failed. `outcome` tells which updates were refused and how many were sent."""


class ReadError(SwitchError):
    """A Read failed or returned something that does not fit the P4Info."""


class _NotPrimaryWrite(WriteError, NotPrimaryError):
    """A Write refused with PERMISSION_DENIED: both a failed write and a lost primacy."""


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateError:
    """One refused update: its place in the write() call, what it was, and the switch's reason."""

    request: int  # index of the WriteRequest in the write() call
    index: int  # index of the update in that request
    update: str  # e.g. "INSERT MyIngress.vip_table ('203.0.113.10', 80, 6)"
    code: str  # canonical code name, e.g. "ALREADY_EXISTS"
    message: str

    def __str__(self) -> str:
        return f"{self.update}: {self.code} {self.message}".rstrip()


@dataclass(frozen=True)
class WriteOutcome:
    """What a write() call did. Any per-update error, whatever its code, makes the write failed
    (DESIGN.md 8: BMv2 reports a full table as UNKNOWN, the specification RESOURCE_EXHAUSTED)."""

    requests_sent: int
    updates_sent: int
    errors: tuple[UpdateError, ...] = ()
    requests_total: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and self.requests_sent == self.requests_total

    @property
    def applied(self) -> int:
        """Updates the switch reported as applied (sent minus refused)."""
        return self.updates_sent - len(self.errors)

    def summary(self, limit: int = 5) -> str:
        head = "; ".join(str(e) for e in self.errors[:limit])
        more = f"; and {len(self.errors) - limit} more" if len(self.errors) > limit else ""
        return (
            f"{len(self.errors)} of {self.updates_sent} update(s) refused in "
            f"{self.requests_sent} of {self.requests_total} request(s): {head}{more}"
        )


@dataclass(frozen=True)
class PipelineStatus:
    """The switch's forwarding pipeline as GetForwardingPipelineConfig reports it."""

    cookie: int | None  # None: the switch holds a config without a cookie
    p4info: p4i.P4Info | None = field(default=None, repr=False, compare=False)
    device_config: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CounterCell:
    index: int
    packets: int
    bytes: int


def _preambled(m: p4i.P4Info) -> Iterator[tuple[str, Any]]:
    """(field name, object) for every P4Info object with a preamble (tables, actions...)."""
    for field_desc, value in m.ListFields():
        if field_desc.message_type is not None and hasattr(value, "add"):  # repeated messages
            for item in value:
                if "preamble" in item.DESCRIPTOR.fields_by_name:
                    yield field_desc.name, item


def _comparable(p4info: p4i.P4Info) -> bytes:
    """The P4Info without what does not change the pipeline: pkg_info (compiler, arch, version
    strings) and documentation."""
    m = p4i.P4Info()
    m.CopyFrom(p4info)
    m.ClearField("pkg_info")
    for _, item in _preambled(m):
        item.preamble.ClearField("doc")
    return m.SerializeToString(deterministic=True)


def p4info_difference(ours: p4i.P4Info, theirs: p4i.P4Info) -> str:
    """"" when the two P4Infos describe the same pipeline (ids, names, match fields, actions,
    params, sizes...), else what differs, in a few words."""
    if _comparable(ours) == _comparable(theirs):
        return ""

    def objects(m: p4i.P4Info) -> dict[str, str]:
        return {
            f"{kind[:-1] if kind.endswith('s') else kind} {item.preamble.name}": f"{item.preamble.id:#x}"
            for kind, item in _preambled(m)
        }

    a, b = objects(ours), objects(theirs)
    missing = sorted(a.keys() - b.keys())
    extra = sorted(b.keys() - a.keys())
    changed = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    if extra:
        parts.append("not ours: " + ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else ""))
    if changed:
        parts.append("other ids for " + ", ".join(changed[:3]))
    return "; ".join(parts) or "same tables and actions, but other match fields, parameters, sizes or annotations"


def pipeline_cookie(p4info: p4i.P4Info, device_config: bytes) -> int:
    """The 64-bit cookie naming a (P4Info, device config) pair: equal cookies, equal pipelines."""
    h = hashlib.sha256(b"p4kube-pipeline-cookie-v1\0")
    h.update(hashlib.sha256(p4info.SerializeToString(deterministic=True)).digest())
    h.update(hashlib.sha256(device_config).digest())
    return int.from_bytes(h.digest()[:8], "big")


# --- the session ------------------------------------------------------------------------------


class SwitchSession:
    """A P4Runtime client session with one switch (one device id), as primary controller.

        async with SwitchSession("10.0.0.1:9559", device_id=1, election_id=eid, info=info) as s:
            await s.ensure_pipeline(p4info, device_config)
            outcome = await s.write(requests)
            entries = await s.read_entries()

    open() raises SwitchUnreachable, SwitchTlsError, ArbitrationError or NotPrimaryError; it
    never leaves a backup stream open (BMv2 would promote it later, behind our back).
    """

    def __init__(
        self,
        address: str,
        *,
        device_id: int,
        election_id: int,
        info: PipelineInfo,
        tls: TlsSettings | None = None,
        name: str | None = None,
        connect_timeout: float = 5.0,
        arbitration_timeout: float = 5.0,
        rpc_timeout: float = 60.0,
        max_metadata_size: int = DEFAULT_MAX_METADATA,
    ) -> None:
        self._eid = election_id_proto(election_id)  # validates: 1 .. 2**128-1
        if not 0 <= device_id < 1 << 64:
            raise ValueError(f"device id {device_id} does not fit in 64 bits")
        self.address = address
        self.device_id = device_id
        self.election_id = election_id
        self.info = info
        self.tls = tls
        self.name = name or address
        self.connect_timeout = connect_timeout
        self.arbitration_timeout = arbitration_timeout
        self.rpc_timeout = rpc_timeout
        self.max_metadata_size = max_metadata_size
        self.api_version: str | None = None  # from CapabilitiesResponse
        self.primary_election_id: int | None = None  # the current primary's id, as last told
        self._primary = False
        self._lost: str | None = None  # why the session stopped being usable
        self._channel: grpc.aio.Channel | None = None
        self._stub: p4r_grpc.P4RuntimeStub | None = None
        self._stream: Any = None  # grpc.aio.StreamStreamCall
        self._reader: asyncio.Task[None] | None = None
        self._lost_event: asyncio.Event | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def is_primary(self) -> bool:
        """True while this session holds primacy as far as the stream has told us."""
        return self._primary and self._lost is None

    @property
    def is_open(self) -> bool:
        return self._channel is not None

    def _where(self) -> str:
        return f"switch {self.name}" if self.name == self.address else f"switch {self.name} ({self.address})"

    # -- open / close ------------------------------------------------------------------------

    async def __aenter__(self) -> "SwitchSession":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._channel is not None:
            raise RuntimeError(f"the session with {self._where()} is already open")
        options: list[tuple[str, Any]] = [
            ("grpc.max_metadata_size", self.max_metadata_size),
            ("grpc.absolute_max_metadata_size", self.max_metadata_size),
            ("grpc.max_receive_message_length", -1),  # a full read is one message (BMv2)
            ("grpc.max_send_message_length", -1),
        ]
        if self.tls is not None:
            options += self.tls.channel_options()
            self._channel = grpc.aio.secure_channel(self.address, self.tls.channel_credentials(), options=options)
        else:
            self._channel = grpc.aio.insecure_channel(self.address, options=options)
        self._stub = p4r_grpc.P4RuntimeStub(self._channel)
        self._lost = None
        self._lost_event = asyncio.Event()
        try:
            await self._connect()
            await self._arbitrate()
        except BaseException:
            await self.close()
            raise
        self._reader = asyncio.get_running_loop().create_task(self._read_stream(), name=f"p4rt-stream-{self.name}")

    async def close(self) -> None:
        """Close the stream first and at once (a deposed leader must stop being primary before
        anything else happens), then the channel. Safe to call more than once."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()  # synchronous: cancelled before anything else is awaited
        self._lose("the session was closed", quiet=True)
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                pass
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def _connect(self) -> None:
        """Capabilities as the connectivity check: it fails fast with the transport's reason
        (refused, TLS handshake) instead of waiting out a timeout like channel_ready()."""
        assert self._stub is not None
        try:
            reply = await self._stub.Capabilities(
                p4r.CapabilitiesRequest(), timeout=self.connect_timeout, wait_for_ready=False
            )
            self.api_version = reply.p4runtime_api_version or None
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return  # an old target without Capabilities: it answered, so it is reachable
            raise self._connect_error(exc) from None

    def _connect_error(self, exc: grpc.aio.AioRpcError) -> SwitchError:
        code, details = exc.code(), exc.details() or ""
        lower = details.lower()
        if self.tls is not None:
            why = _tls_failure(lower, self.tls, self.address)
            if why is not None:
                return SwitchTlsError(
                    f"{self._where()}: TLS failure: {why}. gRPC said: {details}", switch=self.name, code=code
                )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return SwitchUnreachable(
                f"{self._where()}: no answer within {self.connect_timeout:g}s: {details}", switch=self.name, code=code
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = ""
            if self.tls is None and "socket closed" in lower:
                hint = " (the switch closed the connection: does it require TLS?)"
            return SwitchUnreachable(f"{self._where()} is unreachable{hint}: {details}", switch=self.name, code=code)
        return SwitchUnreachable(
            f"{self._where()}: Capabilities failed with {code.name}: {details}", switch=self.name, code=code
        )

    async def _arbitrate(self) -> None:
        assert self._stub is not None
        self._stream = self._stub.StreamChannel()
        request = p4r.StreamMessageRequest()
        request.arbitration.device_id = self.device_id
        request.arbitration.election_id.CopyFrom(self._eid)
        try:
            await asyncio.wait_for(self._stream.write(request), self.arbitration_timeout)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.arbitration_timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise asyncio.TimeoutError
                msg = await asyncio.wait_for(self._stream.read(), remaining)
                if msg is grpc.aio.EOF:
                    code, details = await self._stream.code(), await self._stream.details()
                    raise ArbitrationError(
                        f"{self._where()} ended the StreamChannel during arbitration: "
                        f"{code.name} {details}".rstrip() + self._arbitration_hint(details),
                        switch=self.name, code=code,
                    )
                if msg.WhichOneof("update") == "arbitration":
                    break
                log.debug("%s: ignoring a %s message before arbitration", self.name, msg.WhichOneof("update"))
        except asyncio.TimeoutError:
            raise ArbitrationError(
                f"{self._where()}: no arbitration response within {self.arbitration_timeout:g}s "
                f"(device id {self.device_id})", switch=self.name,
            ) from None
        except grpc.aio.AioRpcError as exc:
            raise ArbitrationError(
                f"{self._where()} refused the StreamChannel: {exc.code().name} {exc.details() or ''}".rstrip()
                + self._arbitration_hint(exc.details() or ""),
                switch=self.name, code=exc.code(),
            ) from None
        self._on_arbitration(msg.arbitration)
        if not self._primary:
            status = msg.arbitration.status
            holder = self.primary_election_id
            if status.code == grpc.StatusCode.NOT_FOUND.value[0]:
                why = (
                    f"the switch has no primary and our election id {self.election_id} is lower than "
                    f"the highest it has seen ({holder})" if holder is not None else "the switch has no primary"
                )
            else:
                why = f"another controller holds a higher election id ({holder}; ours is {self.election_id})"
            error = NotPrimaryError(
                f"{self._where()}: not primary for device {self.device_id}: {why} "
                f"[{status.message or status.code}]", switch=self.name, primary_election_id=holder,
            )
            error.no_primary = status.code == grpc.StatusCode.NOT_FOUND.value[0]
            raise error

    def _arbitration_hint(self, details: str) -> str:
        if "election id" in details.lower():
            return f" (election id {self.election_id} is already used by another controller of this device)"
        if "device" in details.lower():
            return f" (device id {self.device_id})"
        return ""

    def _on_arbitration(self, arb: p4r.MasterArbitrationUpdate) -> None:
        was = self._primary
        self._primary = arb.status.code == 0
        self.primary_election_id = U128.decode(arb.election_id) if arb.HasField("election_id") else None
        if was and not self._primary:
            # Sticky: BMv2 re-promotes us when the new primary's stream ends, but a session that
            # was deposed once must not write again (the new leader may still be at work).
            self._lose(f"deposed: the primary's election id is now {self.primary_election_id}, ours {self.election_id}")
        elif self._primary and not was and self._lost is None:
            log.info("%s: primary with election id %d", self._where(), self.election_id)

    async def _read_stream(self) -> None:
        """Follow the stream after arbitration: demotion and the stream's end make the session
        unusable for writes (we check before each Write, the switch checks again)."""
        stream = self._stream
        try:
            while True:
                msg = await stream.read()
                if msg is grpc.aio.EOF:
                    self._lose(f"the switch closed the StreamChannel ({await stream.code()})")
                    return
                which = msg.WhichOneof("update")
                if which == "arbitration":
                    self._on_arbitration(msg.arbitration)
                    if self._lost is not None:
                        # deposed: leave at once, so that BMv2 cannot re-promote this stream
                        stream.cancel()
                        return
                elif which == "error":
                    log.warning("%s: stream error: %s", self._where(), msg.error)
                else:
                    log.debug("%s: ignoring a %s stream message", self._where(), which)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED or self._stream is not None:
                self._lose(f"the StreamChannel failed: {exc.code().name} {exc.details() or ''}".rstrip())
        except Exception as exc:  # keep the reason: a silent reader death would look like primacy
            log.exception("%s: StreamChannel reader failed", self._where())
            self._lose(f"the StreamChannel reader failed: {exc!r}")

    def _lose(self, reason: str, quiet: bool = False) -> None:
        if self._lost is None:
            self._lost = reason
            (log.debug if quiet else log.warning)("%s: %s; the session can no longer write", self._where(), reason)
        self._primary = False
        if self._lost_event is not None:
            self._lost_event.set()

    async def wait_lost(self) -> str:
        """Wait until the session can no longer write (deposed, stream ended, closed); returns
        why. For watchdogs: a transaction in progress on a lost session must stop."""
        if self._lost_event is None:
            raise RuntimeError(f"the session with {self._where()} was never opened")
        await self._lost_event.wait()
        return self._lost or "lost"

    @property
    def lost_reason(self) -> str | None:
        """Why the session can no longer write, or None while it can."""
        return self._lost

    def _require_primary(self, what: str) -> None:
        if self._stub is None:
            raise SwitchError(f"{self._where()}: cannot {what}: the session is not open", switch=self.name)
        if self._lost is not None:
            raise NotPrimaryError(
                f"{self._where()}: cannot {what}: {self._lost}; open a new session",
                switch=self.name, primary_election_id=self.primary_election_id,
            )
        if not self._primary:
            raise NotPrimaryError(
                f"{self._where()}: cannot {what}: no longer primary (the primary's election id is "
                f"{self.primary_election_id}, ours {self.election_id})",
                switch=self.name, primary_election_id=self.primary_election_id,
            )

    def _require_open(self, what: str) -> p4r_grpc.P4RuntimeStub:
        if self._stub is None:
            raise SwitchError(f"{self._where()}: cannot {what}: the session is not open", switch=self.name)
        return self._stub

    # -- pipeline ------------------------------------------------------------------------------

    async def get_pipeline(self, *, full: bool = False) -> PipelineStatus | None:
        """The switch's pipeline (cookie only, or with P4Info and device config when `full`);
        None when it has none."""
        Req = p4r.GetForwardingPipelineConfigRequest
        config = await self._pipeline_config(Req.ALL if full else Req.COOKIE_ONLY)
        if config is None:
            return None
        empty = not config.HasField("cookie") and not config.HasField("p4info") and not config.p4_device_config
        if empty and not full:
            return PipelineStatus(cookie=None)  # BMv2 after a Set that committed nothing: `config {}`
        return PipelineStatus(
            cookie=config.cookie.cookie if config.HasField("cookie") else None,
            p4info=config.p4info if full and config.HasField("p4info") else None,
            device_config=config.p4_device_config if full else None,
        )

    async def _pipeline_config(self, response_type: int) -> p4r.ForwardingPipelineConfig | None:
        """The switch's ForwardingPipelineConfig (GetForwardingPipelineConfig with
        `response_type`); None when it has no pipeline."""
        stub = self._require_open("get the pipeline")
        request = p4r.GetForwardingPipelineConfigRequest(device_id=self.device_id, response_type=response_type)
        try:
            reply = await stub.GetForwardingPipelineConfig(request, timeout=self.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "pipeline" in (exc.details() or "").lower():
                return None  # BMv2 before any SetForwardingPipelineConfig
            raise PipelineError(
                f"{self._where()}: GetForwardingPipelineConfig failed: {_status_text(exc)}",
                switch=self.name, code=exc.code(),
            ) from None
        if not reply.HasField("config"):
            return None  # the specification's answer when no pipeline is set
        return reply.config

    async def ensure_pipeline(self, p4info: p4i.P4Info, device_config: bytes, cookie: int | None = None) -> bool:
        """Make the switch run (p4info, device_config); True when it had to be pushed.

        Compared by cookie (default: pipeline_cookie of the two). A matching pipeline is never
        pushed again: VERIFY_AND_COMMIT of the same pipeline clears every table."""
        self._check_p4info(p4info)
        if cookie is None:
            cookie = pipeline_cookie(p4info, device_config)
        current = await self.get_pipeline()
        if current is not None and current.cookie == cookie:
            log.info("%s: pipeline cookie %#x already installed", self._where(), cookie)
            return False
        self._require_primary("push the pipeline")
        stub = self._require_open("push the pipeline")
        Req = p4r.SetForwardingPipelineConfigRequest
        request = Req(device_id=self.device_id, election_id=self._eid, action=Req.VERIFY_AND_COMMIT)
        request.config.p4info.CopyFrom(p4info)
        request.config.p4_device_config = device_config
        request.config.cookie.cookie = cookie
        try:
            await stub.SetForwardingPipelineConfig(request, timeout=self.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            error = NotPrimaryError if exc.code() == grpc.StatusCode.PERMISSION_DENIED else PipelineError
            raise error(
                f"{self._where()}: SetForwardingPipelineConfig (VERIFY_AND_COMMIT) failed: {_status_text(exc)}",
                switch=self.name, code=exc.code(), primary_election_id=self.primary_election_id,
            ) from None
        after = await self.get_pipeline()
        if after is None or after.cookie != cookie:
            got = "no pipeline" if after is None else f"cookie {after.cookie}"
            raise PipelineError(
                f"{self._where()}: pushed pipeline cookie {cookie:#x} but the switch reports {got}",
                switch=self.name,
            )
        previous = "none" if current is None else f"cookie {current.cookie}"
        log.info("%s: pipeline pushed (cookie %#x, was %s)", self._where(), cookie, previous)
        return True

    async def check_external_pipeline(self, p4info: p4i.P4Info) -> PipelineStatus:
        """For a pipeline installed by another tool (switchConfig.pipeline: external): the
        switch's pipeline, when its P4Info equals `p4info`; else PipelineError saying what
        differs. Never pushes anything. Its cookie is whatever that tool set (not ours), so the
        P4Info itself is compared (GetForwardingPipelineConfig P4INFO_AND_COOKIE)."""
        Req = p4r.GetForwardingPipelineConfigRequest
        config = await self._pipeline_config(Req.P4INFO_AND_COOKIE)
        if config is None or not config.HasField("p4info"):
            raise PipelineError(
                f"{self._where()}: runs no pipeline, and switchConfig.pipeline is external: the reconciler does "
                f"not push one; install the pipeline with the tool that manages it (nothing was written)",
                switch=self.name,
            )
        cookie = config.cookie.cookie if config.HasField("cookie") else None
        problem = p4info_difference(p4info, config.p4info)
        if problem:
            raise PipelineError(
                f"{self._where()}: the pipeline installed by another tool (switchConfig.pipeline: external) is not "
                f"ours: its P4Info differs ({problem}); nothing was written",
                switch=self.name,
            )
        return PipelineStatus(cookie=cookie, p4info=config.p4info)

    def _check_p4info(self, p4info: p4i.P4Info) -> None:
        """The pushed P4Info must be the one entries are encoded with."""
        other = pipeline_info_from_message(p4info)
        ours = {(t.name, t.id) for t in self.info.tables.values()} | {(a.name, a.id) for a in self.info.actions.values()}
        theirs = {(t.name, t.id) for t in other.tables.values()} | {(a.name, a.id) for a in other.actions.values()}
        if ours != theirs:
            diff = sorted(ours ^ theirs)[:5]
            raise ValueError(f"the P4Info to push differs from the session's in tables/actions: {diff}")

    # -- write ---------------------------------------------------------------------------------

    async def write(self, requests: Sequence[p4r.WriteRequest], *, stop_on_error: bool = True) -> WriteOutcome:
        """Send `requests` in order, each after the previous one completed.

        Returns the outcome; per-update errors (decoded from the status details trailer) are in
        `outcome.errors`, and with `stop_on_error` no request is sent after one that had any.
        Raises WriteError (with `.outcome` so far) when a whole request fails, NotPrimaryError
        (also a WriteError) when the switch or our stream says we are not primary."""
        self._require_open("write")
        total = len(requests)
        sent = updates = 0
        errors: list[UpdateError] = []
        for i, request in enumerate(requests):
            if request.device_id != self.device_id or request.election_id != self._eid:
                raise ValueError(
                    f"WriteRequest {i} is for device {request.device_id} with election id "
                    f"{U128.decode(request.election_id)}, this session is device {self.device_id}, "
                    f"election id {self.election_id}"
                )
            try:
                self._require_primary("write")
            except NotPrimaryError as exc:
                raise _NotPrimaryWrite(
                    str(exc), switch=self.name, primary_election_id=self.primary_election_id,
                    outcome=WriteOutcome(sent, updates, tuple(errors), total),
                ) from None
            stub = self._require_open("write")
            try:
                await stub.Write(request, timeout=self.rpc_timeout)
            except grpc.aio.AioRpcError as exc:
                per_update = self._update_errors(i, request, exc)
                if per_update is None:
                    partial = WriteOutcome(sent, updates, tuple(errors), total)
                    raise self._write_error(i, request, exc, partial) from None
                sent, updates = sent + 1, updates + len(request.updates)
                errors.extend(per_update)
                if stop_on_error:
                    break
                continue
            sent, updates = sent + 1, updates + len(request.updates)
        outcome = WriteOutcome(sent, updates, tuple(errors), total)
        if errors:
            log.warning("%s: %s", self._where(), outcome.summary())
        return outcome

    def _update_errors(self, i: int, request: p4r.WriteRequest, exc: grpc.aio.AioRpcError) -> list[UpdateError] | None:
        """The per-update errors of a failed Write, or None when it failed as a whole."""
        status = _status_details(exc)
        if status is None or not status.details:
            return None
        if len(status.details) != len(request.updates):
            log.warning("%s: Write status holds %d details for %d updates", self._where(),
                        len(status.details), len(request.updates))
            return None
        out: list[UpdateError] = []
        for j, detail in enumerate(status.details):
            error = p4r.Error()
            if not detail.type_url.endswith("/" + _ERROR_TYPE) or not detail.Unpack(error):
                return None
            if error.canonical_code != 0:
                out.append(
                    UpdateError(i, j, describe_update(self.info, request.updates[j]),
                                _code_name(error.canonical_code), error.message)
                )
        if not out:
            return None  # failed, yet every update says OK: treat as a whole-request failure
        return out

    def _write_error(self, i: int, request: p4r.WriteRequest, exc: grpc.aio.AioRpcError,
                     partial: WriteOutcome) -> WriteError:
        code, text = exc.code(), _status_text(exc)
        head = f"{self._where()}: Write {i + 1} of {partial.requests_total} ({len(request.updates)} updates)"
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return _NotPrimaryWrite(
                f"{head} refused: not primary ({text}); another controller took over, or our election "
                f"id {self.election_id} is not the primary's", switch=self.name, code=code, outcome=partial,
                primary_election_id=self.primary_election_id,
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata" in text.lower():
            return WriteError(
                f"{head}: the per-update error trailer exceeded the client's metadata limit "
                f"({self.max_metadata_size} bytes); raise max_metadata_size or lower the batch size. "
                f"Some updates may have been applied: {text}", switch=self.name, code=code, outcome=partial,
            )
        unknown = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
        tail = " Which of its updates were applied is unknown: read back." if unknown else ""
        return WriteError(f"{head} failed: {text}.{tail}", switch=self.name, code=code, outcome=partial)

    # -- read ----------------------------------------------------------------------------------

    async def read_entries(self, tables: Iterable[str] | None = None) -> list[Entry]:
        """Every (non-default) entry of `tables` (default: all tables of the P4Info), one
        wildcard read per table in one request. Values come back canonical."""
        names = list(self.info.tables) if tables is None else list(tables)
        if not names:
            return []
        request = p4r.ReadRequest(device_id=self.device_id)
        for name in names:
            request.entities.add().table_entry.table_id = self.info.table(name).id
        return self._decode_entries(await self._read(request, f"table entries of {', '.join(names)}"))

    def _decode_entries(self, entities: Iterable[p4r.Entity]) -> list[Entry]:
        out: list[Entry] = []
        for entity in entities:
            if entity.WhichOneof("entity") != "table_entry" or entity.table_entry.is_default_action:
                continue
            try:
                out.append(proto_to_entry(self.info, entity.table_entry))
            except TranslationError as exc:
                raise ReadError(f"{self._where()}: read-back entry does not fit the P4Info: {exc}",
                                switch=self.name) from None
        return out

    async def count_entries(self, tables: Iterable[str] | None = None) -> dict[str, int]:
        """How many (non-default) entries each of `tables` (default: all) holds: one wildcard
        Read per table, counting the entities of the responses without decoding them into
        Entry objects (the health round's cheap check; wildcard reads never return default
        entries)."""
        names = list(self.info.tables) if tables is None else list(tables)
        counts: dict[str, int] = {}
        for name in names:
            request = p4r.ReadRequest(device_id=self.device_id)
            request.entities.add().table_entry.table_id = self.info.table(name).id
            counts[name] = await self._count(request, f"table entries of {name}")
        return counts

    async def _count(self, request: p4r.ReadRequest, what: str) -> int:
        stub = self._require_open(f"read {what}")
        count = 0
        try:
            async for reply in stub.Read(request, timeout=self.rpc_timeout):
                count += len(reply.entities)
        except grpc.aio.AioRpcError as exc:
            raise ReadError(f"{self._where()}: reading {what} failed: {_status_text(exc)}",
                            switch=self.name, code=exc.code()) from None
        return count

    async def read_keys(self, entries: Iterable[Entry]) -> list[Entry]:
        """The switch's entries at the keys of `entries` (their actions are not compared here);
        keys the switch does not hold are simply absent from the result.

        A key whose encoding has no match field at all (an LPM /0, the field being omitted)
        would be a wildcard read, so such tables are read whole and filtered."""
        wanted: set[tuple[str, tuple]] = set()
        whole: set[str] = set()
        keyed: list[p4r.TableEntry] = []
        for e in entries:
            if (e.table, e.key) in wanted:
                continue
            wanted.add((e.table, e.key))
            try:
                te = entry_to_proto(self.info, e, key_only=True)
            except TranslationError as exc:
                raise ReadError(f"{self._where()}: cannot read {e.table} {e.key!r}: {exc}", switch=self.name) from None
            if len(te.match) == 0 and self.info.table(e.table).match_fields:
                whole.add(e.table)
            else:
                keyed.append(te)
        found: dict[tuple[str, tuple], Entry] = {}
        for start in range(0, len(keyed), _READ_KEYS_CHUNK):
            request = p4r.ReadRequest(device_id=self.device_id)
            for te in keyed[start : start + _READ_KEYS_CHUNK]:
                request.entities.add().table_entry.CopyFrom(te)
            for entry in self._decode_entries(await self._read(request, f"{len(request.entities)} entries by key")):
                found[(entry.table, entry.key)] = entry
        if whole:
            for entry in await self.read_entries(sorted(whole)):
                found[(entry.table, entry.key)] = entry
        return [e for k, e in found.items() if k in wanted]

    async def read_counters(self, name: str, indexes: Iterable[int] | None = None) -> list[CounterCell]:
        """Cells of the indirect counter `name` (all of them, or `indexes`), sorted by index."""
        counter = self.info.counter(name)
        request = p4r.ReadRequest(device_id=self.device_id)
        if indexes is None:
            request.entities.add().counter_entry.counter_id = counter.id
        else:
            for index in indexes:
                ce = request.entities.add().counter_entry
                ce.counter_id = counter.id
                ce.index.index = index
        entities = await self._read(request, f"counter {name}")
        cells = [
            CounterCell(e.counter_entry.index.index, e.counter_entry.data.packet_count, e.counter_entry.data.byte_count)
            for e in entities
            if e.WhichOneof("entity") == "counter_entry" and e.counter_entry.counter_id == counter.id
        ]
        return sorted(cells, key=lambda c: c.index)

    async def _read(self, request: p4r.ReadRequest, what: str) -> list[p4r.Entity]:
        stub = self._require_open(f"read {what}")
        entities: list[p4r.Entity] = []
        try:
            # BMv2 may send data and then fail the RPC: nothing is used unless it ends OK
            async for reply in stub.Read(request, timeout=self.rpc_timeout):
                entities.extend(reply.entities)
        except grpc.aio.AioRpcError as exc:
            raise ReadError(f"{self._where()}: reading {what} failed: {_status_text(exc)}",
                            switch=self.name, code=exc.code()) from None
        return entities


# --- status helpers ---------------------------------------------------------------------------


def _status_details(exc: grpc.aio.AioRpcError) -> rpc_status.Status | None:
    for key, value in exc.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY:
            status = rpc_status.Status()
            status.ParseFromString(value)
            return status
    return None


def _status_text(exc: grpc.aio.AioRpcError) -> str:
    details = exc.details() or ""
    return f"{exc.code().name} {details}".rstrip() if details else exc.code().name


def _tls_failure(lower: str, tls: TlsSettings, address: str) -> str | None:
    """What a failed TLS connection means, from gRPC's (lower-cased) error text; None when the
    failure does not look like TLS."""
    if "hostname verification" in lower or "no match found for server name" in lower:
        return (
            f"the switch's certificate does not name {tls.server_name or address.rsplit(':', 1)[0]!r}; "
            "set serverName to a name its certificate carries"
        )
    if "certificate_verify_failed" in lower or "unable to get local issuer" in lower or "self signed" in lower:
        ca = tls.source or ("the configured CA" if tls.ca is not None else "the system CA roots")
        return (
            f"the switch's certificate is not signed by the CA we trust ({ca}): wrong CA file, "
            "or the switch serves a certificate from another CA"
        )
    if "wrong_version_number" in lower or "packet_length_too_long" in lower or "http_request" in lower:
        # Our ClientHello was answered with bytes that are not TLS: a plaintext server. Never
        # retried in plaintext: that would hand the tables to whoever answers on this port.
        return (
            "the switch does not speak TLS on this port (it answered in plaintext); enable TLS on the switch "
            "(simple_switch_grpc --grpc-server-ssl, Stratum -ca_cert_file/-server_cert_file/-server_key_file); "
            "plaintext is never tried instead"
        )
    if any(w in lower for w in ("peer_did_not_return_a_certificate", "certificate_required", "alert",
                                 "socket closed", "connection reset", "end of file")):
        # Our side checks the server's certificate (CERTIFICATE_VERIFY_FAILED above); a TLS alert
        # or a closed connection comes from the server rejecting ours. With TLS 1.3 the client
        # finishes its handshake first, so the rejection often shows as "Socket closed".
        if tls.mutual:
            return (
                "the switch closed the connection during the handshake: it most likely does not "
                "accept our client certificate (not signed by the CA it trusts for clients)"
            )
        return (
            "the switch closed the connection during the handshake: it most likely requires a client "
            "certificate (mutual TLS): set certFile and keyFile"
        )
    if any(w in lower for w in ("ssl", "tls", "handshake", "certificate", "x509")):
        return "the TLS handshake failed"
    return None


def _code_name(code: int) -> str:
    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c.name
    return f"code {code}"
