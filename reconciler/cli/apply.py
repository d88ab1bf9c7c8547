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
from .intent.files import OperatorDirs
from .intent.model import LoadBalancerConfig
from .p4info import pipeline_info_from_message
from .pipeline_io import load_config_p4info
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


def signing_options(p: argparse.ArgumentParser) -> None:
    """--sign-commits and its key options (audit commits; reconciler.audit.signing), for every
    command that records to the audit repository."""
    p.add_argument(
        "--sign-commits", choices=("ssh", "gpg"), metavar="ssh|gpg",
        help="sign every audit commit, as git does (verifiable with git verify-commit or `p4kube audit verify "
        "--allowed-signers/--gpg-home`): ssh uses ssh-keygen -Y sign, gpg uses gpg --detach-sign; needs --audit-repo",
    )
    p.add_argument(
        "--signing-key", metavar="FILE|ID",
        help="with --sign-commits ssh: the private key file (or its public key, the private half in ssh-agent); "
        "with --sign-commits gpg: the key id, fingerprint or user id",
    )
    p.add_argument("--gpg-home", metavar="DIR", help="with --sign-commits gpg: the GnuPG home holding the secret key (default: gpg's own)")
    p.add_argument(
        "--gpg-passphrase-file", metavar="FILE",
        help="with --sign-commits gpg: a file holding the key's passphrase (pinentry loopback); a key without one needs none",
    )
    p.add_argument(
        "--audit-allowed-signers", metavar="FILE",
        help="SSH allowed-signers file: audit records signed by these keys are trusted too (another replica's key); "
        "with --sign-commits or this option, a record whose signature does not verify is never taken as what the "
        "switches hold nor applied",
    )
    p.add_argument(
        "--audit-trust-gpg-home", metavar="DIR",
        help="GnuPG home whose public keys are trusted for audit records (default with --sign-commits gpg: --gpg-home)",
    )


def build_signer(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The audit commit Signer from signing_options (None without --sign-commits), checked now
    by signing a probe payload: a missing key file, tool, GPG home or a key that cannot sign
    (a passphrase, a wrong id) is one CommandError before anything is written or recorded."""
    import shutil

    from .audit.errors import SignatureError
    from .audit.signing import GpgSigner, SshSigner
    from .cli import CommandError

    kind = getattr(args, "sign_commits", None)
    key = getattr(args, "signing_key", None)
    gpg_home = getattr(args, "gpg_home", None)
    passphrase = getattr(args, "gpg_passphrase_file", None)
    if kind is None:
        given = [f for f, v in (("--signing-key", key), ("--gpg-home", gpg_home), ("--gpg-passphrase-file", passphrase)) if v]
        if given:
            raise CommandError(f"{', '.join(given)} given without --sign-commits ssh|gpg: nothing would be signed")
        return None
    if not getattr(args, "audit_repo", None):
        raise CommandError(f"--sign-commits {kind} signs audit commits: give --audit-repo too")
    if not key:
        what = "the SSH private key file" if kind == "ssh" else "the GPG key id or fingerprint"
        raise CommandError(f"--sign-commits {kind} needs --signing-key ({what})")
    if kind == "ssh":
        if gpg_home or passphrase:
            raise CommandError("--gpg-home and --gpg-passphrase-file are for --sign-commits gpg, not ssh")
        if shutil.which("ssh-keygen") is None:
            raise CommandError("--sign-commits ssh: ssh-keygen is not installed or not on PATH (OpenSSH 8.1 or later signs commits)")
        path = Path(key)
        if not path.is_file():
            raise CommandError(f"--signing-key {key}: no such key file" + ("" if not path.exists() else " (not a regular file)"))
        signer = SshSigner(path)
    else:
        if shutil.which("gpg") is None:
            raise CommandError("--sign-commits gpg: gpg is not installed or not on PATH")
        if gpg_home and not Path(gpg_home).is_dir():
            raise CommandError(f"--gpg-home {gpg_home}: no such directory")
        if passphrase and not Path(passphrase).is_file():
            raise CommandError(f"--gpg-passphrase-file {passphrase}: no such file")
        signer = GpgSigner(key, Path(gpg_home) if gpg_home else None, Path(passphrase) if passphrase else None)
    try:
        signer.sign(b"p4kube: checking the audit signing key before anything is recorded\n")
    except SignatureError as e:
        raise CommandError(f"--sign-commits {kind}: the key cannot sign: {e}") from e
    return signer


def audit_keys(args: argparse.Namespace, signer) -> object | None:  # type: ignore[no-untyped-def]
    """The keys audit records must be signed by (reconciler.audit.trust): the signing key's own
    plus --audit-allowed-signers / --audit-trust-gpg-home; None (no verification) when audit
    commits are not signed and no trust is given."""
    from .audit.errors import SignatureError
    from .audit.trust import audit_trust
    from .cli import CommandError

    signers, home = getattr(args, "audit_allowed_signers", None), getattr(args, "audit_trust_gpg_home", None)
    if (signers or home) and not getattr(args, "audit_repo", None):
        raise CommandError("--audit-allowed-signers/--audit-trust-gpg-home verify the audit repository's records: give --audit-repo too")
    if signers and not Path(signers).is_file():
        raise CommandError(f"--audit-allowed-signers {signers}: no such file (an SSH allowed-signers file)")
    if home and not Path(home).is_dir():
        raise CommandError(f"--audit-trust-gpg-home {home}: no such directory")
    try:
        return audit_trust(signer, Path(signers) if signers else None, Path(home) if home else None)
    except (SignatureError, OSError) as e:
        raise CommandError(f"--sign-commits: {e}") from e


def last_applied_trusted(audit, config: str):  # type: ignore[no-untyped-def]
    """(the last applied snapshot, "") or, when its record's signature does not verify, (None,
    why): the switches' content is then unaccounted for, as with no record at all."""
    from .audit.trust import UntrustedRecord

    try:
        return audit.last_applied(config), ""
    except UntrustedRecord as e:
        return None, str(e)


def intent_signers_options(p: argparse.ArgumentParser, *, follows: bool = False) -> None:
    """--verify-intent-signers / --verify-intent-gpg-home (reconcile, run)."""
    then = (
        "; a refused commit is logged and recorded once, and the last valid intent keeps being applied"
        if follows else "; anything else is refused and recorded"
    )
    p.add_argument(
        "--verify-intent-signers",
        metavar="FILE",
        help="apply only intent whose HEAD commit is signed by a key in this SSH allowed-signers file "
        "(like Flux's spec.verify), and only when the checkout holds exactly that commit (no uncommitted edits)" + then,
    )
    p.add_argument("--verify-intent-gpg-home", metavar="DIR", help="like --verify-intent-signers, trusting this GPG home's keys")


def intent_trust(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """TrustedKeys from --verify-intent-signers / --verify-intent-gpg-home (None: not asked),
    with a CommandError for a file or directory that is not there."""
    from .audit.verify import trusted_keys
    from .cli import CommandError

    signers, home = getattr(args, "verify_intent_signers", None), getattr(args, "verify_intent_gpg_home", None)
    if signers and not Path(signers).is_file():
        raise CommandError(f"--verify-intent-signers {signers}: no such file (an SSH allowed-signers file)")
    if home and not Path(home).is_dir():
        raise CommandError(f"--verify-intent-gpg-home {home}: no such directory")
    return trusted_keys(signers, home)


def check_signed_intent(intent, root: str | Path, trusted) -> str:  # type: ignore[no-untyped-def]
    """"" when `intent` (an IntentSet read from the checkout at `root`) may be applied under
    `trusted`, else why not (one line). What is rendered is checked, not just HEAD: the commit
    the intent was read at must be signed by a trusted key, and the files read must be exactly
    that commit's (IntentSet.dirty: a local edit on top of a signed commit is not signed).
    SignatureError (ssh-keygen or gpg missing) propagates: it is not the intent's fault."""
    from .audit.verify import verify_intent_commit

    if intent.commit is None:
        return f"intent at {root} refused: not read from a Git commit; only commits signed by a trusted key are applied"
    ok, detail = verify_intent_commit(root, trusted, ref=intent.commit)
    if not ok:
        return f"intent at {root} refused: {detail}"
    if intent.dirty:
        return (
            f"intent at {root} refused: the checkout has uncommitted changes on top of signed commit "
            f"{intent.commit[:12]} (signed by {detail}); what would be applied is not what was signed: "
            f"commit and sign the change, or discard it (git checkout -- . / git clean)"
        )
    return ""


def refused_intent_id(intent) -> str:  # type: ignore[no-untyped-def]
    """The Refused-Intent-Commit trailer's value: the commit, with -dirty for local edits on top."""
    return (intent.commit or "none") + ("-dirty" if intent.dirty else "")


def record_refusal(audit, config: str, held, message: str, refused: str) -> bool:  # type: ignore[no-untyped-def]
    """Record refused intent in the audit repository, against `held` (what the switches keep),
    once per refused commit: True when recorded, False when the newest record of the config
    already refuses the same commit (a loop or a cron job retrying records attempts, not ticks)."""
    newest = audit.newest_entry(config)
    if newest is not None and newest.trailers.get("Refused-Intent-Commit") == refused:
        return False
    audit.record(held, "rolled-back", reason=message[:900], extra_trailers=(("Refused-Intent-Commit", refused),))
    return True


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


def insecure_switches_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-insecure-switches", action="store_true",
        help="for labs and tests only: allow plaintext P4Runtime to the switches of a config without "
        "spec.switchConfig.tls (without it such a config is refused before any connection); anyone who reaches "
        "a switch's port can then read its tables and, with a higher election id, become primary and write them",
    )


def rpc_timeout_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rpc-timeout", type=float, default=60.0, metavar="SECONDS",
        help="deadline of each Write and Read RPC; a Write that misses it is fenced (a new stream with a higher "
        "election id) before the transaction decides anything, so it cannot land later (default: %(default)s)",
    )


def file_options(p: argparse.ArgumentParser, *, tls: bool = True) -> None:
    """--pipeline-dir (and --tls-dir): where the files intent names are found, by name only."""
    p.add_argument(
        "--pipeline-dir", metavar="DIR",
        help="directory holding the pipeline files intent names (spec.switchConfig.deviceConfig, p4Info): intent "
        "gives a plain name inside it (no absolute paths, no '..', symlinks may not lead out); default: none, so a "
        "config naming one is refused by commands that read it",
    )
    if tls:
        tls_dir_option(p)


def tls_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls-dir", metavar="DIR",
        help="directory holding the TLS files intent names (spec.switchConfig.tls caFile, certFile, keyFile), "
        "found by name inside it like --pipeline-dir",
    )


def switch_options(p: argparse.ArgumentParser) -> None:
    """--pipeline-dir, --tls-dir and --allowed-switches: what intent may make the reconciler read and connect to."""
    file_options(p)
    p.add_argument(
        "--allowed-switches", action="append", metavar="LIST",
        help="switch addresses intent may name (comma-separated, repeatable): CIDR, CIDR:PORT, [IPv6-CIDR]:PORT, "
        "HOST or HOST:PORT (a DNS name, matched exactly); a config naming another switch is refused before any "
        "connection (default: loopback only, 127.0.0.0/8 and ::1, any port)",
    )


def check_switch_addresses(config: LoadBalancerConfig, args: argparse.Namespace) -> None:
    """CommandError unless every switch of `config` is allowed by --allowed-switches (before any connection)."""
    from .cli import CommandError
    from .intent.semantic import parse_endpoint
    from .switch.allowlist import AllowlistError, parse_allowlist, refusals

    try:
        allowlist = parse_allowlist(getattr(args, "allowed_switches", None))
    except AllowlistError as e:
        raise CommandError(str(e)) from None
    refused = refusals(allowlist, [(s.name, s.address, parse_endpoint(s.address)) for s in config.switch_config.switches])
    if refused:
        raise CommandError(f"{config.key}: " + "; ".join(refused))


def build_applier(config: LoadBalancerConfig, args: argparse.Namespace, election_id: int | None = None) -> TwoSwitchApplier:
    """The applier of `config`'s switches: every path that connects to a switch goes through
    here, so the operator's limits on intent (--allowed-switches, --pipeline-dir, --tls-dir)
    are checked here, before any file is read or connection made."""
    from .cli import CommandError
    from .intent.files import CA_FILE, CERT_FILE, DEVICE_CONFIG, KEY_FILE, TLS_KINDS, FileRefError, read_named, resolve
    from .switch.tls import TlsError, TlsSettings

    check_switch_addresses(config, args)
    dirs = OperatorDirs.from_args(args)
    p4info = load_config_p4info(config, dirs.pipeline_dir)
    info = pipeline_info_from_message(p4info)
    device_config = b""
    if config.switch_config.pipeline == "managed" and not config.switch_config.device_config:
        # validate refuses this; a config built otherwise must not get an empty device config either
        raise CommandError(
            f"{config.key}: spec.switchConfig has no deviceConfig: the pipeline would be pushed with an empty device "
            f"config; set deviceConfig, or pipeline: external when another tool installs the pipeline"
        )
    try:
        if config.switch_config.device_config:
            device_config = read_named(dirs.pipeline_dir, config.switch_config.device_config, DEVICE_CONFIG)
        tls = None
        t = config.switch_config.tls
        if t is not None:
            def named(value: str | None, kind) -> str | None:  # type: ignore[no-untyped-def]
                return None if value is None else str(resolve(dirs.tls_dir, value, kind))

            tls = TlsSettings.from_files(
                ca_file=named(t.ca_file, CA_FILE), cert_file=named(t.cert_file, CERT_FILE),
                key_file=named(t.key_file, KEY_FILE), server_name=t.server_name,
            )
    except FileRefError as e:
        raise CommandError(f"{config.key}: spec.switchConfig.{'tls.' if e.kind in TLS_KINDS else ''}{e}") from None
    except TlsError as e:  # a file in --tls-dir that holds no PEM
        raise CommandError(f"{config.key}: spec.switchConfig.tls: {e}") from None
    if not config.switch_config.switches:
        raise CommandError(f"{config.key}: spec.switchConfig.switches is empty: nothing to apply to")
    try:
        factory = default_session_factory(
            config, info, tls, connect_timeout=args.timeout, arbitration_timeout=args.timeout,
            rpc_timeout=getattr(args, "rpc_timeout", 60.0),
            require_tls=not getattr(args, "allow_insecure_switches", False),
        )
    except TlsError as e:  # PlaintextRefused: no TLS and no --allow-insecure-switches
        raise CommandError(str(e)) from e
    return TwoSwitchApplier(
        config,
        p4info=p4info,
        info=info,
        device_config=device_config,
        election_id=election_id if election_id is not None else args.election_id,
        session_factory=factory,
        batch_size=args.batch_size,
    )


def check_switch_settings(config: LoadBalancerConfig, args: argparse.Namespace) -> None:
    """build_applier's checks (TLS unless --allow-insecure-switches, TLS files, device config),
    run before the audit repository is opened: a refused config leaves nothing behind, not even
    a new repository. Nothing connects: sessions are only opened by the transaction."""
    build_applier(config, args)


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

    intent = load_intent([args.intent], dirs=OperatorDirs.from_args(args))
    target = load_snapshot(args.snapshot)
    config = pick_config(intent, args.config or target.config)
    if config.key != target.config:
        raise CommandError(f"{args.snapshot} is for config {target.config}, not {config.key}")
    result = asyncio.run(_apply(config, args, target, StateDir(args.state)))
    print(result.describe())
    return _exit(result)


def _open_audit(config: LoadBalancerConfig, args: argparse.Namespace, signer=None, trust=None):  # type: ignore[no-untyped-def]
    from .audit.repo import AuditRepo

    branch = args.audit_branch or config.audit.branch or "main"
    return AuditRepo.open_or_init(args.audit_repo, branch=branch, workdir=args.audit_workdir, signer=signer, trust=trust)


async def _apply_recorded(
    config: LoadBalancerConfig, args: argparse.Namespace, target: Snapshot, audit, extra: tuple = (),  # type: ignore[no-untyped-def]
    last_good: Snapshot | None = None,
) -> ApplyResult:
    """The transaction of DESIGN.md 6 with the audit repository: pending, apply, outcome.
    Switches that cannot be reached are found before anything is recorded: an attempt that
    reaches no switch is not an audit record."""
    from .audit.errors import AuditError
    from .cli import CommandError

    # last_good: what the caller read (and trusted) as the switches' content; never re-read here.
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

    signer = build_signer(args)
    trusted = intent_trust(args)
    keys = audit_keys(args, signer)
    intent, cluster, _ = load_inputs(args.intent, args.cluster, dirs=OperatorDirs.from_args(args))
    message = check_signed_intent(intent, args.intent, trusted) if trusted is not None else ""
    if trusted is not None and not message:
        # Render what was signed: the verified commit's blobs, not the working tree.
        from .intent.committed import load_committed_intent

        intent = load_committed_intent(args.intent, intent.commit, OperatorDirs.from_args(args))
    config = pick_config(intent, args.config)
    check_switch_settings(config, args)
    audit = _open_audit(config, args, signer, keys) if args.audit_repo else None
    state = StateDir(args.state)
    if audit is not None and audit.close_interrupted(config.key) is not None:
        print(f"{config.key}: the last transaction was interrupted before its outcome was recorded; "
              f"recorded as interrupted, the switches are read back now", file=sys.stderr)
    previous, untrusted = last_applied_trusted(audit, config.key) if audit is not None else (state.last_applied(config.key), "")
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
            from .guard import unaccounted_message

            raise CommandError((f"{untrusted}. " if untrusted else "") + unaccounted_message(
                config, held, f"the audit repository {args.audit_repo}" if audit is not None else f"--state {args.state}"))
    rendered = render_one(intent, config, cluster, previous, pipeline_dir=OperatorDirs.from_args(args).pipeline_dir)
    for issue in rendered.issues:
        print(f"{config.key}: {issue.severity}: {issue}", file=sys.stderr)
    if not rendered.changed:
        # Level-triggered: the switches' own state decides. Read both back (a switch may have
        # restarted empty, a write may have been lost) and repair what differs.
        snap = rendered.snapshot
        result = asyncio.run(_sync(config, args, snap))
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
                    r.describe() for r in result.switches if r.writes)[:900])
        else:
            print(result.describe())
        return _exit(result)
    if audit is None:
        result = asyncio.run(_apply(config, args, rendered.snapshot, state))
    else:
        # Versions stay unique per config in the audit history, also after a rollback.
        target = rendered.snapshot.with_version(audit.next_version(config.key))
        result = asyncio.run(_apply_recorded(config, args, target, audit, last_good=previous))
    print(result.describe())
    return _exit(result)


def cmd_rollback(args: argparse.Namespace) -> int:
    from .audit.errors import AuditError
    from .cli import CommandError, pick_config
    from .intent.loader import load_intent

    from .audit.trust import UntrustedRecord

    signer = build_signer(args)
    keys = audit_keys(args, signer)
    intent = load_intent([args.intent], dirs=OperatorDirs.from_args(args))
    config = pick_config(intent, args.config)
    check_switch_settings(config, args)
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
    return _exit(result)
