"""What the commands write: files, and data in the format `-o/--output` chose."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a snapshot.

    Only a regular file (or none) is replaced: `--out /dev/null` or a FIFO is written to as it
    is (renaming over it would put a regular file in its place), and a symlink's target is
    replaced, not the link."""
    target = Path(os.path.realpath(path))
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        with open(target, "w") as f:
            f.write(text)
        return
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    tmp.replace(target)


def render_data(data: Any, fmt: str, text: Callable[[], str] | None = None) -> str:
    """`data` (plain dicts, lists, strings, numbers) as `fmt`: json (indented), yaml, or text via
    `text()` (the command's own human form; without one, json). Always ends with a newline."""
    if fmt == "yaml":
        return to_yaml(data)
    if fmt == "text" and text is not None:
        out = text()
    else:
        out = json.dumps(data, indent=2, ensure_ascii=False)
    return out if out.endswith("\n") or not out else out + "\n"


def emit(data: Any, fmt: str, text: Callable[[], str] | None = None, *, file: TextIO | None = None) -> None:
    """Print `data` in `fmt` (see render_data) to stdout, or `file`."""
    (file or sys.stdout).write(render_data(data, fmt, text))


def to_yaml(data: Any) -> str:
    # ruamel is imported here, not at the top: `p4kube --help` must not pay for it.
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    # keep the command's own key order; ruamel declares the attribute as None, though it reads a bool
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()
