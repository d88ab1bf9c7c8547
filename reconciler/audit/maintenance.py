"""Packing the audit repository's loose objects, as `git gc` would.

Every record writes a handful of loose objects (one file each, zlib-compressed): at one
transaction a minute that is millions of files a year, and each costs a filesystem block
(4 KiB) whatever its size. Packing them every N commits keeps the file count and the disk use
down: in a pack the consecutive versions of a namespace tree or a manifest are stored as deltas.
libgit2 looks in new packs when an object is not where it expected, so readers of the
repository (in this process or another) keep working while loose objects are removed.

Packs accumulate too (one per N commits), and every object lookup that misses the cache
searches them all, so past `max_packs` the small ones are rolled up into one: everything but
the largest pack, which holds the bulk of the history and is never rewritten here.
"""

from __future__ import annotations

import logging
import os
import struct
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


def pack_ids(idx: Path) -> list[pygit2.Oid]:
    """The object ids a pack index (version 2) lists."""
    data = idx.read_bytes()
    if data[:8] != b"\xfftOc\x00\x00\x00\x02":
        raise ValueError(f"{idx}: not a version 2 pack index")
    count = struct.unpack(">I", data[8 + 255 * 4 : 8 + 256 * 4])[0]
    start = 8 + 256 * 4
    return [pygit2.Oid(raw=data[start + 20 * i : start + 20 * (i + 1)]) for i in range(count)]


def roll_up_packs(repo: pygit2.Repository, max_packs: int = 32) -> int:
    """When there are more than max_packs packs, repack all but the largest into one and
    delete them. Returns how many packs were rolled up (0: nothing to do)."""
    pack_dir = Path(repo.path) / "objects" / "pack"
    packs = sorted(pack_dir.glob("pack-*.pack"), key=lambda p: p.stat().st_size)
    if len(packs) <= max_packs:
        return 0
    small = packs[:-1]
    ids: dict[pygit2.Oid, None] = {}
    for pack in small:
        ids.update(dict.fromkeys(pack_ids(pack.with_suffix(".idx"))))
    pb = pygit2.PackBuilder(repo)
    for oid in ids:
        pb.add(oid)
    pb.write()
    if pb.written_objects_count != len(ids):
        raise RuntimeError(f"rolling up packs in {repo.path}: wrote {pb.written_objects_count} of {len(ids)} objects; old packs kept")
    for pack in small:
        for suffix in (".idx", ".rev", ".pack"):  # the index first: a pack without one is ignored
            pack.with_suffix(suffix).unlink(missing_ok=True)
    log.info("rolled %d packs (%d objects) into one in %s", len(small), len(ids), repo.path)
    return len(small)
