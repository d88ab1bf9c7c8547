"""What the loop tells Kubernetes about each LoadBalancerConfig: Events when its state turns,
and its status. Here, not in kube/, because both read the controller's TransactionRecord."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING

from ..apply import ApplyResult
from ..controller import TransactionRecord
from ..intent.model import LoadBalancerConfig
from ..kube.crstatus import ConfigStatusWriter, Outcome, SwitchState, plain_unreachable
from ..kube.events import EventRecorder, EventType, ObjectRef
from ..kube.intent_source import GROUP, VERSION, CRIntent, CRIntentSource, describe
from ..snapshot import Snapshot

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger("reconciler.run")


class ConfigEvents:
    """Events on the LoadBalancerConfig when its state turns (degraded, refused, rolled back,
    waiting) and when it converges again; one per change of state, not one per pass."""

    def __init__(self, api: ApiClient) -> None:
        self.recorder = EventRecorder(api)
        self._last: dict[str, tuple[str, str]] = {}  # config -> (outcome, reason) last told

    async def note(self, record: TransactionRecord, result: ApplyResult | None = None,
                   config: LoadBalancerConfig | None = None) -> None:
        # Events are readable by whoever can read the CR: unreachable switches read the same
        # whatever the peer answered (no port-scan oracle); the log keeps the detail.
        addresses = {s.name: s.address for s in config.switch_config.switches} if config is not None else {}
        details = [r.reason for r in result.switches if r.state == "unreachable"] if result is not None else []
        record = dataclasses.replace(record, reason=plain_unreachable(record.reason, addresses, details))
        outcome = record.outcome
        told = self._last.get(record.config)
        kind: EventType
        if outcome.converged:
            if told is None:
                return
            del self._last[record.config]  # back to normal: say so once
            kind, note = "Normal", f"v{record.version} {outcome.value}" + (f": {record.reason}" if record.reason else "")
        else:
            if told == (outcome.value, record.reason):
                return
            self._last[record.config] = (outcome.value, record.reason)
            kind, note = "Warning", f"v{record.version} {outcome.value}: {record.reason}"
        ns, _, name = record.config.partition("/")
        ref = ObjectRef("LoadBalancerConfig", ns, name, f"{GROUP}/{VERSION}")
        try:
            await self.recorder.emit(ref, kind, outcome.reason, "Reconcile", note)
        except Exception as e:  # noqa: BLE001 - an Event is never worth stopping the loop
            log.warning("%s: could not record an Event: %s", record.config, e)


_SWITCH_STATE = {"applied": "InSync", "unchanged": "InSync", "rolled-back": "RolledBack", "unreachable": "Unreachable",
                 "failed": "Degraded", "not-touched": "InSync"}


class CRStatus:
    """Writes LoadBalancerConfig status (kstatus: Ready / Reconciling / Stalled with
    observedGeneration, applied version and digest, each switch's state) for CR intent."""

    def __init__(self, source: CRIntentSource, writer: ConfigStatusWriter) -> None:
        self.source, self.writer = source, writer
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self) -> None:
        async def stall_invalid(cr: CRIntent) -> None:
            for res in cr.invalid:  # refused specs: Stalled, naming every field at fault
                await self.writer.report(res.namespace, res.name, res.generation,
                                         Outcome.invalid([describe(d) for d in res.diagnostics]), res.status)

        await stall_invalid(self.source.current())
        async for cr in self.source.changes():
            await stall_invalid(cr)

    async def report(self, record: TransactionRecord, result: ApplyResult | None, held: Snapshot | None) -> None:
        res = self.source.current().resources.get(record.config)
        if res is None or not res.valid:
            return
        # Unreachable switches read the same whatever the peer answered (kube.crstatus.plain_unreachable).
        addresses = {s.name: s.address for s in res.config.switch_config.switches} if res.config is not None else {}
        details = [r.reason for r in result.switches if r.state == "unreachable"] if result is not None else []
        switches = None
        if result is not None:
            switches = tuple(SwitchState(r.name, r.role, _SWITCH_STATE.get(r.state, "Degraded"),
                                         f"unreachable at {addresses.get(r.name, '?')}" if r.state == "unreachable"
                                         else plain_unreachable(r.reason, addresses, details)[:1000]) for r in result.switches)
        reason = plain_unreachable(record.reason, addresses, details)
        message = f"v{record.version} {record.outcome}" + (f": {reason}" if reason else "")
        if record.draining:  # step 1 of a move is applied; step 2 writes the plain entries then
            message += f"; {record.draining}"
        outcome = Outcome(
            record.outcome.phase, message[:32000], record.outcome.reason,
            applied_version=held.version if held is not None else None,
            applied_digest=held.digest if held is not None else None,
            switches=switches,
        )
        await self.writer.report(res.namespace, res.name, res.generation, outcome, res.status)
