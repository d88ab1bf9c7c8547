"""Writes: send WriteRequests in order, each after the previous one completed, and tell which
updates the switch refused.

Per-update errors arrive as one p4.v1.Error per update in the grpc-status-details-bin trailer of
a failed Write (UNKNOWN on BMv2); finsy's P4RpcStatus decodes them. A Write that fails without
them failed as a whole, and how much of it was applied is then unknown when the transport broke.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import grpc
from finsy.p4client import P4RpcStatus
from finsy.proto import U128, p4r

from reconciler.p4info import PipelineInfo
from reconciler.switch.arbitration import Arbitration
from reconciler.switch.errors import (
    NotPrimaryError,
    NotPrimaryWrite,
    UpdateError,
    WriteError,
    WriteOutcome,
    status_text,
)
from reconciler.switch.translate import describe_update
from reconciler.switch.wire import EncodedWriteRequest

__all__ = ["Request", "write"]

# A message, or its bytes (a full sync's batches are built and sent as bytes: switch/wire.py).
Request = p4r.WriteRequest | EncodedWriteRequest
_WRITE_METHOD = "/p4.v1.P4Runtime/Write"


def _size(request: Request) -> int:
    return request.size if isinstance(request, EncodedWriteRequest) else len(request.updates)

log = logging.getLogger("reconciler.switch")


async def write(
    arbitration: Arbitration,
    info: PipelineInfo,
    requests: Sequence[Request],
    *,
    stop_on_error: bool = True,
    require_primary: Callable[[str], None] | None = None,
) -> WriteOutcome:
    """Send `requests` in order, each after the previous one completed.

    Returns the outcome; per-update errors are in `outcome.errors`, and with `stop_on_error` no
    request is sent after one that had any. Raises WriteError (with `.outcome` so far) when a
    whole request fails, NotPrimaryError (also a WriteError) when the switch or our stream says
    we are not primary. `require_primary` (default: the arbitration's) is checked before each
    request."""
    connection = arbitration.connection
    peer = connection.peer
    connection.stub_for("write")
    check = require_primary or arbitration.require_primary
    total = len(requests)
    sent = updates = 0
    errors: list[UpdateError] = []
    for i, request in enumerate(requests):
        if request.device_id != peer.device_id or request.election_id != peer.wire_election_id:
            raise ValueError(
                f"WriteRequest {i} is for device {request.device_id} with election id "
                f"{U128.decode(request.election_id)}, this session is device {peer.device_id}, "
                f"election id {peer.election_id}"
            )
        try:
            check("write")
        except NotPrimaryError as exc:
            raise NotPrimaryWrite(
                str(exc), switch=peer.name, primary_election_id=arbitration.primary_election_id,
                outcome=WriteOutcome(sent, updates, tuple(errors), total),
            ) from None
        stub = connection.stub_for("write")
        try:
            if isinstance(request, EncodedWriteRequest):
                assert connection.channel is not None  # stub_for raised otherwise
                raw = connection.channel.unary_unary(_WRITE_METHOD, request_serializer=None,
                                                     response_deserializer=p4r.WriteResponse.FromString)
                await raw(request.raw, timeout=connection.rpc_timeout)
            else:
                await stub.Write(request, timeout=connection.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            per_update = _update_errors(info, peer.where(), i, request, exc)
            if per_update is None:
                partial = WriteOutcome(sent, updates, tuple(errors), total)
                raise _write_error(arbitration, i, request, exc, partial) from None
            sent, updates = sent + 1, updates + _size(request)
            errors.extend(per_update)
            if stop_on_error:
                break
            continue
        sent, updates = sent + 1, updates + _size(request)
    outcome = WriteOutcome(sent, updates, tuple(errors), total)
    if errors:
        log.warning("%s: %s", peer.where(), outcome.summary())
    return outcome


def _update_errors(
    info: PipelineInfo, where: str, i: int, request: Request, exc: grpc.aio.AioRpcError
) -> list[UpdateError] | None:
    """The per-update errors of a failed Write, or None when it failed as a whole."""
    try:
        status = P4RpcStatus.from_rpc_error(exc)
    except ValueError:  # a detail that is not a p4.v1.Error, or a code gRPC does not know
        return None
    if not status.details:
        return None  # no trailer, or failed yet every update says OK: a whole-request failure
    if max(status.details) >= len(request.updates):
        log.warning("%s: Write status names update %d of a request of %d updates", where,
                    max(status.details), len(request.updates))
        return None
    return [
        UpdateError(i, j, describe_update(info, request.updates[j]), error.canonical_code.name, error.message)
        for j, error in sorted(status.details.items())
    ]


def _write_error(
    arbitration: Arbitration, i: int, request: Request, exc: grpc.aio.AioRpcError, partial: WriteOutcome
) -> WriteError:
    connection = arbitration.connection
    peer = connection.peer
    code, text = exc.code(), status_text(exc)
    head = f"{peer.where()}: Write {i + 1} of {partial.requests_total} ({len(request.updates)} updates)"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return NotPrimaryWrite(
            f"{head} refused: not primary ({text}); another controller took over, or our election "
            f"id {peer.election_id} is not the primary's", switch=peer.name, code=code, outcome=partial,
            primary_election_id=arbitration.primary_election_id,
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata" in text.lower():
        return WriteError(
            f"{head}: the per-update error trailer exceeded the client's metadata limit "
            f"({connection.max_metadata_size} bytes); raise max_metadata_size or lower the batch size. "
            f"Some updates may have been applied: {text}", switch=peer.name, code=code, outcome=partial,
        )
    unknown = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
    tail = " Which of its updates were applied is unknown: read back." if unknown else ""
    return WriteError(f"{head} failed: {text}.{tail}", switch=peer.name, code=code, outcome=partial)
