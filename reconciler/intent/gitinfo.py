"""Which Git commit the intent was read from, and whether the files read differ from it.

The snapshot records the intent commit (DESIGN.md 4); a dirty checkout means the intent
loaded is not what that commit holds, which reports and CI must say.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pygit2


@dataclass(frozen=True)
class GitState:
    commit: str | None = None  # HEAD's SHA; None outside a repository or before the first commit
    dirty: bool = False  # an intent file is modified, staged, deleted or untracked relative to HEAD
    workdir: str | None = None  # the repository's working directory, when there is one


def _real(path: str | Path) -> str:
    return os.path.realpath(os.fspath(path))


def git_state(paths: Sequence[str | Path], is_intent_file: Callable[[str, str], bool]) -> GitState:
    """The Git state of the repository holding the first of `paths`.

    `is_intent_file(given_path, file)` (both real paths) tells whether `file`, a path in the
    working tree, is one the loader reads from `given_path` (a file or directory); only those
    make the state dirty, so unrelated work in the same repository does not."""
    if not paths:
        return GitState()
    first = _real(paths[0])
    start = first if os.path.isdir(first) else os.path.dirname(first)
    found = pygit2.discover_repository(start)
    if found is None:
        return GitState()
    repo = pygit2.Repository(found)
    commit = None if repo.head_is_unborn else str(repo.head.target)
    workdir = repo.workdir
    if workdir is None:  # a bare repository has nothing checked out to differ
        return GitState(commit, False, None)
    root = _real(workdir)
    given = [_real(p) for p in paths]
    given = [g for g in given if g == root or g.startswith(root + os.sep)]
    dirty = False
    for rel, flags in repo.status(untracked_files="all", ignored=False).items():
        if flags == pygit2.enums.FileStatus.CURRENT:
            continue
        path = os.path.join(root, *rel.split("/"))
        if any(is_intent_file(g, path) for g in given):
            dirty = True
            break
    return GitState(commit, dirty, root)
