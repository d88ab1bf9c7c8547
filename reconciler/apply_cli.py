"""`p4kube apply` and `p4kube reconcile --once`: render -> apply to the config's switches.

Exit codes: 0 the switches hold the snapshot; 3 degraded (applied to the primary, the standby
was unreachable); 1 failed or rolled back (the switches hold the last good snapshot).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .apply import ApplyResult, TwoSwitchApplier, default_session_factory
from .intent.model import IntentSet, LoadBalancerConfig
from .p4info import load_p4info, pipeline_info_from_message
from .pipeline_io import p4info_path
from .snapshot import Snapshot, load_snapshot
from .state import StateDir

EXIT_DEGRADED = 3


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "apply",
        help="apply a snapshot to the config's switches (standby, then primary)",
        description="Write a snapshot to the standby and then the primary switch named by its "
        "LoadBalancerConfig, in dependency order, reading back after each; on any failure both are "
        "restored to the last good snapshot (from --state). Exit 0: applied; 3: degraded (standby "
        "unreachable); 1: failed or rolled back.",
    )
    p.add_argument("--intent", required=True, metavar="DIR", help="intent directory holding the config")
    p.add_argument("--snapshot", required=True, metavar="FILE", help="the snapshot to apply (from p4kube render)")
    _common(p)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser(
        "reconcile",
        help="render from intent + cluster and apply, once",
        description="Render the intent against the cluster state, starting from the last applied "
        "snapshot in --state; when the digest differs, apply it to the switches and record it. "
        "Exit 0: switches up to date; 3: degraded; 1: failed or rolled back.",
    )
    p.add_argument("--once", action="store_true", required=True, help="one pass (the loop is `p4kube run`)")
    p.add_argument("--intent", required=True, metavar="DIR")
    p.add_argument("--cluster", required=True, metavar="FILE", help="kubectl get services,endpointslices,nodes -A -o yaml")
    _common(p)
    p.set_defaults(func=cmd_reconcile)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="NAME", help="which LoadBalancerConfig when the intent holds several")
    p.add_argument("--state", metavar="DIR", default=".p4kube-state", help="last applied snapshot per config (default: %(default)s)")
    p.add_argument(
        "--election-id",
        type=int,
        default=1,
        metavar="N",
        help="P4Runtime election id (1..2^128-1); a controller with a higher id keeps the switches (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, metavar="N", help="updates per WriteRequest (default: the config's batchSize)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="connect and arbitration timeout")


def build_applier(config: LoadBalancerConfig, args: argparse.Namespace) -> TwoSwitchApplier:
    from .cli import CommandError
    from .switch.tls import TlsSettings

    p4info = load_p4info(p4info_path(config))
    info = pipeline_info_from_message(p4info)
    device_config = b""
    if config.switch_config.device_config:
        path = Path(config.switch_config.device_config)
        if not path.is_absolute() and config.source is not None:
            path = Path(config.source.file).parent / path
        try:
            device_config = path.read_bytes()
        except OSError as e:
            raise CommandError(f"deviceConfig {path}: {e.strerror}") from e
    tls = None
    t = config.switch_config.tls
    if t is not None:
        base = Path(config.source.file).parent if config.source is not None else Path(".")

        def rel(x: str | None) -> str | None:
            return None if x is None else str(x if Path(x).is_absolute() else base / x)

        tls = TlsSettings.from_files(
            ca_file=rel(t.ca_file), cert_file=rel(t.cert_file), key_file=rel(t.key_file), server_name=t.server_name
        )
    if not config.switch_config.switches:
        raise CommandError(f"{config.key}: spec.switchConfig.switches is empty: nothing to apply to")
    factory = default_session_factory(
        config, info, tls, connect_timeout=args.timeout, arbitration_timeout=args.timeout
    )
    return TwoSwitchApplier(
        config,
        p4info=p4info,
        info=info,
        device_config=device_config,
        election_id=args.election_id,
        session_factory=factory,
        batch_size=args.batch_size,
    )


def _exit(result: ApplyResult) -> int:
    if result.outcome == "degraded":
        return EXIT_DEGRADED
    return 0 if result.ok else 1


async def _apply(config: LoadBalancerConfig, args: argparse.Namespace, target: Snapshot, state: StateDir) -> ApplyResult:
    applier = build_applier(config, args)
    try:
        result = await applier.apply(target, state.last_applied(config.key))
    finally:
        await applier.close()
    if result.ok:
        state.record_applied(target)
    return result


def _pick(intent: IntentSet, name: str | None) -> LoadBalancerConfig:
    from .cli import CommandError

    try:
        return intent.config(name)
    except LookupError as e:
        raise CommandError(str(e).strip("'\"")) from e


def cmd_apply(args: argparse.Namespace) -> int:
    from .cli import CommandError
    from .intent.loader import load_intent

    intent = load_intent([args.intent])
    target = load_snapshot(args.snapshot)
    config = _pick(intent, args.config or target.config)
    if config.key != target.config:
        raise CommandError(f"{args.snapshot} is for config {target.config}, not {config.key}")
    result = asyncio.run(_apply(config, args, target, StateDir(args.state)))
    print(result.describe())
    return _exit(result)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from .pipeline_io import load_inputs, render_one

    intent, cluster, _ = load_inputs(args.intent, args.cluster)
    config = _pick(intent, args.config)
    state = StateDir(args.state)
    previous = state.last_applied(config.key)
    rendered = render_one(intent, config, cluster, previous)
    for issue in rendered.issues:
        print(f"{config.key}: {issue.severity}: {issue}", file=sys.stderr)
    if not rendered.changed:
        print(f"{config.key}: up to date at v{rendered.snapshot.version} ({rendered.snapshot.digest}); nothing to apply")
        return 0
    result = asyncio.run(_apply(config, args, rendered.snapshot, state))
    print(result.describe())
    return _exit(result)
