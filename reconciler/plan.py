"""`p4kube plan`: what applying the intent would change, like a terraform plan.

Pure: takes rendered results and diffs, returns text. Three forms: text for a terminal,
markdown for a pull-request comment, JSON for scripts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from . import mdsafe
from .diff import ServiceChange, SnapshotDiff
from .render import RenderIssue
from .snapshot import Drain, ServiceSnapshot, Snapshot, backend_key, format_time

# Exit codes, as terraform plan -detailed-exitcode: scripts and CI tell the three apart.
EXIT_NO_CHANGES = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2

Format = Literal["text", "json", "markdown"]
MARKDOWN_MARKER = "<!-- p4kube-plan -->"  # lets a CI job find and update its own comment


@dataclass(frozen=True)
class ConfigPlan:
    config: str
    old: Snapshot | None
    new: Snapshot
    diff: SnapshotDiff
    issues: tuple[RenderIssue, ...]
    intent_commit: str | None = None
    intent_dirty: bool = False

    @property
    def changed(self) -> bool:
        """A new version: table writes, or a change the switches do not see (replica counts,
        a Service with no ready endpoints yet) that still makes a new snapshot to record."""
        return self.old is None or self.old.digest != self.new.digest or not self.diff.empty


@dataclass(frozen=True)
class ShareRow:
    backend: str  # node, or node/address in podIP mode
    replicas_before: int | None
    replicas_after: int | None
    buckets_before: int | None
    buckets_after: int | None
    bucket_count_after: int | None


def share_rows(change: ServiceChange) -> list[ShareRow]:
    """Each backend's replicas and bucket share before and after."""

    def index(s: ServiceSnapshot | None) -> dict[str, tuple[int, int]]:
        if s is None:
            return {}
        return {_label(s, b.node, backend_key(b, s.backend_mode)): (b.replicas, b.buckets) for b in s.backends}

    before, after = index(change.old), index(change.new)
    rows = []
    for label in sorted(before.keys() | after.keys()):
        b, a = before.get(label), after.get(label)
        rows.append(
            ShareRow(
                label,
                b[0] if b else None,
                a[0] if a else None,
                b[1] if b else None,
                a[1] if a else None,
                change.new.bucket_count if change.new else None,
            )
        )
    return rows


def _label(s: ServiceSnapshot, node: str, key: str) -> str:
    return node if s.backend_mode == "nodePort" else f"{node}/{key}"


@dataclass(frozen=True)
class DrainStart:
    """Buckets of one Service that start draining from one backend to another (DESIGN.md 5.1)."""

    buckets: int
    source: str  # backend label, as in share_rows
    target: str
    until: float


@dataclass(frozen=True)
class DrainReport:
    started: tuple[DrainStart, ...]
    finished: int  # buckets whose drain ended (their plain entry is written)

    @property
    def started_buckets(self) -> int:
        return sum(d.buckets for d in self.started)


def drain_report(change: ServiceChange) -> DrainReport:
    """The drains a change starts and ends. A bucket moved again mid-drain counts as a start,
    not as a finished drain (its connections are still kept, on the intermediate backend)."""
    old_drains: tuple[Drain, ...] = change.old.drains if change.old is not None else ()
    new = change.new
    if new is None:
        return DrainReport((), 0)
    labels = {backend_key(b, new.backend_mode): _label(new, b.node, backend_key(b, new.backend_mode)) for b in new.backends}
    before = set(old_drains)
    groups: dict[tuple[str, str, float], int] = {}
    for d in new.drains:
        if d not in before:
            target = new.assignment[d.bucket] or ""
            k = (labels.get(d.source, d.source), labels.get(target, target), d.until)
            groups[k] = groups.get(k, 0) + 1
    draining = {d.bucket for d in new.drains}
    finished = sum(1 for d in old_drains if d.bucket not in draining)
    started = tuple(DrainStart(n, src, dst, until) for (src, dst, until), n in sorted(groups.items()))
    return DrainReport(started, finished)


def drain_lines(change: ServiceChange) -> list[str]:
    """What a change does to established connections, one line per group of buckets."""
    r = drain_report(change)
    lines = [
        f"{d.buckets} bucket{'s' if d.buckets != 1 else ''} drain from {d.source} to {d.target} until "
        f"{format_time(d.until)} (established connections kept)"
        for d in r.started
    ]
    if r.finished:
        lines.append(f"drain of {r.finished} bucket{'s' if r.finished != 1 else ''} finished")
    return lines


def summary_counts(plans: Sequence[ConfigPlan]) -> dict[str, int]:
    """Services added/changed/removed, table writes, and buckets whose drain starts/finishes."""
    out = {"added": 0, "changed": 0, "removed": 0, "writes": 0, "drainsStarted": 0, "drainsFinished": 0}
    for p in plans:
        for c in p.diff.services:
            out[c.change] += 1
            if c.change == "changed":  # an added or removed Service has no drain to start or finish
                r = drain_report(c)
                out["drainsStarted"] += r.started_buckets
                out["drainsFinished"] += r.finished
        out["writes"] += len(p.diff)
    return out


def exit_code(plans: Sequence[ConfigPlan]) -> int:
    return EXIT_CHANGES if any(p.changed for p in plans) else EXIT_NO_CHANGES


# --- text ---------------------------------------------------------------------------------------

_SIGN = {"added": "+", "removed": "-", "changed": "~"}


def _endpoint(s: ServiceSnapshot) -> str:
    return f"{s.vip}:{s.port}/{s.protocol}"


def _fmt(v: int | None) -> str:
    return "-" if v is None else str(v)


def _pct(buckets: int | None, total: int | None) -> str:
    if buckets is None or not total:
        return ""
    return f" ({100.0 * buckets / total:.1f}%)"


def _version_line(p: ConfigPlan) -> str:
    old = p.old.version if p.old else None
    if not p.changed:
        return f"version {p.new.version}, no changes"
    return f"version {old} -> {p.new.version}" if old is not None else f"new, version {p.new.version}"


def _source_line(p: ConfigPlan) -> str:
    commit = p.intent_commit[:12] if p.intent_commit else "none (not a Git checkout)"
    dirty = " + uncommitted changes" if p.intent_dirty else ""
    rv = p.new.cluster_resource_version or "none (recording)"
    return f"intent commit {commit}{dirty}; cluster resourceVersion {rv}"


def _change_head(c: ServiceChange) -> str:
    s = c.current
    if c.change == "changed" and c.old is not None and c.new is not None and _endpoint(c.old) != _endpoint(c.new):
        where = f"{_endpoint(c.old)} -> {_endpoint(c.new)}"
    else:
        where = _endpoint(s)
    return f"{_SIGN[c.change]} {_plain(c.name)}  {where}  id {s.service_id}  {s.algorithm}, {s.bucket_count} buckets"


def _plain(value: object) -> str:
    """Text for a terminal or log: control characters (line breaks, ANSI escapes) from cluster
    data shown escaped, so a name stays on its line and cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def format_text(plans: Sequence[ConfigPlan]) -> str:
    lines: list[str] = []
    for p in plans:
        lines.append(f"LoadBalancerConfig {_plain(p.config)}: {_version_line(p)}")
        lines.append(f"  {_plain(_source_line(p))}")
        for c in p.diff.services:
            lines.append("  " + _change_head(c))
            for r in share_rows(c):
                reps = f"{_fmt(r.replicas_before)} -> {_fmt(r.replicas_after)}" if c.change == "changed" else _fmt(
                    r.replicas_after if c.change == "added" else r.replicas_before
                )
                if c.change == "changed":
                    share = (
                        f"{_fmt(r.buckets_before)}{_pct(r.buckets_before, c.old.bucket_count if c.old else None)}"
                        f" -> {_fmt(r.buckets_after)}{_pct(r.buckets_after, r.bucket_count_after)}"
                    )
                elif c.change == "added":
                    share = f"{_fmt(r.buckets_after)}{_pct(r.buckets_after, r.bucket_count_after)}"
                else:
                    share = f"{_fmt(r.buckets_before)}"
                lines.append(f"      {_plain(r.backend):<24} replicas {reps:<10} buckets {share}")
            for line in drain_lines(c):
                lines.append(f"      {_plain(line)}")
        counts = p.diff.counts()
        if counts:
            lines.append("  table writes:")
            for table, per in counts.items():
                lines.append(
                    f"      {table:<28} +{per.get('INSERT', 0)} ~{per.get('MODIFY', 0)} -{per.get('DELETE', 0)}"
                )
        for i in p.issues:
            mark = "!" if i.severity == "error" else "?"
            lines.append(f"  {mark} {_plain(i)}")
        lines.append("")
    totals = summary_counts(plans)
    drains = _drain_totals(totals)
    lines.append(
        f"Plan: {totals['added']} to add, {totals['changed']} to change, {totals['removed']} to remove; {totals['writes']} table writes{drains}."
        if any(p.changed for p in plans)
        else "No changes. The switches already hold what the intent and cluster describe."
    )
    return "\n".join(lines) + "\n"


def _drain_totals(totals: dict[str, int]) -> str:
    parts = []
    if totals["drainsStarted"]:
        parts.append(f"{totals['drainsStarted']} buckets start draining")
    if totals["drainsFinished"]:
        parts.append(f"{totals['drainsFinished']} finish draining")
    return "; " + ", ".join(parts) if parts else ""


# --- markdown -----------------------------------------------------------------------------------


def markdown_headline(plans: Sequence[ConfigPlan]) -> list[str]:
    """The marker, the heading and the counts: the same at the top of the full plan and the PR comment."""
    c = summary_counts(plans)
    out = [MARKDOWN_MARKER, "### p4kube plan", ""]
    if any(p.changed for p in plans):
        out.append(
            f"**{c['added']} to add, {c['changed']} to change, {c['removed']} to remove** ({c['writes']} table writes)"
        )
    else:
        out.append("**No changes.**")
    return out


def format_markdown(plans: Sequence[ConfigPlan]) -> str:
    out = markdown_headline(plans)
    for p in plans:
        config = mdsafe.name(p.config, mdsafe.config_key_ok(p.config))
        out += ["", f"#### {config}: {_version_line(p)}", "", f"_{mdsafe.inline(_source_line(p), 200)}_", ""]
        if p.diff.services:
            out += ["| | Service | VIP | backend | replicas | buckets |", "|---|---|---|---|---|---|"]
            for ch in p.diff.services:
                s = ch.current
                first = True
                for r in share_rows(ch):
                    sign = _SIGN[ch.change] if first else ""
                    name = _md_service(ch.name) if first else ""
                    vip = _md_endpoint(s) if first else ""
                    reps = (
                        f"{_fmt(r.replicas_before)} → {_fmt(r.replicas_after)}" if ch.change == "changed"
                        else _fmt(r.replicas_after if ch.change == "added" else r.replicas_before)
                    )
                    bk = (
                        f"{_fmt(r.buckets_before)} → {_fmt(r.buckets_after)}" if ch.change == "changed"
                        else _fmt(r.buckets_after if ch.change == "added" else r.buckets_before)
                    )
                    backend = mdsafe.name(r.backend, mdsafe.backend_ok(r.backend))
                    out.append(f"| {sign} | {name} | {vip} | {backend} | {reps} | {bk} |")
                    first = False
                if first:  # no backends at all
                    out.append(f"| {_SIGN[ch.change]} | {_md_service(ch.name)} | {_md_endpoint(s)} | _no ready backends_ | | |")
                for line in drain_lines(ch):
                    out.append(f"| | | | {mdsafe.inline(line, 300)} | | |")
        counts = p.diff.counts()
        if counts:
            out += ["", "<details><summary>Table writes</summary>", "", "| table | insert | modify | delete |", "|---|---|---|---|"]
            for table, per in counts.items():
                out.append(f"| {mdsafe.name(table, mdsafe.p4_name_ok(table))} | {per.get('INSERT', 0)} | {per.get('MODIFY', 0)} | {per.get('DELETE', 0)} |")
            out += ["", "</details>"]
        if p.issues:
            # Free text (messages quote cluster and intent values): a code block, never Markdown.
            errors = sum(1 for i in p.issues if i.severity == "error")
            out += ["", f"**Issues** ({errors} error(s), {len(p.issues) - errors} warning(s))", ""]
            out.append(mdsafe.fenced("\n".join(_issue_line(i) for i in p.issues)))
    return "\n".join(out) + "\n"


def _issue_line(i: RenderIssue) -> str:
    mark = "❌" if i.severity == "error" else "⚠️"
    return f"{mark} {i.service or '(config)'}: {i.message}"


def _md_service(key: str) -> str:
    return mdsafe.name(key, mdsafe.service_key_ok(key))


def _md_endpoint(s: ServiceSnapshot) -> str:
    if mdsafe.ip_ok(str(s.vip)) and isinstance(s.port, int) and s.protocol in ("TCP", "UDP", "SCTP"):
        return _endpoint(s)
    return mdsafe.inline(_endpoint(s))


# --- json ---------------------------------------------------------------------------------------


def plan_to_json(plans: Sequence[ConfigPlan]) -> dict[str, Any]:
    configs = []
    for p in plans:
        configs.append(
            {
                "config": p.config,
                "changed": p.changed,
                "fromVersion": p.old.version if p.old else None,
                "toVersion": p.new.version,
                "digest": p.new.digest,
                "intentCommit": p.intent_commit,
                "intentDirty": p.intent_dirty,
                "services": [
                    {
                        "name": c.name,
                        "change": c.change,
                        "vip": c.current.vip,
                        "port": c.current.port,
                        "protocol": c.current.protocol,
                        "drains": _drains_json(c),
                        "backends": [
                            {
                                "backend": r.backend,
                                "replicasBefore": r.replicas_before,
                                "replicasAfter": r.replicas_after,
                                "bucketsBefore": r.buckets_before,
                                "bucketsAfter": r.buckets_after,
                            }
                            for r in share_rows(c)
                        ],
                    }
                    for c in p.diff.services
                ],
                "writes": p.diff.counts(),
                "issues": [{"service": i.service, "severity": i.severity, "message": i.message} for i in p.issues],
            }
        )
    return {"changed": any(p.changed for p in plans), "summary": summary_counts(plans), "configs": configs}


def _drains_json(c: ServiceChange) -> dict[str, Any]:
    r = drain_report(c)
    return {
        "started": [
            {"buckets": d.buckets, "from": d.source, "to": d.target, "until": format_time(d.until)} for d in r.started
        ],
        "finished": r.finished,
    }


def format_plan(plans: Sequence[ConfigPlan], fmt: Format) -> str:
    if fmt == "json":
        return indented_json(plan_to_json(plans))
    if fmt == "markdown":
        return format_markdown(plans)
    return format_text(plans)


def indented_json(doc: Any) -> str:
    """json.dumps(doc, indent=2, sort_keys=True) + "\n", through orjson when that gives the same
    text (json's indenting encoder is pure Python: ~0.4 s for a 5,000-Service plan). orjson writes
    the same layout; it differs on non-ASCII and DEL (json escapes them), floats (repr) and what it
    refuses (big integers, non-string keys), so the text is kept only when it is ASCII without
    DEL, reads back equal to `doc`, and holds no float; anything else is json's."""
    import orjson  # a dependency (cluster recordings); imported when a plan is printed as JSON

    try:
        fast: bytes | None = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    except (TypeError, ValueError):
        fast = None
    if fast is not None and fast.isascii() and b"\x7f" not in fast:
        floats: list[str] = []
        back = json.loads(fast, parse_float=floats.append, parse_constant=floats.append)
        if not floats and back == doc:
            return fast.decode() + "\n"
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
