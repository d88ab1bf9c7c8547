"""The I/O edge of validate/render/plan: read intent, cluster state and inputs, then call the
pure render and diff. Kept apart so render stays free of I/O and the CLI stays thin."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Mapping, Sequence

from finsy.proto import p4i

from .cluster.model import ClusterState
from .cluster.recorded import load_cluster_bytes, read_cluster_file
from .diff import diff_snapshots
from .guard import removal_verdict
from .intent.files import P4INFO, FileRefError, OperatorDirs, resolve
from .intent.loader import load_intent
from .intent.model import IntentSet, LoadBalancerConfig
from .p4info import P4InfoError, load_p4info, p4info_digest
from .paths import P4INFO_PATH
from .plan import ConfigPlan
from .render import Renderer, RenderIssue, RenderResult
from .snapshot import Snapshot


class InputFileError(Exception):
    """An input file that cannot be read or parsed, or a P4Info intent names that cannot be
    used; the message names it (never its content). Faces report it as one line, exit 1."""


def load_inputs(
    intent_path: str, cluster_path: str, connections_path: str | None = None, dirs: OperatorDirs | None = None
) -> tuple[IntentSet, ClusterState, dict[str, dict[str, int]] | None]:
    intent = load_intent([intent_path], dirs=dirs)
    cluster = cluster_from(read_cluster_file(cluster_path), cluster_path)
    connections = load_connections(connections_path) if connections_path else None
    return intent, cluster, connections


def cluster_from(recording: bytes, path: str) -> ClusterState:
    """A recording's bytes parsed (InputError naming file, line and field when they are not a
    whole cluster), with what render cannot use said on stderr, not silently dropped."""
    cluster = load_cluster_bytes(recording, path)
    for issue in cluster.issues:
        print(f"{path}: warning: {issue.object}: {issue.message}", file=sys.stderr)
    return cluster


def load_connections(path: str) -> dict[str, dict[str, int]]:
    """least-connections input: {"ns/svc[:port]": {"backend": activeConnections}}."""
    from .inputlimits import CONNECTIONS_MAX_BYTES, CONNECTIONS_MAX_DEPTH, DeepInput, TooLarge, load_json, read_bounded

    try:
        doc = load_json(read_bounded(path, CONNECTIONS_MAX_BYTES).decode("utf-8"), path, CONNECTIONS_MAX_DEPTH)
    except TooLarge as e:
        raise InputFileError(f"{path}: {e.message()}") from None
    except OSError as e:
        raise InputFileError(f"{path}: cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise InputFileError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except DeepInput as e:
        raise InputFileError(str(e.diagnostic)) from None
    except json.JSONDecodeError as e:
        raise InputFileError(f"{path}:{e.lineno}:{e.colno}: not JSON: {e.msg}") from e
    if not isinstance(doc, dict) or not all(
        isinstance(v, dict) and all(isinstance(c, int) and c >= 0 for c in v.values()) for v in doc.values()
    ):
        raise InputFileError(f'{path}: expected {{"namespace/service": {{"backend": non-negative integer}}}}')
    return doc


def p4info_path(config: LoadBalancerConfig, pipeline_dir: Path | None = None) -> Path:
    """The config's P4Info, found by name in the operator's --pipeline-dir (intent is untrusted:
    reconciler.intent.files), or the packaged one when the config names none. InputFileError when
    it cannot be used."""

    name = config.switch_config.p4info
    if not name:
        return P4INFO_PATH
    try:
        return resolve(pipeline_dir, name, P4INFO)
    except FileRefError as e:
        raise InputFileError(f"{config.key}: spec.switchConfig.{e}") from None


def load_config_p4info(config: LoadBalancerConfig, pipeline_dir: Path | None = None) -> p4i.P4Info:
    """The config's P4Info message; InputFileError naming the file (no content) when it does not parse."""

    path = p4info_path(config, pipeline_dir)
    try:
        return load_p4info(path)
    except P4InfoError as e:
        shown_as = str(e).replace(str(path), config.switch_config.p4info or str(path))
        raise InputFileError(f"{config.key}: spec.switchConfig.p4Info: {shown_as}") from None


def config_p4info_digest(config: LoadBalancerConfig, pipeline_dir: Path | None = None) -> str:
    return p4info_digest(load_config_p4info(config, pipeline_dir))


def render_one(
    intent: IntentSet,
    config: LoadBalancerConfig,
    cluster: ClusterState,
    previous: Snapshot | None,
    connections: Mapping[str, Mapping[str, int]] | None = None,
    renderer: Renderer | None = None,
    pipeline_dir: Path | None = None,
    now: float | None = None,
) -> RenderResult:
    """`now`: the wall clock drains start and end by (epoch seconds; None: the current time)."""
    return (renderer or Renderer()).render(
        config,
        cluster,
        previous,
        p4info_digest=config_p4info_digest(config, pipeline_dir),
        intent_commit=intent.commit,
        connections=connections,
        now=now,
    )


def make_plans(
    intent: IntentSet,
    configs: Sequence[LoadBalancerConfig],
    cluster: ClusterState,
    previous: Mapping[str, Snapshot],
    connections: Mapping[str, Mapping[str, int]] | None = None,
    pipeline_dir: Path | None = None,
    now: float | None = None,
) -> list[ConfigPlan]:
    plans = []
    for config in configs:
        old = previous.get(config.key)
        result = render_one(intent, config, cluster, old, connections, pipeline_dir=pipeline_dir, now=now)
        issues = result.issues
        verdict = removal_verdict(old, result.snapshot, config.safety.max_removal_percent)
        if not verdict.allowed:  # say so in the pull request, before the reconciler refuses it
            issues = (RenderIssue(None, f"the reconciler would refuse this change: {verdict.describe()}", "error"),) + issues
        plans.append(
            ConfigPlan(
                config=config.key,
                old=old,
                new=result.snapshot,
                diff=diff_snapshots(old, result.snapshot),
                issues=issues,
                intent_commit=intent.commit,
                intent_dirty=intent.dirty,
            )
        )
    return plans
