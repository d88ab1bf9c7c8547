"""The controller the demo runs, wired in one place: the product's own loop over the demo's
switches, intent, cluster and audit repository."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from ..apply import ApplyResult, TwoSwitchApplier, default_session_factory
from ..audit.repo import AuditRepo
from ..cluster.scripted import ScriptedCluster
from ..controller import ConfigWorker, Controller, TransactionRecord
from ..health import ProbeReport, make_post_apply_probe
from ..intent.files import DEVICE_CONFIG, read_named
from ..intent.model import LoadBalancerConfig
from ..intent.watch import DirectoryIntent
from ..p4info import load_p4info, pipeline_info_from_message
from ..pipeline_io import config_p4info_digest, p4info_path
from ..snapshot import Snapshot
from .errors import DemoFailed

# What a worker reports after each pass: the record, the apply result (None when nothing was
# written), the snapshot, and the post-apply probe's report when one ran.
OnPass = Callable[[TransactionRecord, ApplyResult | None, Snapshot | None, ProbeReport | None], None]


@dataclass(frozen=True)
class RunningController:
    """The loop as the demo watches it: the controller, the task running it, and the P4 tables
    the checks read."""

    controller: Controller
    task: asyncio.Task[None]
    tables: tuple[str, ...]


def start_controller(
    config: LoadBalancerConfig,
    intent: DirectoryIntent,
    cluster: ScriptedCluster,
    audit: AuditRepo,
    pipeline_dir: Path,
    stack: AsyncExitStack,
    on_pass: OnPass,
    stop_timeout: float,
) -> RunningController:
    """Start the loop on the running event loop; `stack` stops it (and the intent watch) on exit."""
    p4info = load_p4info(p4info_path(config))
    info = pipeline_info_from_message(p4info)
    digest = config_p4info_digest(config)
    # Each worker arbitrates with a higher election id: the loop closes a replaced worker's
    # streams without waiting, and a new stream with the same id would be refused
    # (INVALID_ARGUMENT) while the old one is still open on the switch.
    election_ids = itertools.count(1)
    named = config.switch_config.device_config
    device_config = read_named(pipeline_dir, named, DEVICE_CONFIG) if named else b""

    def make_worker(cfg: LoadBalancerConfig) -> ConfigWorker:
        applier = TwoSwitchApplier(cfg, p4info=p4info, info=info, device_config=device_config, election_id=next(election_ids),
                                   # plaintext is fine here: the demo's own switches, on loopback only
                                   session_factory=default_session_factory(cfg, info, connect_timeout=5.0,
                                                                           require_tls=False))
        probe = make_post_apply_probe(cfg.health_check, retry_delay=0.05)

        async def on_result(record: TransactionRecord, result: ApplyResult | None, snap: Snapshot | None) -> None:
            ran_probe = result is not None and record.outcome != "resynced"
            on_pass(record, result, snap, probe.last_report if ran_probe else None)

        return ConfigWorker(cfg, applier, digest, audit=audit, probe=probe, fallback=cluster, on_result=on_result)

    ctl = Controller(intent, cluster, make_worker=make_worker)
    stop = asyncio.Event()
    task = asyncio.create_task(ctl.run(stop))
    intent.start()  # watchdog on the checkout
    stack.callback(intent.stop)
    stack.push_async_callback(_stop, task, stop, stop_timeout)
    return RunningController(ctl, task, tuple(sorted(info.tables)))


async def _stop(task: asyncio.Task[None], stop: asyncio.Event, timeout: float) -> None:
    stop.set()
    try:
        await asyncio.wait_for(task, timeout)
    except TimeoutError:
        task.cancel()
        raise DemoFailed(f"the controller did not stop within {timeout:g}s") from None


__all__ = ["OnPass", "RunningController", "start_controller"]
