"""`p4kube demo`: the reconciler end to end on two local software switches."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
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


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(workdir=args.workdir)
