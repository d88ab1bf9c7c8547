"""One P4Runtime session with one switch (asyncio): connect, become primary, make sure of the
pipeline, write batches, read back. No transaction logic: the two-switch transaction
(reconciler/apply.py) is built on this.

This module composes the jobs, each in its own module: the channel (channel.py, with TLS in
tls.py), primacy (arbitration.py), the pipeline (pipeline.py), writes and their per-update errors
(writes.py, errors.py) and reads (reads.py).

Why grpc.aio directly rather than finsy's Switch: finsy's Switch runs its own connection loop
(reconnects, re-arbitrates, pushes the pipeline on its own terms and keeps going), whereas the
transaction needs every step to be explicit and to fail loudly: arbitrate once with the id the
Lease gave us and refuse to act as a backup, never push a pipeline that is already there (that
clears the tables), close the stream at once when deposed (BMv2 promotes the next stream). finsy
is still used for the protobuf bindings, google.rpc.Status and its decoding (DESIGN.md 8).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from finsy.proto import p4i, p4r

from reconciler.p4info import PipelineInfo
from reconciler.snapshot import Entry
from reconciler.switch import pipeline, reads, writes
from reconciler.switch.arbitration import Arbitration
from reconciler.switch.channel import DEFAULT_MAX_METADATA, Connection, Peer
from reconciler.switch.errors import WriteOutcome
from reconciler.switch.pipeline import PipelineStatus
from reconciler.switch.reads import CounterCell
from reconciler.switch.tls import TlsSettings

__all__ = ["SwitchSession"]


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
        peer = Peer(address, name or address, device_id, election_id)  # validates both ids
        # who: read-only, as the Peer that the job modules name in requests and messages
        self.address, self.name = peer.address, peer.name
        self.device_id, self.election_id = peer.device_id, peer.election_id
        self.info = info
        self.tls = tls
        self._connection = Connection(
            peer, tls=tls, connect_timeout=connect_timeout, rpc_timeout=rpc_timeout,
            max_metadata_size=max_metadata_size,
        )
        self._arbitration = Arbitration(self._connection, arbitration_timeout)

    # -- state -------------------------------------------------------------------------------

    @property
    def api_version(self) -> str | None:
        """The switch's P4Runtime version, from CapabilitiesResponse."""
        return self._connection.api_version

    @property
    def primary_election_id(self) -> int | None:
        """The current primary's election id, as the stream last told."""
        return self._arbitration.primary_election_id

    @property
    def is_primary(self) -> bool:
        """True while this session holds primacy as far as the stream has told us."""
        return self._arbitration.is_primary

    @property
    def is_open(self) -> bool:
        return self._connection.is_open

    @property
    def lost_reason(self) -> str | None:
        """Why the session can no longer write, or None while it can."""
        return self._arbitration.lost_reason

    async def wait_lost(self) -> str:
        """Wait until the session can no longer write (deposed, stream ended, closed); returns
        why. For watchdogs: a transaction in progress on a lost session must stop."""
        return await self._arbitration.wait_lost()

    # -- open / close ------------------------------------------------------------------------

    async def __aenter__(self) -> SwitchSession:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._connection.is_open:
            raise RuntimeError(f"the session with {self._connection.peer.where()} is already open")
        self._connection.open()
        self._arbitration.reset()
        try:
            await self._connection.reach()
            await self._arbitration.arbitrate()
        except BaseException:
            await self.close()
            raise
        self._arbitration.follow()

    async def close(self) -> None:
        """Close the stream first and at once (a deposed leader must stop being primary before
        anything else happens), then the channel. Safe to call more than once."""
        await self._arbitration.stop()
        await self._connection.close()

    # -- pipeline ----------------------------------------------------------------------------

    async def get_pipeline(self, *, full: bool = False) -> PipelineStatus | None:
        """The switch's pipeline (cookie only, or with P4Info and device config when `full`);
        None when it has none."""
        return await pipeline.get_pipeline(self._connection, full=full)

    async def ensure_pipeline(self, p4info: p4i.P4Info, device_config: bytes, cookie: int | None = None) -> bool:
        """Make the switch run (p4info, device_config); True when it had to be pushed (a
        matching cookie is never pushed again: that would clear every table)."""
        return await pipeline.ensure_pipeline(self._arbitration, self.info, p4info, device_config, cookie)

    async def check_external_pipeline(self, p4info: p4i.P4Info) -> PipelineStatus:
        """The pipeline another tool installed, when its P4Info equals `p4info`; else
        PipelineError saying what differs. Never pushes anything."""
        return await pipeline.check_external_pipeline(self._connection, p4info)

    # -- write -------------------------------------------------------------------------------

    async def write(self, requests: Sequence[writes.Request], *, stop_on_error: bool = True) -> WriteOutcome:
        """Send `requests` in order; per-update errors are in the outcome (see writes.write)."""
        return await writes.write(
            self._arbitration, self.info, requests, stop_on_error=stop_on_error, require_primary=self._require_primary
        )

    def _require_primary(self, what: str) -> None:
        # an attribute of the session, so that a test can play a stream whose news is late
        self._arbitration.require_primary(what)

    # -- read --------------------------------------------------------------------------------

    async def read_entries(self, tables: Iterable[str] | None = None) -> list[Entry]:
        """Every (non-default) entry of `tables` (default: all tables of the P4Info)."""
        return await reads.read_entries(self._connection, self.info, tables)

    async def read_encoded(self, tables: Iterable[str] | None = None, same: reads.SameReads | None = None) -> list[bytes]:
        """read_entries left undecoded: the canonical-or-not bytes of each TableEntry as the
        switch sent it (reads.read_encoded; `same`: see reads.SameReads); decode_entries()
        turns any of them into entries."""
        return await reads.read_encoded(self._connection, self.info, tables, same)

    def decode_entries(self, blobs: Iterable[bytes]) -> list[Entry]:
        """The entries that TableEntry bytes from read_encoded() stand for (defaults dropped);
        ReadError when one does not fit the P4Info."""
        return reads.decode_entries(self._connection, self.info, blobs)

    async def count_entries(self, tables: Iterable[str] | None = None) -> dict[str, int]:
        """How many (non-default) entries each of `tables` (default: all) holds."""
        return await reads.count_entries(self._connection, self.info, tables)

    async def read_keys(self, entries: Iterable[Entry]) -> list[Entry]:
        """The switch's entries at the keys of `entries`; keys it does not hold are absent."""
        return await reads.read_keys(self._connection, self.info, entries)

    async def read_counters(self, name: str, indexes: Iterable[int] | None = None) -> list[CounterCell]:
        """Cells of the indirect counter `name` (all of them, or `indexes`), sorted by index."""
        return await reads.read_counters(self._connection, self.info, name, indexes)

    async def read_defaults(self) -> list[p4r.TableEntry]:
        """The default entry of every table, as the switch reports it."""
        return await reads.read_defaults(self._connection, self.info)
