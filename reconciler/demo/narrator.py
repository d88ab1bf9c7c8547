"""What the demo prints and how: wrapped paragraphs, labelled lines, and the short forms of
writes, plans and reasons the steps narrate."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import TextIO

from ..diff import diff_snapshots
from ..plan import ConfigPlan, format_text
from ..render import RenderIssue
from ..snapshot import Snapshot

WritesPerTable = Mapping[str, Mapping[str, int]]  # table -> INSERT/MODIFY/DELETE -> count


class Narrator:
    WIDTH = 100

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def say(self, text: str = "", indent: int = 2) -> None:
        pad = " " * indent
        print("\n".join(pad + line if line else "" for line in text.split("\n")), file=self.out, flush=True)

    def explain(self, text: str, indent: int = 2) -> None:
        """A short paragraph: what happens and why, wrapped."""
        pad = " " * indent
        print(textwrap.fill(" ".join(text.split()), self.WIDTH, initial_indent=pad, subsequent_indent=pad),
              file=self.out, flush=True)

    def item(self, label: str, text: str, indent: int = 2, width: int = 10) -> None:
        """A labelled line, wrapped under its text: `  label      text ...`."""
        head = " " * indent + label.ljust(width) + " "
        print(textwrap.fill(" ".join(text.split()), self.WIDTH, initial_indent=head, subsequent_indent=" " * len(head),
                            break_long_words=False, break_on_hyphens=False), file=self.out, flush=True)

    def step(self, n: int | None, title: str, why: str = "") -> None:
        print(f"\n== {n}. {title}" if n is not None else f"\n== {title}", file=self.out)
        if why:
            self.explain(why)


def writes_text(per_table: WritesPerTable) -> str:
    """`backend_table +256, ipv4_lpm +2`: the writes of one switch, by table."""
    parts = []
    for table, kinds in sorted(per_table.items()):
        counts = " ".join(
            f"{sign}{kinds[kind]}" for kind, sign in (("INSERT", "+"), ("MODIFY", "~"), ("DELETE", "-")) if kinds.get(kind)
        )
        parts.append(f"{table.split('.')[-1]} {counts}")
    return ", ".join(parts) or "nothing"


def total(per_table: WritesPerTable) -> int:
    return sum(sum(k.values()) for k in per_table.values())


def short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plan_lines(config: str, previous: Snapshot | None, snap: Snapshot, issues: tuple[RenderIssue, ...], *,
               full: bool = False) -> str:
    """The plan of a transaction, as `p4kube plan` prints it; without `full`, only the
    Services' share changes and the writes (the transaction line says the rest)."""
    plan = ConfigPlan(config, previous, snap, diff_snapshots(previous, snap), issues, snap.intent_commit)
    lines = format_text([plan]).rstrip("\n").split("\n")
    if not full:
        lines = [line[2:] for line in lines[2:] if line.strip() and not line.startswith("Plan:")]
    return "\n".join(lines)


__all__ = ["Narrator", "plan_lines", "short", "total", "writes_text"]
