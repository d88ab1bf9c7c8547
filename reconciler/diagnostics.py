"""Diagnostics: one problem in an input, located by file, line and column, naming the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Diagnostic:
    """A problem in user input. Lines and columns are 1-based, as editors show them."""

    file: str
    line: int
    column: int
    message: str
    field: str = ""  # dotted path such as "spec.switchConfig.switches[1].address"
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        what = f"{self.field}: {self.message}" if self.field else self.message
        prefix = "" if self.severity == "error" else "warning: "
        return f"{where}: {prefix}{what}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "message": self.message,
            "severity": self.severity,
        }


class InputError(Exception):
    """Raised when input cannot be used; carries every diagnostic found, not just the first."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


SHOWN = 80  # an echoed input value is cut to about this many characters


def clip(text: str, limit: int = SHOWN, mark: str = "...", *, fit: bool = False) -> str:
    """`text` as echoed in a message: at most `limit` characters, then `mark` when it was cut
    (`fit`: the mark counts within `limit`)."""
    return text if len(text) <= limit else text[: limit - len(mark) if fit else limit] + mark
