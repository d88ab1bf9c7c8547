"""Read-only inspection of one switch: reachability, the pipeline's cookie and every table entry,
for `p4kube status` and `p4kube switch dump|diff`.

No StreamChannel is opened and nobody arbitrates: the P4Runtime specification lets any client
Read and GetForwardingPipelineConfig, so inspecting a switch never takes primacy away from the
running reconciler (an arbitration with any election id would, on BMv2, put a stream in the
queue for promotion behind its back).
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.p4info import PipelineInfo, pipeline_info_from_message
from reconciler.snapshot import Entry
from reconciler.switch import pipeline, reads
from reconciler.switch.channel import DEFAULT_MAX_METADATA, Connection, Peer
from reconciler.switch.errors import SwitchError
from reconciler.switch.tls import TlsSettings

__all__ = ["SwitchReading", "read_switch"]

# The Peer carries an election id for requests that need one; Read and Get send none.
_UNUSED_ELECTION_ID = 1


@dataclass(frozen=True)
class SwitchReading:
    """What one switch holds, as read."""

    address: str
    name: str
    device_id: int
    api_version: str | None
    has_pipeline: bool
    cookie: int | None
    entries: tuple[Entry, ...]  # without their Service: a switch does not know it

    def counts(self) -> dict[str, int]:
        """Entries per table, in the order first seen."""
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.table] = out.get(e.table, 0) + 1
        return out


async def read_switch(
    address: str,
    *,
    device_id: int = 1,
    info: PipelineInfo | None = None,
    tls: TlsSettings | None = None,
    name: str | None = None,
    connect_timeout: float = 5.0,
    rpc_timeout: float = 60.0,
) -> SwitchReading:
    """Connect, read the pipeline and every table entry, close. `info`: the P4Info to decode
    with (default: the switch's own, from GetForwardingPipelineConfig). SwitchError (and its
    kinds: unreachable, TLS, ReadError, PipelineError) when the switch cannot be read."""
    peer = Peer(address, name or address, device_id, _UNUSED_ELECTION_ID)
    connection = Connection(peer, tls=tls, connect_timeout=connect_timeout, rpc_timeout=rpc_timeout,
                            max_metadata_size=DEFAULT_MAX_METADATA)
    connection.open()
    try:
        await connection.reach()
        status = await pipeline.get_pipeline(connection, full=info is None)
        if status is None:
            return SwitchReading(address, peer.name, device_id, connection.api_version, False, None, ())
        if info is None:
            if status.p4info is None:
                raise SwitchError(f"{peer.where()}: its pipeline has no P4Info to decode entries with", switch=peer.name)
            info = pipeline_info_from_message(status.p4info)
        entries = await reads.read_entries(connection, info)
        return SwitchReading(address, peer.name, device_id, connection.api_version, True, status.cookie, tuple(entries))
    finally:
        await connection.close()
