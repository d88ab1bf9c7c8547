"""Only a build step pyproject.toml cannot say: record the Git commit in the wheel.

When the package is built from a Git checkout (`pip install git+https://...`, `pip wheel .` in a
clone), or with P4KUBE_BUILD_COMMIT set (a build context without .git), reconciler/_build.py is written into the build with COMMIT = the checkout's HEAD, so
`p4kube --version` and p4kube_build_info name it after the checkout is gone (reconciler.buildinfo).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


def _commit(root: Path) -> str:
    given = os.environ.get("P4KUBE_BUILD_COMMIT", "").strip()  # a build without .git (the image): said by the builder
    if given:
        return given
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""  # not a checkout, or no git: --version says so
    return f"{head}-dirty" if head and dirty else head


class BuildPyWithCommit(build_py):
    def run(self) -> None:
        super().run()
        commit = _commit(Path(__file__).resolve().parent)
        if commit and not self.dry_run:
            target = Path(self.build_lib) / "reconciler" / "_build.py"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f'"""Written by setup.py at build time."""\n\nCOMMIT = {commit!r}\n')


setup(cmdclass={"build_py": BuildPyWithCommit})
