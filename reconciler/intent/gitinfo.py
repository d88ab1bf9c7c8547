"""Which Git commit the intent was read from, and whether what was read differs from it.

The snapshot records the intent commit (DESIGN.md 4); a dirty checkout means the intent
loaded is not what that commit holds, which reports and CI must say. "Differs" is decided
by content, file by file, against HEAD's tree: a loaded file that HEAD lacks or holds with
other bytes, or an intent file HEAD holds that was not loaded (deleted). So it is exact
whatever the index or .gitignore say (an ignored intent file that the loader read still
makes the intent dirty), and unrelated work elsewhere in the repository does not count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pygit2

from ..gitobjects import as_tree, named_entries


@dataclass(frozen=True)
class GitState:
    commit: str | None = None  # HEAD's SHA; None outside a repository or before the first commit
    dirty: bool = False  # the intent read differs from HEAD's
    workdir: str | None = None  # the repository's working directory, when there is one


def _real(path: str | Path) -> str:
    return os.path.realpath(os.fspath(path))


def _blobs(tree: pygit2.Tree, prefix: str) -> Iterator[tuple[str, pygit2.Oid]]:
    """(path relative to the repository, blob id) of every file under `tree`."""
    for name, entry in named_entries(tree):
        path = f"{prefix}{name}"
        if entry.type_str == "tree":
            yield from _blobs(as_tree(entry), path + "/")
        elif entry.type_str == "blob":
            yield path, entry.id


def git_state(
    paths: Sequence[str | Path],
    files: Sequence[str | Path],
    is_intent_file: Callable[[str, str], bool],
) -> GitState:
    """The Git state of the repository holding the first of `paths`.

    `files` are the files the loader read; `is_intent_file(given, file)` (real paths) tells
    whether the loader reads `file` when given `given`, to find intent files deleted since
    HEAD. Paths outside that repository are not considered."""
    if not paths:
        return GitState()
    first = _real(paths[0])
    found = pygit2.discover_repository(first if os.path.isdir(first) else os.path.dirname(first))
    if found is None:
        return GitState()
    repo = pygit2.Repository(found)
    if repo.workdir is None:  # bare: nothing is checked out, so nothing can differ
        return GitState(None if repo.head_is_unborn else str(repo.head.target), False, None)
    root = _real(repo.workdir)

    def relative(path: str) -> str | None:
        return os.path.relpath(path, root).replace(os.sep, "/") if path.startswith(root + os.sep) else None

    read = {rel: path for path in map(_real, files) if (rel := relative(path)) is not None}
    if repo.head_is_unborn:
        return GitState(None, bool(read), root)
    commit = repo.head.peel(pygit2.Commit)
    tree = commit.tree
    for rel, path in read.items():
        try:
            entry = tree[rel]
        except KeyError:
            return GitState(str(commit.id), True, root)  # not in HEAD at all
        if entry.id != pygit2.hashfile(path):
            return GitState(str(commit.id), True, root)
    for given in map(_real, paths):
        if not os.path.isdir(given) or (given != root and relative(given) is None):
            continue  # a given file cannot have been deleted: loading it would have failed
        sub = relative(given)
        start = tree if sub is None else _subtree(tree, sub)
        if start is None:
            continue  # a directory HEAD does not have: nothing in it can be deleted
        for rel, _ in _blobs(start, "" if sub is None else sub + "/"):
            if rel not in read and is_intent_file(given, os.path.join(root, *rel.split("/"))):
                return GitState(str(commit.id), True, root)  # in HEAD, but not read: deleted
    return GitState(str(commit.id), False, root)


def _subtree(tree: pygit2.Tree, rel: str) -> pygit2.Tree | None:
    try:
        obj = tree[rel]
    except KeyError:
        return None
    return obj if isinstance(obj, pygit2.Tree) else None
