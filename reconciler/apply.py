"""The two-switch transaction and its rollback (DESIGN.md 6).

Real targets accept only CONTINUE_ON_ERROR, so atomicity is ours: the standby is written
first, then the primary, each in dependency order and read back; any failure (a refused
update, a lost stream, a read-back mismatch, a failed probe) restores every switch that was
touched to the last good snapshot with compensating writes, confirmed by a full read-back.
Once a transaction ends, both switches hold exactly the old or exactly the new snapshot, or
the result says loudly which switch could not be restored.

What a switch holds is taken from a full read-back whenever it is not known for certain
(first contact, after any error, after a reconnect), and from the last snapshot it verifiably
took otherwise; that keeps a one-Service change to a handful of writes and key reads, while
drift (entries changed by anyone else) is found and repaired on every full read-back.

The switches' own state decides (DESIGN.md 6.1). The applier *trusts* a switch (knows what it
holds without reading it) only after it read it back itself, over a session that is still open
and primary. Every event that makes a switch's state unknown drops that trust: a new stream, a
reconnect, a pipeline push, lost primacy or a primary change, a failed or timed-out write, a read
error, a failed quick_check. sync_switch() repairs one switch on its own (the other may be
down); sync() does that for every switch not trusted; quick_check() is the cheap per-round
test (pipeline cookie and entry counts) that drops trust when the switch disagrees.

Election ids and fencing. The applier's election id E (the Lease term, or --election-id) is the
high 64 bits of the 128-bit P4Runtime election id; the low 64 bits are a counter that grows with
every session this process opens: wire id = (E << 64) | counter (switch/translate.py,
wire_election_id). A Write whose outcome is unknown (its RPC timed out, the stream dropped, the
task was cancelled) may still be queued in the switch. Before the transaction decides anything,
the switch is fenced: the session is closed and a new one arbitrates with a strictly higher id
(still below the next term's (E+1) << 64). P4Runtime checks the election id when it processes a
Write, so the late Write is then refused with PERMISSION_DENIED; only then is the switch read
back in full and rolled back. A Write the switch processed before the new arbitration is
visible to that read-back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Literal, Mapping

from finsy.proto import p4i

from .diff import PHASE_NAMES, SnapshotDiff, diff_entries, diff_snapshots
from .intent.model import LoadBalancerConfig, SwitchSpec
from .p4info import PipelineInfo
from .p4names import TABLE_ORDER, VIP_TABLE
from .snapshot import Entry, Snapshot
from .switch import (
    NotPrimaryError,
    PipelineError,
    SwitchError,
    SwitchSession,
    WriteOutcome,
    cookie_problem,
    pipeline_cookie,
)
from .switch.encoded_memo import KnownEncodings
from .switch.reads import SameReads
from .switch.tls import TlsSettings
from .switch.tls import require_tls as _require_tls  # the factory's keyword has its name
from .switch.translate import check_election_base, split_election_id, wire_election_id
from .switch.wire import EncodedEntries, EncodedWriteRequest, Readback, encoded_requests, match_readback, readback_from_held, write_requests

log = logging.getLogger("reconciler.apply")

Outcome = Literal["applied", "unchanged", "rolled-back", "degraded", "failed"]
SwitchState = Literal["applied", "unchanged", "rolled-back", "unreachable", "failed", "not-touched"]

# A probe gets the snapshot just applied; it returns None when healthy, else the reason.
Probe = Callable[[Snapshot], Awaitable[str | None]]
SessionFactory = Callable[[SwitchSpec, int], SwitchSession]  # (switch, wire election id) -> session


@dataclass(frozen=True)
class Progress:
    """Where a transaction is, for whoever shows it (the CLI's progress line); the library itself
    prints nothing. `step`: "read" (a full read-back of the switch), "write" (`done` of `total`
    updates written, told after each phase), "verify" (the read-back after the writes)."""

    switch: str
    step: Literal["read", "write", "verify"]
    done: int = 0
    total: int = 0


ProgressCallback = Callable[[Progress], None]
_PROGRESS_REQUESTS = 8  # WriteRequests between two Progress reports


class _SessionCounter:
    """The low 64 bits of the wire election id: one value per session opened in this process,
    increasing, so that every new session (a reconnect, a fence) outranks the ones before it,
    across every applier of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0

    def take(self) -> int:
        with self._lock:
            n, self._next = self._next, self._next + 1
            return n

    def at_least(self, n: int) -> None:
        with self._lock:
            self._next = max(self._next, n)


_COUNTER = _SessionCounter()


@dataclass(frozen=True)
class SwitchReport:
    name: str
    role: str
    state: SwitchState
    writes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # table -> kind -> count
    reason: str = ""
    drift: tuple[str, ...] = ()  # entries found different from what the switch should hold
    pipeline_pushed: bool = False
    seconds: float = 0.0

    def describe(self) -> str:
        total = sum(sum(k.values()) for k in self.writes.values())
        parts = [f"{self.name} ({self.role}): {self.state}", f"{total} writes"]
        if self.pipeline_pushed:
            parts.append("pipeline pushed")
        if self.drift:
            parts.append(f"{len(self.drift)} drifted entries repaired")
        if self.reason:
            parts.append(self.reason)
        return ", ".join(parts)


_AUDIT_OUTCOMES = {"applied": "applied", "unchanged": "applied", "degraded": "degraded", "rolled-back": "rolled-back"}


@dataclass(frozen=True)
class ApplyResult:
    outcome: Outcome
    version: int
    digest: str
    switches: tuple[SwitchReport, ...]
    reason: str = ""

    @property
    def ok(self) -> bool:
        """The switches hold the target snapshot (possibly without the standby)."""
        return self.outcome in ("applied", "unchanged", "degraded")

    def writes(self) -> dict[str, dict[str, int]]:
        total: dict[str, dict[str, int]] = {}
        for r in self.switches:
            for table, kinds in r.writes.items():
                for kind, count in kinds.items():
                    total.setdefault(table, {}).setdefault(kind, 0)
                    total[table][kind] += count
        return total

    def audit_record(self) -> tuple[str, str]:
        """(outcome, reason) as the audit history records this result. Its outcomes are fixed
        (docs/audit.md): "failed" means nothing changed, or a rollback itself failed, and is
        recorded as rolled-back with the reason saying which."""
        if self.outcome == "failed":
            return "rolled-back", f"failed: {self.reason}"
        return _AUDIT_OUTCOMES[self.outcome], self.reason

    def describe(self) -> str:
        head = f"snapshot v{self.version} {self.outcome}" + (f": {self.reason}" if self.reason else "")
        return "\n".join([head] + [f"  {r.describe()}" for r in self.switches])


@dataclass(frozen=True)
class QuickCheck:
    """The cheap per-round check of one switch: its pipeline cookie and its number of entries
    per table, against the applier's cookie and the snapshot."""

    switch: str
    ok: bool
    reason: str = ""
    counts: Mapping[str, int] = field(default_factory=dict)  # table -> entries the switch holds
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"switch {self.switch}: " + ("holds the expected counts" if self.ok else self.reason)


# Tables larger than this are not counted by the quick check (see quick_check).
QUICK_COUNT_LIMIT = 20_000


class TransactionFailed(Exception):
    def __init__(self, switch: str, reason: str) -> None:
        super().__init__(f"{switch}: {reason}")
        self.switch = switch
        self.reason = reason


def compare_entries(actual: Iterable[Entry], expected: Iterable[Entry], limit: int = 20) -> list[str]:
    """What differs between entries read back and the entries expected, readable, at most `limit`."""
    have = {(e.table, e.key): e for e in actual}
    want = {(e.table, e.key): e for e in expected}
    out: list[str] = []
    for k in sorted(want.keys() - have.keys(), key=_key_order):
        out.append(f"missing {k[0]} {k[1]}")
    for k in sorted(have.keys() - want.keys(), key=_key_order):
        out.append(f"unexpected {k[0]} {k[1]} -> {have[k].action}{have[k].args}")
    for k in sorted(have.keys() & want.keys(), key=_key_order):
        h, w = have[k], want[k]
        if (h.action, h.args) != (w.action, w.args):
            out.append(f"changed {k[0]} {k[1]}: {h.action}{h.args}, should be {w.action}{w.args}")
    if len(out) > limit:
        return out[:limit] + [f"... and {len(out) - limit} more"]
    return out


def _key_order(k: tuple[str, tuple]) -> tuple[str, str]:
    return (k[0], repr(k[1]))


def _entries(snap: Snapshot | None) -> list[Entry]:
    if snap is None:
        return []
    return [e for es in snap.tables().values() for e in es]


def _unmatched(missing: list[Entry], extra: list[Entry], target: Snapshot | None) -> tuple[list[Entry], list[Entry]]:
    """What diff_entries(what the switch holds, the target) needs, from the entries whose bytes
    differ (`extra`: read, not expected; `missing`: expected, not read): every matched entry is
    equal on both sides and writes nothing. The matched VIPs of the service ids among the
    unmatched VIPs are added to both sides (held ones first, as in a full list), so that a
    service id taken over by another VIP is seen exactly as from the full lists."""
    sids = {e.args[0] for e in (*missing, *extra) if e.table == VIP_TABLE}
    if not sids or target is None:
        return extra, missing
    not_read = {e.key for e in missing if e.table == VIP_TABLE}
    vips = [v for svc in target.services if svc.service_id in sids
            for v in svc.entries().get(VIP_TABLE, ()) if v.key not in not_read]
    return vips + extra, missing + vips


_NO_CHANGE = diff_entries([], [])

# After a full read-back, a diff of at most this many updates (and at most a tenth of the
# entries) is verified by reading its keys; a larger one by a second full read. See
# _verify_by_keys.
KEYS_VERIFY_LIMIT = 10_000


def _verify_by_keys(diff: SnapshotDiff, entries: int) -> bool:
    """Whether the writes of `diff`, made right after a full read-back of the switch compared
    equal everywhere else, are verified by reading back only the keys written and deleted.

    Why that is enough (DESIGN.md 6.1, "the switches' own state decides"): the whole switch was
    read moments before, over the same session, which is primary (arbitration fences every
    other controller's writes), and compared with the target; the writes touched only these
    keys. A second full read would re-confirm entries nobody could have written. What it alone
    would see (an entry changed by something other than a P4Runtime controller, a switch that
    writes elsewhere than asked) is drift, found by the periodic full read-back, while a write
    dropped, altered, or a delete not done is at the keys read here. Large diffs are read in
    full: by key, each costs an encoded key and a decoded entry, several times a full read's
    cost per entry, and a full read also re-confirms a switch that changed that much."""
    return len(diff) <= min(KEYS_VERIFY_LIMIT, entries // 10)


def _version(snap: Snapshot | None) -> str:
    return f"v{snap.version}" if snap is not None else "empty tables"


def _strip_service(entries: Iterable[Entry]) -> list[Entry]:
    return [Entry(e.table, e.key, e.action, e.args) for e in entries]


def _collect(read: asyncio.Future[list[bytes]]) -> None:
    """Done callback of a read not used: its outcome is retrieved (no "exception never retrieved")."""
    if not read.cancelled():
        read.exception()


async def _settle(reads: Iterable[asyncio.Future[list[bytes]]]) -> None:
    """Cancel the reads not used (a switch whose step was never reached) and collect every
    outcome, so that none is left running or with an exception never retrieved."""
    pending = list(reads)
    for r in pending:
        r.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _log_decoded(switch: str, total: int, read: Readback, config: str) -> None:
    """Entries whose bytes differ are decoded one by one: say how many, so that a switch that
    serialises entries differently (and is compared slowly) shows in the debug log."""
    if read.extra or read.missing:
        log.debug("switch %s: read back %d entries, %d equal as bytes, %d decoded, %d expected not read as bytes",
                  switch, total, read.matched, len(read.extra), len(read.missing),
                  extra={"config": config, "switch": switch})


class TwoSwitchApplier:
    """Applies snapshots of one LoadBalancerConfig to its standby and primary switch.

    Keeps the sessions open between transactions (arbitration and pipeline checks are done
    once per connection) and what each switch verifiably holds. One instance per config; not
    safe for concurrent apply() calls (the controller serialises them).
    """

    def __init__(
        self,
        config: LoadBalancerConfig,
        *,
        p4info: p4i.P4Info,
        info: PipelineInfo,
        device_config: bytes,
        election_id: int,
        session_factory: SessionFactory,
        batch_size: int | None = None,
        standby_unreachable: str | None = None,
    ) -> None:
        switches = config.switch_config.switches
        self.config = config
        self.p4info = p4info
        self.info = info
        self.device_config = device_config
        self.cookie = pipeline_cookie(p4info, device_config)
        # switchConfig.pipeline external: another tool installs the pipeline; it is never pushed,
        # only checked (its P4Info must be ours). Per switch, the cookie it reported when its
        # P4Info was checked stands for "that pipeline" in the cheap per-round check.
        self.external = config.switch_config.pipeline == "external"
        self._external_cookie: dict[str, int | None] = {}
        # The base election id: the high 64 bits of every session's wire id (module docstring).
        self.election_id = check_election_base(election_id)
        self.factory = session_factory
        self.batch_size = batch_size or config.switch_config.batch_size
        self.policy = standby_unreachable or config.switch_config.standby_unreachable
        # Standby first, then the primary (DESIGN.md 6, step 3).
        self.order: tuple[SwitchSpec, ...] = tuple(s for s in switches if s.role == "standby") + tuple(
            s for s in switches if s.role == "primary"
        )
        self._sessions: dict[str, SwitchSession] = {}
        self._held: dict[str, Snapshot | None] = {}  # switch -> snapshot it verifiably holds
        self._held_known: set[str] = set()
        # The last target encoded (by identity), its bytes only between transactions: a
        # transaction encodes its target once for both switches, and the periodic full
        # read-back of the same snapshot encodes nothing.
        self._encoded: list[tuple[Snapshot | None, EncodedEntries]] = []
        # Within one apply(): expected_now's bytes for the drift of both switches (_drift).
        self._encoded_now: tuple[Snapshot | None, EncodedEntries, EncodedEntries] | None = None
        # Within one apply() or sync(): the last full read, and its comparison (_match). Both
        # switches usually answer the same bytes: the second is then neither cut nor compared
        # again (the same answer, by identity). Dropped at the end of the pass, a rollback's
        # included (_end_pass): ~60 MB at 5,000 Services.
        self._same_reads = SameReads()
        self._matched: tuple[list[bytes], EncodedEntries, EncodedEntries | None, set[bytes], Readback | None, Readback] | None = None
        # Services' bytes stored by an earlier process (know()), by fragment digest.
        self._known: KnownEncodings | None = None
        # Told where each transaction is (Progress); set by a face that shows it, None elsewhere.
        self.progress: ProgressCallback | None = None
        # read_ahead(): switch -> (the session it went out on, the full read), for the next step.
        self._ahead: dict[str, tuple[SwitchSession, asyncio.Future[list[bytes]]]] = {}

    def _tell(self, switch: str, step: Literal["read", "write", "verify"], done: int = 0, total: int = 0) -> None:
        if self.progress is not None:
            self.progress(Progress(switch, step, done, total))

    # -- sessions --------------------------------------------------------------------------------

    async def _session(self, sw: SwitchSpec, *, check_pipeline: bool = False) -> tuple[SwitchSession, bool]:
        """An open primary session to `sw`, and whether the pipeline had to be pushed.

        A new session always arbitrates with a higher wire election id than any before it; with
        `check_pipeline` an existing session also checks the pipeline cookie again (a switch
        restarted under a live stream, or someone pushed another pipeline)."""
        s = self._sessions.get(sw.name)
        if s is not None and s.is_open and s.is_primary:
            if not check_pipeline:
                return s, False
            try:
                pushed = await self._ensure_pipeline(s, sw)
            except BaseException:
                await self._drop(sw.name)
                raise
            if pushed:
                self._forget(sw.name)  # new, empty tables: read back before trusting
            return s, pushed
        if s is not None:
            await self._drop(sw.name)
        s = await self._open(sw)
        try:
            pushed = await self._ensure_pipeline(s, sw)
        except BaseException:
            await s.close()
            raise
        self._sessions[sw.name] = s
        self._forget(sw.name)  # a new connection (or a pipeline push): read back before trusting
        # A state change: the one line that says so (the session's own steps are details, logsetup).
        log.info("switch %s (%s) connected%s", sw.name, sw.role, ": pipeline pushed" if pushed else "",
                 extra={"config": self.config.key, "switch": sw.name})
        return s, pushed

    async def _ensure_pipeline(self, s: SwitchSession, sw: SwitchSpec) -> bool:
        """Managed: push our pipeline when the switch runs another (True when pushed). External:
        never push; PipelineError (nothing written) unless the switch's P4Info is ours."""
        if not self.external:
            return await s.ensure_pipeline(self.p4info, self.device_config, self.cookie)
        status = await s.check_external_pipeline(self.p4info)
        self._external_cookie[sw.name] = status.cookie
        return False

    async def _pipeline_problem(self, name: str, s: SwitchSession) -> str:
        """Why the switch's pipeline is not the one we expect ("" when it is): the cookie check of
        every round; for an external pipeline without a cookie, its P4Info is compared again."""
        if self.external:
            expected = self._external_cookie.get(name)
            if expected is None:
                try:
                    external = await s.check_external_pipeline(self.p4info)
                except PipelineError as e:
                    return str(e)
                self._external_cookie[name] = external.cookie
                return ""
        else:
            expected = self.cookie
        return cookie_problem(await s.get_pipeline(), expected)

    async def _open(self, sw: SwitchSpec) -> SwitchSession:
        """Open a session with the next wire election id of our term.

        A switch following the specification remembers the highest id it has seen and, with no
        primary, only accepts an id at least as high: when that id is from our own term (an
        earlier process with the same base id fenced to a higher counter), catch up once."""
        for attempt in range(2):
            s = self.factory(sw, wire_election_id(self.election_id, _COUNTER.take()))
            try:
                await s.open()
                return s
            except NotPrimaryError as e:
                holder = e.primary_election_id
                if attempt == 0 and e.no_primary and holder is not None:
                    base, counter = split_election_id(holder)
                    if base == self.election_id and counter < (1 << 64) - 1:
                        log.info("switch %s has seen election id %d of our term: catching up", sw.name, holder,
                                 extra={"config": self.config.key, "switch": sw.name})
                        _COUNTER.at_least(counter + 1)
                        continue
                raise
        raise AssertionError("unreachable")

    async def _drop(self, name: str) -> None:
        """Close the session to `name` (its stream first, at once) and stop trusting the switch.
        The next session arbitrates with a higher election id: together, a fence."""
        s = self._sessions.pop(name, None)
        self._forget(name)
        if s is not None:
            await s.close()

    def election_id_of(self, name: str) -> int | None:
        """The wire election id of the open session to `name`, if any."""
        s = self.session_for(name)
        return s.election_id if s is not None else None

    def _spec(self, name: str) -> SwitchSpec:
        for sw in self.order:
            if sw.name == name:
                return sw
        raise KeyError(f"no switch named {name!r} in {self.config.key}: {[sw.name for sw in self.order]}")

    def session_for(self, name: str) -> SwitchSession | None:
        """The open session to switch `name`, if any (health checks use it)."""
        s = self._sessions.get(name)
        return s if s is not None and s.is_open else None

    async def reconnect(self, name: str) -> SwitchSession | None:
        """Open a session to `name` again (arbitration and the pipeline check, nothing written);
        None when it still cannot be used (reach() says why)."""
        why = await self.reach(name)
        if why:
            log.info("switch %s %s", name, why, extra={"config": self.config.key, "switch": name})
            return None
        return self.session_for(name)

    def trusts(self, name: str) -> bool:
        """Whether what switch `name` holds is known without reading it back: it was read back
        by this applier over the session still open, and that session is still primary (a
        lost stream or primacy drops the trust here)."""
        if name in self._held_known:
            s = self._sessions.get(name)
            if s is None or not s.is_open or not s.is_primary:
                self._forget(name)
        return name in self._held_known

    def forget(self, name: str | None = None) -> None:
        """Stop trusting what `name` (None: every switch) holds: the next apply reads it back in
        full and repairs any difference (drift)."""
        for sw in self.order:
            if name is None or sw.name == name:
                self._forget(sw.name)

    def _forget(self, name: str) -> None:
        self._held.pop(name, None)
        self._held_known.discard(name)

    async def close(self) -> None:
        """Close every stream at once (also what a deposed leader must do: fencing)."""
        ahead, self._ahead = [read for _, read in self._ahead.values()], {}
        await _settle(ahead)
        sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            await s.close()
        self._held.clear()
        self._held_known.clear()
        self._encoded = []
        self._end_pass()

    def know(self, known: KnownEncodings | None) -> None:
        """Encoded entries stored by an earlier process (encoded_memo.load_encodings), or None:
        every later encoding of a snapshot (the target's, the last good one's) takes the bytes
        of a Service whose fragment digest is in `known` instead of encoding it (the digests
        are made then if they were not: a transaction needs its snapshots' digests anyway)."""
        self._known = known

    def encoded_for(self, snapshot: Snapshot | None) -> EncodedEntries | None:
        """The encoded entries of `snapshot` (the very object) kept since the last apply(),
        sync() or prepare(), for encoded_memo.dump_encodings; None when not kept (or after
        close())."""
        for snap, encoded in self._encoded:
            if snap is snapshot:
                return encoded
        return None

    def prepare(self, snapshot: Snapshot | None) -> None:
        """Encode `snapshot`'s entries now, so that the next apply() or sync() to it compares the
        read-backs at once. CPU-bound: reconcile --once calls it in a worker thread while the
        reads of read_ahead() stream in on the event loop (which touches nothing it sets)."""
        self._expected(snapshot)

    def _expected(self, snapshot: Snapshot | None) -> EncodedEntries:
        """`snapshot`'s entries encoded as a switch returns them (switch/wire.py), cached."""
        cached = self.encoded_for(snapshot)
        if cached is not None:
            return cached
        previous = self._encoded[0][1] if self._encoded else None
        encoded = EncodedEntries.of(self.info, snapshot, previous, self._known)
        self._encoded = [(snapshot, encoded)]
        return encoded

    # -- the transaction -------------------------------------------------------------------------

    async def read_ahead(self) -> None:
        """Start now the full read-back that the next apply() or sync() makes of each switch not
        trusted, so that the switches answer while the caller renders (reconcile --once).

        Nothing is written: a switch is read ahead only when it answers, takes us as primary
        (arbitration, as any connection) and already runs our pipeline. One that cannot be
        reached or needs its pipeline pushed is left to apply()/sync(), which connect, push and
        report as always. A read is used only over the session it went out on, with no pipeline
        pushed since (then the tables it saw are the ones written to); else it is read again."""
        for sw in self.order:
            if sw.name in self._ahead or self.trusts(sw.name):
                continue
            s = self._sessions.get(sw.name)
            if s is None or not s.is_open or not s.is_primary:
                if s is not None:
                    await self._drop(sw.name)
                try:
                    s = await self._open(sw)
                except SwitchError:
                    continue
                try:
                    problem = await self._pipeline_problem(sw.name, s)
                except SwitchError:
                    problem = "no answer"
                if problem:
                    await s.close()
                    continue
                self._sessions[sw.name] = s
                log.info("switch %s (%s) connected", sw.name, sw.role, extra={"config": self.config.key, "switch": sw.name})
            self._ahead[sw.name] = (s, asyncio.ensure_future(s.read_encoded(same=self._same_reads)))
        if self._ahead:
            await asyncio.sleep(0)  # let each Read start before the caller's CPU-bound work

    def _read_ahead_for(self, name: str, session: SwitchSession, pushed: bool) -> asyncio.Future[list[bytes]] | None:
        """read_ahead()'s read of `name` when it went out over `session` and no pipeline was pushed
        since; a read that cannot be used is cancelled (and collected)."""
        ahead = self._ahead.pop(name, None)
        if ahead is None:
            return None
        s, read = ahead
        if s is session and session.is_open and not pushed:
            return read
        read.cancel()
        read.add_done_callback(_collect)
        return None

    def _prefetch(self, reachable: Iterable[tuple[SwitchSpec, SwitchSession, bool]]
                  ) -> dict[str, asyncio.Future[list[bytes]]]:
        """The full read-back of every switch in `reachable` that is not trusted, each started
        over its session as a task (the caller settles every one), or taken from read_ahead()."""
        reads: dict[str, asyncio.Future[list[bytes]]] = {}
        for sw, session, pushed in reachable:
            if sw.name not in self._held_known:
                reads[sw.name] = self._read_ahead_for(sw.name, session, pushed) or asyncio.ensure_future(
                    session.read_encoded(same=self._same_reads))
        return reads

    async def apply(self, target: Snapshot, last_good: Snapshot | None, probe: Probe | None = None) -> ApplyResult:
        """Put `target` on both switches, or leave both on `last_good`."""
        reports: dict[str, SwitchReport] = {}
        reachable: list[tuple[SwitchSpec, SwitchSession, bool]] = []
        degraded_reason = ""
        # Connect to every switch before writing anything: a primary that cannot be reached
        # must not leave the standby alone on the new snapshot.
        for sw in self.order:
            t0 = time.perf_counter()
            try:
                session, pushed = await self._session(sw, check_pipeline=not self.trusts(sw.name))
                reachable.append((sw, session, pushed))
            except SwitchError as e:
                wrong = self.external and isinstance(e, PipelineError)  # answers, but not with our pipeline
                state: SwitchState = "failed" if wrong else "unreachable"
                unusable = "cannot be used" if wrong else "unreachable"
                reports[sw.name] = SwitchReport(sw.name, sw.role, state, reason=str(e), seconds=time.perf_counter() - t0)
                if sw.role == "standby" and self.policy == "apply-primary":
                    degraded_reason = f"standby {sw.name} {unusable} ({e}); applied to the primary only, re-synced when it returns"
                    log.warning("%s", degraded_reason,
                                extra={"config": self.config.key, "version": target.version, "switch": sw.name})
                    continue
                why = "primary" if sw.role == "primary" else "standby (policy: abort)"
                return self._finish(target, reports, "failed", f"{why} {sw.name} {unusable}: nothing was written: {e}")
        if not reachable:
            return self._finish(target, reports, "failed", "no switch reachable: nothing was written")

        touched: list[SwitchSpec] = []
        failure: TransactionFailed | None = None
        # The full read-backs of the untrusted switches go out together, before anything is
        # written (a switch's read does not depend on the other's writes); each switch's step
        # takes its own when its turn comes, and the writes stay in order, standby first.
        prefetched = self._prefetch(reachable)
        try:
            if prefetched:
                await asyncio.sleep(0)  # let each Read go out before the CPU-bound encoding
            for sw, session, pushed in reachable:
                touched.append(sw)
                t0 = time.perf_counter()
                mine = prefetched.pop(sw.name, None)  # settled below once used: its bytes are not kept
                try:
                    writes, drift = await self._guarded_put(sw, session, target, expected_now=last_good,
                                                            report_drift=not pushed, prefetched=mine)
                    reports[sw.name] = SwitchReport(
                        sw.name, sw.role, "applied" if writes else "unchanged", writes, drift=tuple(drift),
                        pipeline_pushed=pushed, seconds=time.perf_counter() - t0,
                    )
                except (SwitchError, TransactionFailed) as e:
                    # _guarded_put closed the session: the rollback below opens a new one with a
                    # higher election id (the fence) before it reads the switch back in full.
                    failure = e if isinstance(e, TransactionFailed) else TransactionFailed(sw.name, str(e))
                    reports[sw.name] = SwitchReport(sw.name, sw.role, "failed", reason=failure.reason,
                                                    seconds=time.perf_counter() - t0)
                    break
                finally:
                    if mine is not None:
                        await _settle([mine])
        finally:
            await _settle(prefetched.values())  # a switch never reached: its read is not used
            self._end_pass()
        if failure is None and probe is not None:
            reason = await probe(target)
            if reason:
                failure = TransactionFailed("probe", reason)
        if failure is None:
            changed = any(r.state == "applied" for r in reports.values())
            if degraded_reason:
                return self._finish(target, reports, "degraded", degraded_reason)
            return self._finish(target, reports, "applied" if changed else "unchanged")

        # Roll back every switch that was touched, and confirm by read-back. The switch that
        # failed has no session any more: _session() opens a new one with a higher election id,
        # so a Write of ours still queued in that switch is refused from now on (the fence), and
        # only then is the switch read back in full.
        log.error("transaction for v%d failed (%s): rolling back to %s", target.version, failure,
                  f"v{last_good.version}" if last_good else "empty tables",
                  extra={"config": self.config.key, "version": target.version})
        restore_failed: list[str] = []
        try:
            for sw in touched:
                t0 = time.perf_counter()
                prior = reports.get(sw.name)
                try:
                    session, _ = await self._session(sw, check_pipeline=True)
                    # A fresh full read (the switch was written since any earlier one), and a full
                    # verify: after a failure, the slow and proven path.
                    writes, _ = await self._guarded_put(sw, session, last_good, expected_now=None, full=True,
                                                        report_drift=False, verify_all=True)
                    reports[sw.name] = SwitchReport(
                        sw.name, sw.role, "rolled-back", writes,
                        reason=prior.reason if prior and prior.state == "failed" else "",
                        seconds=time.perf_counter() - t0,
                    )
                except (SwitchError, TransactionFailed) as e:
                    restore_failed.append(f"{sw.name}: {e}")
                    reports[sw.name] = SwitchReport(
                        sw.name, sw.role, "failed", reason=f"ROLLBACK FAILED, state unknown: {e}", seconds=time.perf_counter() - t0
                    )
        finally:
            self._end_pass()  # the rollback's full reads are not kept past it either
        if restore_failed:
            return self._finish(
                target, reports, "failed",
                f"{failure}; rollback failed on {'; '.join(restore_failed)}: re-sync needed (next apply reads back and repairs)",
            )
        return self._finish(target, reports, "rolled-back", str(failure))

    async def _guarded_put(
        self,
        sw: SwitchSpec,
        session: SwitchSession,
        target: Snapshot | None,
        *,
        expected_now: Snapshot | None,
        full: bool = False,
        report_drift: bool = True,
        verify_all: bool = False,
        prefetched: asyncio.Future[list[bytes]] | None = None,
    ) -> tuple[dict[str, dict[str, int]], list[str]]:
        """_put, and on any failure (a refused or timed-out write, a read error, a lost stream,
        cancellation) close the session at once and stop trusting the switch: what it holds is
        unknown, and a Write of ours may still be queued in it. The next session to it has a
        higher election id, which fences that Write."""
        try:
            return await self._put(sw, session, target, expected_now=expected_now, full=full, report_drift=report_drift,
                                   verify_all=verify_all, prefetched=prefetched)
        except BaseException:
            await asyncio.shield(self._drop(sw.name))
            raise

    async def _put(
        self,
        sw: SwitchSpec,
        session: SwitchSession,
        target: Snapshot | None,
        *,
        expected_now: Snapshot | None,
        full: bool = False,
        report_drift: bool = True,
        verify_all: bool = False,
        prefetched: asyncio.Future[list[bytes]] | None = None,
    ) -> tuple[dict[str, dict[str, int]], list[str]]:
        """Make `sw` hold `target`; returns the writes per table and the drift found.

        A full read-back is compared as bytes with the target's encoded entries; only entries
        whose bytes differ are decoded (switch/wire.py), so a switch that holds the target costs
        a set lookup per entry, and an empty one costs nothing to compare. `prefetched`: that
        read, already started over this session (apply()); `verify_all`: verify by a full read
        whatever was written (see _verify_by_keys)."""
        drift: list[str] = []
        known = sw.name in self._held_known and not full
        expected = self._expected(target)
        if known:
            held = self._held.get(sw.name)
            diff: SnapshotDiff = (
                diff_snapshots(held, target) if target is not None else diff_entries(_entries(held), [])
            )
            writes = await self._write(sw, session, diff, expected)
            verify: SnapshotDiff | None = diff
        else:
            self._tell(sw.name, "read")
            if prefetched is not None and session.is_open:
                blobs = await prefetched
            else:  # a session lost since the read went out reads again, failing as it always did
                blobs = await session.read_encoded(same=self._same_reads)
            held_bytes = self._now_encoding(expected_now, expected, target) if report_drift else None
            read_set, in_step, read = self._match(blobs, expected, held_bytes)
            extra = session.decode_entries(read.extra) if read.extra else []
            _log_decoded(sw.name, len(blobs), read, self.config.key)
            if report_drift and in_step is None:
                # What the switch holds beyond the last good snapshot was changed by someone
                # else (or left by an interrupted transaction); the same writes repair it.
                drift = self._drift(session, blobs, read_set, expected, read, extra, held_bytes)
            del read_set
            if not blobs:
                writes = await self._insert_all(sw, session, expected)
                verify = None  # everything was written: read everything back
            else:
                diff = diff_entries(*_unmatched(expected.at(read.missing), extra, target)) if extra or read.missing \
                    else _NO_CHANGE
                writes = await self._write(sw, session, diff, expected)
                verify = diff if not verify_all and _verify_by_keys(diff, len(expected)) else None
        await self._verify(sw, session, target, expected, verify)
        self._held[sw.name] = target
        self._held_known.add(sw.name)
        expected.release()  # keep the bytes, not ~350,000 Entry objects, until the next use
        return writes, drift

    def _match(self, blobs: list[bytes], expected: EncodedEntries, held: EncodedEntries | None
               ) -> tuple[set[bytes], Readback | None, Readback]:
        """(set(blobs), readback_from_held's answer (None: not in step with `held`), the read-back
        compared with `expected`). Usually the switch holds exactly the last good snapshot
        (`held`): then that is one set comparison, no drift, and what the target adds or removes
        follows from the Services that differ (switch/wire.py readback_from_held). The same
        read (the very list: SameReads) against the same encodings gets the same answer again,
        without the work: the other switch of a pair answering the same bytes."""
        m = self._matched
        if m is not None and m[0] is blobs and m[1] is expected and m[2] is held:
            return m[3], m[4], m[5]
        read_set = set(blobs)  # matched once or twice (the drift)
        in_step = readback_from_held(blobs, read_set, held, expected) if held is not None else None
        read = in_step if in_step is not None else match_readback(blobs, expected, read_set)
        self._matched = (blobs, expected, held, read_set, in_step, read)
        return read_set, in_step, read

    def _end_pass(self) -> None:
        """Drop what one apply() (its rollback included), sync() or sync_switch() kept for both
        switches: nothing of it outlives the pass."""
        self._encoded_now = None
        self._same_reads.clear()
        self._matched = None

    def _drift(self, session: SwitchSession, blobs: list[bytes], read_set: set[bytes], expected: EncodedEntries,
               read: Readback, extra: list[Entry], now: EncodedEntries | None) -> list[str]:
        """compare_entries(what the switch holds, expected_now), from the unmatched entries alone
        (every matched entry is equal on both sides): against the target's bytes (`expected`,
        `read`) when expected_now is the target (`now` None), else against expected_now's
        (`now`, _now_encoding's)."""
        if now is None:
            return compare_entries(extra, expected.at(read.missing))
        read_now = match_readback(blobs, now, read_set)
        extra_now = session.decode_entries(read_now.extra) if read_now.extra else []
        return compare_entries(extra_now, now.at(read_now.missing))

    def _now_encoding(self, expected_now: Snapshot | None, expected: EncodedEntries, target: Snapshot | None
                      ) -> EncodedEntries | None:
        """expected_now's entries encoded (its unchanged Services reuse the target's bytes), kept
        for the other switch; None when expected_now is the target (`expected` itself)."""
        if expected_now is target or (expected_now is not None and target is not None and expected_now.digest == target.digest):
            return None
        cached = self._encoded_now
        if cached is not None and cached[0] is expected_now and cached[1] is expected:
            return cached[2]
        now = EncodedEntries.of(self.info, expected_now, expected, self._known)
        self._encoded_now = (expected_now, expected, now)
        return now

    async def _write(self, sw: SwitchSpec, session: SwitchSession, diff: SnapshotDiff, known: EncodedEntries) -> dict[str, dict[str, int]]:
        if diff.empty:
            return {}
        phases = write_requests(
            self.info, diff.phases, device_id=sw.device_id, election_id=session.election_id,
            batch_size=self.batch_size, known=known,
        )
        await self._send(sw, session, phases, len(diff))
        return diff.counts()

    async def _insert_all(self, sw: SwitchSpec, session: SwitchSession, expected: EncodedEntries) -> dict[str, dict[str, int]]:
        """Fill a switch that holds nothing: every entry INSERTed, in diff.py's phases ("prepare",
        then VIPs in "publish"), from the bytes already encoded: diff_entries from empty tables
        would build and sort an Update per entry for the same writes."""
        by_table: dict[str, list[int]] = {}
        for i, table in enumerate(expected.tables):
            by_table.setdefault(table, []).append(i)
        order = {t: k for k, t in enumerate(TABLE_ORDER)}
        items: list[list[tuple[str, bytes]]] = [[] for _ in PHASE_NAMES]
        blobs = expected.blobs
        for table in sorted(by_table, key=lambda t: (order.get(t, len(order)), t)):
            items[2 if table == VIP_TABLE else 1] += [("INSERT", blobs[i]) for i in by_table[table]]
        if not len(expected):
            return {}
        phases = encoded_requests(items, device_id=sw.device_id, election_id=session.election_id, batch_size=self.batch_size)
        await self._send(sw, session, phases, len(expected))
        return {t: {"INSERT": len(by_table[t])} for t in sorted(by_table)}

    async def _send(self, sw: SwitchSpec, session: SwitchSession, phases: list[list[EncodedWriteRequest]], total: int) -> None:
        done = 0
        self._tell(sw.name, "write", 0, total)
        for requests in phases:  # each phase completes before the next starts (DESIGN.md 5)
            if not requests:
                continue
            # Shown progress: told every few requests (a phase can hold nearly every update);
            # the requests still go one after the other, and the first refusal stops the rest.
            step = _PROGRESS_REQUESTS if self.progress is not None else len(requests)
            for i in range(0, len(requests), step):
                chunk = requests[i:i + step]
                outcome: WriteOutcome = await session.write(chunk)
                if not outcome.ok:
                    raise TransactionFailed(sw.name, f"write refused: {outcome.summary()}")
                done += sum(r.size for r in chunk)
                self._tell(sw.name, "write", done, total)

    async def _verify(self, sw: SwitchSpec, session: SwitchSession, target: Snapshot | None, expected: EncodedEntries,
                      diff: SnapshotDiff | None) -> None:
        """Read back and compare: everything (as bytes) when `diff` is None, else only the keys
        just written (a one-Service change must not cost a read of 350,000 entries)."""
        self._tell(sw.name, "verify")
        if diff is None:
            blobs = await session.read_encoded(same=self._same_reads)
            read = match_readback(blobs, expected)
            if read.exact:
                return
            _log_decoded(sw.name, len(blobs), read, self.config.key)
            problems = compare_entries(session.decode_entries(read.extra), expected.at(read.missing))
        else:
            written = [u.entry for u in diff.updates() if u.kind != "DELETE"]
            deleted = [u.entry for u in diff.updates() if u.kind == "DELETE"]
            if not written and not deleted:
                return
            actual = await session.read_keys(_strip_service(written) + _strip_service(deleted))
            problems = compare_entries(actual, _strip_service(written))
        if problems:
            raise TransactionFailed(sw.name, "read-back differs from the snapshot: " + "; ".join(problems[:5]))

    # -- per-switch sync and the cheap check -------------------------------------------------------

    async def sync_switch(self, name: str, snapshot: Snapshot | None) -> SwitchReport:
        """Make switch `name` hold `snapshot` (None: empty tables), on its own: never touches
        the other switch.

        Connects if needed (arbitration, pipeline check and push); reads the switch back in
        full unless it is trusted; writes the difference in dependency order; reads back the
        keys written (in full after filling it from empty or a large diff: _verify_by_keys)
        and compares; trusts it afterwards. Returns its
        report: "applied" (writes made), "unchanged", "unreachable" or "failed" (the reason
        says why; the session is closed and the switch untrusted, so the next sync fences,
        reads back and repairs). Differences found by the read-back beyond `snapshot` are in
        `drift` (not reported after a pipeline push: those tables were empty)."""
        try:
            return await self._sync_switch(name, snapshot)
        finally:
            self._end_pass()

    async def _sync_switch(self, name: str, snapshot: Snapshot | None) -> SwitchReport:
        sw = self._spec(name)
        t0 = time.perf_counter()
        trusted = self.trusts(name)
        try:
            session, pushed = await self._session(sw, check_pipeline=not trusted)
        except SwitchError as e:
            self._forget(name)
            state: SwitchState = "failed" if isinstance(e, NotPrimaryError) else "unreachable"
            return SwitchReport(name, sw.role, state, reason=str(e), seconds=time.perf_counter() - t0)
        ahead = self._read_ahead_for(name, session, pushed)
        try:
            writes, drift = await self._guarded_put(
                sw, session, snapshot, expected_now=snapshot, full=not self.trusts(name), report_drift=not pushed,
                prefetched=ahead,
            )
        except (SwitchError, TransactionFailed) as e:
            reason = e.reason if isinstance(e, TransactionFailed) else str(e)
            log.error("switch %s: sync to %s failed: %s", name, _version(snapshot), reason,
                      extra={"config": self.config.key, "version": snapshot.version if snapshot else None, "switch": name})
            return SwitchReport(name, sw.role, "failed", reason=reason, pipeline_pushed=pushed,
                                seconds=time.perf_counter() - t0)
        finally:
            if ahead is not None:
                await _settle([ahead])
        report = SwitchReport(name, sw.role, "applied" if writes else "unchanged", writes, drift=tuple(drift),
                              pipeline_pushed=pushed, seconds=time.perf_counter() - t0)
        log.debug("sync to %s: %s", _version(snapshot), report.describe(),
                  extra={"config": self.config.key, "version": snapshot.version if snapshot else None, "switch": name})
        return report

    def holds(self, name: str, snapshot: Snapshot | None) -> bool:
        """Whether switch `name` is trusted to hold exactly `snapshot`."""
        if not self.trusts(name):
            return False
        held = self._held.get(name)
        if held is None or snapshot is None:
            return held is None and snapshot is None
        return held is snapshot or held.digest == snapshot.digest

    async def sync(self, snapshot: Snapshot | None) -> ApplyResult:
        """sync_switch() for every switch that is not trusted to hold `snapshot` (unconnected,
        reconnected, failed, or holding another snapshot), each on its own and concurrently: one
        that cannot be reached is reported "unreachable" and the others are still synced.

        Outcome: "unchanged" (nothing written), "applied" (some switch repaired), "degraded"
        (some switch unreachable, the reachable ones hold `snapshot`), "failed" (a sync failed,
        or no switch could be reached)."""

        async def one(sw: SwitchSpec) -> SwitchReport:
            if self.holds(sw.name, snapshot):
                return SwitchReport(sw.name, sw.role, "unchanged", reason="trusted: read back earlier, session still primary")
            return await self._sync_switch(sw.name, snapshot)

        try:
            reports = await asyncio.gather(*(one(sw) for sw in self.order))
        finally:
            self._end_pass()
        failed = [r for r in reports if r.state == "failed"]
        unreachable = [r for r in reports if r.state == "unreachable"]
        outcome: Outcome
        if failed or len(unreachable) == len(reports):
            outcome = "failed"
            reason = "; ".join(f"{r.name}: {r.state}: {r.reason}" for r in failed + unreachable)
        elif unreachable:
            outcome = "degraded"
            reason = "; ".join(f"{r.name} unreachable ({r.reason}); re-synced when it returns" for r in unreachable)
        else:
            outcome = "applied" if any(r.state == "applied" for r in reports) else "unchanged"
            reason = ""
        result = ApplyResult(
            outcome, snapshot.version if snapshot else 0, snapshot.digest if snapshot else "", tuple(reports), reason
        )
        # Success is said by the controller's one line per transaction; a failure is said here too.
        (log.debug if result.ok else log.error)("sync: %s", result.describe(),
                                                extra={"config": self.config.key, "version": result.version})
        return result

    async def unaccounted(self) -> dict[str, int]:
        """Switches that hold Services (vip_table entries of our pipeline) although no applied
        snapshot accounts for them: switch -> entries. Asked when the audit repository (or
        state directory) has no record of the config: a lost audit history must not turn into
        a fresh render replacing what the switches serve. Unreachable switches are skipped."""
        out: dict[str, int] = {}
        for sw in self.order:
            # Read-only: a session of its own, no pipeline push (a refusal must change nothing).
            try:
                session = await self._open(sw)
            except SwitchError as e:
                log.info("switch %s unreachable for the first-apply check: %s", sw.name, e,
                         extra={"config": self.config.key, "switch": sw.name})
                continue
            try:
                if self.external:
                    try:
                        await session.check_external_pipeline(self.p4info)
                    except PipelineError:
                        continue  # not our program: it holds none of our Services
                else:
                    if cookie_problem(await session.get_pipeline(), self.cookie):
                        continue  # not our program: it holds none of our Services
                held = (await session.count_entries([VIP_TABLE])).get(VIP_TABLE, 0)
            finally:
                await session.close()
            if held:
                out[sw.name] = held
        return out

    async def reach(self, name: str) -> str:
        """Make sure a primary session to `name` is open (arbitration, pipeline check; nothing
        written): "" when it is, else why not, in words an operator can act on."""
        session = self.session_for(name)
        if session is not None and session.is_primary:
            return ""
        try:
            await self._session(self._spec(name))
            return ""
        except NotPrimaryError as e:
            # It answers, but another controller holds it with a higher election id.
            return f"refused us as primary ({e})"
        except PipelineError as e:
            if self.external:  # it answers, but does not run our pipeline, which is not ours to push
                return f"cannot be used ({e})"
            return f"unreachable ({e})"
        except SwitchError as e:
            return f"unreachable ({e})"

    async def unreachable(self) -> str:
        """Why a transaction cannot start ("" when every switch it needs answers): reach each
        switch (arbitration, pipeline) before anything is recorded or written, so that an
        outage is an attempt that reached nothing, not a failed transaction."""
        for sw in self.order:
            why = await self.reach(sw.name)
            if not why:
                continue
            if sw.role == "primary":
                return f"primary {sw.name} {why}"
            if self.policy == "abort":
                return f"standby {sw.name} {why} (policy: abort)"
            log.info("standby %s %s; applying to the primary only", sw.name, why,
                     extra={"config": self.config.key, "switch": sw.name})
        return ""

    async def quick_check(self, name: str, snapshot: Snapshot | None, *, max_count: int | None = QUICK_COUNT_LIMIT) -> QuickCheck:
        """The cheap check of every health round, over the open session to `name` (primacy is
        not needed to read): the pipeline cookie (GetForwardingPipelineConfig, cookie only)
        equals ours, and each table holds as many entries as `snapshot` has (one wildcard Read
        per table, entities counted, not decoded). Tables expected to hold more than
        `max_count` entries are left to the periodic full read-back: P4Runtime has no count
        call, so counting them costs a read of every entry (seconds at 350,000 entries).

        Not ok: the applier stops trusting the switch (the next sync reads it back in full and
        repairs it; a wrong or missing pipeline is checked and pushed again then). Raises
        SwitchError (after dropping trust) when there is no open session or the switch does not
        answer, so the caller can tell an unreachable switch from a wrong one."""
        sw = self._spec(name)
        t0 = time.perf_counter()
        s = self._sessions.get(name)
        if s is None or not s.is_open:
            self._forget(name)
            raise SwitchError(f"switch {name}: no open P4Runtime session for the quick check", switch=name)
        try:
            counts: dict[str, int] = {}
            reason = await self._pipeline_problem(name, s)
            if not reason:
                want = snapshot.table_counts if snapshot is not None else {}
                small = [t for t in self.info.tables if max_count is None or want.get(t, 0) <= max_count]
                counts = await s.count_entries(small)
                wrong = [
                    f"{t}: {have} entries, expected {want.get(t, 0)}"
                    for t, have in counts.items()
                    if have != want.get(t, 0)
                ]
                reason = "entry counts differ from " + _version(snapshot) + ": " + "; ".join(wrong) if wrong else ""
        except SwitchError:
            self._forget(name)
            raise
        if reason:
            self._forget(name)
            log.warning("switch %s: quick check: %s; it will be read back in full", sw.name, reason,
                        extra={"config": self.config.key, "version": snapshot.version if snapshot else None, "switch": sw.name})
        return QuickCheck(name, not reason, reason, counts, time.perf_counter() - t0)

    def _finish(self, target: Snapshot, reports: Mapping[str, SwitchReport], outcome: Outcome, reason: str = "") -> ApplyResult:
        ordered = tuple(
            reports.get(sw.name, SwitchReport(sw.name, sw.role, "not-touched")) for sw in self.order
        )
        result = ApplyResult(outcome, target.version, target.digest, ordered, reason)
        # Success is said by the controller's one line per transaction; a failure is said here too.
        (log.debug if result.ok else log.error)("%s", result.describe(),
                                                extra={"config": self.config.key, "version": target.version})
        return result


async def apply_once(applier: TwoSwitchApplier, target: Snapshot, last_good: Snapshot | None, probe: Probe | None = None) -> ApplyResult:
    try:
        return await applier.apply(target, last_good, probe)
    finally:
        await applier.close()


def default_session_factory(
    config: LoadBalancerConfig,
    info: PipelineInfo,
    tls: TlsSettings | None = None,
    *,
    require_tls: bool = False,
    **kwargs: Any,  # SwitchSession's own keywords (timeouts, limits), passed on
) -> SessionFactory:
    """Sessions for the config's switches. require_tls: refuse now, before any connection, when
    `tls` is None (the commands pass it unless --allow-insecure-switches; reconciler.switch.tls)."""
    source = f"{config.source.file}:{config.source.line}" if config.source is not None else ""
    _require_tls(tls, allow_insecure=not require_tls, config=config.key, where=source,
                 switches=[(sw.name, sw.address) for sw in config.switch_config.switches])

    def make(sw: SwitchSpec, election_id: int) -> SwitchSession:
        return SwitchSession(sw.address, device_id=sw.device_id, election_id=election_id, info=info, tls=tls, name=sw.name, **kwargs)

    return make


__all__ = [
    "ApplyResult",
    "Probe",
    "QuickCheck",
    "SwitchReport",
    "TransactionFailed",
    "TwoSwitchApplier",
    "apply_once",
    "compare_entries",
    "default_session_factory",
]

