"""Intent read from a Git commit's tree (pygit2 blobs), never from the working tree.

With signed intent (--verify-intent-signers / --verify-intent-gpg-home) what is rendered must be
what was signed: the files are taken from the verified commit's objects, so an uncommitted,
untracked or later edit of the checkout (even one made between the signature check and the
read) cannot be rendered. The files chosen are those load_intent would read in that directory
(*.yaml, *.yml, hidden entries skipped), and errors name them as the checkout shows them
(`intent/lbconfig.yaml:12:5`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pygit2

from reconciler.diagnostics import Diagnostic, InputError
from reconciler.gitobjects import as_blob, as_tree, named_entries
from reconciler.intent.files import OperatorDirs
from reconciler.intent.loader import YAML_SUFFIXES, load_intent_blobs
from reconciler.intent.model import IntentSet

log = logging.getLogger("reconciler.intent")
_LINK = 0o120000  # a symbolic link's filemode in a Git tree


def _files(tree: pygit2.Tree, prefix: str) -> Iterator[tuple[str, pygit2.Object, int]]:
    """(path under the tree, object, filemode) of each entry load_intent would read, sorted as
    its directory walk is (by path components)."""
    for name, entry in sorted(named_entries(tree), key=lambda e: e[0]):
        if name.startswith("."):
            continue  # .git, .github, hidden files: the loader skips them too
        path = f"{prefix}{name}"
        if entry.type_str == "tree":
            yield from _files(as_tree(entry), path + "/")
        elif name.endswith(YAML_SUFFIXES):
            yield path, entry, entry.filemode


def load_committed_intent(given: str | Path, commit: str, dirs: OperatorDirs | None = None) -> IntentSet:
    """The intent under `given` (a directory or file of a Git checkout) as `commit` holds it.

    Raises InputError (positions named as the checkout shows the files) for invalid intent, a
    path the commit does not hold, or a symbolic link (its target is not what was signed)."""
    text = os.fspath(given)
    real = os.path.realpath(text)
    found = pygit2.discover_repository(real if os.path.isdir(real) else os.path.dirname(real))
    if found is None:
        raise InputError([Diagnostic(text, 1, 1, "not inside a Git checkout: signed intent is read from its commit")])
    repo = pygit2.Repository(found)
    root = os.path.realpath(repo.workdir) if repo.workdir else None
    try:
        resolved = repo.revparse_single(commit).peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError) as e:
        raise InputError([Diagnostic(text, 1, 1, f"commit {commit[:12]} is not in the repository: {e}")]) from None
    tree = resolved.tree
    rel = os.path.relpath(real, root).replace(os.sep, "/") if root else "."
    if rel.startswith(".."):
        raise InputError([Diagnostic(text, 1, 1, "outside the checkout's working directory")])
    if rel != ".":
        try:
            obj = tree[rel]
        except KeyError:
            raise InputError([Diagnostic(text, 1, 1, f"commit {commit[:12]} does not hold {rel}")]) from None
    else:
        obj = tree
    if isinstance(obj, pygit2.Tree):
        entries = [(os.path.normpath(os.path.join(text, path)), o, mode) for path, o, mode in _files(obj, "")]
    else:
        entries = [(text, obj, obj.filemode)]
    blobs: list[tuple[str, bytes]] = []
    links = []
    for shown, o, mode in entries:
        if mode == _LINK:
            links.append(Diagnostic(shown, 1, 1, "a symbolic link in the signed commit: not followed (commit the file itself)"))
        else:
            blobs.append((shown, as_blob(o).data))
    if links:
        raise InputError(links)
    configs = load_intent_blobs(blobs, text, dirs=dirs)
    return IntentSet(tuple(configs), commit=str(resolved.id), dirty=False, root=text)


class CommittedIntent:
    """An intent provider (current(), changes()) that hands out, for each accepted intent, the
    same intent read from its commit's blobs: `p4kube run --verify-intent-signers` renders
    what was signed even when the checkout changes between the check and the read."""

    def __init__(self, inner: Any, root: str | Path, dirs: OperatorDirs | None = None) -> None:
        self.inner, self.root, self.dirs = inner, root, dirs
        self._last: tuple[str, IntentSet] | None = None  # the newest commit read, and its intent

    def _committed(self, intent: IntentSet) -> IntentSet:
        if intent.commit is None or not intent.configs:
            return intent  # nothing accepted yet: nothing to read
        if self._last is None or self._last[0] != intent.commit:
            self._last = (intent.commit, load_committed_intent(self.root, intent.commit, self.dirs))
        return self._last[1]

    def current(self) -> IntentSet:
        return self._committed(self.inner.current())

    def changes(self) -> AsyncIterator[IntentSet]:
        return self._map()

    async def _map(self) -> AsyncIterator[IntentSet]:
        async for intent in self.inner.changes():
            try:
                yield self._committed(intent)
            except InputError as e:  # the commit changed under us (cannot happen for a fixed SHA): keep the last
                log.error("intent commit %s could not be read from its blobs; keeping the last accepted intent:\n%s",
                          (intent.commit or "none")[:12], e)

    def __getattr__(self, name: str) -> Any:  # start, stop, reload, path: the followed checkout's
        return getattr(self.inner, name)
