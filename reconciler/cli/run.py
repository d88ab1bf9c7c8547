"""`p4kube run`: the reconciler as a long-running process (DESIGN.md 2, 6).

Wires the sources, the loop and the sinks:

    intent   --intent DIR (a Git checkout, followed with watchdog) or --intent-from-cluster (CRs)
    cluster  the Kubernetes API (kubeconfig or in-cluster; list+watch), or --cluster FILE (a
             recording, followed on disk: for trials without a cluster)
    audit    --audit-repo DIR_OR_URL (else --state DIR keeps the last applied snapshot)
    sinks    Service status (VIPs) and kube-proxy fallback through the API, Events, the CR's
             status, Prometheus metrics and /healthz /readyz on --metrics-address
    fencing  --leader-elect: a Lease; the P4Runtime election id's high 64 bits are the Lease's
             transitions + 1 (the low 64 bits count sessions fenced within the term), and losing
             the Lease cancels the loop and closes every P4Runtime stream at once

SIGTERM/SIGINT finish the transaction in flight (it is never cut in half) and exit 0.
"""

from __future__ import annotations

import argparse
import signal
from typing import TYPE_CHECKING, Any

from .errors import CommandError
from .options import (
    adopt_option,
    insecure_switches_option,
    intent_signers_options,
    kube_options,
    rpc_timeout_option,
    settings_from_args,
    signing_options,
    switch_options,
)

if TYPE_CHECKING:
    from ..app import runtime


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the reconciler: follow intent and the cluster, apply, probe, fall back",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--intent", metavar="DIR", help="intent directory (a Git checkout), followed for changes")
    src.add_argument("--intent-from-cluster", action="store_true", help="LoadBalancerConfig custom resources (the Argo CD / Flux path)")
    p.add_argument("--cluster", metavar="FILE", help="a kubectl recording, followed on disk, instead of the Kubernetes API")
    kube_options(p)
    p.add_argument("--audit-repo", metavar="DIR_OR_URL", help="audit repository (every snapshot and outcome is committed there)")
    p.add_argument("--audit-workdir", metavar="DIR", help="where to clone a remote audit repository")
    p.add_argument("--state", metavar="DIR", default=".p4kube-state", help="last applied snapshots, without --audit-repo (default: %(default)s)")
    p.add_argument("--metrics-address", metavar="HOST:PORT", help="serve /metrics, /healthz, /readyz here (e.g. 127.0.0.1:9100); "
                   "unset: no HTTP server. Bind 127.0.0.1 unless a NetworkPolicy or --metrics-bearer-token-file guards it")
    p.add_argument("--metrics-bearer-token-file", metavar="FILE",
                   help="/metrics answers 401 unless the request carries Authorization: Bearer <the file's content> "
                   "(re-read at each request, so a rotated Secret needs no restart); /healthz and /readyz stay open")
    p.add_argument("--probe-address", metavar="HOST:PORT",
                   help="serve /healthz and /readyz here instead, and only /metrics on --metrics-address")
    p.add_argument("--election-id", type=int, default=1, metavar="N", help="P4Runtime election id without --leader-elect (default: %(default)s)")
    p.add_argument("--leader-elect", action="store_true", help="run as one of several replicas: only the Lease holder writes")
    p.add_argument("--leader-elect-namespace", default="p4kube-system", metavar="NS")
    p.add_argument("--leader-elect-lease-name", default="p4kube-reconciler", metavar="NAME")
    p.add_argument("--leader-elect-identity", metavar="ID", help="this replica's name (default: hostname + pid)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="switch connect and arbitration timeout")
    p.add_argument("--batch-size", type=int, metavar="N", help="updates per WriteRequest (default: the config's batchSize)")
    adopt_option(p)
    rpc_timeout_option(p)
    insecure_switches_option(p)
    signing_options(p)
    intent_signers_options(p, follows=True)
    switch_options(p)
    p.add_argument(
        "--intent-namespace", action="append", metavar="NS",
        help="with --intent-from-cluster: read LoadBalancerConfigs only in this namespace (repeatable, "
        "comma-separated; * = all namespaces, which needs cluster-wide RBAC); default: $POD_NAMESPACE, else the "
        "kubeconfig context's namespace, else p4kube-system",
    )
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio  # not at the top: `p4kube --help` must not pay for it
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    import asyncio  # not at the top: `p4kube --help` must not pay for it
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    from ..app import runtime  # the whole library: imported when the command runs, not for --help

    return await runtime.run(settings_from_args(args), stop)


async def build_runtime(args: argparse.Namespace, api: Any = None) -> runtime.Runtime:
    """What `p4kube run` with these arguments wires (tests and benchmarks drive it without the loop)."""
    from ..app import runtime
    from ..app.settings import SettingsError

    try:
        return await runtime.build_runtime(settings_from_args(args), api)
    except SettingsError as e:
        raise CommandError(str(e)) from None
