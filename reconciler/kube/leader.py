"""Leader election on a coordination.k8s.io/v1 Lease, and the P4Runtime election id it yields.

The algorithm is client-go's (leaderelection.LeaseLock), which every Kubernetes controller
uses, so p4kube interoperates with the usual tools (kubectl get lease shows the holder):

- Acquire: read the Lease (create it when missing). It is free when its holder is empty, or
  when its record has not changed for leaseDurationSeconds as measured on *our* clock since we
  first saw that record (renewTime is another machine's clock; it is never compared with ours).
  Taking it over writes holderIdentity, acquireTime, renewTime and leaseTransitions + 1 with
  a PUT carrying the resourceVersion read: of two contenders exactly one succeeds, the other
  gets 409 Conflict (fixture 09).
- Renew: every retry period, PUT a new renewTime (same resourceVersion rule).
- Loss is signalled at once (the `lost` event of the term, and the callbacks) when a renew
  finds another holder or is refused with 409 and the fresh read shows another holder, or when
  no renew succeeded for renewDeadline (transport errors). renewDeadline < leaseDuration, so
  the old leader stops before anyone else may take the Lease.
- Release on shutdown: holderIdentity "" and leaseDurationSeconds 1, so a standby takes over
  at its next attempt instead of waiting a whole lease duration.

MicroTime fields (acquireTime, renewTime) are written with exactly six fractional digits: the
API server rejects anything else (fixture 09: 400 on POST/PUT, 422 on PATCH).

Fencing: `election_id()` is leaseTransitions + 1, the base id of the term: the *high* 64 bits
of the 128-bit P4Runtime election id, whose low 64 bits count the sessions the applier opens in
the term (wire id = (term << 64) | counter, reconciler/switch/translate.py). Every change of
holder increments leaseTransitions, through a compare-and-swap on the Lease's resourceVersion,
so every session of a later term has a strictly higher election id than every session of an
earlier one: when it arbitrates, the switch makes it primary and refuses writes from the
deposed one with PERMISSION_DENIED. Because BMv2 promotes
the next stream when the primary's ends (DESIGN.md 8), the deposed leader must also close its
streams at once: that is what the `lost` signal is for. Deleting the Lease object restarts
leaseTransitions at 0 and breaks this ordering: do not delete it while a reconciler runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s

from reconciler.kube.client import FIELD_MANAGER, MICROTIME_FORMAT, KubeError, call_json

log = logging.getLogger(__name__)

DEFAULT_LEASE_NAME = "p4kube-reconciler"


def default_identity() -> str:
    """Pod (or host) name plus a random suffix: two processes never share an identity, even a
    restarted Pod with the same name (client-go does the same)."""
    base = os.environ.get("POD_NAME") or socket.gethostname() or "p4kube"
    return f"{base}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    duration_s: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> LeaseRecord:
        spec = obj.get("spec") or {}
        meta = obj.get("metadata") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            duration_s=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str(meta.get("resourceVersion") or ""),
        )


@dataclass
class Term:
    """One stretch of leadership. `lost` is set the moment it ends (never cleared)."""

    identity: str
    transitions: int
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    lost_reason: str = ""

    @property
    def election_id(self) -> int:
        return self.transitions + 1


class LeadershipLost(Exception):
    pass


class LeaderElector:
    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        namespace: str,
        name: str = DEFAULT_LEASE_NAME,
        identity: str | None = None,
        lease_duration_s: int = 15,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        request_timeout_s: float | None = None,
    ) -> None:
        if not 0 < retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError("need 0 < retry_period_s < renew_deadline_s < lease_duration_s (client-go's rule)")
        self._leases = k8s.CoordinationV1Api(api)
        self.namespace, self.name = namespace, name
        self.identity = identity or default_identity()
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self._clock, self._now, self._sleep = clock, now, sleep
        self._timeout = request_timeout_s or retry_period_s
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0
        self.term: Term | None = None
        self._became_leader = asyncio.Event()
        self._callbacks: list[Callable[[Term], None]] = []
        self._stopping = False

    # --- what the controller uses -----------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.term is not None and not self.term.lost.is_set()

    def election_id(self) -> int:
        """The P4Runtime election id of the current term (see the module docstring)."""
        if not self.is_leader:
            raise LeadershipLost(f"{self.identity} does not hold Lease {self.namespace}/{self.name}")
        assert self.term is not None
        return self.term.election_id

    def on_lost(self, callback: Callable[[Term], None]) -> None:
        """Call `callback(term)` synchronously the moment leadership is lost."""
        self._callbacks.append(callback)

    async def acquired(self) -> Term:
        """Wait until this elector leads (run() must be running)."""
        while True:
            await self._became_leader.wait()
            if self.is_leader and self.term is not None:
                return self.term
            self._became_leader.clear()

    @property
    def observed_holder(self) -> str | None:
        return self._observed.holder if self._observed is not None else None

    async def run(self) -> None:
        """Acquire, then renew, until stop(); re-enters the race after a loss."""
        self._stopping = False
        while not self._stopping:
            await self.try_acquire_or_renew()
            if self._stopping:
                break
            await self._sleep(self.retry_period_s)

    def stop(self) -> None:
        self._stopping = True

    async def release(self) -> bool:
        """Give the Lease up (shutdown); True when it was ours and is now free."""
        self.stop()
        if not self.is_leader or self._observed is None:
            return False
        record = self._observed
        now = self._microtime()
        body = self._lease_body(record.resource_version, "", 1, now, now, record.transitions)
        try:
            obj = await asyncio.to_thread(self._replace, body)
        except KubeError as e:
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, e)
            self._lose(f"released with an error: {e}")
            return False
        self._observe(LeaseRecord.from_object(obj))
        self._lose("released")
        return True

    # --- one attempt ------------------------------------------------------------------------

    async def try_acquire_or_renew(self) -> bool:
        """One acquire-or-renew; True when this elector leads afterwards."""
        was_leader = self.is_leader
        try:
            ok = await asyncio.wait_for(asyncio.to_thread(self._attempt), self._timeout + 1.0)
        except (KubeError, TimeoutError) as e:
            err = e if isinstance(e, KubeError) else KubeError(f"renew Lease {self.namespace}/{self.name}", None, "Timeout", "no answer in time")
            if was_leader and self._clock() - self._last_renew >= self.renew_deadline_s:
                self._lose(f"could not renew for {self.renew_deadline_s:g}s: {err}")
            else:
                log.warning("Lease %s/%s: %s", self.namespace, self.name, err, extra={"lease": f"{self.namespace}/{self.name}"})
            return self.is_leader
        if ok:
            self._last_renew = self._clock()
            assert self._observed is not None
            if not was_leader:
                self.term = Term(self.identity, self._observed.transitions)
                self._became_leader.set()
                log.info("%s leads (Lease %s/%s, transitions %d, election id %d)", self.identity, self.namespace, self.name,
                         self._observed.transitions, self.term.election_id,
                         extra={"identity": self.identity, "lease": f"{self.namespace}/{self.name}", "election_id": self.term.election_id})
        elif was_leader:
            holder = self.observed_holder or "nobody"
            self._lose(f"Lease {self.namespace}/{self.name} is now held by {holder}")
        return self.is_leader

    def _attempt(self) -> bool:
        """Blocking: read, decide, write. True when the Lease is ours afterwards."""
        try:
            obj = call_json(f"get Lease {self.namespace}/{self.name}", self._leases.read_namespaced_lease, self.name, self.namespace, _request_timeout=self._timeout)
        except KubeError as e:
            if e.code != 404:
                raise
            return self._create()
        for _ in range(2):
            record = self._observe(LeaseRecord.from_object(obj))
            mine = record.holder == self.identity
            if record.holder and not mine and self._clock() < self._observed_at + record.duration_s:
                return False  # held by another, and alive as far as we can tell
            now = self._microtime()
            transitions = record.transitions if mine else record.transitions + 1
            acquire = record.acquire_time if mine and record.acquire_time else now
            body = self._lease_body(record.resource_version, self.identity, self.lease_duration_s, acquire, now, transitions)
            try:
                updated = self._replace(body)
            except KubeError as e:
                if e.code != 409:
                    raise
                # Someone wrote the Lease since we read it: look again and decide on what is
                # there (another holder: not ours; still ours, e.g. a label edit: try once more).
                obj = call_json(f"get Lease {self.namespace}/{self.name}", self._leases.read_namespaced_lease, self.name, self.namespace, _request_timeout=self._timeout)
                if LeaseRecord.from_object(obj).holder != self.identity:
                    self._observe(LeaseRecord.from_object(obj))
                    return False
                continue
            self._observe(LeaseRecord.from_object(updated))
            return True
        return False

    def _create(self) -> bool:
        now = self._microtime()
        body = self._lease_body(None, self.identity, self.lease_duration_s, now, now, 0)
        try:
            obj = call_json(
                f"create Lease {self.namespace}/{self.name}",
                self._leases.create_namespaced_lease,
                self.namespace,
                body,
                field_manager=FIELD_MANAGER,
                _request_timeout=self._timeout,
            )
        except KubeError as e:
            if e.code == 409:  # another elector created it first
                return False
            raise
        self._observe(LeaseRecord.from_object(obj))
        return True

    def _replace(self, body: dict[str, Any]) -> dict[str, Any]:
        return call_json(
            f"update Lease {self.namespace}/{self.name}",
            self._leases.replace_namespaced_lease,
            self.name,
            self.namespace,
            body,
            field_manager=FIELD_MANAGER,
            _request_timeout=self._timeout,
        )

    def _lease_body(
        self, rv: str | None, holder: str, duration: int, acquire: str | None, renew: str, transitions: int
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if rv:
            meta["resourceVersion"] = rv  # compare-and-swap: 409 if anyone wrote in between
        spec: dict[str, Any] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "renewTime": renew,
            "leaseTransitions": transitions,
        }
        if acquire:
            spec["acquireTime"] = acquire
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def _observe(self, record: LeaseRecord) -> LeaseRecord:
        """Remember the record, and when (on our clock) it last changed."""
        if self._observed is None or _content(self._observed) != _content(record):
            self._observed_at = self._clock()
        self._observed = record
        return record

    def _microtime(self) -> str:
        return self._now().astimezone(UTC).strftime(MICROTIME_FORMAT)

    def _lose(self, reason: str) -> None:
        term = self.term
        if term is None or term.lost.is_set():
            return
        term.lost_reason = reason
        term.lost.set()
        self._became_leader.clear()
        level = logging.INFO if reason == "released" else logging.WARNING
        log.log(level, "%s lost leadership (election id %d): %s", self.identity, term.election_id, reason,
                extra={"identity": self.identity, "lease": f"{self.namespace}/{self.name}", "election_id": term.election_id})
        for cb in self._callbacks:
            try:
                cb(term)
            except Exception:
                log.exception("a leadership-lost callback failed")


def _content(r: LeaseRecord) -> tuple[object, ...]:
    return (r.holder, r.duration_s, r.acquire_time, r.renew_time, r.transitions)
