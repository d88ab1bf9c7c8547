"""`p4kube status`: per config what was last applied (audit repository or state directory) and
what its switches hold now (read without arbitration), their drift against that snapshot, and
the Services fallen back to kube-proxy. Read-only: nothing is written anywhere.

Exit 0: every config's switches are reachable and in sync; 1: anything else (or an error).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import CommandError
from .options import insecure_switches_option, kube_options, output_option, settings_from_args, switch_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="what each config last applied and what its switches hold now (drift, fallbacks)",
        description="Per LoadBalancerConfig: the last applied version and digest (from --audit-repo, else "
        "--state), each switch's connection, role, pipeline cookie, entries per table and drift against that "
        "snapshot (missing, extra, different entries), and the Services fallen back to kube-proxy and why "
        "(from the API, --cluster, else the audit record). Switches are read without arbitrating: a running "
        "reconciler stays primary. Exit 0: all in sync; 1: otherwise.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--intent", metavar="DIR", help="intent directory (Git checkout) holding the configs")
    src.add_argument("--intent-from-cluster", action="store_true", help="the LoadBalancerConfig resources of the cluster")
    p.add_argument("--intent-namespace", action="append", metavar="NS", help="with --intent-from-cluster: namespaces to read")
    p.add_argument("--config", metavar="NAMESPACE/NAME", help="only this config")
    p.add_argument("--audit-repo", metavar="DIR_OR_URL", help="audit repository (opened read-only); default: --state")
    p.add_argument("--audit-branch", metavar="BRANCH", help="audit branch (default: the config's audit.branch, else main)")
    p.add_argument("--audit-workdir", metavar="DIR", help="where to clone a remote audit repository")
    p.add_argument("--state", metavar="DIR", default=".p4kube-state", help="last applied snapshot per config (default: %(default)s)")
    p.add_argument("--cluster", metavar="FILE", help="a cluster recording to read fallen-back Services from (default: the API "
                   "with --intent-from-cluster or --kubeconfig, else the audit record)")
    kube_options(p)
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="connect timeout per switch (default: %(default)s)")
    p.add_argument("--rpc-timeout", type=float, default=60.0, metavar="SECONDS", help="Read deadline (default: %(default)s)")
    switch_options(p)
    insecure_switches_option(p)
    output_option(p)
    p.set_defaults(func=cmd_status)


def _configs(args: argparse.Namespace, api: Any) -> tuple[list[Any], list[str], dict[str, Any]]:
    """The configs to report on, problems met reading them (invalid CRs), and each CR's status."""
    import asyncio  # not at the top: `p4kube --help` must not pay for it

    if args.intent:
        from ..intent.files import OperatorDirs
        from ..intent.loader import load_intent

        intent = load_intent([args.intent], dirs=OperatorDirs.from_args(args))
        configs = list(intent.configs)
        problems: list[str] = []
        statuses: dict[str, Any] = {}
    else:
        from ..kube.intent_source import CRIntentSource, describe, intent_namespaces

        async def listed() -> Any:
            source = CRIntentSource(api, namespaces=intent_namespaces(args.intent_namespace, args.kubeconfig, args.kube_context))
            await source.start()
            try:
                return await source.wait_synced(timeout=args.timeout * 6)
            finally:
                await source.aclose()

        try:
            crs = asyncio.run(listed())
        except TimeoutError as e:
            raise CommandError(f"the LoadBalancerConfig resources could not be listed: {e or 'no answer from the API'}") from e
        configs = list(crs.intent.configs) if getattr(crs, "intent", None) is not None else []
        problems = [describe(d) for d in crs.diagnostics]
        statuses = {key: r.status for key, r in crs.resources.items()}
    if args.config:
        configs = [c for c in configs if args.config in (c.key, c.key.partition("/")[2])]
        if not configs:
            raise CommandError(f"no LoadBalancerConfig {args.config}")
    return configs, problems, statuses


def _fallen_back(args: argparse.Namespace, api: Any) -> tuple[list[Any] | None, str]:
    """Services fallen back, from --cluster or the API; None when neither could be read (then
    the audit record says what it can)."""
    from ..app.inspection import fallen_back_from_cluster, fallen_back_from_services

    if args.cluster:
        from ..cluster.recorded import load_cluster_file

        return fallen_back_from_cluster(load_cluster_file(args.cluster)), ""
    asked = api is not None
    if api is None:
        api = _api(args, implicit=True)
        if api is None:
            return None, ""
    try:
        from kubernetes import client as k8s

        listed = k8s.CoreV1Api(api).list_service_for_all_namespaces(_request_timeout=args.timeout)
        return fallen_back_from_services(api.sanitize_for_serialization(listed).get("items") or []), ""
    except Exception as e:  # noqa: BLE001 - the API being unreachable is a line of the status, not its end
        if not asked:
            return None, ""  # a kubeconfig found by default but not reachable: not what was asked for
        return None, f"Services not read from the API ({type(e).__name__}: {str(e)[:200]}); fallbacks from the audit record"


def _api(args: argparse.Namespace, implicit: bool = False) -> Any:
    """An ApiClient when the API was asked for (--intent-from-cluster, --kubeconfig, --context)
    or, `implicit`, when a default configuration exists (in a Pod, $KUBECONFIG, ~/.kube/config)."""
    if not implicit and not (args.intent_from_cluster or args.kubeconfig or args.kube_context):
        return None
    from ..kube.client import KubeError, build_api_client

    try:
        return build_api_client(args.kubeconfig, context=args.kube_context)
    except KubeError as e:
        if implicit:
            return None
        raise CommandError(str(e)) from e


def cmd_status(args: argparse.Namespace) -> int:
    import asyncio  # not at the top: `p4kube --help` must not pay for it
    from ..app.inspection import gather_config, next_retry_from_status, read_applied

    settings = settings_from_args(args)
    api = _api(args)
    configs, problems, cr_status = _configs(args, api)
    falls, fall_problem = _fallen_back(args, api)

    from .progress import ProgressLine

    line = ProgressLine(sys.stderr)  # a read-back of 350k entries takes tens of seconds: never silent

    async def gather() -> list[Any]:
        out = []
        opened: dict[str, Any] = {}  # the audit repository by branch: opened (a remote fetched) once, not per config
        for config in configs:
            record = read_applied(config, settings, args.audit_branch, opened)
            # Fallbacks are the cluster's (a fallen-back Service has left every snapshot): each config shows them.
            retry = next_retry_from_status(cr_status.get(config.key) or {})
            out.append(await gather_config(config, settings, record, falls, next_retry=retry,
                                           problems=[fall_problem, *problems], progress=line))
        return out

    try:
        statuses = asyncio.run(gather())
    finally:
        line.stop()
    from .output import emit

    emit({"configs": [s.to_json() for s in statuses]}, args.output, lambda: text(statuses))
    return 0 if statuses and all(s.healthy for s in statuses) else 1


def _cookie(c: int | None) -> str:
    return "-" if c is None else f"{c:#018x}"


def text(statuses: list[Any]) -> str:
    """A compact table per config, like `cilium status`."""
    lines: list[str] = []
    for s in statuses:
        applied = (f"v{s.applied_version} {s.applied_digest[:19]}… ({s.applied_at or 'time unknown'})"
                   if s.applied_version is not None else "nothing applied")
        lines.append(f"{s.config}:  {'OK' if s.healthy else 'NOT OK'}")
        lines.append(f"  applied:      {applied}  [{s.record_source}]")
        if s.last_outcome is not None:
            lines.append(f"  last record:  {s.last_outcome}" + (f": {s.last_reason}" if s.last_reason else ""))
        if s.draining_until:  # step 1 of a move is applied; step 2 writes the plain entries then
            lines.append(f"  drain:        draining until {s.draining_until}")
        if s.expected_counts:
            lines.append("  snapshot:     " + ", ".join(f"{_short(t)} {n}" for t, n in s.expected_counts.items()))
        for sw in s.switches:
            head = f"  {sw.name:<14} {sw.role:<8} {sw.address:<22} {sw.state}"
            lines.append(head)
            if not sw.connected:
                lines.append(f"      {sw.error}")
                continue
            cookie = _cookie(sw.pipeline_cookie)
            if sw.expected_cookie is not None and sw.pipeline_cookie != sw.expected_cookie:
                cookie += f" (ours: {_cookie(sw.expected_cookie)})"
            lines.append(f"      pipeline cookie {cookie}, P4Runtime {sw.api_version or '?'}")
            if sw.counts:
                lines.append("      entries: " + ", ".join(f"{_short(t)} {n}" for t, n in sw.counts.items()))
            for d in sw.drift or ():
                if d.total:
                    lines.append(f"      drift {_short(d.table)}: {d.missing} missing, {d.extra} extra, {d.different} different")
        if s.fallen_back:
            lines.append(f"  fallen back:  {len(s.fallen_back)}")
            lines.extend(f"    {f.service}: {f.reason}" + (f" (since {f.since})" if f.since else "") for f in s.fallen_back)
        else:
            lines.append("  fallen back:  none")
        if s.next_retry:
            lines.append(f"  next retry:   {s.next_retry}")
        lines.extend(f"  problem: {p}" for p in s.problems)
    return "\n".join(lines)


def _short(table: str) -> str:
    return table.rpartition(".")[2]
