"""GitHub Actions workflow commands (`::error file=...,line=...::message`), escaped.

The runner reads every stdout line that starts with `::` as a command, so a message or file name
holding a newline (a crafted YAML key, a file name in the pull request) could start a command of
its own. Escaped as the runner's toolkit does (actions/toolkit, core/src/command.ts): in the
message `%`, CR and LF; in property values also `:` and `,`. Output that is not ours to
escape (the plan, diagnostics) is printed with commands stopped (stop_commands).
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable
from typing import TextIO


def escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(s: str) -> str:
    return escape_data(s).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str, **properties: object) -> str:
    """One workflow command line, e.g. command("error", "bad", file="a.yaml", line=3)."""
    props = ",".join(f"{k}={escape_property(str(v))}" for k, v in properties.items() if v is not None)
    return f"::{name}{' ' + props if props else ''}::{escape_data(message)}"


def stop_commands(active: bool, out: TextIO | None = None) -> Callable[[], None]:
    """Stop the runner from reading workflow commands until the returned function is called.

    Everything printed meanwhile (diagnostics, the plan, warnings quoting cluster data) is
    untrusted text; the token is random, so that text cannot resume commands itself. With
    `active` False (not in GitHub Actions) nothing is printed."""
    stream = out if out is not None else sys.stdout
    if not active:
        return lambda: None
    token = secrets.token_hex(16)
    print(f"::stop-commands::{token}", file=stream, flush=True)
    done = False

    def resume() -> None:
        nonlocal done
        if not done:
            sys.stderr.flush()
            print(f"::{token}::", file=stream, flush=True)
            done = True

    return resume
