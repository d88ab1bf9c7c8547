"""Refused intent in `p4kube run` (--verify-intent-signers): logged, recorded in the audit
repository, and told as an Event."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from ..audit.errors import SignatureError
from ..audit.refusals import check_signed_intent, record_refusal, refused_intent_id
from ..audit.reopening import ReopeningAudit
from ..audit.signing import TrustedKeys
from ..intent.model import IntentSet
from .events import EventRecorder, ObjectRef
from .intent_source import GROUP, VERSION

log = logging.getLogger("reconciler.run")


class IntentRefusals:
    """--verify-intent-signers in `p4kube run`: the gate DirectoryIntent asks before it accepts an
    intent (signed HEAD, no uncommitted changes), and what is done with a refusal: logged (by
    DirectoryIntent), recorded in the audit repository once per refused commit for each config
    with an applied snapshot (against that snapshot, as `reconcile` does), and a Warning Event
    (reason IntentRefused) on the LoadBalancerConfig when there is a Kubernetes API."""

    def __init__(self, root: str, trusted: TrustedKeys, audit: ReopeningAudit | None, api: Any) -> None:
        self.root, self.trusted, self.audit, self.api = root, trusted, audit, api
        self._tasks: set[asyncio.Task[None]] = set()
        # Bounded (DESIGN.md 6.1): the newest refusals only.
        self.recorded: deque[tuple[str, str]] = deque(maxlen=64)  # (config, Refused-Intent-Commit) recorded here
        self.reported: deque[tuple[str, str]] = deque(maxlen=64)  # (Refused-Intent-Commit, why), once each
        self._reported = asyncio.Condition()

    def gate(self, intent: IntentSet) -> str:
        try:
            return check_signed_intent(intent, self.root, self.trusted)
        except SignatureError as e:  # ssh-keygen or gpg missing or failing: nothing unverified is applied
            return f"intent at {self.root} refused: its signature could not be checked: {e}"

    def refused(self, intent: IntentSet, why: str) -> None:
        task = asyncio.get_running_loop().create_task(self._report(intent, why))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, intent: IntentSet, why: str) -> None:
        refused = refused_intent_id(intent)
        for config in intent.configs:
            if self.audit is not None:
                try:
                    held = await asyncio.to_thread(self.audit.last_applied, config.key)
                    if held is not None and await asyncio.to_thread(record_refusal, self.audit, config.key, held, why, refused):
                        self.recorded.append((config.key, refused))
                        log.info("%s: refused intent %s recorded in the audit repository (v%d stays applied)",
                                 config.key, refused[:12], held.version)
                except Exception as e:  # noqa: BLE001 - the refusal stands; the record is best effort
                    log.warning("%s: could not record the refused intent: %s", config.key, e)
            if self.api is not None:
                try:
                    await EventRecorder(self.api).emit(
                        ObjectRef("LoadBalancerConfig", config.namespace, config.name, f"{GROUP}/{VERSION}"),
                        "Warning", "IntentRefused", "Verify", why[:1000])
                except Exception as e:  # noqa: BLE001 - an Event is never worth stopping the loop
                    log.warning("%s: could not record an Event: %s", config.key, e)
        async with self._reported:
            self.reported.append((refused, why))
            self._reported.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Tests: wait (on each reported refusal) until `predicate()` holds."""
        async with self._reported:
            await asyncio.wait_for(self._reported.wait_for(predicate), timeout)

    async def wait_reported(self) -> None:
        """Until every refusal told so far is recorded (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        await self.wait_reported()
