"""The controller the demo runs, wired in one place: the product's own loop over the demo's
switches, intent, cluster and audit repository."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from ..app import Settings, worker_factory
from ..apply import ApplyResult
from ..audit.repo import AuditRepo
from ..cluster.scripted import ScriptedCluster
from ..controller import ConfigWorker, Controller, TransactionRecord
from ..health import ProbeReport
from ..intent.model import LoadBalancerConfig
from ..intent.watch import DirectoryIntent
from ..p4info import load_p4info, pipeline_info_from_message
from ..pipeline_io import p4info_path
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
    info = pipeline_info_from_message(load_p4info(p4info_path(config, pipeline_dir)))
    # Each worker arbitrates with a higher election id: the loop closes a replaced worker's
    # streams without waiting, and a new stream with the same id would be refused
    # (INVALID_ARGUMENT) while the old one is still open on the switch.
    election_ids = itertools.count(1)
    # plaintext is fine here: the demo's own switches, on loopback only
    settings = Settings(pipeline_dir=str(pipeline_dir), allow_insecure_switches=True, timeout=5.0)
    make_product_worker = worker_factory(settings, election_id=lambda: next(election_ids), audit=audit, fallback=cluster,
                                         probe_retry_delay=0.05)

    def make_worker(cfg: LoadBalancerConfig) -> ConfigWorker:
        worker = make_product_worker(cfg)
        probe = worker.probe

        async def on_result(record: TransactionRecord, result: ApplyResult | None, snap: Snapshot | None) -> None:
            ran_probe = probe is not None and result is not None and record.outcome != "resynced"
            on_pass(record, result, snap, probe.last_report if ran_probe else None)

        worker.on_result = on_result
        return worker

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
