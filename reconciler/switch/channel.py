"""The gRPC channel to one switch: who it is (Peer), its options and TLS credentials, and the
first call that proves it reachable (Capabilities), with what a failure means.

Targets this is written against (../shared/fixtures/p4runtime-bmv2/README.md): per-update
errors arrive as UNKNOWN with one p4.v1.Error per update in the grpc-status-details-bin trailer,
which grows ~35 bytes per update, so the channel's metadata limit is raised; Reads return one
message however large, so the receive limit is lifted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from finsy.proto import p4r, p4r_grpc

from reconciler.switch.errors import SwitchError, SwitchTlsError, SwitchUnreachable
from reconciler.switch.tls import TlsSettings, handshake_failure
from reconciler.switch.translate import election_id_proto

__all__ = ["DEFAULT_MAX_METADATA", "Connection", "Peer"]

# BMv2's trailer is ~86 + 35 bytes per update (a 500-update batch: ~17.6 KB, over gRPC's default
# 16 KiB hard limit). 8 MiB covers batches of 200,000 updates.
DEFAULT_MAX_METADATA = 8 << 20


@dataclass(frozen=True)
class Peer:
    """The switch a session talks to and the ids we use with it, as requests and messages name
    them."""

    address: str
    name: str
    device_id: int
    election_id: int
    wire_election_id: p4r.Uint128 = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # validates 1 .. 2**128-1 when the session is made, not at its first write
        object.__setattr__(self, "wire_election_id", election_id_proto(self.election_id))
        if not 0 <= self.device_id < 1 << 64:
            raise ValueError(f"device id {self.device_id} does not fit in 64 bits")

    def where(self) -> str:
        return f"switch {self.name}" if self.name == self.address else f"switch {self.name} ({self.address})"


class Connection:
    """The channel and stub of a session while it is open (None while it is closed)."""

    def __init__(
        self,
        peer: Peer,
        *,
        tls: TlsSettings | None,
        connect_timeout: float,
        rpc_timeout: float,
        max_metadata_size: int,
    ) -> None:
        self.peer = peer
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.rpc_timeout = rpc_timeout
        self.max_metadata_size = max_metadata_size
        self.api_version: str | None = None  # from CapabilitiesResponse
        self.channel: grpc.aio.Channel | None = None
        self.stub: p4r_grpc.P4RuntimeStub | None = None

    @property
    def is_open(self) -> bool:
        return self.channel is not None

    def open(self) -> None:
        """Make the channel (gRPC connects lazily: reach() is the first call)."""
        options: list[tuple[str, int | str]] = [
            ("grpc.max_metadata_size", self.max_metadata_size),
            ("grpc.absolute_max_metadata_size", self.max_metadata_size),
            ("grpc.max_receive_message_length", -1),  # a full read is one message (BMv2)
            ("grpc.max_send_message_length", -1),
        ]
        address = self.peer.address
        if self.tls is not None:
            options += self.tls.channel_options()
            self.channel = grpc.aio.secure_channel(address, self.tls.channel_credentials(), options=options)
        else:
            self.channel = grpc.aio.insecure_channel(address, options=options)
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)

    async def close(self) -> None:
        channel, self.channel, self.stub = self.channel, None, None
        if channel is not None:
            await channel.close()

    def stub_for(self, what: str) -> p4r_grpc.P4RuntimeStub:
        """The stub, or SwitchError saying that `what` needs an open session."""
        if self.stub is None:
            raise SwitchError(f"{self.peer.where()}: cannot {what}: the session is not open", switch=self.peer.name)
        return self.stub

    async def reach(self) -> None:
        """Capabilities as the connectivity check: it fails fast with the transport's reason
        (refused, TLS handshake) instead of waiting out a timeout like channel_ready()."""
        stub = self.stub_for("connect")
        try:
            reply = await stub.Capabilities(p4r.CapabilitiesRequest(), timeout=self.connect_timeout, wait_for_ready=False)
            self.api_version = reply.p4runtime_api_version or None
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return  # an old target without Capabilities: it answered, so it is reachable
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: grpc.aio.AioRpcError) -> SwitchError:
        code, details = exc.code(), exc.details() or ""
        lower = details.lower()
        where, name = self.peer.where(), self.peer.name
        if self.tls is not None:
            why = handshake_failure(lower, self.tls, self.peer.address)
            if why is not None:
                return SwitchTlsError(f"{where}: TLS failure: {why}. gRPC said: {details}", switch=name, code=code)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return SwitchUnreachable(
                f"{where}: no answer within {self.connect_timeout:g}s: {details}", switch=name, code=code
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = ""
            if self.tls is None and "socket closed" in lower:
                hint = " (the switch closed the connection: does it require TLS?)"
            return SwitchUnreachable(f"{where} is unreachable{hint}: {details}", switch=name, code=code)
        return SwitchUnreachable(f"{where}: Capabilities failed with {code.name}: {details}", switch=name, code=code)
