"""Packing the audit repository's loose objects, as `git gc` would.

Every record writes a handful of loose objects (one file each, zlib-compressed): at one
transaction a minute that is millions of files a year, and each costs a filesystem block
(4 KiB) whatever its size. Packing them every N commits keeps the file count and the disk use
down: in a pack the consecutive versions of a namespace tree or a manifest are stored as deltas.
libgit2 looks in new packs when an object is not where it expected, so readers of the
repository (in this process or another) keep working while loose objects are removed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pygit2

log = logging.getLogger("p4kube.audit")


def loose_objects(repo: pygit2.Repository) -> list[tuple[pygit2.Oid, Path]]:
    objects = Path(repo.path) / "objects"
    out = []
    for fan in objects.iterdir():
        if len(fan.name) != 2 or not fan.is_dir():
            continue
        for f in fan.iterdir():
            if len(f.name) == 38 and not f.name.endswith(".tmp"):
                try:
                    out.append((pygit2.Oid(hex=fan.name + f.name), f))
                except ValueError:
                    continue  # not an object file (a leftover temporary): not ours to judge
    return out


def pack_loose_objects(repo: pygit2.Repository) -> int:
    """Write every loose object into one new pack, then delete the loose copies. Returns the
    number of objects packed."""
    loose = loose_objects(repo)
    if not loose:
        return 0
    pb = pygit2.PackBuilder(repo)
    for oid, _ in loose:
        pb.add(oid)
    pb.write()  # writes objects/pack/pack-*.pack and .idx (renamed into place when complete)
    written = pb.written_objects_count
    if written != len(loose):
        raise RuntimeError(f"packing {repo.path}: wrote {written} of {len(loose)} loose objects; loose copies kept")
    for _, path in loose:
        os.unlink(path)
    for fan in {p.parent for _, p in loose}:
        try:
            fan.rmdir()
        except OSError:
            pass  # not empty: another object arrived meanwhile
    log.info("packed %d loose objects in %s", written, repo.path)
    return written
