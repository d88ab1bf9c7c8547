"""Typed access to pygit2 objects.

pygit2 types `repo[oid]` as a plain Object and a tree entry's name as optional: these say which kind
an object is where the caller's layout fixes it (a directory is a tree, a file a blob, a log entry a
commit), so the rest of the code is checked against the real types instead of silenced.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pygit2


def tree_at(repo: pygit2.Repository, oid: pygit2.Oid) -> pygit2.Tree:
    return cast(pygit2.Tree, repo[oid])


def commit_at(repo: pygit2.Repository, oid: pygit2.Oid | str) -> pygit2.Commit:
    return cast(pygit2.Commit, repo[oid])


def blob_data(repo: pygit2.Repository, oid: pygit2.Oid) -> bytes:
    """The bytes of a blob, read from the object database: measured, half the CPU of
    repo[oid].data (at 5,000 Services, ~30 of the ~60 ms the 257 blobs of a restart's read cost).
    Anything else (not a blob, a missing or damaged object) goes through repo[oid], so it fails
    exactly as it always did."""
    try:
        kind, data = repo.odb.read(oid)
        if kind == pygit2.enums.ObjectType.BLOB:
            return data
    except Exception:  # a missing or damaged object: repo[oid] below raises what it always did
        pass
    return cast(pygit2.Blob, repo[oid]).data


def named_entries(tree: pygit2.Tree) -> Iterator[tuple[str, pygit2.Object]]:
    """(name, entry) for each entry of the tree: an entry read from a tree always has a name."""
    for entry in tree:
        yield cast(str, entry.name), entry


def entries_at(repo: pygit2.Repository, oid: pygit2.Oid) -> Iterator[tuple[str, pygit2.Object]]:
    return named_entries(tree_at(repo, oid))


def as_tree(entry: pygit2.Object) -> pygit2.Tree:
    """An entry whose type_str is "tree", as the Tree it is."""
    return cast(pygit2.Tree, entry)


def as_blob(entry: pygit2.Object) -> pygit2.Blob:
    """An entry whose type_str is "blob", as the Blob it is."""
    return cast(pygit2.Blob, entry)
