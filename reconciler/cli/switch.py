"""`p4kube switch dump|diff`: what one real P4Runtime switch holds, in the snapshot's own form,
and how that differs from a snapshot (a file, or a version in the audit repository).

Read-only: no StreamChannel, no arbitration (reconciler/switch/inspect.py), so a running
reconciler keeps its primacy. The switch's own P4Info decodes its entries.

`p4kube switch --listen ...` was the simulator, now `p4kube sim`; it still works for one release.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .errors import CommandError
from .options import insecure_switches_option, output_option, settings_from_args, tls_dir_option
from .output import emit
from .sim import cmd_sim, sim_options

EXIT_SAME, EXIT_DIFFERS = 0, 1
_LEGACY = ("listen", "device_id", "bmv2", "tls_cert", "tls_key", "tls_client_ca")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "switch",
        help="read a P4Runtime switch: dump its tables, diff them against a snapshot",
        description="Read one P4Runtime switch without arbitrating (a running reconciler stays primary): "
        "`dump` prints its tables as snapshot entries, `diff` compares them with a snapshot. "
        "Deprecated: `p4kube switch --listen ...` starts the software switch; use `p4kube sim`.",
    )
    legacy = p.add_argument_group("deprecated (use `p4kube sim`)")
    sim_options(legacy, listen_default=None)
    p.set_defaults(func=_legacy_or_help(p))
    actions = p.add_subparsers(dest="switch_command", metavar="ACTION", parser_class=type(p))

    d = actions.add_parser("dump", help="print the switch's table entries in the snapshot's form",
                           description="Print every table entry of the switch as a snapshot's `tables` "
                           "(the JSON form of docs/snapshot.md; entries carry no Service: a switch does not know it).")
    _target_options(d)
    output_option(d, default="json")  # json: {"tables": ...} as in a snapshot; text: one canonical entry per line
    d.set_defaults(func=cmd_dump)

    f = actions.add_parser("diff", help="compare the switch's entries with a snapshot (exit 0 same, 1 differs)",
                           description="Read the switch and compare its entries with a snapshot: FILE (a snapshot "
                           "JSON) or VERSION (a version recorded in --audit-repo). Exit 0: the same; 1: they differ "
                           "(or an error).")
    _target_options(f)
    f.add_argument("--against", required=True, metavar="VERSION|FILE", help="a snapshot file, or a recorded version")
    f.add_argument("--audit-repo", metavar="DIR_OR_URL", help="audit repository holding VERSION")
    f.add_argument("--audit-branch", default="main", metavar="BRANCH", help="audit branch (default: %(default)s)")
    f.add_argument("--audit-workdir", metavar="DIR", help="where to clone a remote audit repository")
    f.add_argument("--config", metavar="NAMESPACE/NAME", help="which config's VERSION, when the repository records several")
    f.add_argument("--limit", type=int, default=20, metavar="N", help="differences listed in text (default: %(default)s)")
    output_option(f)
    f.set_defaults(func=cmd_diff)


def _legacy_or_help(p: argparse.ArgumentParser) -> Any:
    def run(args: argparse.Namespace) -> int:
        if any(getattr(args, k) not in (None, False) for k in _LEGACY):
            print("p4kube switch: warning: `p4kube switch --listen ...` is deprecated and will be removed in the "
                  "next release; use `p4kube sim` (same options)", file=sys.stderr)
            return cmd_sim(args)
        p.print_help()
        return 64
    return run


def _target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", metavar="ADDRESS", help="the switch's P4Runtime address, HOST:PORT")
    p.add_argument("--device-id", type=int, default=1, metavar="N", help="(default: %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="connect timeout (default: %(default)s)")
    p.add_argument("--rpc-timeout", type=float, default=60.0, metavar="SECONDS", help="Read deadline (default: %(default)s)")
    p.add_argument(
        "--allowed-switches", action="append", metavar="LIST",
        help="addresses that may be connected to, as for the apply commands (default: loopback only)",
    )
    tls_dir_option(p)
    p.add_argument("--ca-file", metavar="NAME", help="CA certificate, a name inside --tls-dir; enables TLS")
    p.add_argument("--cert-file", metavar="NAME", help="client certificate inside --tls-dir (mutual TLS)")
    p.add_argument("--key-file", metavar="NAME", help="client private key inside --tls-dir")
    p.add_argument("--server-name", metavar="NAME", help="name the switch's certificate must carry")
    insecure_switches_option(p)


async def _read(args: argparse.Namespace) -> Any:
    from ..app.inspection import TlsNames, switch_target
    from ..switch.errors import SwitchError
    from ..switch.inspect import read_switch

    settings = settings_from_args(args)
    tls = switch_target(args.address, settings,
                        TlsNames(args.ca_file, args.cert_file, args.key_file, args.server_name))
    from ..apply import Progress
    from .progress import ProgressLine

    line = ProgressLine(sys.stderr)  # shown once the read has run for 2 s
    line(Progress(args.address, "read"))
    try:
        reading = await read_switch(args.address, device_id=args.device_id, tls=tls,
                                    connect_timeout=args.timeout, rpc_timeout=args.rpc_timeout)
    except SwitchError as e:
        raise CommandError(str(e)) from e
    finally:
        line.stop()
    if not reading.has_pipeline:
        raise CommandError(f"switch {args.address} (device {args.device_id}) has no pipeline: nothing to read")
    return reading


def _sorted_tables(entries: Any) -> dict[str, list[Any]]:
    from .. import p4names as n

    tables: dict[str, list[Any]] = {t: [] for t in n.TABLE_ORDER}
    for e in entries:
        tables.setdefault(e.table, []).append(e)
    return {t: sorted(es, key=lambda e: e.sort_key()) for t, es in tables.items()}


def cmd_dump(args: argparse.Namespace) -> int:
    import asyncio  # not at the top: `p4kube --help` must not pay for it
    reading = asyncio.run(_read(args))
    tables = _sorted_tables(reading.entries)
    if args.output == "text":
        print(f"# switch {reading.address} device {reading.device_id} cookie {reading.cookie:#018x} "
              f"({sum(map(len, tables.values()))} entries)")
        for t, es in tables.items():
            for e in es:
                print(f"{t} {e.canonical()}")
        return 0
    emit({"switch": reading.address, "deviceId": reading.device_id, "pipelineCookie": reading.cookie,
           "tables": {t: [e.to_json() for e in es] for t, es in tables.items()}}, args.output)
    return 0


def _against(args: argparse.Namespace) -> Any:
    from ..snapshot import load_snapshot

    path = Path(args.against)
    if path.exists() or not args.against.isdigit():
        return load_snapshot(path)
    if not args.audit_repo:
        raise CommandError(f"--against {args.against}: a version needs --audit-repo (or give a snapshot file)")
    from ..audit.errors import AuditError
    from ..audit.repo import AuditRepo

    audit = AuditRepo.open_or_init(args.audit_repo, branch=args.audit_branch, workdir=args.audit_workdir, read_only=True)
    try:
        return audit.snapshot_at(int(args.against), args.config)
    except (AuditError, LookupError) as e:
        raise CommandError(f"no recorded version {args.against} in {args.audit_repo}: {e}") from e


def cmd_diff(args: argparse.Namespace) -> int:
    import asyncio  # not at the top: `p4kube --help` must not pay for it
    from ..apply import compare_entries
    from ..status import table_drift

    snap = _against(args)
    reading = asyncio.run(_read(args))
    expected = [e for es in snap.tables().values() for e in es]
    drift = [d for d in table_drift(expected, reading.entries) if d.total]
    differences = compare_entries(reading.entries, expected, limit=args.limit) if drift else []
    if args.output != "text":
        emit({"switch": reading.address, "against": {"config": snap.config, "version": snap.version, "digest": snap.digest},
               "same": not drift, "drift": [d.to_json() for d in drift], "differences": differences}, args.output)
        return EXIT_DIFFERS if drift else EXIT_SAME
    what = f"{snap.config} v{snap.version} ({snap.digest[:19]})"
    if not drift:
        print(f"switch {reading.address} holds exactly {what}: {len(expected)} entries")
        return EXIT_SAME
    print(f"switch {reading.address} differs from {what}:")
    print(f"  {'TABLE':<28} {'MISSING':>8} {'EXTRA':>8} {'DIFFERENT':>10}")
    for d in drift:
        print(f"  {d.table:<28} {d.missing:>8} {d.extra:>8} {d.different:>10}")
    for line in differences:
        print(f"  {line}")
    return EXIT_DIFFERS
