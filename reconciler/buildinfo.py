"""Which commit this reconciler was built from, for `p4kube --version` and p4kube_build_info.

Two sources, first found wins:
  1. reconciler/_build.py, written into the wheel by setup.py's build_py when the package is
     built from a Git checkout (`pip install git+https://...`, the image's `pip install .`);
  2. the Git checkout the package is imported from (an editable install, `python -m reconciler.cli`
     in a clone): `git rev-parse HEAD`, marked "-dirty" when tracked files differ.
None when neither applies (an sdist built outside Git). Read once per process, only when asked:
importing this module runs nothing.
"""

from __future__ import annotations

import functools
import importlib
import subprocess
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@functools.cache
def build_commit() -> str | None:
    """The short commit ("4095f28c1a2b", "4095f28c1a2b-dirty"), or None when unknown."""
    try:
        _build = importlib.import_module(f"{__package__}._build")  # only in built wheels (setup.py)
        recorded = str(getattr(_build, "COMMIT", "") or "")
        if recorded:
            return recorded
    except ImportError:
        pass
    return checkout_commit(_PACKAGE.parent)


def checkout_commit(root: Path) -> str | None:
    """HEAD of the Git work tree at `root` (with "-dirty" when tracked files changed), or None
    when `root` is not the top of a Git work tree or git is missing."""
    if not (root / ".git").exists():
        return None
    try:
        head = _git(root, "rev-parse", "--short=12", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head or None


def _git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5, check=True)
    return out.stdout.strip()
