"""The `p4kube` command.

Exit codes, for scripts and CI:
  0  success (for `plan`: no changes)
  1  error: invalid input, unreadable files, a failed operation
  2  `plan` only: there are changes
Usage errors (unknown option, missing argument) exit 64, as argparse reports them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .diagnostics import InputError
from .intent.files import OperatorDirs
from .intent.model import IntentSet, LoadBalancerConfig
from .logsetup import setup_logging

log = logging.getLogger("p4kube")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 64


class CommandError(Exception):
    """A failure to report to the user as one clear message, with exit code 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


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
    from .apply_cli import file_options

    file_options(p, tls=False)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="p4kube",
        description=(
            "GitOps reconciler for P4Kube: renders LoadBalancerConfig intent and cluster state into a "
            "versioned switch-table snapshot, shows the plan, and (in later commands) applies it to "
            "P4Runtime switches."
        ),
        epilog=(
            "examples:\n"
            "  p4kube validate intent-examples/production\n"
            "  p4kube plan --intent intent-examples/multi-service --cluster intent-examples/multi-service/cluster.yaml\n"
            "  p4kube render --intent DIR --cluster FILE --previous last.json --out next.json\n"
            "  p4kube demo\n\n"
            "exit codes: 0 ok / no changes, 1 error, 2 plan has changes, 64 usage error"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"p4kube {__version__}")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"], help="json: one object per line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "validate",
        help="check LoadBalancerConfig YAML files or directories",
        description="Check intent: YAML, schema, durations, addresses, pools, switches. "
        "Prints one error per line as file:line:col: field: message. Exit 0 when valid, 1 when not.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="YAML files or directories (walked recursively)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    from .apply_cli import file_options

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
    p.add_argument("--format", choices=["text", "json", "markdown"], default="text")
    p.add_argument("--out", metavar="FILE", help="also write the plan here (e.g. for a PR comment)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "check",
        help="pull-request check for intent repositories: validate, then plan",
        description="What an intent repository's CI runs: validate the intent (errors also as GitHub "
        "::error annotations), then plan against the recorded cluster. Writes plan.md (the PR comment), "
        "plan.json and plan.txt to --out-dir and appends the plan to $GITHUB_STEP_SUMMARY when set. "
        "Exit 0: valid, no changes; 2: valid, changes; 1: invalid or error.",
    )
    _add_render_inputs(p)
    p.add_argument("--previous", metavar="SNAPSHOT", action="append", default=[], help="what the switches hold now")
    p.add_argument("--out-dir", metavar="DIR", default="p4kube-out", help="where to write plan.md/json/txt (default: %(default)s)")
    from .apply_cli import tls_dir_option

    tls_dir_option(p)
    p.set_defaults(func=cmd_check)

    from . import apply_cli, audit_cli, crd_cli, run_cli

    run_cli.register(sub)
    apply_cli.register(sub)
    audit_cli.register(sub)
    crd_cli.register(sub)
    from . import install_cli

    install_cli.register(sub)

    p = sub.add_parser(
        "switch",
        help="run a software P4Runtime switch (for demos and tests)",
        description="Serve a software switch that speaks P4Runtime and models p4/load_balancer.p4 "
        "(reconciler/sim), until SIGTERM or SIGINT. It holds no pipeline until a controller pushes one. "
        "--bmv2 reproduces BMv2's departures from the specification (promotion of the next stream when "
        "the primary's ends, UNKNOWN for a full table, BMv2's error texts).",
    )
    p.add_argument("--listen", default="127.0.0.1:9559", metavar="HOST:PORT", help="address to serve on (default: %(default)s)")
    p.add_argument("--device-id", type=int, action="append", metavar="N", help="device id to serve (repeatable; default 1)")
    p.add_argument("--bmv2", action="store_true", help="behave like BMv2 simple_switch_grpc where it departs from the spec")
    p.add_argument("--tls-cert", metavar="FILE", help="server certificate (PEM); enables TLS")
    p.add_argument("--tls-key", metavar="FILE", help="server private key (PEM)")
    p.add_argument("--tls-client-ca", metavar="FILE", help="require client certificates signed by this CA (mutual TLS)")
    p.set_defaults(func=cmd_switch)

    p = sub.add_parser(
        "demo",
        help="run the reconciler end to end on the embedded example (no set-up needed)",
        description="Run the reconciler end to end on two local software switches, a Git intent repository "
        "and a recorded cluster: render, audit commits, apply, probe, churn, an intent commit, an injected "
        "failure with rollback and kube-proxy fallback, and the recovery. Narrated, with a summary; the "
        "audit repository is left for `p4kube audit log`.",
    )
    p.add_argument(
        "--workdir",
        metavar="DIR",
        help="where to put the intent and audit repositories (default: a new /tmp/p4kube-demo-* directory, kept)",
    )
    p.set_defaults(func=cmd_demo)

    return parser


# --- commands -------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from .intent.loader import validate_paths

    diags = validate_paths(args.paths, dirs=OperatorDirs.from_args(args))
    errors = [d for d in diags if d.severity == "error"]
    if args.format == "json":
        print(json.dumps({"valid": not errors, "diagnostics": [d.to_json() for d in diags]}, indent=2))
    else:
        for d in diags:  # errors on stdout (file:line:col, for tools); warnings on stderr
            print(d, file=sys.stdout if d.severity == "error" else sys.stderr)
        if not errors:
            print(f"valid: {', '.join(args.paths)}", file=sys.stderr)
        else:
            print(f"{len(errors)} error(s)", file=sys.stderr)
    return EXIT_ERROR if errors else EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from .pipeline_io import load_inputs, render_one
    from .snapshot import schema_errors

    intent, cluster, connections = load_inputs(args.intent, args.cluster, args.connections, OperatorDirs.from_args(args))
    config = pick_config(intent, args.config)
    previous = _load_previous([args.previous] if args.previous else [], {config.key})
    result = render_one(intent, config, cluster, previous.get(config.key), connections, pipeline_dir=OperatorDirs.from_args(args).pipeline_dir)
    text = result.snapshot.to_json_text()
    errors = schema_errors(json.loads(text))
    if errors:  # a bug, not bad input: never hand out a snapshot that fails its own schema
        raise CommandError("rendered snapshot fails snapshot.schema.json:\n  " + "\n  ".join(errors[:10]))
    for issue in result.issues:
        print(f"{config.key}: {issue.severity}: {issue}", file=sys.stderr)
    if args.out:
        _write_atomic(Path(args.out), text)
        print(
            f"wrote {args.out}: {config.key} version {result.snapshot.version}, "
            f"{len(result.snapshot.services)} services, {result.snapshot.digest}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from .pipeline_io import load_inputs, make_plans
    from .plan import exit_code, format_plan

    intent, cluster, connections = load_inputs(args.intent, args.cluster, args.connections, OperatorDirs.from_args(args))
    configs = [pick_config(intent, args.config)] if args.config else list(intent.configs)
    previous = _load_previous(args.previous, {c.key for c in configs})
    plans = make_plans(intent, configs, cluster, previous, connections, pipeline_dir=OperatorDirs.from_args(args).pipeline_dir)
    text = format_plan(plans, args.format)
    sys.stdout.write(text)
    if args.out:
        _write_atomic(Path(args.out), text)
    return exit_code(plans)


def cmd_check(args: argparse.Namespace) -> int:
    import os

    from .intent.loader import validate_paths
    from .pipeline_io import load_inputs, make_plans
    from .ghactions import command, stop_commands
    from .plan import exit_code, format_plan

    # Names and messages below come from the pull request: no line of theirs may be a command.
    resume_commands = stop_commands(os.environ.get("GITHUB_ACTIONS") == "true")
    diags = validate_paths([args.intent], dirs=OperatorDirs.from_args(args))
    errors = [d for d in diags if d.severity == "error"]
    for d in diags:
        print(d, file=sys.stdout if d.severity == "error" else sys.stderr)
    if errors:
        if os.environ.get("GITHUB_ACTIONS") == "true":
            resume_commands()
            for d in errors:  # shown as annotations on the pull request's files; escaped (ghactions)
                print(command("error", f"{d.field}: {d.message}", file=d.file, line=d.line, col=d.column))
        print(f"p4kube check: {len(errors)} error(s) in {args.intent}; no plan", file=sys.stderr)
        return EXIT_ERROR
    intent, cluster, connections = load_inputs(args.intent, args.cluster, args.connections, OperatorDirs.from_args(args))
    configs = [pick_config(intent, args.config)] if args.config else list(intent.configs)
    previous = _load_previous(args.previous, {c.key for c in configs})
    plans = make_plans(intent, configs, cluster, previous, connections, pipeline_dir=OperatorDirs.from_args(args).pipeline_dir)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fmt, name in (("markdown", "plan.md"), ("json", "plan.json"), ("text", "plan.txt")):
        _write_atomic(out / name, format_plan(plans, fmt))  # type: ignore[arg-type]
    sys.stdout.write(format_plan(plans, "text"))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(format_plan(plans, "markdown"))
    print(f"p4kube check: valid; plan written to {out}/plan.md, plan.json, plan.txt", file=sys.stderr)
    resume_commands()
    return exit_code(plans)


def cmd_switch(args: argparse.Namespace) -> int:
    from .sim.server import TlsConfig, run_forever

    if bool(args.tls_cert) != bool(args.tls_key):
        raise CommandError("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise CommandError("--tls-client-ca needs --tls-cert and --tls-key")
    tls = None
    if args.tls_cert:
        try:
            tls = TlsConfig.from_files(args.tls_cert, args.tls_key, args.tls_client_ca)
        except OSError as e:
            raise CommandError(f"{e.filename}: {e.strerror}") from e
    if args.log_level == "warning":  # a server should say that it is serving
        logging.getLogger().setLevel(logging.INFO)
    try:
        return run_forever(args.listen, args.device_id or [1], bmv2=args.bmv2, tls=tls)
    except OSError as e:
        raise CommandError(str(e)) from e


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(workdir=args.workdir)


# --- helpers --------------------------------------------------------------------------------


def pick_config(intent: IntentSet, name: str | None) -> LoadBalancerConfig:
    """The LoadBalancerConfig `name` (or the only one), as a CommandError when it cannot be chosen."""
    try:
        return intent.config(name)
    except LookupError as e:
        raise CommandError(str(e).strip("'\"")) from e


def _load_previous(paths: Sequence[str], wanted: set[str]) -> dict:  # type: ignore[type-arg]
    from .snapshot import load_snapshot

    out = {}
    for p in paths:
        snap = load_snapshot(p)
        if snap.config not in wanted:
            raise CommandError(f"{p}: snapshot is for config {snap.config}, not one of {sorted(wanted)}")
        if snap.config in out:
            raise CommandError(f"{p}: a second previous snapshot for {snap.config}")
        out[snap.config] = snap
    return out


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a snapshot."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    from .p4info import P4InfoError
    from .snapshot import SnapshotError
    from .audit.errors import AuditError

    try:
        return func(args)
    except InputError as e:
        for d in e.diagnostics:
            print(d, file=sys.stderr)
        print(f"{len(e.diagnostics)} error(s); nothing was rendered", file=sys.stderr)
        return EXIT_ERROR
    except (CommandError, SnapshotError, P4InfoError) as e:
        print(f"p4kube {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except AuditError as e:  # the audit repository: gone, unwritable, full, unreachable, damaged
        print(f"p4kube {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
