"""The `p4kube` command: thin faces over the library, one module per command group; the
library never imports this package.

Exit codes, for scripts and CI:
  0  success (for `plan`: no changes)
  1  error: invalid input, unreadable files, a failed operation
  2  `plan` only: there are changes
  3  `apply`, `reconcile`, `rollback`: degraded
Usage errors (unknown option, missing argument) exit 64, as argparse reports them (cli/errors.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .. import __version__
from ..logsetup import DETAIL_LOGGERS, default_level, setup_logging
from . import apply, audit, completion, crd, demo, install, intent, run, sim, status, switch
from .errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CommandError

__all__ = ["CommandError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _Version(argparse.Action):
    """`--version`: "p4kube 0.1.0 (commit 4095f28c1a2b)"; the commit is looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from ..buildinfo import build_commit

        commit = build_commit()
        print(f"p4kube {__version__} ({f'commit {commit}' if commit else 'commit unknown: not built from Git'})")
        parser.exit()


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
    parser.add_argument("--version", action=_Version, help="show the version (and the Git commit it was built from) and exit")
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                        help="default: info for `run`, warning for the other commands")
    parser.add_argument("--log-format", default="text", choices=["text", "json"], help="json: one object per line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # the order of `p4kube --help`
    for face in (intent, run, apply, status, switch, audit, crd, install, sim, demo):
        face.register(sub)
    completion.register(sub, parser)  # last: the script covers every command above

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level is None:  # not said: `run` speaks at info, without the steps inside each transaction
        args.log_level = default_level(args.command)  # faces that read it see the level in force
        setup_logging(args.log_level, args.log_format, quiet=DETAIL_LOGGERS)
    else:
        setup_logging(args.log_level, args.log_format)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USAGE
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command's `func`, turning the errors any command may raise into one line on
    stderr and exit 1. Apart from parsing, so that every command gets the same treatment."""
    # Imported here, not at the top: `p4kube --help` must not load the library (tests/test_cli_conventions.py).
    from ..app.settings import SettingsError
    from ..audit.errors import AuditError
    from ..diagnostics import InputError
    from ..intent.model import ConfigChoiceError
    from ..p4info import P4InfoError
    from ..pipeline_io import InputFileError
    from ..snapshot import SnapshotError

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InputError as e:
        for d in e.diagnostics:
            print(d, file=sys.stderr)
        print(f"{len(e.diagnostics)} error(s); nothing was rendered", file=sys.stderr)
        return EXIT_ERROR
    except (CommandError, SettingsError, InputFileError, ConfigChoiceError, SnapshotError, P4InfoError) as e:
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
