"""`p4kube validate|render|plan|check`: intent and a recorded cluster in, a snapshot or a plan out."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..gcpause import gc_paused
from ..ghactions import command, stop_commands
from ..intent.files import OperatorDirs
from .errors import EXIT_ERROR, EXIT_OK, CommandError
from .options import file_options, output_option, tls_dir_option
from .output import emit, render_data, write_atomic

if TYPE_CHECKING:  # the library (jsonschema, ruamel, finsy) is imported when a command runs, not for --help
    from ..plan import ConfigPlan
    from ..snapshot import Snapshot


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check LoadBalancerConfig YAML files or directories",
        description="Check intent: YAML, schema, durations, addresses, pools, switches. "
        "Prints one error per line as file:line:col: field: message. Exit 0 when valid, 1 when not.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="YAML files or directories (walked recursively)")
    output_option(p, legacy_format=True)
    file_options(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "render",
        help="render the snapshot the switches must hold",
        description="Render intent + cluster state into a schema-checked snapshot (JSON). "
        "With --previous, service ids, VIPs and buckets stay where they were and the version advances "
        "only when the content changes.",
    )
    _add_render_inputs(p)
    p.add_argument("--previous", metavar="SNAPSHOT", help="the snapshot the switches hold now")
    p.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    output_option(p, default="json", choices=("json", "yaml"))
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "plan",
        help="show what would change on the switches",
        description="Like terraform plan: Services added, changed and removed, each backend's share "
        "before and after, and the table writes. Exit 0: no changes; 2: changes; 1: error.",
    )
    _add_render_inputs(p)
    p.add_argument(
        "--previous",
        metavar="SNAPSHOT",
        action="append",
        default=[],
        help="what the switches hold now (repeat for several configs; matched by the snapshot's config)",
    )
    output_option(p, choices=("text", "json", "yaml", "markdown"), legacy_format=True)
    p.add_argument("--out", metavar="FILE", help="also write the plan here (e.g. for a PR comment)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "check",
        help="pull-request check for intent repositories: validate, then plan",
        description="What an intent repository's CI runs: validate the intent (errors also as GitHub "
        "::error annotations), then plan against the recorded cluster. Writes to --out-dir plan.md (the PR "
        "comment: a summary that always fits GitHub's 65,536-character limit, or the errors when the intent is "
        "invalid), plan-full.md, plan.json and plan.txt, and appends the full plan to $GITHUB_STEP_SUMMARY when "
        "set (cut to its 1 MiB limit). Exit 0: valid, no changes; 2: valid, changes; 1: invalid or error.",
    )
    _add_render_inputs(p)
    output_option(p)  # what is printed; the files in --out-dir are always written in every form
    prev = p.add_mutually_exclusive_group()
    prev.add_argument("--previous", metavar="SNAPSHOT", action="append", default=[], help="what the switches hold now")
    prev.add_argument(
        "--previous-from-audit", metavar="REPO_OR_URL",
        help="plan against the snapshot each config last applied, read from this audit repository (a directory or "
        "a remote's URL, opened read-only), instead of treating every Service as new",
    )
    p.add_argument("--branch", default="main", help="with --previous-from-audit: the audit branch (default: %(default)s)")
    p.add_argument("--audit-workdir", metavar="DIR", help="with --previous-from-audit and a URL: where to clone it (default: a cache under ~/.cache/p4kube/audit)")
    p.add_argument(
        "--audit-allowed-signers", metavar="FILE",
        help="with --previous-from-audit: SSH allowed-signers file; a last applied record not signed by one of "
        "these keys is refused, not planned against (as `run` with the same option)",
    )
    p.add_argument("--audit-trust-gpg-home", metavar="DIR", help="like --audit-allowed-signers, trusting this GnuPG home's keys")
    p.add_argument("--out-dir", metavar="DIR", default="p4kube-out", help="where to write plan.md, plan-full.md, plan.json, plan.txt (default: %(default)s)")
    tls_dir_option(p)
    p.set_defaults(func=cmd_check)


def _add_render_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--intent", required=True, metavar="DIR", help="intent directory (a Git checkout) or YAML file")
    p.add_argument(
        "--cluster",
        required=True,
        metavar="FILE",
        help="cluster state as `kubectl get services,endpointslices,nodes -A -o yaml` prints it",
    )
    p.add_argument("--config", metavar="NAME", help="which LoadBalancerConfig (namespace/name or name) when there are several")
    p.add_argument(
        "--connections",
        metavar="FILE",
        help="least-connections only: JSON {\"ns/svc\": {\"node\": activeConnections}} read from the switch counters",
    )
    p.add_argument(
        "--now",
        type=_instant,
        metavar="TIME",
        help="the clock connection drains start and end by (DESIGN.md 5.1): RFC 3339 UTC "
        "(2026-12-06T04:00:00Z) or epoch seconds (default: the current time). Pin it to reproduce "
        "an output byte for byte.",
    )
    file_options(p, tls=False)


def _instant(text: str) -> float:
    from datetime import datetime

    if text.replace(".", "", 1).isdigit():
        return float(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:  # a time without a zone would be read as local time
        raise argparse.ArgumentTypeError(f"{text!r} is neither RFC 3339 with a zone (2026-12-06T04:00:00Z) nor epoch seconds")
    return when.timestamp()


def cmd_validate(args: argparse.Namespace) -> int:
    from ..intent.loader import validate_paths

    diags = validate_paths(args.paths, dirs=OperatorDirs.from_args(args))
    errors = [d for d in diags if d.severity == "error"]
    if args.output != "text":
        emit({"valid": not errors, "diagnostics": [d.to_json() for d in diags]}, args.output)
    else:
        for d in diags:  # errors on stdout (file:line:col, for tools); warnings on stderr
            print(d, file=sys.stdout if d.severity == "error" else sys.stderr)
        if not errors:
            print(f"valid: {', '.join(args.paths)}", file=sys.stderr)
        else:
            print(f"{len(errors)} error(s)", file=sys.stderr)
    return EXIT_ERROR if errors else EXIT_OK


@gc_paused()
def cmd_render(args: argparse.Namespace) -> int:
    from ..pipeline_io import load_inputs, render_one
    from ..snapshot import snapshot_schema_errors

    dirs = OperatorDirs.from_args(args)
    intent, cluster, connections = load_inputs(args.intent, args.cluster, args.connections, dirs)
    config = intent.pick_config(args.config)
    previous = _load_previous([args.previous] if args.previous else [], {config.key})
    result = render_one(intent, config, cluster, previous.get(config.key), connections, pipeline_dir=dirs.pipeline_dir, now=args.now)
    text = result.snapshot.to_json_text()
    # Incremental: the Services render (or --previous) checked are look-ups by fragment digest.
    errors = snapshot_schema_errors(result.snapshot)
    if errors:  # a bug, not bad input: never hand out a snapshot that fails its own schema
        raise CommandError("rendered snapshot fails snapshot.schema.json:\n  " + "\n  ".join(errors[:10]))
    for issue in result.issues:
        print(f"{config.key}: {issue.severity}: {issue}", file=sys.stderr)
    if args.out:
        write_atomic(Path(args.out), text)
        print(
            f"wrote {args.out}: {config.key} version {result.snapshot.version}, "
            f"{len(result.snapshot.services)} services, {result.snapshot.digest}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text if args.output == "json" else render_data(json.loads(text), "yaml"))
    return EXIT_OK


def _plan_as(plans: Sequence[ConfigPlan], fmt: str, done: Mapping[str, str] | None = None) -> str:
    """The plan as `fmt` (the -o choices); yaml is the json plan's document, in YAML. `done`:
    forms already formatted (by format_plan), reused rather than made again."""
    from ..plan import Format, format_plan

    done = done or {}
    if fmt == "yaml":
        return render_data(json.loads(done.get("json") or format_plan(plans, "json")), "yaml")
    return done.get(fmt) or format_plan(plans, cast(Format, fmt))


@gc_paused()
def cmd_plan(args: argparse.Namespace) -> int:
    from ..pipeline_io import load_inputs, make_plans
    from ..plan import exit_code

    dirs = OperatorDirs.from_args(args)
    intent, cluster, connections = load_inputs(args.intent, args.cluster, args.connections, dirs)
    configs = [intent.pick_config(args.config)] if args.config else list(intent.configs)
    previous = _load_previous(args.previous, {c.key for c in configs})
    plans = make_plans(intent, configs, cluster, previous, connections, pipeline_dir=dirs.pipeline_dir, now=args.now)
    text = _plan_as(plans, args.output)
    sys.stdout.write(text)
    if args.out:
        write_atomic(Path(args.out), text)
    return exit_code(plans)


@gc_paused()
def cmd_check(args: argparse.Namespace) -> int:
    from ..intent.loader import validate_paths
    from ..pipeline_io import load_inputs, make_plans
    from ..plan import exit_code, format_plan
    from ..plan_summary import format_invalid, format_summary

    # Names and messages below come from the pull request: no line of theirs may be a command.
    resume_commands = stop_commands(os.environ.get("GITHUB_ACTIONS") == "true")
    dirs = OperatorDirs.from_args(args)
    diags = validate_paths([args.intent], dirs=dirs)
    errors = [d for d in diags if d.severity == "error"]
    for d in diags:
        print(d, file=sys.stdout if d.severity == "error" else sys.stderr)
    out = Path(args.out_dir)
    if errors:
        # The comment shows the errors, replacing the last plan: a stale plan must not stand.
        comment = format_invalid(diags, args.intent)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "plan.md", comment)
        _append_step_summary(comment)
        if os.environ.get("GITHUB_ACTIONS") == "true":
            resume_commands()
            for d in errors:  # shown as annotations on the pull request's files; escaped (ghactions)
                print(command("error", f"{d.field}: {d.message}", file=d.file, line=d.line, col=d.column))
        print(f"p4kube check: {len(errors)} error(s) in {args.intent}; no plan (the errors written to {out}/plan.md)", file=sys.stderr)
        return EXIT_ERROR
    intent, cluster, connections = load_inputs(args.intent, args.cluster, args.connections, dirs)
    configs = [intent.pick_config(args.config)] if args.config else list(intent.configs)
    keys = {c.key for c in configs}
    previous = _previous_from_audit(args, keys) if args.previous_from_audit else _load_previous(args.previous, keys)
    plans = make_plans(intent, configs, cluster, previous, connections, pipeline_dir=dirs.pipeline_dir, now=args.now)
    forms = {fmt: format_plan(plans, fmt) for fmt in ("markdown", "json", "text")}  # each once, printed from these
    full = forms["markdown"]
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "plan.md", format_summary(plans))
    write_atomic(out / "plan-full.md", full)
    write_atomic(out / "plan.json", forms["json"])
    write_atomic(out / "plan.txt", forms["text"])
    sys.stdout.write(_plan_as(plans, args.output, forms))
    _append_step_summary(full)
    print(f"p4kube check: valid; plan written to {out}/plan.md (summary), plan-full.md, plan.json, plan.txt", file=sys.stderr)
    resume_commands()
    return exit_code(plans)


def _append_step_summary(markdown: str) -> None:
    """To $GITHUB_STEP_SUMMARY when set, cut to what is left of GitHub's 1 MiB per step."""
    from ..plan_summary import STEP_SUMMARY_LIMIT, cut_markdown

    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if not summary:
        return
    room = STEP_SUMMARY_LIMIT - (os.path.getsize(summary) if os.path.exists(summary) else 0)
    if room < 4096:  # full already (earlier steps): GitHub would drop the whole summary
        return
    note = "plan cut to the job summary's 1 MiB limit: the whole plan is in the p4kube-plan-full artifact"
    with open(summary, "a", encoding="utf-8") as f:
        f.write(cut_markdown(markdown, room, note))


def _previous_from_audit(args: argparse.Namespace, keys: set[str]) -> dict[str, Snapshot]:
    from ..app.previous import previous_from_audit

    found = previous_from_audit(
        args.previous_from_audit, sorted(keys), branch=args.branch, workdir=args.audit_workdir,
        allowed_signers=args.audit_allowed_signers, gpg_home=args.audit_trust_gpg_home,
    )
    for key in sorted(keys - found.keys()):
        print(f"p4kube check: no applied snapshot of {key} in the audit repository: its Services show as new", file=sys.stderr)
    return found


def _load_previous(paths: Sequence[str], wanted: set[str]) -> dict[str, Snapshot]:
    from ..snapshot import load_snapshot

    out = {}
    for p in paths:
        snap = load_snapshot(p)
        if snap.config not in wanted:
            raise CommandError(f"{p}: snapshot is for config {snap.config}, not one of {sorted(wanted)}")
        if snap.config in out:
            raise CommandError(f"{p}: a second previous snapshot for {snap.config}")
        out[snap.config] = snap
    return out
