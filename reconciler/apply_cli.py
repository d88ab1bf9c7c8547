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
from .intent.model import LoadBalancerConfig
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
    _audit_options(p)
    adopt_option(p)
    p.add_argument(
        "--verify-intent-signers",
        metavar="FILE",
        help="apply only intent whose HEAD commit is signed by a key in this SSH allowed-signers file "
        "(like Flux's spec.verify); anything else is refused and recorded",
    )
    p.add_argument("--verify-intent-gpg-home", metavar="DIR", help="like --verify-intent-signers, trusting this GPG home's keys")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser(
        "rollback",
        help="re-apply a snapshot recorded in the audit repository",
        description="Take the snapshot recorded as VERSION in the audit repository and apply it through "
        "the normal transaction, recording it as a new version (trailer Rollback-To). The next reconcile "
        "renders the intent again: revert the intent in Git for the rollback to stay. Exit codes as apply.",
    )
    p.add_argument("--to", required=True, type=int, metavar="VERSION", help="the recorded version to go back to")
    p.add_argument("--intent", required=True, metavar="DIR", help="intent directory holding the config (for its switches)")
    _common(p)
    _audit_options(p, required=True)
    p.set_defaults(func=cmd_rollback)


def adopt_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--adopt-switches",
        action="store_true",
        help="when the audit repository (or --state) holds no applied snapshot of the config but the switches "
        "already serve Services (a lost audit history, a migration), replace their entries with a fresh render; "
        "without it the reconciler refuses to overwrite what no record accounts for",
    )


def _audit_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--audit-repo",
        required=required,
        metavar="DIR_OR_URL",
        help="audit repository: every snapshot and its outcome is committed there, and the last applied "
        "snapshot is read from it (replaces --state)",
    )
    p.add_argument("--audit-branch", metavar="BRANCH", help="audit branch (default: the config's audit.branch, else main)")
    p.add_argument("--audit-workdir", metavar="DIR", help="where to clone a remote audit repository")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="NAME", help="which LoadBalancerConfig when the intent holds several")
    p.add_argument("--state", metavar="DIR", default=".p4kube-state", help="last applied snapshot per config (default: %(default)s)")
    p.add_argument(
        "--election-id",
        type=int,
        default=1,
        metavar="N",
        help="P4Runtime election id base (1..2^64-1): the high 64 bits of the id on the wire, the low 64 bits count fenced sessions; a controller with a higher base keeps the switches (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, metavar="N", help="updates per WriteRequest (default: the config's batchSize)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="connect and arbitration timeout")
    rpc_timeout_option(p)


def rpc_timeout_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rpc-timeout", type=float, default=60.0, metavar="SECONDS",
        help="deadline of each Write and Read RPC; a Write that misses it is fenced (a new stream with a higher "
        "election id) before the transaction decides anything, so it cannot land later (default: %(default)s)",
    )


def build_applier(config: LoadBalancerConfig, args: argparse.Namespace, election_id: int | None = None) -> TwoSwitchApplier:
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
        config, info, tls, connect_timeout=args.timeout, arbitration_timeout=args.timeout,
        rpc_timeout=getattr(args, "rpc_timeout", 60.0),
    )
    return TwoSwitchApplier(
        config,
        p4info=p4info,
        info=info,
        device_config=device_config,
        election_id=election_id if election_id is not None else args.election_id,
        session_factory=factory,
        batch_size=args.batch_size,
    )


def _exit(result: ApplyResult) -> int:
    if result.outcome == "degraded":
        return EXIT_DEGRADED
    return 0 if result.ok else 1


def _guard(config: LoadBalancerConfig, last: Snapshot | None, target: Snapshot) -> None:
    """DESIGN.md 6.1: refuse, before anything is written or recorded, a change that takes more
    than spec.safety.maxRemovalPercent of the Services off the switches."""
    from .cli import CommandError
    from .guard import removal_verdict

    verdict = removal_verdict(last, target, config.safety.max_removal_percent)
    if not verdict.allowed:
        raise CommandError(f"{config.key}: v{target.version} {verdict.describe()}")


async def _unaccounted(config: LoadBalancerConfig, args: argparse.Namespace) -> dict[str, int]:
    applier = build_applier(config, args)
    try:
        return await applier.unaccounted()
    finally:
        await applier.close()


async def _sync(config: LoadBalancerConfig, args: argparse.Namespace, last: Snapshot) -> ApplyResult:
    """Read both switches back and repair what differs from `last` (each switch on its own)."""
    applier = build_applier(config, args)
    try:
        return await applier.sync(last)
    finally:
        await applier.close()


async def _apply(config: LoadBalancerConfig, args: argparse.Namespace, target: Snapshot, state: StateDir) -> ApplyResult:
    _guard(config, state.last_applied(config.key), target)
    applier = build_applier(config, args)
    try:
        result = await applier.apply(target, state.last_applied(config.key))
    finally:
        await applier.close()
    if result.ok:
        state.record_applied(target)
    return result


def cmd_apply(args: argparse.Namespace) -> int:
    from .cli import CommandError, pick_config
    from .intent.loader import load_intent

    intent = load_intent([args.intent])
    target = load_snapshot(args.snapshot)
    config = pick_config(intent, args.config or target.config)
    if config.key != target.config:
        raise CommandError(f"{args.snapshot} is for config {target.config}, not {config.key}")
    result = asyncio.run(_apply(config, args, target, StateDir(args.state)))
    print(result.describe())
    return _exit(result)


def _open_audit(config: LoadBalancerConfig, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .audit.repo import AuditRepo

    branch = args.audit_branch or config.audit.branch or "main"
    return AuditRepo.open_or_init(args.audit_repo, branch=branch, workdir=args.audit_workdir)


async def _apply_recorded(
    config: LoadBalancerConfig, args: argparse.Namespace, target: Snapshot, audit, extra: tuple = ()  # type: ignore[no-untyped-def]
) -> ApplyResult:
    """The transaction of DESIGN.md 6 with the audit repository: pending, apply, outcome.
    Switches that cannot be reached are found before anything is recorded: an attempt that
    reaches no switch is not an audit record."""
    from .audit.errors import AuditError
    from .cli import CommandError

    last_good = audit.last_applied(config.key)
    _guard(config, last_good, target)
    applier = build_applier(config, args)
    try:
        missing = await applier.unreachable()
        if missing:
            raise CommandError(f"{config.key}: {missing}: nothing was written or recorded")
        audit.record(target, "pending", extra_trailers=extra)
        result = await applier.apply(target, last_good)
    finally:
        await applier.close()
    outcome, reason = result.audit_record()
    try:
        audit.record(target, outcome, reason=reason, extra_trailers=extra)
    except AuditError as e:
        raise CommandError(
            f"{config.key}: v{target.version} {result.outcome} on the switches, but its outcome could not be "
            f"recorded ({e}); the pending record is closed as interrupted at the next start"
        ) from e
    return result


def cmd_reconcile(args: argparse.Namespace) -> int:
    from .cli import CommandError, pick_config
    from .pipeline_io import load_inputs, render_one

    intent, cluster, _ = load_inputs(args.intent, args.cluster)
    config = pick_config(intent, args.config)
    audit = _open_audit(config, args) if args.audit_repo else None
    state = StateDir(args.state)
    if audit is not None and audit.close_interrupted(config.key) is not None:
        print(f"{config.key}: the last transaction was interrupted before its outcome was recorded; "
              f"recorded as interrupted, the switches are read back now", file=sys.stderr)
    previous = audit.last_applied(config.key) if audit is not None else state.last_applied(config.key)
    if previous is None and not args.adopt_switches:
        held = asyncio.run(_unaccounted(config, args))
        if held:
            from .guard import unaccounted_message

            raise CommandError(unaccounted_message(
                config, held, f"the audit repository {args.audit_repo}" if audit is not None else f"--state {args.state}"))
    if args.verify_intent_signers or args.verify_intent_gpg_home:
        from .audit.verify import trusted_keys, verify_intent_commit

        trusted = trusted_keys(args.verify_intent_signers, args.verify_intent_gpg_home)
        ok, detail = verify_intent_commit(args.intent, trusted)  # type: ignore[arg-type]
        if not ok:
            message = f"intent at {args.intent} refused: {detail}"
            if audit is not None and previous is not None:
                # Recorded against what the switches keep holding: nothing is rendered or applied.
                audit.record(previous, "rolled-back", reason=message, extra_trailers=(("Refused-Intent-Commit", intent.commit or "none"),))
            raise CommandError(message)
    rendered = render_one(intent, config, cluster, previous)
    for issue in rendered.issues:
        print(f"{config.key}: {issue.severity}: {issue}", file=sys.stderr)
    if not rendered.changed:
        # Level-triggered: the switches' own state decides. Read both back (a switch may have
        # restarted empty, a write may have been lost) and repair what differs.
        snap = rendered.snapshot
        result = asyncio.run(_sync(config, args, snap))
        writes = sum(sum(k.values()) for k in result.writes().values())
        if result.ok and not writes:
            print(f"{config.key}: up to date at v{snap.version} ({snap.digest}): both switches read back and hold it")
        elif result.ok:
            print(f"{config.key}: the intent and cluster are unchanged at v{snap.version}, but the switches were not "
                  f"holding it; repaired with {writes} writes:")
            print(result.describe())
            if audit is not None:
                audit.record(snap, "applied", reason="repaired after read-back: " + "; ".join(
                    r.describe() for r in result.switches if r.writes)[:900])
        else:
            print(result.describe())
        return _exit(result)
    if audit is None:
        result = asyncio.run(_apply(config, args, rendered.snapshot, state))
    else:
        # Versions stay unique per config in the audit history, also after a rollback.
        target = rendered.snapshot.with_version(audit.next_version(config.key))
        result = asyncio.run(_apply_recorded(config, args, target, audit))
    print(result.describe())
    return _exit(result)


def cmd_rollback(args: argparse.Namespace) -> int:
    from .audit.errors import AuditError
    from .cli import CommandError, pick_config
    from .intent.loader import load_intent

    intent = load_intent([args.intent])
    config = pick_config(intent, args.config)
    audit = _open_audit(config, args)
    audit.close_interrupted(config.key)
    try:
        old = audit.snapshot_at(args.to, config.key)
    except (AuditError, LookupError, KeyError) as e:
        raise CommandError(f"no recorded version {args.to} of {config.key} in {args.audit_repo}: {e}") from e
    target = old.with_version(audit.next_version(config.key))
    _guard(config, audit.last_applied(config.key), target)
    print(f"{config.key}: rolling back to the content of v{args.to} ({old.digest}) as v{target.version}")
    result = asyncio.run(_apply_recorded(config, args, target, audit, extra=(("Rollback-To", str(args.to)),)))
    print(result.describe())
    return _exit(result)
