"""`p4kube apply` and `p4kube reconcile --once`: render -> apply to the config's switches.

Exit codes: 0 the switches hold the snapshot; 3 degraded (applied to the primary, the standby
was unreachable); 1 failed or rolled back (the switches hold the last good snapshot).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ..gcpause import gc_paused
from ..intent.files import OperatorDirs
from .errors import EXIT_DEGRADED
from .output import emit
from .progress import ProgressLine
from .options import (
    adopt_option,
    insecure_switches_option,
    intent_signers_options,
    output_option,
    rpc_timeout_option,
    settings_from_args,
    signing_options,
    switch_options,
)

if TYPE_CHECKING:  # the library (finsy, grpc, pygit2, kubernetes) is imported when a command runs, not for --help
    from ..app.pass_memo import PassMemo
    from ..apply import ApplyResult, TwoSwitchApplier
    from ..render.memo import RenderMemo
    from ..audit.message import AuditEntry
    from ..audit.repo import AuditRepo
    from ..audit.signing import Signer, TrustedKeys
    from ..cluster.model import ClusterState
    from ..intent.model import LoadBalancerConfig
    from ..render import RenderResult
    from ..snapshot import Snapshot
    from ..state import StateDir
    from ..switch.wire import EncodedEntries


def register(sub: argparse._SubParsersAction) -> None:
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
        "snapshot (--audit-repo, or --state); when the digest differs, apply it to the switches and record it; "
        "either way both switches are read back and what differs is repaired. With --audit-repo, a recording, "
        "intent and reconciler identical to those the last applied snapshot was rendered from are not parsed "
        "or rendered again (its record's Rendered-From trailer); otherwise only the Services whose inputs changed since "
        "the last run are rendered, from the pass cache that run left (--no-cache: all). "
        "Exit 0: switches up to date; 3: degraded; 1: failed or rolled back.",
    )
    p.add_argument("--once", action="store_true", required=True, help="one pass (the loop is `p4kube run`)")
    p.add_argument("--intent", required=True, metavar="DIR")
    p.add_argument("--cluster", required=True, metavar="FILE", help="kubectl get services,endpointslices,nodes -A -o yaml")
    p.add_argument("--no-cache", action="store_true",
                   help="render every Service and encode every entry, without reading the pass cache that the last "
                   "run left beside the audit repository (or in --state); it is written afresh (docs/apply.md)")
    _common(p)
    _audit_options(p)
    signing_options(p)
    adopt_option(p)
    intent_signers_options(p)
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
    signing_options(p)
    p.set_defaults(func=cmd_rollback)


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
    switch_options(p)
    insecure_switches_option(p)
    output_option(p)


def _printing_result(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """-o json|yaml: the command's own lines go to stderr and stdout gets one document, the
    transaction's result (outcome, version, digest, each switch's state and writes)."""

    @functools.wraps(cmd)
    def wrapped(args: argparse.Namespace) -> int:
        if args.output == "text":
            return cmd(args)
        args.results = []
        args.drain = None
        with contextlib.redirect_stdout(sys.stderr):
            code = cmd(args)
        if args.results:
            doc = result_document(args.results[-1])
            if args.drain is not None:
                doc["drain"] = args.drain
            emit(doc, args.output)
        return code

    return wrapped


def result_document(result: ApplyResult) -> dict[str, Any]:
    return {
        "outcome": result.outcome, "version": result.version, "digest": result.digest, "reason": result.reason,
        "switches": [
            {"name": r.name, "role": r.role, "state": r.state, "writes": sum(sum(k.values()) for k in r.writes.values()),
             "writesPerTable": {t: dict(k) for t, k in r.writes.items()}, "driftRepaired": len(r.drift),
             "pipelinePushed": r.pipeline_pushed, "seconds": round(r.seconds, 3), "reason": r.reason}
            for r in result.switches
        ],
    }


@contextlib.asynccontextmanager
async def _applier(config: LoadBalancerConfig, args: argparse.Namespace, *, progress: bool = True) -> AsyncIterator[TwoSwitchApplier]:
    """The config's applier under the command's settings, closed however the block ends; with
    `progress`, a progress line on stderr for its reads and writes (shown once one runs past 2 s)."""
    from ..app.switches import build_applier

    applier = build_applier(config, settings_from_args(args))
    shown = ProgressLine(sys.stderr) if progress else None
    if shown is not None:
        applier.progress = shown
    try:
        yield applier
    finally:
        if shown is not None:
            shown.stop()
        await applier.close()


# The wall clock drains start and end by (epoch seconds); tests replace it.
wall_clock = time.time


def _drain_lines(previous: Snapshot | None, held: Snapshot, ok: bool, args: argparse.Namespace) -> None:
    """What a pass did to connection drains (DESIGN.md 5.1), printed and kept for -o json:
    a drain is finished by the first pass at or after its `until` (`p4kube run` wakes for it)."""
    from ..drain_progress import buckets_of, draining, finished, started
    from ..snapshot import format_time

    if (previous is None or previous.drain_until() is None) and held.drain_until() is None:
        return
    begun = started(previous, held) if ok and held is not previous else None
    ended = finished(previous, held) if ok and held is not previous else None
    still = draining(held if ok else previous)
    doc: dict[str, Any] = {"started": begun.to_json() if begun else None,
                           "finished": buckets_of(ended) if ended else None,
                           "draining": still.to_json() if still else None}
    if getattr(args, "output", "text") != "text":
        args.drain = doc
    if ended is not None:
        print(f"{held.config}: drain finished: {buckets_of(ended)}; v{held.version} holds their plain entries")
    if still is not None:
        what = f"drain started: {begun.describe()}" if begun is not None else (
            f"drain in progress: {still.buckets} bucket{'s' if still.buckets != 1 else ''} until {format_time(still.until)}")
        print(f"{held.config}: {what}; run again after {format_time(still.until)} to finish it")


def _exit(result: ApplyResult, args: argparse.Namespace | None = None) -> int:
    if args is not None and args.output != "text":
        args.results.append(result)  # printed by _printing_result
    if result.outcome == "degraded":
        return EXIT_DEGRADED
    return 0 if result.ok else 1


def _guard(config: LoadBalancerConfig, last: Snapshot | None, target: Snapshot) -> None:
    """DESIGN.md 6.1: refuse, before anything is written or recorded, a change that takes more
    than spec.safety.maxRemovalPercent of the Services off the switches."""
    from ..guard import removal_verdict
    from .errors import CommandError

    verdict = removal_verdict(last, target, config.safety.max_removal_percent)
    if not verdict.allowed:
        raise CommandError(f"{config.key}: v{target.version} {verdict.describe()}")


async def _unaccounted(config: LoadBalancerConfig, args: argparse.Namespace) -> dict[str, int]:
    async with _applier(config, args, progress=False) as applier:
        return await applier.unaccounted()


@contextlib.asynccontextmanager
async def _using(config: LoadBalancerConfig, args: argparse.Namespace, applier: TwoSwitchApplier | None
                 ) -> AsyncIterator[TwoSwitchApplier]:
    """`applier` when the caller has one open (and closes it), else a new one for this block."""
    if applier is not None:
        yield applier
        return
    async with _applier(config, args) as new:
        yield new


async def _sync(config: LoadBalancerConfig, args: argparse.Namespace, last: Snapshot,
                applier: TwoSwitchApplier | None = None) -> ApplyResult:
    """Read both switches back and repair what differs from `last` (each switch on its own)."""
    async with _using(config, args, applier) as used:
        return await used.sync(last)


async def _apply(
    config: LoadBalancerConfig, args: argparse.Namespace, target: Snapshot, state: StateDir, last_good: Snapshot | None,
    applier: TwoSwitchApplier | None = None,
) -> ApplyResult:
    """Apply `target` over `last_good` (what --state holds, read once by the caller); record it there when applied."""
    _guard(config, last_good, target)
    async with _using(config, args, applier) as used:
        result = await used.apply(target, last_good)
    if result.ok:
        state.record_applied(target)
    return result


@_printing_result
@gc_paused()
def cmd_apply(args: argparse.Namespace) -> int:
    import asyncio  # not at the top: `p4kube --help` must not pay for it
    from ..intent.loader import load_intent
    from ..snapshot import load_snapshot
    from ..state import StateDir
    from .errors import CommandError

    intent = load_intent([args.intent], dirs=OperatorDirs.from_args(args))
    target = load_snapshot(args.snapshot)
    config = intent.pick_config(args.config or target.config)
    if config.key != target.config:
        raise CommandError(f"{args.snapshot} is for config {target.config}, not {config.key}")
    state = StateDir(args.state)
    result = asyncio.run(_apply(config, args, target, state, state.last_applied(config.key)))
    print(result.describe())
    return _exit(result, args)


def _open_audit(
    config: LoadBalancerConfig, args: argparse.Namespace, signer: Signer | None = None, trust: TrustedKeys | None = None
) -> AuditRepo:
    from ..audit.repo import AuditRepo

    branch = args.audit_branch or config.audit.branch or "main"
    return AuditRepo.open_or_init(args.audit_repo, branch=branch, workdir=args.audit_workdir, signer=signer, trust=trust)


async def _apply_recorded(
    config: LoadBalancerConfig, args: argparse.Namespace, target: Snapshot, audit: AuditRepo, extra: tuple[tuple[str, str], ...] = (),
    last_good: Snapshot | None = None, why: str = "", applier: TwoSwitchApplier | None = None,
) -> ApplyResult:
    """The transaction of DESIGN.md 6 with the audit repository: pending, apply, outcome.
    Switches that cannot be reached are found before anything is recorded: an attempt that
    reaches no switch is not an audit record."""
    from ..audit.errors import AuditError
    from .errors import CommandError

    # last_good: what the caller read (and trusted) as the switches' content; never re-read here.
    _guard(config, last_good, target)
    async with _using(config, args, applier) as used:
        missing = await used.unreachable()
        if missing:
            raise CommandError(f"{config.key}: {missing}: nothing was written or recorded")
        audit.record(target, "pending", reason=why, extra_trailers=extra)
        result = await used.apply(target, last_good)
    outcome, reason = result.audit_record()
    reason = "; ".join(r for r in (why, reason) if r)
    try:
        audit.record(target, outcome, reason=reason, extra_trailers=extra)
    except AuditError as e:
        raise CommandError(
            f"{config.key}: v{target.version} {result.outcome} on the switches, but its outcome could not be "
            f"recorded ({e}); the pending record is closed as interrupted at the next start"
        ) from e
    return result


@_printing_result
@gc_paused()
def cmd_reconcile(args: argparse.Namespace) -> int:
    import asyncio  # not at the top: `p4kube --help` must not pay for it
    from ..app.signing import audit_keys, build_signer, intent_trust
    from ..app.switches import check_switch_settings
    from ..audit.refusals import check_signed_intent, last_applied_trusted, record_refusal, refused_intent_id
    from ..drain_progress import reason_parts
    from ..cluster.recorded import read_cluster_file
    from ..intent.loader import load_intent
    from ..pipeline_io import cluster_from, config_p4info_digest
    from ..render import Renderer
    from ..app.pass_memo import Left, PassMemo
    from ..pass_cache import CacheKey
    from ..rendered_from import ISSUES_TRAILER, TRAILER, cacheable, inputs_digest, issues_summary
    from ..sources import code_digest
    from ..state import StateDir
    from .errors import CommandError

    settings = settings_from_args(args)
    signer = build_signer(settings)
    trusted = intent_trust(settings)
    keys = audit_keys(settings, signer)
    dirs = OperatorDirs.from_args(args)
    intent = load_intent([args.intent], dirs=dirs)
    recording = read_cluster_file(args.cluster)  # parsed below, unless the last apply was rendered from it
    message = check_signed_intent(intent, args.intent, trusted) if trusted is not None else ""
    if trusted is not None and not message:
        # Render what was signed: the verified commit's blobs, not the working tree.
        from ..intent.committed import load_committed_intent

        assert intent.commit is not None  # check_signed_intent refuses intent read from no commit
        intent = load_committed_intent(args.intent, intent.commit, dirs)
    config = intent.pick_config(args.config)
    check_switch_settings(config, settings)
    audit = _open_audit(config, args, signer, keys) if args.audit_repo else None
    state = StateDir(args.state)
    p4info_digest = config_p4info_digest(config, dirs.pipeline_dir)
    # Rendered from exactly these inputs before (rendered_from.py): the last applied snapshot is
    # what render would make of them, so neither the recording nor render is needed again. Only
    # with the audit repository, whose signed records say what each snapshot was rendered from.
    rendered_from = inputs_digest(config, recording, p4info_digest=p4info_digest, intent_commit=intent.commit) if audit else None
    # What the last run left (pass_cache.py): render only what changed, encode only what is new.
    # Not with signed audit records: the files carry no signature, and what is applied must
    # follow from what signatures vouch for (docs/apply.md).
    memo = PassMemo(audit.repo.path if audit is not None else args.state, CacheKey(config.key, p4info_digest, code_digest()),
                    read=not args.no_cache) if cacheable(config) and keys is None else None
    rendered_memo: RenderMemo | None = None  # render()'s, for the next run
    entry = audit.last_applied_entry(config.key) if audit is not None else None
    skipped: tuple[Snapshot, bool, ApplyResult, EncodedEntries | None] | None = None
    extra: tuple[tuple[str, str], ...] = ()
    if audit is not None and entry is not None and rendered_from and entry.trailers.get(TRAILER) == rendered_from \
            and not message:
        skipped, previous, untrusted = asyncio.run(_without_render(config, args, audit, entry, rendered_from, memo))
    else:
        previous, untrusted = last_applied_trusted(audit, config.key) if audit is not None else (state.last_applied(config.key), "")
    if skipped is not None:
        assert entry is not None
        # A repair record says again what this snapshot was rendered from.
        extra = tuple((k, entry.trailers[k]) for k in (TRAILER, ISSUES_TRAILER) if k in entry.trailers)
        snap, _, result, encoded = skipped
        code = _report(config, args, audit, (snap, False, result), previous, extra)
        if memo is not None and result.ok:
            memo.leave(Left(snap, None, encoded))
        return code
    # Bad input is refused here, before anything is recorded or any switch is asked anything.
    cluster = cluster_from(recording, args.cluster)
    del recording
    # The usual pass (a previous snapshot, the intent accepted) reads both switches back while it
    # renders: they answer on their own while this process computes (TwoSwitchApplier.read_ahead;
    # nothing is written before render has finished).
    ahead = previous is not None and not message
    if not ahead:
        _close_interrupted(audit, config)
    if untrusted:
        print(f"{config.key}: {untrusted}; the switches are read back and their content treated as unaccounted for",
              file=sys.stderr)
    if trusted is not None:
        if message:
            if audit is not None and previous is not None:
                # Recorded against what the switches keep holding: nothing is rendered or applied.
                record_refusal(audit, config.key, previous, message, refused_intent_id(intent))
            raise CommandError(message)
    if previous is None and not args.adopt_switches:
        held = asyncio.run(_unaccounted(config, args))
        if held:
            from ..guard import unaccounted_message

            raise CommandError((f"{untrusted}. " if untrusted else "") + unaccounted_message(
                config, held, f"the audit repository {args.audit_repo}" if audit is not None else f"--state {args.state}"))

    def render(cluster: ClusterState) -> RenderResult:
        """Render, and say in `extra` what the result was rendered from when rendering it again
        with the same inputs gives it back (rendered_from.py: not so while values it released
        wait for the next version)."""
        nonlocal extra, rendered_memo
        # Drains start and end by this clock: a pass at or after a drain's `until` finishes it.
        now = wall_clock()
        renderer = Renderer()
        resumed = memo is not None and memo.resume(renderer, config, previous, p4info_digest=p4info_digest)
        rendered = renderer.render(config, cluster, previous, p4info_digest=p4info_digest, intent_commit=intent.commit,
                                   now=now)
        if resumed:
            assert previous is not None  # resume() needs it
            print(f"{config.key}: {len(rendered.rendered)} Services rendered again, the others' inputs unchanged since "
                  f"v{previous.version} (pass cache)", file=sys.stderr)
        if memo is not None:  # before the render below moves the renderer on
            rendered_memo = memo.remember(renderer)
        if rendered_from:
            # The same cluster object: no Service's inputs changed (changed=() says so rather than
            # comparing 5,000 fingerprints); what waits for a released value is rendered again.
            again = renderer.render(config, cluster, rendered.snapshot, p4info_digest=p4info_digest,
                                    intent_commit=intent.commit, changed=(), now=now)
            if again.snapshot.digest == rendered.snapshot.digest:
                extra = ((TRAILER, rendered_from), (ISSUES_TRAILER, issues_summary(rendered.issues)))
        return rendered

    async def transaction() -> tuple[Snapshot, bool, ApplyResult, EncodedEntries | None]:
        """(the snapshot held or applied, whether it was new, the outcome, its entries as encoded)."""
        async with _applier(config, args) as applier:
            if ahead:
                await applier.read_ahead()
                if memo is not None:  # parsed while the switches answer
                    await asyncio.to_thread(memo.tell, applier)
                rendered = await asyncio.to_thread(render, cluster)
                _close_interrupted(audit, config)
            else:
                if memo is not None:
                    memo.tell(applier)
                rendered = render(cluster)
            for issue in rendered.issues:
                print(f"{config.key}: {issue.severity}: {issue}", file=sys.stderr)
            new = rendered.changed
            snap = rendered.snapshot
            if new and audit is not None:
                # Versions stay unique per config in the audit history, also after a rollback.
                snap = snap.with_version(audit.next_version(config.key))
            if ahead:
                # Its entries are encoded while the switches answer the reads (the same object is
                # applied or synced below: the encoding is found by identity).
                await asyncio.to_thread(applier.prepare, snap)
            if not new:
                # Level-triggered: the switches' own state decides. Read both back (a switch may
                # have restarted empty, a write may have been lost) and repair what differs.
                result = await _sync(config, args, snap, applier)
            elif audit is None:  # previous: --state's, read above
                result = await _apply(config, args, snap, state, previous, applier)
            else:
                why = "; ".join(reason_parts(previous, snap))[:900]
                result = await _apply_recorded(config, args, snap, audit, extra, last_good=previous, why=why,
                                               applier=applier)
            return snap, new, result, applier.encoded_for(snap)

    snap, new, result, encoded = asyncio.run(transaction())
    code = _report(config, args, audit, (snap, new, result), previous, extra)  # extra: set by render()
    if memo is not None and result.ok:
        # The memo's snapshot is render's, the same digest as `snap` (only its version may differ).
        memo.leave(Left(snap, rendered_memo, encoded))
    return code


def _report(config: LoadBalancerConfig, args: argparse.Namespace, audit: AuditRepo | None,
            outcome: tuple[Snapshot, bool, ApplyResult], previous: Snapshot | None, extra: tuple[tuple[str, str], ...]) -> int:
    """What a pass did, said; a repair of an unchanged snapshot recorded (with `extra`)."""
    snap, new, result = outcome
    if not new:
        writes = sum(sum(k.values()) for k in result.writes().values())
        if result.outcome == "unchanged":
            print(f"{config.key}: up to date at v{snap.version} ({snap.digest}): both switches read back and hold it")
        elif result.outcome == "degraded" and not writes:
            print(f"{config.key}: up to date at v{snap.version} on the switches that answer; {result.reason}")
            print(result.describe())
        elif result.ok:
            print(f"{config.key}: the intent and cluster are unchanged at v{snap.version}, but the switches were not "
                  f"holding it; repaired with {writes} writes:")
            print(result.describe())
            if audit is not None:
                audit.record(snap, "applied", reason="repaired after read-back: " + "; ".join(
                    r.describe() for r in result.switches if r.writes)[:900], extra_trailers=extra)
        else:
            print(result.describe())
        _drain_lines(snap, snap, True, args)  # mid-drain: nothing to write until its end
        return _exit(result, args)
    print(result.describe())
    _drain_lines(previous, snap, result.ok, args)
    return _exit(result, args)


async def _without_render(config: LoadBalancerConfig, args: argparse.Namespace, audit: AuditRepo, entry: AuditEntry,
                          rendered_from: str, memo: PassMemo | None
                          ) -> tuple[tuple[Snapshot, bool, ApplyResult, EncodedEntries | None] | None, Snapshot | None, str]:
    """The pass when this run's inputs digest to the last applied record's Rendered-From: both
    switches are read (read_ahead) while the last applied snapshot is read from the audit
    repository and encoded, then synced. (None, previous, untrusted) when the snapshot after all
    may not be taken as rendered (untrusted, or draining: rendered_from.unchanged), for the usual
    pass to go on with what was read; the reads are cancelled then."""
    import asyncio

    from ..audit.refusals import last_applied_trusted
    from ..rendered_from import ISSUES_TRAILER, TRAILER, unchanged

    async with _applier(config, args) as applier:
        await applier.read_ahead()
        previous, untrusted = await asyncio.to_thread(last_applied_trusted, audit, config.key)
        if previous is None or not unchanged(previous, entry.trailers.get(TRAILER), rendered_from):
            return None, previous, untrusted
        _close_interrupted(audit, config)
        print(f"{config.key}: the intent, the recording and the reconciler are those v{previous.version} was "
              f"rendered from: not rendered again", file=sys.stderr)
        reported = entry.trailers.get(ISSUES_TRAILER, "none")
        if reported != "none":
            print(f"{config.key}: {reported} when v{previous.version} was rendered (the same inputs: "
                  f"`p4kube plan` lists them)", file=sys.stderr)

        def prepare() -> None:  # while the switches answer
            if memo is not None:
                memo.tell(applier)
            applier.prepare(previous)

        await asyncio.to_thread(prepare)
        result = await _sync(config, args, previous, applier)
        return (previous, False, result, applier.encoded_for(previous)), previous, untrusted


def _close_interrupted(audit: AuditRepo | None, config: LoadBalancerConfig) -> None:
    if audit is not None and audit.close_interrupted(config.key) is not None:
        print(f"{config.key}: the last transaction was interrupted before its outcome was recorded; "
              f"recorded as interrupted, the switches are read back now", file=sys.stderr)


@_printing_result
@gc_paused()
def cmd_rollback(args: argparse.Namespace) -> int:
    import asyncio  # not at the top: `p4kube --help` must not pay for it
    from ..app.signing import audit_keys, build_signer
    from ..app.switches import check_switch_settings
    from ..audit.refusals import last_applied_trusted
    from ..audit.errors import AuditError
    from ..audit.trust import UntrustedRecord
    from ..intent.loader import load_intent
    from .errors import CommandError

    settings = settings_from_args(args)
    signer = build_signer(settings)
    keys = audit_keys(settings, signer)
    intent = load_intent([args.intent], dirs=OperatorDirs.from_args(args))
    config = intent.pick_config(args.config)
    check_switch_settings(config, settings)
    audit = _open_audit(config, args, signer, keys)
    audit.close_interrupted(config.key)
    try:
        old = audit.snapshot_at(args.to, config.key)
    except UntrustedRecord as e:
        raise CommandError(f"{config.key}: cannot roll back to v{args.to}: {e}; nothing was written") from e
    except (AuditError, LookupError, KeyError) as e:
        raise CommandError(f"no recorded version {args.to} of {config.key} in {args.audit_repo}: {e}") from e
    target = old.with_version(audit.next_version(config.key))
    last_good, untrusted = last_applied_trusted(audit, config.key)
    if untrusted:
        raise CommandError(f"{config.key}: {untrusted}: what the switches hold is unaccounted for; nothing was written "
                           f"(reconcile --adopt-switches re-renders from the intent)")
    _guard(config, last_good, target)
    print(f"{config.key}: rolling back to the content of v{args.to} ({old.digest}) as v{target.version}")
    result = asyncio.run(_apply_recorded(config, args, target, audit, extra=(("Rollback-To", str(args.to)),), last_good=last_good))
    print(result.describe())
    return _exit(result, args)
