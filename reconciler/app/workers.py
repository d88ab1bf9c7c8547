"""The one wiring of a config's worker (applier, P4Info digest, probe, sinks), used by `p4kube
run`, the demo and the tests: what differs between them is in Settings and the hooks."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from ..apply import ApplyResult
from ..controller import AuditLike, ConfigWorker, FallbackWriter, TransactionRecord, WorkerRefused
from ..health import make_post_apply_probe
from ..intent.model import LoadBalancerConfig
from ..p4info import p4info_digest
from ..pipeline_io import InputFileError
from ..snapshot import Snapshot
from .settings import Settings, SettingsError
from .switches import build_applier

log = logging.getLogger("reconciler.run")

OnResult = Callable[[TransactionRecord, "ApplyResult | None", "Snapshot | None"], Awaitable[None]]
MakeWorker = Callable[[LoadBalancerConfig], ConfigWorker]


def worker_factory(
    settings: Settings,
    *,
    election_id: int | Callable[[], int] | None = None,
    audit: AuditLike | None = None,
    fallback: FallbackWriter | None = None,
    on_result: OnResult | None = None,
    on_health: Callable[[ConfigWorker], Awaitable[None]] | None = None,
    last_applied: Callable[[str], Snapshot | None] | None = None,
    probe_retry_delay: float = 0.5,
    warned_plaintext: set[str] | None = None,
) -> MakeWorker:
    """make_worker for the Controller. election_id: fixed (a leadership term), a callable (a new
    id per worker) or settings.election_id. last_applied: what the switches hold without an
    audit repository (the state directory). probe_retry_delay: between
    a failed probe's retries (tests and the demo shorten it). warned_plaintext: the configs already
    warned about plaintext, shared by the factories of several leadership terms. A config the
    settings refuse gets WorkerRefused."""
    warned = warned_plaintext if warned_plaintext is not None else set()  # said once per config, not per worker

    def make_worker(config: LoadBalancerConfig) -> ConfigWorker:
        eid = election_id() if callable(election_id) else election_id
        try:
            applier = build_applier(config, settings, eid)
        except (SettingsError, InputFileError) as e:  # what the operator did not allow: this config only
            raise WorkerRefused(str(e)) from None
        if config.switch_config.tls is None and config.key not in warned:
            warned.add(config.key)  # only reached with --allow-insecure-switches
            log.warning("%s: plaintext P4Runtime to %s (--allow-insecure-switches): anyone who reaches these "
                        "ports can read the tables or become primary and write them; for labs and tests only",
                        config.key, ", ".join(sw.address for sw in config.switch_config.switches))
        check = config.health_check
        worker = ConfigWorker(
            config, applier, p4info_digest(applier.p4info), audit=audit,  # the P4Info build_applier loaded
            probe=make_post_apply_probe(check, vip_probe=check.vip_probe, retry_delay=probe_retry_delay) if check.enabled else None,
            fallback=fallback, on_result=on_result, on_health=on_health,
            adopt_switches=settings.adopt_switches,
        )
        if audit is None and last_applied is not None:
            worker.last = last_applied(config.key)
        return worker

    return make_worker
