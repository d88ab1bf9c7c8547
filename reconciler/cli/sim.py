"""`p4kube sim`: the software P4Runtime switch of reconciler/sim, for demos and tests.

It was `p4kube switch --listen ...` until `p4kube switch` became the commands that read a real
switch (cli/switch.py); that spelling still starts the simulator for one release, with a warning.
"""

from __future__ import annotations

import argparse
import logging

from .errors import CommandError

DESCRIPTION = (
    "Serve a software switch that speaks P4Runtime and models p4/load_balancer.p4 (reconciler/sim), until "
    "SIGTERM or SIGINT. It holds no pipeline until a controller pushes one. --bmv2 reproduces BMv2's departures "
    "from the specification (promotion of the next stream when the primary's ends, UNKNOWN for a full table, "
    "BMv2's error texts)."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim", help="run a software P4Runtime switch (for demos and tests)", description=DESCRIPTION)
    sim_options(p, listen_default="127.0.0.1:9559")
    p.set_defaults(func=cmd_sim)


def sim_options(p: argparse._ActionsContainer, *, listen_default: str | None) -> None:
    """The simulator's flags (also kept on `p4kube switch` for the deprecated spelling, where
    --listen has no default so that its presence says which command is meant)."""
    shown = listen_default or "127.0.0.1:9559"
    p.add_argument("--listen", default=listen_default, metavar="HOST:PORT", help=f"address to serve on (default: {shown})")
    p.add_argument("--device-id", type=int, action="append", metavar="N", help="device id to serve (repeatable; default 1)")
    p.add_argument("--bmv2", action="store_true", help="behave like BMv2 simple_switch_grpc where it departs from the spec")
    p.add_argument("--tls-cert", metavar="FILE", help="server certificate (PEM); enables TLS")
    p.add_argument("--tls-key", metavar="FILE", help="server private key (PEM)")
    p.add_argument("--tls-client-ca", metavar="FILE", help="require client certificates signed by this CA (mutual TLS)")


def cmd_sim(args: argparse.Namespace) -> int:
    from ..sim.server import TlsConfig, run_forever

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
    if getattr(args, "log_level", None) in (None, "warning"):  # a server should say that it is serving
        logging.getLogger().setLevel(logging.INFO)
    try:
        return run_forever(args.listen or "127.0.0.1:9559", args.device_id or [1], bmv2=args.bmv2, tls=tls)
    except OSError as e:
        raise CommandError(str(e)) from e
