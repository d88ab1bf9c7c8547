"""Files generated from the repository (the CRD, install.yaml): print, write, or check them."""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_OK = 0
EXIT_ERROR = 1


def write_or_check(command: str, text: str, *, out: str | None, check: str | None, what: str) -> int:
    """`--check FILE`: exit 1 unless FILE holds `text`; `--out FILE`: write it atomically;
    else print it. `what` names the generated content in messages ("the CRD generated from ...")."""
    if check:
        path = Path(check)
        try:
            current = path.read_text(encoding="utf-8")
        except OSError as e:
            print(f"{command}: error: cannot read {path}: {e.strerror or e}", file=sys.stderr)
            return EXIT_ERROR
        if current != text:
            print(f"{command}: {path} is not {what}; regenerate it with `{command} --out {path}`", file=sys.stderr)
            return EXIT_ERROR
        print(f"{command}: {path} is current", file=sys.stderr)
        return EXIT_OK
    if out:
        path = Path(out)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)  # never leave half a file behind
        except OSError as e:
            print(f"{command}: error: cannot write {path}: {e.strerror or e}", file=sys.stderr)
            return EXIT_ERROR
        print(f"wrote {path}", file=sys.stderr)
        return EXIT_OK
    sys.stdout.write(text)
    return EXIT_OK


__all__ = ["EXIT_ERROR", "EXIT_OK", "write_or_check"]
