"""What the commands write: files, and data in the format `-o/--output` chose."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a snapshot."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


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
