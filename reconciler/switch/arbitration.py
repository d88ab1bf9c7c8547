"""Primacy over one device: the StreamChannel, arbitration with our election id, and following
the stream afterwards, so that a deposed session stops writing at once.

Arbitrate once with the id the Lease gave us and refuse to act as a backup; close the stream at
once when deposed (BMv2 promotes the next stream, and would re-promote ours later, behind the
new leader's back).
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from finsy.proto import U128, p4r, rpc_status

from reconciler.switch.channel import Connection
from reconciler.switch.errors import ArbitrationError, NotPrimaryError

__all__ = ["Arbitration"]

log = logging.getLogger("reconciler.switch")


class Arbitration:
    """The StreamChannel of one session and what it has told us about primacy."""

    def __init__(self, connection: Connection, timeout: float) -> None:
        self.connection = connection
        self.peer = connection.peer
        self.timeout = timeout
        self.primary_election_id: int | None = None  # the current primary's id, as last told
        self._primary = False
        self._lost: str | None = None  # why the session stopped being usable
        self._stream: grpc.aio.StreamStreamCall[p4r.StreamMessageRequest, p4r.StreamMessageResponse] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lost_event: asyncio.Event | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def is_primary(self) -> bool:
        """True while this session holds primacy as far as the stream has told us."""
        return self._primary and self._lost is None

    @property
    def lost_reason(self) -> str | None:
        """Why the session can no longer write, or None while it can."""
        return self._lost

    async def wait_lost(self) -> str:
        """Wait until the session can no longer write (deposed, stream ended, closed); returns
        why."""
        if self._lost_event is None:
            raise RuntimeError(f"the session with {self.peer.where()} was never opened")
        await self._lost_event.wait()
        return self._lost or "lost"

    def require_primary(self, what: str) -> None:
        """Raise unless the session is open and primary (checked before each Write; the switch
        checks again)."""
        self.connection.stub_for(what)
        where, name = self.peer.where(), self.peer.name
        if self._lost is not None:
            raise NotPrimaryError(
                f"{where}: cannot {what}: {self._lost}; open a new session",
                switch=name, primary_election_id=self.primary_election_id,
            )
        if not self._primary:
            raise NotPrimaryError(
                f"{where}: cannot {what}: no longer primary (the primary's election id is "
                f"{self.primary_election_id}, ours {self.peer.election_id})",
                switch=name, primary_election_id=self.primary_election_id,
            )

    # -- start / stop ------------------------------------------------------------------------

    def reset(self) -> None:
        """A fresh start for a session being opened."""
        self._lost = None
        self._lost_event = asyncio.Event()

    async def arbitrate(self) -> None:
        """Open the stream and arbitrate; raises ArbitrationError, or NotPrimaryError when the
        switch makes us a backup."""
        peer = self.peer
        stream = self._stream = self.connection.stub_for("arbitrate").StreamChannel()
        request = p4r.StreamMessageRequest()
        request.arbitration.device_id = peer.device_id
        request.arbitration.election_id.CopyFrom(peer.wire_election_id)
        try:
            await asyncio.wait_for(stream.write(request), self.timeout)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise asyncio.TimeoutError
                msg = await asyncio.wait_for(stream.read(), remaining)
                if msg is grpc.aio.EOF:
                    code, details = await stream.code(), await stream.details()
                    raise ArbitrationError(
                        f"{peer.where()} ended the StreamChannel during arbitration: "
                        f"{code.name} {details}".rstrip() + self._hint(details),
                        switch=peer.name, code=code,
                    )
                if msg.WhichOneof("update") == "arbitration":
                    break
                log.debug("%s: ignoring a %s message before arbitration", peer.name, msg.WhichOneof("update"))
        except asyncio.TimeoutError:
            raise ArbitrationError(
                f"{peer.where()}: no arbitration response within {self.timeout:g}s "
                f"(device id {peer.device_id})", switch=peer.name,
            ) from None
        except grpc.aio.AioRpcError as exc:
            raise ArbitrationError(
                f"{peer.where()} refused the StreamChannel: {exc.code().name} {exc.details() or ''}".rstrip()
                + self._hint(exc.details() or ""),
                switch=peer.name, code=exc.code(),
            ) from None
        self._on_arbitration(msg.arbitration)
        if not self._primary:
            raise self._backup(msg.arbitration.status)

    def _backup(self, status: rpc_status.Status) -> NotPrimaryError:
        """The refusal to act as a backup: who is primary, or that nobody is."""
        holder, ours = self.primary_election_id, self.peer.election_id
        no_primary = status.code == grpc.StatusCode.NOT_FOUND.value[0]
        if no_primary:
            why = (
                f"the switch has no primary and our election id {ours} is lower than "
                f"the highest it has seen ({holder})" if holder is not None else "the switch has no primary"
            )
        else:
            why = f"another controller holds a higher election id ({holder}; ours is {ours})"
        error = NotPrimaryError(
            f"{self.peer.where()}: not primary for device {self.peer.device_id}: {why} "
            f"[{status.message or status.code}]", switch=self.peer.name, primary_election_id=holder,
        )
        error.no_primary = no_primary
        return error

    def follow(self) -> None:
        """Follow the stream after arbitration, in a task."""
        self._reader = asyncio.get_running_loop().create_task(self._read_stream(), name=f"p4rt-stream-{self.peer.name}")

    async def stop(self) -> None:
        """Close the stream first and at once (a deposed leader must stop being primary before
        anything else happens), then wait for the task that followed it."""
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

    # -- the stream --------------------------------------------------------------------------

    def _hint(self, details: str) -> str:
        if "election id" in details.lower():
            return f" (election id {self.peer.election_id} is already used by another controller of this device)"
        if "device" in details.lower():
            return f" (device id {self.peer.device_id})"
        return ""

    def _on_arbitration(self, arb: p4r.MasterArbitrationUpdate) -> None:
        was = self._primary
        self._primary = arb.status.code == 0
        self.primary_election_id = U128.decode(arb.election_id) if arb.HasField("election_id") else None
        if was and not self._primary:
            # Sticky: BMv2 re-promotes us when the new primary's stream ends, but a session that
            # was deposed once must not write again (the new leader may still be at work).
            self._lose(
                f"deposed: the primary's election id is now {self.primary_election_id}, ours {self.peer.election_id}"
            )
        elif self._primary and not was and self._lost is None:
            log.info("%s: primary with election id %d", self.peer.where(), self.peer.election_id)

    async def _read_stream(self) -> None:
        """Demotion and the stream's end make the session unusable for writes."""
        stream = self._stream
        assert stream is not None
        where = self.peer.where()
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
                    log.warning("%s: stream error: %s", where, msg.error)
                else:
                    log.debug("%s: ignoring a %s stream message", where, which)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED or self._stream is not None:
                self._lose(f"the StreamChannel failed: {exc.code().name} {exc.details() or ''}".rstrip())
        except Exception as exc:  # keep the reason: a silent reader death would look like primacy
            log.exception("%s: StreamChannel reader failed", where)
            self._lose(f"the StreamChannel reader failed: {exc!r}")

    def _lose(self, reason: str, quiet: bool = False) -> None:
        if self._lost is None:
            self._lost = reason
            (log.debug if quiet else log.warning)("%s: %s; the session can no longer write", self.peer.where(), reason)
        self._primary = False
        if self._lost_event is not None:
            self._lost_event.set()
