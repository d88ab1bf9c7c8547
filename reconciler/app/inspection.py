"""Gathering `p4kube status`: the last applied record (audit repository or state directory),
each switch read without arbitration (reconciler/switch/inspect.py), and the Services fallen
back (the API, a cluster recording, else the audit record), into reconciler.status values.

Every connection goes through build_applier's checks first (allowed switch addresses, TLS
unless insecure switches are allowed, files only from the operator's directories), as the
apply commands do: status connects to the same switches and must not be a way around them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..apply import Progress, ProgressCallback, TwoSwitchApplier
from ..audit.errors import AuditError
from ..audit.message import AuditEntry
from ..audit.repo import AuditRepo
from ..audit.trust import UntrustedRecord
from ..cluster.model import ClusterState
from ..fallback import FALLBACK_REASON_ANNOTATION, FALLBACK_TIME_ANNOTATION, is_auto_fallback, service_meta
from ..intent.files import FileRefError
from ..intent.model import LoadBalancerConfig, SwitchSpec
from ..intent.semantic import parse_endpoint
from ..snapshot import Snapshot, SnapshotError, format_time
from ..state import StateDir
from ..status import ConfigStatus, FallenBack, SwitchStatus, table_drift
from ..switch.allowlist import refusals
from ..switch.errors import SwitchError
from ..switch.inspect import read_switch
from ..switch.tls import TlsError, TlsSettings
from .settings import Settings, SettingsError
from .switches import build_applier, switch_allowlist, tls_from_names

__all__ = ["AppliedRecord", "TlsNames", "fallen_back_from_cluster", "fallen_back_from_services", "gather_config",
           "next_retry_from_status", "read_applied", "switch_target"]


@dataclass(frozen=True)
class AppliedRecord:
    """What the record says of one config: the last applied snapshot and the newest record."""

    snapshot: Snapshot | None
    applied: AuditEntry | None = None
    newest: AuditEntry | None = None
    source: str = ""
    problem: str = ""


def read_applied(
    config: LoadBalancerConfig, settings: Settings, branch: str | None = None, opened: dict[str, AuditRepo] | None = None
) -> AppliedRecord:
    """The last applied snapshot of `config` from the audit repository (opened read-only: status
    never creates or writes one) or, without one, the state directory. `opened`: the repository
    by branch, shared by the configs of one status, so it is opened (a remote fetched) once."""
    if not settings.audit_repo:
        state = StateDir(settings.state)
        try:
            return AppliedRecord(state.last_applied(config.key), source=f"state {settings.state}")
        except (OSError, SnapshotError) as e:
            return AppliedRecord(None, source=f"state {settings.state}", problem=f"state directory: {e}")
    where = f"audit {settings.audit_repo}"
    try:
        branch = branch or config.audit.branch or "main"
        audit = opened.get(branch) if opened is not None else None
        if audit is None:
            audit = AuditRepo.open_or_init(settings.audit_repo, branch=branch, workdir=settings.audit_workdir, read_only=True)
            if opened is not None:
                opened[branch] = audit
        applied = audit.last_applied_entry(config.key)
        newest = audit.newest_entry(config.key)
        snap = audit.last_applied(config.key)
    except UntrustedRecord as e:
        return AppliedRecord(None, source=where, problem=str(e))
    except (AuditError, SnapshotError, LookupError) as e:
        return AppliedRecord(None, source=where, problem=f"audit repository: {e}")
    return AppliedRecord(snap, applied, newest, where)


def fallen_back_from_cluster(cluster: ClusterState, source: str = "recording") -> list[FallenBack]:
    """The Services of a cluster state that p4kube's automatic fallback handed to kube-proxy."""
    return [
        FallenBack(key, svc.annotation(FALLBACK_REASON_ANNOTATION) or "", svc.annotation(FALLBACK_TIME_ANNOTATION), source)
        for key, svc in sorted(cluster.services.items()) if svc.auto_fallback
    ]


def fallen_back_from_services(services: Iterable[Mapping[str, Any]]) -> list[FallenBack]:
    """The same from Service objects as the API returns them (dicts)."""
    out = []
    for svc in services:
        if not is_auto_fallback(svc):
            continue
        ns, name, ann, _ = service_meta(svc)
        out.append(FallenBack(f"{ns}/{name}", ann.get(FALLBACK_REASON_ANNOTATION, ""),
                              ann.get(FALLBACK_TIME_ANNOTATION), "api"))
    return sorted(out, key=lambda f: f.service)


def _entries(snap: Snapshot) -> list[Any]:
    return [e for es in snap.tables().values() for e in es]


async def _switch(sw: SwitchSpec, applier: TwoSwitchApplier, settings: Settings, last: Snapshot | None) -> SwitchStatus:
    session = applier.factory(sw, settings.election_id)  # never opened: only its checked TLS and P4Info are used
    expected_cookie = None if applier.external else applier.cookie
    try:
        reading = await read_switch(sw.address, device_id=sw.device_id, info=applier.info, tls=session.tls,
                                    name=sw.name, connect_timeout=settings.timeout, rpc_timeout=settings.rpc_timeout)
    except SwitchError as e:
        return SwitchStatus(sw.name, sw.address, sw.role, sw.device_id, connected=False, error=str(e),
                            expected_cookie=expected_cookie)
    drift = table_drift(_entries(last), reading.entries) if last is not None and reading.has_pipeline else None
    counts = dict.fromkeys(applier.info.tables, 0) if reading.has_pipeline else {}
    counts.update(reading.counts())
    return SwitchStatus(
        sw.name, sw.address, sw.role, sw.device_id, connected=True, api_version=reading.api_version,
        has_pipeline=reading.has_pipeline, pipeline_cookie=reading.cookie, expected_cookie=expected_cookie,
        counts=counts, drift=drift,
    )


_FELL_BACK = re.compile(r"^(?P<key>[^\s/]+/[^\s]+) fell back to kube-proxy \((?P<why>.*)\)$")
_NEXT_TRY = re.compile(r"next try in (?P<s>\d+)s")


def _fallen_back_from_record(entry: AuditEntry | None) -> list[FallenBack]:
    """The loop's Reason for a version that took Services off for a fallback reads
    "ns/a fell back to kube-proxy (why); ns/b fell back ..." (reconciler/controller.py)."""
    if entry is None:
        return []
    out = []
    for part in entry.reason.split("; "):
        m = _FELL_BACK.match(part.strip())
        if m:
            out.append(FallenBack(m["key"], m["why"], entry.time.isoformat(), "audit"))
    return out


def next_retry_from_status(status: Mapping[str, Any]) -> str | None:
    """When the reconciler tries a config again, as its CR status says it ("...; next try in
    30s" in the Ready or Stalled condition's message); None when it says nothing."""
    for condition in status.get("conditions") or []:
        if not isinstance(condition, Mapping) or condition.get("status") != "True":
            continue
        m = _NEXT_TRY.search(str(condition.get("message") or ""))
        if m:
            return f"{m['s']}s after the last attempt ({condition.get('type')}: {condition.get('reason')})"
    return None


async def gather_config(
    config: LoadBalancerConfig, settings: Settings, record: AppliedRecord,
    fallen_back: Sequence[FallenBack] | None = None, next_retry: str | None = None, problems: Sequence[str] = (),
    progress: ProgressCallback | None = None,
) -> ConfigStatus:
    """One config's status: both switches read at once. `fallen_back`: the Services read from the
    cluster, or None when it was not read (then the last applied record's Reason says what it can)."""
    applier = build_applier(config, settings)  # SettingsError: the operator's limits, before anything connects
    last = record.snapshot
    if progress is not None:  # both switches at once, one Read RPC each: the line says how long it has run
        progress(Progress(", ".join(sw.name for sw in config.switch_config.switches), "read"))
    switches = await asyncio.gather(*(_switch(sw, applier, settings, last) for sw in config.switch_config.switches))
    newest = record.newest
    falls = list(fallen_back) if fallen_back is not None else _fallen_back_from_record(record.applied)
    applied = record.applied
    return ConfigStatus(
        config=config.key,
        applied_version=last.version if last is not None else None,
        applied_digest=last.digest if last is not None else None,
        applied_at=applied.time.isoformat() if applied is not None else None,
        last_outcome=newest.outcome if newest is not None else None,
        last_reason=newest.reason if newest is not None else "",
        record_source=record.source,
        switches=tuple(switches),
        fallen_back=tuple(falls),
        next_retry=next_retry,
        problems=tuple(p for p in (record.problem, *problems) if p),
        expected_counts=last.table_counts if last is not None else None,
        draining_until=format_time(until) if last is not None and (until := last.drain_until()) is not None else None,
    )


@dataclass(frozen=True)
class TlsNames:
    """TLS files of a switch named on the command line, found by name in --tls-dir like intent's."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    @property
    def given(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file, self.server_name))


def switch_target(address: str, settings: Settings, names: TlsNames) -> TlsSettings | None:
    """The TLS settings to reach one switch named by address (`p4kube switch dump|diff`), under
    the same limits as intent's switches: the address must be allowed, TLS files come from the
    operator's TLS directory only, and plaintext needs --allow-insecure-switches.
    SettingsError otherwise, before any connection."""
    refused = refusals(switch_allowlist(settings), [(address, address, parse_endpoint(address))])
    if refused:
        raise SettingsError("; ".join(refused))
    tls = None
    if names.given:
        try:
            tls = tls_from_names(settings, names.ca_file, names.cert_file, names.key_file, names.server_name)
        except (FileRefError, TlsError) as e:
            raise SettingsError(str(e)) from None
    if tls is None and not settings.allow_insecure_switches:
        # require_tls's own words name intent's fields; here the flags are what the operator gives
        raise SettingsError(
            f"switch {address}: no TLS files given, so P4Runtime would be plaintext (anyone on the path can read "
            f"the tables); give --tls-dir with --ca-file (and --cert-file/--key-file for mutual TLS), or pass "
            f"--allow-insecure-switches for a lab or test switch. Nothing was connected")
    return tls
