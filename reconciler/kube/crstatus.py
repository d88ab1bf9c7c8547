"""LoadBalancerConfig status, kstatus style: Ready / Reconciling / Stalled conditions.

The status a tool such as Argo CD, Flux or `kubectl wait` reads (the shape the generated CRD's
status schema declares; deploy/ has the Argo CD health check that reads it):

    status:
      observedGeneration: 3            # the metadata.generation this status speaks about
      conditions:                       # metav1.Condition
        - {type: Ready, status: "True", reason: Applied, message: ..., observedGeneration: 3,
           lastTransitionTime: "2026-11-22T10:23:48Z"}
        - {type: Reconciling, status: "False", ...}
        - {type: Stalled, status: "False", ...}
      appliedVersion: 12               # the snapshot the switches hold
      appliedDigest: sha256:...
      switches: [{name: leaf-1, role: primary, state: InSync, message: ..., lastWriteTime: ...}]

kstatus semantics: Reconciling=True while the reconciler works towards the spec; Stalled=True
when it cannot make progress without a change (invalid spec, an apply that failed and was
rolled back); Ready=True when the switches hold the snapshot rendered from this generation.
lastTransitionTime moves only when a condition's status changes. appliedVersion/appliedDigest
and the switches' states carry over from the previous status when an outcome says nothing
new about them (an invalid spec does not change what the switches hold).

Writes are merge patches to the status subresource (strategic merge patch is 415 for custom
resources: fixture 10) under field manager "p4kube", and are skipped when nothing differs.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from kubernetes import client as k8s

from reconciler.kube.client import FIELD_MANAGER, MERGE_PATCH, TIME_FORMAT, KubeError, call_json
from reconciler.kube.intent_source import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"
CONDITION_TYPES = (READY, RECONCILING, STALLED)
MAX_MESSAGE = 32768  # metav1.Condition.message limit

Phase = Literal["invalid", "reconciling", "applied", "degraded", "failed"]


@dataclass(frozen=True)
class SwitchState:
    name: str
    role: str  # primary | standby
    state: str  # one CamelCase word, as the CRD describes: InSync | Degraded | RolledBack | Unreachable | Fenced
    message: str = ""
    last_write_time: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "role": self.role, "state": self.state}
        if self.message:
            out["message"] = self.message
        if self.last_write_time is not None:
            out["lastWriteTime"] = _time(self.last_write_time)
        return out


@dataclass(frozen=True)
class Outcome:
    """What happened to one config in the last reconciliation, for its status."""

    phase: Phase
    message: str
    reason: str | None = None  # CamelCase; a per-phase default when None
    applied_version: int | None = None
    applied_digest: str | None = None
    switches: tuple[SwitchState, ...] | None = None  # None: keep the previous states

    @classmethod
    def invalid(cls, problems: Sequence[str]) -> Outcome:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        return cls("invalid", f"the spec is invalid: {shown}", "InvalidSpec")


# (Ready, Reconciling, Stalled) statuses and the default reason per phase.
_TABLE: dict[str, tuple[str, str, str, str]] = {
    "invalid": ("False", "False", "True", "InvalidSpec"),
    "reconciling": ("False", "True", "False", "Progressing"),
    "applied": ("True", "False", "False", "Applied"),
    "degraded": ("True", "False", "False", "AppliedDegraded"),
    "failed": ("False", "False", "True", "ApplyFailed"),
}


def _time(when: datetime) -> str:
    return when.astimezone(UTC).strftime(TIME_FORMAT)


def build_status(generation: int, outcome: Outcome, previous: Mapping[str, Any] | None, now: datetime) -> dict[str, Any]:
    """The full status for `outcome` (pure). `previous` is the CR's current status."""
    prev = previous or {}
    before = {c.get("type"): c for c in prev.get("conditions") or [] if isinstance(c, Mapping)}
    ready, reconciling, stalled, default_reason = _TABLE[outcome.phase]
    reason = outcome.reason or default_reason
    message = outcome.message[:MAX_MESSAGE]
    conditions = []
    for ctype, status in ((READY, ready), (RECONCILING, reconciling), (STALLED, stalled)):
        old = before.get(ctype) or {}
        moved = old.get("status") != status or not old.get("lastTransitionTime")
        conditions.append(
            {
                "type": ctype,
                "status": status,
                "observedGeneration": generation,
                "lastTransitionTime": _time(now) if moved else old["lastTransitionTime"],
                "reason": reason,
                "message": message,
            }
        )
    out: dict[str, Any] = {"observedGeneration": generation, "conditions": conditions}
    version = outcome.applied_version if outcome.applied_version is not None else prev.get("appliedVersion")
    digest = outcome.applied_digest if outcome.applied_digest is not None else prev.get("appliedDigest")
    if version is not None:
        out["appliedVersion"] = version
    if digest is not None:
        out["appliedDigest"] = digest
    if outcome.switches is not None:
        out["switches"] = [s.to_json() for s in outcome.switches]
    elif isinstance(prev.get("switches"), list):
        out["switches"] = copy.deepcopy(prev["switches"])
    return out


def same_status(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether writing `b` over `a` would change nothing p4kube writes."""
    a, b = a or {}, b or {}
    keys = ("observedGeneration", "conditions", "appliedVersion", "appliedDigest", "switches")
    return all(a.get(k) == b.get(k) for k in keys)


def condition(status: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for c in status.get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == ctype:
            return c
    return None


class ConfigStatusWriter:
    """Writes LoadBalancerConfig status through /status, only when it differs."""

    def __init__(self, api: k8s.ApiClient, *, now: Any = None) -> None:
        self._custom = k8s.CustomObjectsApi(api)
        self._now = now or (lambda: datetime.now(UTC))
        self.writes = 0

    def status_for(self, generation: int, outcome: Outcome, current: Mapping[str, Any] | None) -> dict[str, Any]:
        return build_status(generation, outcome, current, self._now())

    async def report(self, namespace: str, name: str, generation: int, outcome: Outcome, current: Mapping[str, Any] | None) -> bool:
        """Write the status for `outcome`; True when a write was needed and done, False when
        the status already said so or the CR is gone."""
        status = self.status_for(generation, outcome, current)
        if same_status(current, status):
            return False
        try:
            await asyncio.to_thread(
                call_json,
                f"patch {PLURAL} {namespace}/{name} status",
                self._custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": status},
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
            )
        except KubeError as e:
            if e.code == 404:
                log.info("LoadBalancerConfig %s/%s is gone; its status is not written", namespace, name)
                return False
            raise
        self.writes += 1
        return True


# --- what status and Events may say about a switch that cannot be reached -------------------------

_UNREACHABLE = "unreachable ("


def plain_unreachable(text: str, switches: Mapping[str, str] = {}, details: Sequence[str] = ()) -> str:  # noqa: B006 - read only
    """`text` (a transaction's reason) as CR status and Events may show it: an unreachable
    switch reads "unreachable at ADDRESS" (the address intent wrote), without what the peer
    answered (refused, reset, a TLS alert, not gRPC, a timeout). Anyone who can write a CR can
    read its status and Events: the peer's answer to an address of their choosing would make
    the reconciler a port scanner. The log keeps the detail. `switches`: name -> address;
    `details`: the error texts of the switches reported unreachable (removed where they appear)."""
    for detail in sorted({d for d in details if d}, key=len, reverse=True):
        text = text.replace(f"unreachable ({detail})", "unreachable").replace(f"unreachable: {detail}", "unreachable")
    out, i = [], 0
    while (j := text.find(_UNREACHABLE, i)) >= 0:  # any other "unreachable (...)": drop the parenthesis, nesting included
        out.append(text[i:j] + "unreachable")
        depth, k = 0, j + len(_UNREACHABLE) - 1
        while k < len(text):
            depth += {"(": 1, ")": -1}.get(text[k], 0)
            if depth == 0:
                break
            k += 1
        i = k + 1
    out.append(text[i:])
    text = "".join(out)
    for name, address in switches.items():
        shown = address if len(address) <= 80 else address[:80] + "..."
        text = re.sub(rf"(?<![\w.-]){re.escape(name)}(:| \((?:primary|standby)\))? unreachable(?! at )",
                      lambda m: f"{m.group(0)} at {shown}", text)
    return text
