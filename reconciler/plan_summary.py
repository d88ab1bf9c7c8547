"""The plan as a pull-request comment that always fits, and markdown cut to a byte budget.

GitHub refuses a comment body over 65,536 characters; the full plan of 500 Services is already
longer. So the comment is a summary of bounded size whatever the cluster (counts, errors first,
the Services whose traffic moves most), and the full plan goes to the workflow's artifact and
job summary (`cut_markdown` keeps that under its own 1 MiB limit). Every name and message is
escaped as in the full plan (mdsafe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from . import mdsafe
from .diagnostics import Diagnostic, clip
from .diff import ServiceChange
from .plan import MARKDOWN_MARKER, ConfigPlan, markdown_headline, _issue_line, _md_endpoint, _md_service, _version_line, share_rows, summary_counts

COMMENT_LIMIT = 65_536  # GitHub's limit on an issue or pull-request comment body, in characters
SUMMARY_BUDGET = 60_000  # what the summary stays under, leaving room for the workflow's own lines
STEP_SUMMARY_LIMIT = 1 << 20  # GitHub's limit on one step's $GITHUB_STEP_SUMMARY, in bytes
TOP_MOVES = 25  # Services listed by share moved
MAX_CONFIG_ROWS = 50
MAX_LINE = 400  # one issue or diagnostic line, in characters, before it is cut
# Character budgets of the sections of variable length; with the fixed parts they sum to well
# under SUMMARY_BUDGET even when every name is the longest the API server allows.
ISSUES_BUDGET = 20_000
NAMES_BUDGET = 6_000  # each of "added" and "removed"

FULL_PLAN_NOTE = (
    "_This is a summary. The full plan (every Service and backend, every table write) is in this "
    "workflow run's job summary and its `p4kube-plan-full` artifact (`plan-full.md`, `plan.json`, `plan.txt`)._"
)


@dataclass(frozen=True)
class ShareMove:
    """A changed Service and how much of its traffic changes backend."""

    config: str
    change: ServiceChange
    moved: float  # fraction of the Service's buckets that change backend, 0..1


def share_moved(change: ServiceChange) -> float:
    """The fraction of a changed Service's traffic that moves to another backend: the sum of the
    share gains (each backend's buckets over the bucket count, before and after)."""
    if change.change != "changed" or change.old is None or change.new is None:
        return 0.0
    total_before, total_after = change.old.bucket_count, change.new.bucket_count
    gained = 0.0
    for r in share_rows(change):
        before = (r.buckets_before or 0) / total_before if total_before else 0.0
        after = (r.buckets_after or 0) / total_after if total_after else 0.0
        gained += max(0.0, after - before)
    return min(gained, 1.0)


def largest_moves(plans: Sequence[ConfigPlan], top: int = TOP_MOVES) -> list[ShareMove]:
    """The changed Services whose traffic moves most, largest first (ties by name)."""
    moves = [
        ShareMove(p.config, c, share_moved(c))
        for p in plans
        for c in p.diff.services
        if c.change == "changed"
    ]
    moves = [m for m in moves if m.moved > 0]
    moves.sort(key=lambda m: (-m.moved, m.config, m.change.name))
    return moves[:top]


def _capped(lines: Sequence[str], budget: int, more: str) -> list[str]:
    """As many of `lines` as fit in `budget` characters, then "… and N more <more>"."""
    out: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        if used + len(line) + 1 > budget:
            out.append(f"… and {len(lines) - i} more {more}")
            break
        out.append(line)
        used += len(line) + 1
    return out


def _cut(line: str) -> str:
    return clip(line, MAX_LINE, "…")


def format_summary(plans: Sequence[ConfigPlan]) -> str:
    """The pull-request comment: under SUMMARY_BUDGET characters for any number of Services."""
    c = summary_counts(plans)
    out = markdown_headline(plans)
    out += ["", FULL_PLAN_NOTE]
    if c["drainsStarted"] or c["drainsFinished"]:
        out += [
            "",
            f"**Connection draining:** {c['drainsStarted']} bucket(s) start draining (established connections "
            f"kept on their old backend until the drain ends), {c['drainsFinished']} finish.",
        ]

    issues = [i for p in plans for i in p.issues]
    if issues:
        # Errors first: they are what a reviewer must act on. Free text: a code block.
        issues.sort(key=lambda i: i.severity != "error")
        errors = sum(1 for i in issues if i.severity == "error")
        lines = _capped([_cut(_issue_line(i)) for i in issues], ISSUES_BUDGET, "(see the full plan)")
        out += ["", f"#### Issues: {errors} error(s), {len(issues) - errors} warning(s)", "", mdsafe.fenced("\n".join(lines))]

    out += ["", "#### Configs", "", "| config | version | added | changed | removed | table writes |", "|---|---|---|---|---|---|"]
    for p in plans[:MAX_CONFIG_ROWS]:
        per = summary_counts([p])
        config = mdsafe.name(p.config, mdsafe.config_key_ok(p.config))
        out.append(
            f"| {config} | {mdsafe.inline(_version_line(p), 120)} | {per['added']} | {per['changed']} | {per['removed']} | {per['writes']} |"
        )
    if len(plans) > MAX_CONFIG_ROWS:
        out.append(f"| … and {len(plans) - MAX_CONFIG_ROWS} more configs | | | | | |")

    moves = largest_moves(plans)
    if moves:
        out += ["", f"#### Largest share moves (top {len(moves)} of {c['changed']} changed)", ""]
        out += ["| Service | VIP | traffic moved | buckets before → after |", "|---|---|---|---|"]
        for m in moves:
            shifts = [r for r in share_rows(m.change) if r.buckets_before != r.buckets_after]
            shifts.sort(key=lambda r: -abs((r.buckets_after or 0) - (r.buckets_before or 0)))
            shown = ", ".join(
                f"{mdsafe.name(r.backend, mdsafe.backend_ok(r.backend))} {r.buckets_before or 0} → {r.buckets_after or 0}"
                for r in shifts[:4]
            )
            if len(shifts) > 4:
                shown += f", … {len(shifts) - 4} more"
            out.append(f"| {_md_service(m.change.name)} | {_md_endpoint(m.change.current)} | {100 * m.moved:.1f}% | {shown} |")

    for kind in ("added", "removed"):
        names = [_md_service(ch.name) for p in plans for ch in p.diff.services if ch.change == kind]
        if names:
            listed = _capped(names, NAMES_BUDGET, f"{kind} Services")
            out += ["", f"#### {kind.capitalize()} ({len(names)})", "", ", ".join(listed)]
    # The sections are bounded for any realistic names; this is the backstop for the longest
    # names the API server allows (errors come first, so they are what is kept).
    return cut_markdown("\n".join(out) + "\n", SUMMARY_BUDGET, "summary cut to fit a comment: see the full plan")


def format_invalid(diags: Sequence[Diagnostic], where: str) -> str:
    """The pull-request comment when the intent is invalid: it replaces the last plan, so that
    a stale plan is never what reviewers see. Messages quote the intent: a code block."""
    errors = [d for d in diags if d.severity == "error"]
    warnings = [d for d in diags if d.severity != "error"]
    lines = _capped([_cut(str(d)) for d in errors + warnings], ISSUES_BUDGET * 2, "(see the workflow run)")
    return "\n".join(
        [
            MARKDOWN_MARKER,
            "### p4kube plan: invalid intent",
            "",
            f"**{len(errors)} error(s)** in {mdsafe.inline(where, 200)}; no plan until they are fixed.",
            "",
            mdsafe.fenced("\n".join(lines)),
        ]
    ) + "\n"


def cut_markdown(text: str, limit: int, note: str) -> str:
    """`text` when it fits in `limit` bytes (UTF-8), else its first whole lines that do, with any
    code fence or <details> they leave open closed, then `note` (inert text)."""
    if len(text.encode()) <= limit:
        return text
    tail_room = 200 + len(note.encode())
    out: list[str] = []
    used = 0
    fence: str | None = None
    details = 0
    for line in text.splitlines():
        size = len(line.encode()) + 1
        if used + size + tail_room > limit:
            break
        out.append(line)
        used += size
        stripped = line.strip()
        if fence is None and stripped.startswith("```"):
            fence = stripped[: len(stripped) - len(stripped.lstrip("`"))]
        elif fence is not None and stripped == fence:
            fence = None
        elif fence is None and stripped.startswith("<details>"):
            details += 1
        elif fence is None and stripped == "</details>" and details:
            details -= 1
    if fence is not None:
        out.append(fence)
    out += ["", "</details>"] * details
    out += ["", f"_{mdsafe.inline(note, 500)}_"]
    return "\n".join(out) + "\n"
