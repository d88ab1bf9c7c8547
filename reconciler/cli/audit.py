"""`p4kube audit log|show|diff|verify`: read the audit repository.

Each command takes --repo DIR_OR_URL: a local repository, or a remote (URL, or any path with
--workdir) that is fetched into a cache clone first. Read-only: nothing is committed or pushed.
Exit codes as for the other commands: 0 ok, 1 error (for verify: any problem found).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..p4names import TABLE_ORDER
from .errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CommandError
from .options import output_option
from .output import emit, render_data, write_atomic

if TYPE_CHECKING:  # the library (pygit2, jsonschema) is imported when a command runs, not for --help
    from ..audit import AuditRepo
    from ..audit.message import AuditEntry
    from ..diff import SnapshotDiff
    from ..snapshot import Entry, Snapshot

# reconciler.audit.message.OUTCOMES, spelled out so that building the parser imports no library
# (tests/test_cli_conventions.py checks that the two agree)
OUTCOME_CHOICES = ("pending", "applied", "rolled-back", "degraded", "interrupted")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `audit` and its subcommands to the p4kube parser's subcommands."""
    audit = subparsers.add_parser(
        "audit",
        help="read the audit repository: log, show, diff, verify",
        description="The audit repository holds every snapshot the reconciler rendered and the outcome of "
        "applying it, one commit each (docs/audit.md).",
        epilog="examples:\n"
        "  p4kube audit log --repo /var/lib/p4kube/audit --outcome rolled-back --since 7d\n"
        "  p4kube audit show 12 --repo https://git.example.com/ops/p4kube-audit.git --out v12.json\n"
        "  p4kube audit diff 11 12 --repo DIR\n"
        "  p4kube audit verify --repo DIR --allowed-signers allowed_signers",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.set_defaults(func=lambda args: _usage(audit))
    sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", parser_class=type(audit))

    p = sub.add_parser("log", help="list the audit records, newest first",
                       description="One line per record commit: commit, time, config, version, outcome, digest, reason. "
                       "--format json: one object per line with every trailer.")
    _repo_args(p)
    p.add_argument("--config", metavar="NAMESPACE/NAME", help="only this LoadBalancerConfig")
    p.add_argument("--outcome", choices=OUTCOME_CHOICES, help="only records with this outcome")
    p.add_argument("--since", metavar="WHEN", help="ISO 8601 date/time (UTC unless it has an offset), or an age: 30m, 12h, 7d, 2w")
    p.add_argument("--until", metavar="WHEN", help="like --since")
    p.add_argument("--limit", type=int, metavar="N", help="at most N records")
    output_option(p, legacy_format=True)
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("show", help="print a recorded snapshot",
                       description="Reassemble the full snapshot document of VERSION (as `p4kube render` writes it), "
                       "after checking its schema and digest.")
    p.add_argument("version", type=_version, metavar="VERSION")
    _repo_args(p)
    p.add_argument("--config", metavar="NAMESPACE/NAME", help="which config (needed when the repository holds several)")
    p.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    output_option(p, default="json", choices=("json", "yaml"))
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("diff", help="what changed between two recorded versions",
                       description="Services added/removed/changed and, per table, the entries added, removed and changed "
                       "from V1 to V2.")
    p.add_argument("v1", type=_version, metavar="V1")
    p.add_argument("v2", type=_version, metavar="V2")
    _repo_args(p)
    p.add_argument("--config", metavar="NAMESPACE/NAME", help="which config (needed when the repository holds several)")
    output_option(p, legacy_format=True)
    p.add_argument("--max-entries", type=int, default=50, metavar="N", help="entries listed per table and kind (0: all; default 50)")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("verify", help="check every commit of the audit history",
                       description="Every snapshot parses and matches its schema and digest, every record's trailers match "
                       "its tree and it changes only its own config; with --allowed-signers or --gpg-home every commit "
                       "must carry a good signature by a trusted key. Exit 0 when all is well, 1 otherwise.")
    _repo_args(p)
    p.add_argument("--allowed-signers", metavar="FILE", help="SSH allowed signers file (git's gpg.ssh.allowedSignersFile format)")
    p.add_argument("--gpg-home", metavar="DIR", help="GPG home whose public keys are trusted")
    output_option(p)
    p.set_defaults(func=cmd_verify)


def _repo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", required=True, metavar="DIR_OR_URL", help="the audit repository: a directory, or a remote's URL")
    p.add_argument("--branch", default="main", help="audit branch (default: %(default)s)")
    p.add_argument("--workdir", metavar="DIR", help="where to clone a remote (default: a cache under ~/.cache/p4kube/audit)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _version(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a snapshot version (an integer >= 1)")
    return int(text)


_AGE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> datetime:
    """ISO 8601 (date or date-time; UTC unless an offset is given) or an age such as 7d."""
    m = _AGE.match(text.strip())
    if m:
        return now() - timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"{text!r} is not a time: use ISO 8601 (2024-05-01, 2024-05-01T12:00:00+02:00) or an age (30m, 12h, 7d)") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def _open(args: argparse.Namespace) -> AuditRepo:
    import pygit2

    from ..audit import AuditError, AuditRepo

    try:
        return AuditRepo.open_or_init(args.repo, branch=args.branch, workdir=args.workdir, read_only=True)
    except (AuditError, pygit2.GitError) as e:
        raise CommandError(str(e)) from e


def _audit_errors(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Any fault of the audit repository met by a command (gone, unreadable, damaged) is one
    line and exit 1, never a traceback."""

    @functools.wraps(func)
    def wrapped(args: argparse.Namespace) -> int:
        import pygit2

        try:
            return func(args)  # AuditError: reconciler.cli.main prints it as one line
        except (pygit2.GitError, OSError, KeyError) as e:  # not expected past AuditRepo: still one line
            raise CommandError(f"audit repository {args.repo}: {type(e).__name__}: {e}") from e

    return wrapped


# --- log ---------------------------------------------------------------------------------------


@_audit_errors
def cmd_log(args: argparse.Namespace) -> int:
    since = parse_when(args.since) if args.since else None
    until = parse_when(args.until) if args.until else None
    audit = _open(args)
    entries = audit.history(config=args.config, outcome=args.outcome, since=since, until=until)
    if args.limit is not None:
        entries = entries[: max(args.limit, 0)]
    out = sys.stdout
    if args.output == "json":  # one object per line, as before -o: scripts read it line by line
        out.write("".join(json.dumps(e.to_json(), sort_keys=True) + "\n" for e in entries))
    elif args.output == "yaml":
        emit([e.to_json() for e in entries], "yaml")
    else:
        out.write("".join(format_entry(e) + "\n" for e in entries))
        if not entries:
            print(f"no records in {audit.location} ({args.branch}) match", file=sys.stderr)
    return EXIT_OK


def format_entry(e: AuditEntry) -> str:
    when = e.time.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"{e.commit[:12]}  {when}  {e.config}  v{e.version if e.version is not None else '?'}  {e.outcome:<11}  {(e.digest or '')[:19]}"
    if e.signed:
        line += "  signed"
    if e.reason:
        line += f"  {e.reason}"
    return line


# --- show --------------------------------------------------------------------------------------


@_audit_errors
def cmd_show(args: argparse.Namespace) -> int:
    snap = _snapshot(_open(args), args.version, args.config)
    text = snap.to_json_text() if args.output == "json" else render_data(json.loads(snap.to_json_text()), "yaml")
    if args.out:
        write_atomic(Path(args.out), text)
        print(f"wrote {args.out}: {snap.config} version {snap.version}, {len(snap.services)} services, {snap.digest}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _snapshot(audit: AuditRepo, version: int, config: str | None) -> Snapshot:
    from ..audit import AuditError

    try:
        return audit.snapshot_at(version, config)
    except AuditError as e:
        raise CommandError(str(e)) from e


# --- diff --------------------------------------------------------------------------------------


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def format_entry_key(e: Entry) -> str:
    return " ".join(f"{k}={v}" for k, v in e.to_json()["match"].items())


def format_action(e: Entry) -> str:
    params = ", ".join(f"{k}={v}" for k, v in e.to_json()["params"].items())
    return f"{_short(e.action)}({params})"


def table_changes(diff: SnapshotDiff) -> dict[str, dict[str, list[Any]]]:
    """Per table: added entries, removed entries, changed (old, new) pairs, in key order."""
    out: dict[str, dict[str, list[Any]]] = {}
    for u in diff.updates():
        per = out.setdefault(u.entry.table, {"added": [], "removed": [], "changed": []})
        if u.kind == "INSERT":
            per["added"].append(u.entry)
        elif u.kind == "DELETE":
            per["removed"].append(u.entry)
        else:
            per["changed"].append((u.old, u.entry))
    order = {t: i for i, t in enumerate(TABLE_ORDER)}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))


@_audit_errors
def cmd_diff(args: argparse.Namespace) -> int:
    audit = _open(args)
    config = args.config
    old = _snapshot(audit, args.v1, config)
    new = _snapshot(audit, args.v2, config or old.config)
    from ..diff import diff_snapshots

    diff = diff_snapshots(old, new)  # once: services and tables both come from it
    services = diff.services
    tables = table_changes(diff)
    if args.output in ("json", "yaml"):
        doc = {
            "config": new.config,
            "from": {"version": old.version, "digest": old.digest},
            "to": {"version": new.version, "digest": new.digest},
            "services": [{"name": c.name, "change": c.change} for c in services],
            "tables": {
                t: {
                    "added": [e.to_json() for e in per["added"]],
                    "removed": [e.to_json() for e in per["removed"]],
                    "changed": [{"old": o.to_json(), "new": n.to_json()} for o, n in per["changed"]],
                }
                for t, per in tables.items()
            },
        }
        if args.output == "json":
            print(json.dumps(doc, indent=2, sort_keys=True))
        else:
            emit(doc, "yaml")
        return EXIT_OK
    limit = args.max_entries if args.max_entries > 0 else None
    lines = [f"{new.config}: version {old.version} -> {new.version}  ({old.digest[:19]} -> {new.digest[:19]})"]
    if not services and not tables:
        lines.append("no changes: both versions hold the same tables")
    counts = {k: sum(1 for c in services if c.change == k) for k in ("added", "changed", "removed")}
    if services:
        lines.append(f"services: {counts['added']} added, {counts['changed']} changed, {counts['removed']} removed")
        sign = {"added": "+", "removed": "-", "changed": "~"}
        lines += [f"  {sign[c.change]} {c.name}" for c in services[:limit]]
        if limit is not None and len(services) > limit:
            lines.append(f"  ... and {len(services) - limit} more")
    for t, per in tables.items():
        lines.append(f"{t}: {len(per['added'])} added, {len(per['removed'])} removed, {len(per['changed'])} changed")
        for kind, mark in (("added", "+"), ("removed", "-"), ("changed", "~")):
            items = per[kind]
            for item in items[:limit]:
                if kind == "changed":
                    o, n = item
                    lines.append(f"  ~ {format_entry_key(n)}: {format_action(o)} -> {format_action(n)}")
                else:
                    lines.append(f"  {mark} {format_entry_key(item)}: {format_action(item)}")
            if limit is not None and len(items) > limit:
                lines.append(f"  {mark} ... and {len(items) - limit} more {kind}")
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


# --- verify ------------------------------------------------------------------------------------


@_audit_errors
def cmd_verify(args: argparse.Namespace) -> int:
    from ..audit import SignatureError
    from ..audit.verify import trusted_keys, verify_history

    try:
        trusted = trusted_keys(args.allowed_signers, args.gpg_home)
    except ValueError as e:
        raise CommandError(str(e)) from e
    audit = _open(args)
    try:
        report = verify_history(audit, trusted)
    except SignatureError as e:
        raise CommandError(str(e)) from e
    doc = {
        "ok": report.ok, "commits": report.commits, "records": report.records, "snapshots": report.snapshots,
        "signatures": report.signatures, "failures": [str(f) for f in report.failures],
        "warnings": [str(w) for w in report.warnings],
    }
    emit(doc, args.output, report.format)
    if report.ok:
        return EXIT_OK
    print(f"p4kube audit verify: {len(report.failures)} problem(s) in {audit.location}", file=sys.stderr)
    return EXIT_ERROR
