"""Git trees for the audit layout, built incrementally, and merged per config directory.

A commit rewrites only the trees on the paths to what changed: the blobs of changed Services,
their namespace directories, `services/`, the manifest, the config directory and its parents.
Everything else is reused by id, so a one-Service change costs the same at 50 or 50,000
Services (apart from the size of the one namespace tree that holds it).

Whether a Service changed is decided without rendering its file: `ConfigIndex` remembers, for
the config directory a commit holds, each Service's blob id and (where known) its fragment
digest; the renderer's unchanged Services keep their cached fragment digests, so comparing
5,000 of them is 5,000 string comparisons. A Service whose digest is not known (an index built
from a tree read cold) has its file rendered and hashed, without writing, and compared by blob id.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pygit2

from ..gitobjects import entries_at, tree_at
from ..snapshot import ServiceSnapshot, Snapshot
from .index import INDEX_DIR, entry_line, shard_bytes, shard_of
from .layout import CONFIGS_DIR, MANIFEST, SERVICES_DIR, manifest_bytes, service_file_bytes, service_path
from .message import ChangeSummary

BLOB = pygit2.enums.FileMode.BLOB
TREE = pygit2.enums.FileMode.TREE


@dataclass
class ConfigIndex:
    """What one config directory tree holds, for comparing the next snapshot against it."""

    tree_id: pygit2.Oid | None = None  # the config directory's tree (None: not in the tree yet)
    services_tree: pygit2.Oid | None = None
    ns_trees: dict[str, pygit2.Oid] = field(default_factory=dict)  # namespace -> tree id
    blobs: dict[str, pygit2.Oid] = field(default_factory=dict)  # service name -> blob id
    digests: dict[str, str] = field(default_factory=dict)  # service name -> fragment digest, where known
    manifest: pygit2.Oid | None = None
    # The Services the tree holds as objects, when known (written or read by this process):
    # the renderer hands unchanged Services over as the same objects, so most are skipped by
    # an identity check, without even a dictionary lookup.
    services: tuple[ServiceSnapshot, ...] | None = None
    digest: str | None = None  # the snapshot digest of the services (and routes) it holds
    index_tree: pygit2.Oid | None = None  # its index/ (index.py)
    # Whether index/ is known to describe the services exactly (written by this process, or read
    # and checked by the index reader): else the next commit rewrites every shard.
    index_ok: bool = False


def git_name(name: str) -> str:
    """`name` as the one shared string object of its value. pygit2 1.21 keeps a reference to
    every string given to a tree or reference lookup (Tree[name], TreeBuilder.get,
    references.get/[]), so a fresh string per call is never freed (measured: ~0.7 KB per audit
    commit in bench/bench_soak.py); an interned one costs nothing more after its first use."""
    return sys.intern(name)


def entry_id(repo: pygit2.Repository, tree_id: pygit2.Oid | None, path: str) -> pygit2.Oid | None:
    """The id of the object at `path` under a tree, or None."""
    if tree_id is None:
        return None
    try:
        return tree_at(repo, tree_id)[git_name(path)].id
    except KeyError:
        return None


def index_config_tree(
    repo: pygit2.Repository, tree_id: pygit2.Oid | None, known: Mapping[pygit2.Oid, str] = {}
) -> ConfigIndex:
    """Index a config directory tree: list it (no blob is read). `known`: blob id -> digest."""
    index = ConfigIndex(tree_id=tree_id)
    if tree_id is None:
        return index
    index.manifest = entry_id(repo, tree_id, MANIFEST)
    index.index_tree = entry_id(repo, tree_id, INDEX_DIR)
    index.services_tree = entry_id(repo, tree_id, SERVICES_DIR)
    if index.services_tree is None:
        return index
    for ns_name, ns_entry in entries_at(repo, index.services_tree):
        if ns_entry.filemode != TREE:
            continue
        index.ns_trees[ns_name] = ns_entry.id
        for f_name, f in entries_at(repo, ns_entry.id):
            if f.filemode == BLOB and f_name.endswith(".json"):
                name = f"{ns_name}/{f_name[:-5]}"
                index.blobs[name] = f.id
                digest = known.get(f.id)
                if digest is not None:
                    index.digests[name] = digest
    return index


def _candidates(index: ConfigIndex, snap: Snapshot) -> tuple[Sequence[ServiceSnapshot], bool]:
    """The Services that may differ from the tree, and whether some may have been removed."""
    if index.digest == snap.digest and index.tree_id is not None:
        return (), False  # the digest covers every Service: same content (an outcome commit)
    prev, services = index.services, snap.services
    if prev is not None and len(prev) == len(services):
        # indices, not pairs: no container per Service, so no garbage-collector pass is
        # triggered by this loop in a process holding millions of objects
        differ = [i for i, p in enumerate(prev) if p is not services[i]]
        if all(prev[i].name == services[i].name for i in differ):
            return [services[i] for i in differ], False
    return services, len(index.blobs) > 0


def write_config_tree(
    repo: pygit2.Repository, index: ConfigIndex, snap: Snapshot
) -> tuple[pygit2.Oid, ConfigIndex, ChangeSummary, list[tuple[ServiceSnapshot, pygit2.Oid]]]:
    """Write the snapshot's config directory, reusing every unchanged blob and tree by id.
    Also returns the Services whose files were written, with their blob ids."""
    candidates, maybe_removed = _candidates(index, snap)
    blobs, digests = index.blobs, index.digests
    copied = False
    per_ns: dict[str, dict[str, pygit2.Oid | None]] = {}
    added: list[str] = []
    changed: list[str] = []
    written: list[tuple[ServiceSnapshot, pygit2.Oid]] = []
    for svc in candidates:
        name = svc.name
        old = blobs.get(name)
        digest = svc.fragment_digest
        if old is not None and digests.get(name) == digest:
            continue
        if not copied:
            blobs, digests, copied = dict(blobs), dict(digests), True
        data = service_file_bytes(svc)
        if old is not None and name not in digests and pygit2.hash(data) == old:
            digests[name] = digest  # indexed cold: same file, now known
            continue
        service_path(name)  # checks the name can be a path
        oid = repo.create_blob(data)
        written.append((svc, oid))
        blobs[name] = oid
        digests[name] = digest
        (changed if old is not None else added).append(name)
        ns, _, file = _split(name)
        per_ns.setdefault(ns, {})[file] = oid
    removed: list[str] = []
    if maybe_removed and len(blobs) != len(snap.services):
        present = {s.name for s in snap.services}
        removed = sorted(n for n in blobs if n not in present)
        if not copied:
            blobs, digests, copied = dict(blobs), dict(digests), True
        for name in removed:
            del blobs[name]
            digests.pop(name, None)
            ns, _, file = _split(name)
            per_ns.setdefault(ns, {})[file] = None

    ns_trees = index.ns_trees
    services_tree = index.services_tree
    if per_ns:
        ns_trees = dict(ns_trees)
        sb = repo.TreeBuilder(tree_at(repo, services_tree)) if services_tree is not None else repo.TreeBuilder()
        for ns, files in sorted(per_ns.items()):
            nb = repo.TreeBuilder(tree_at(repo, ns_trees[ns])) if ns in ns_trees else repo.TreeBuilder()
            for file, blob in files.items():
                if blob is None:
                    nb.remove(file)
                else:
                    nb.insert(file, blob, BLOB)
            if len(nb):
                ns_trees[ns] = nb.write()
                sb.insert(ns, ns_trees[ns], TREE)
            else:
                del ns_trees[ns]
                sb.remove(ns)
        services_tree = sb.write() if len(sb) else None

    dirty = None if not index.index_ok else {*added, *changed, *removed}
    index_tree = write_index_tree(repo, index.index_tree, snap, blobs, dirty)
    manifest = repo.create_blob(manifest_bytes(snap))
    unchanged = (manifest, services_tree, index_tree) == (index.manifest, index.services_tree, index.index_tree)
    if unchanged and index.tree_id is not None:
        tree_id = index.tree_id
    else:
        cb = repo.TreeBuilder(tree_at(repo, index.tree_id)) if index.tree_id is not None else repo.TreeBuilder()
        cb.insert(MANIFEST, manifest, BLOB)
        for name, sub in ((SERVICES_DIR, services_tree), (INDEX_DIR, index_tree)):
            if sub is not None:
                cb.insert(name, sub, TREE)
            elif cb.get(name) is not None:
                cb.remove(name)
        tree_id = cb.write()
    new_index = ConfigIndex(
        tree_id, services_tree, ns_trees, blobs, digests, manifest, snap.services, snap.digest, index_tree, True
    )
    return tree_id, new_index, ChangeSummary(tuple(added), tuple(changed), tuple(removed), len(written)), written


def write_index_tree(
    repo: pygit2.Repository,
    old: pygit2.Oid | None,
    snap: Snapshot,
    blobs: Mapping[str, pygit2.Oid],
    dirty: set[str] | None,
) -> pygit2.Oid | None:
    """The index/ tree for the snapshot: only the shards holding the `dirty` Services rewritten
    (the rest reused by id), or every shard when `dirty` is None (the old index is not known to
    be right: an old repository, or one read without it)."""
    if dirty is not None and not dirty:
        return old
    shards = None if dirty is None else {shard_of(name) for name in dirty}
    members: dict[tuple[str, str], list[tuple[str, str]]] = {s: [] for s in shards or ()}
    for svc in snap.services:  # shard_of is cached: a dictionary lookup per Service
        shard = shard_of(svc.name)
        if shards is None or shard in shards:
            members.setdefault(shard, []).append((svc.name, entry_line(svc, str(blobs[svc.name]))))
    root = repo.TreeBuilder(tree_at(repo, old)) if old is not None and shards is not None else repo.TreeBuilder()
    for top in sorted({s[0] for s in members}):
        current = root.get(top)
        sub = repo.TreeBuilder(tree_at(repo, current.id)) if current is not None else repo.TreeBuilder()
        for (t, file), lines in members.items():
            if t != top:
                continue
            if lines:
                sub.insert(file, repo.create_blob(shard_bytes(lines)), BLOB)
            elif sub.get(file) is not None:
                sub.remove(file)
        if len(sub):
            root.insert(top, sub.write(), TREE)
        elif current is not None:
            root.remove(top)
    return root.write() if len(root) else None


def _split(name: str) -> tuple[str, str, str]:
    """("namespace", "/", "<service>[:port].json") of a service name."""
    ns, _, rest = name.partition("/")
    return ns, "/", rest + ".json"


def replace_path(
    repo: pygit2.Repository, root_id: pygit2.Oid | None, path: str, new_id: pygit2.Oid | None
) -> pygit2.Oid:
    """A root tree like `root_id` with the tree at `path` replaced (None: removed); rewrites
    only the trees on the path. Empty directories disappear, as Git has none."""
    parts = [git_name(p) for p in path.split("/")]

    def rebuild(tree_id: pygit2.Oid | None, depth: int) -> pygit2.Oid | None:
        tb = repo.TreeBuilder(tree_at(repo, tree_id)) if tree_id is not None else repo.TreeBuilder()
        name = parts[depth]
        if depth == len(parts) - 1:
            child = new_id
        else:
            current = tb.get(name)
            child = rebuild(current.id if current is not None and current.filemode == TREE else None, depth + 1)
        if child is None:
            if tb.get(name) is not None:
                tb.remove(name)
        else:
            tb.insert(name, child, TREE)
        return tb.write() if len(tb) or depth == 0 else None

    out = rebuild(root_id, 0)
    assert out is not None
    return out


def config_paths(repo: pygit2.Repository, root_id: pygit2.Oid | None) -> dict[str, pygit2.Oid]:
    """Every config directory in a root tree: "namespace/name" -> tree id."""
    out: dict[str, pygit2.Oid] = {}
    configs = entry_id(repo, root_id, CONFIGS_DIR)
    if configs is None:
        return out
    for ns_name, ns in entries_at(repo, configs):
        if ns.filemode != TREE:
            continue
        for config_name, config in entries_at(repo, ns.id):
            if config.filemode == TREE:
                out[f"{ns_name}/{config_name}"] = config.id
    return out


def merge_by_config(
    repo: pygit2.Repository, base: pygit2.Oid | None, ours: pygit2.Oid, theirs: pygit2.Oid
) -> tuple[pygit2.Oid, list[str]]:
    """Three-way merge of root trees in which each config directory (and each other top-level
    entry) is one unit: a side's change to a config is taken whole, never mixed with the other
    side's, since a config directory is one snapshot. When both sides changed the same unit
    differently, ours is kept and the path is returned as a conflict (the other side's commits
    still hold theirs)."""
    conflicts: list[str] = []

    def entries(tree_id: pygit2.Oid | None) -> dict[str, tuple[pygit2.Oid, int]]:
        if tree_id is None:
            return {}
        return {name: (e.id, e.filemode) for name, e in entries_at(repo, tree_id)}

    # A side's entry: (id, filemode), or None where the side has no such path.
    Side = tuple[pygit2.Oid, int] | None

    def merge(path: str, depth: int, b: Side, o: Side, t: Side) -> Side:
        if o == t:
            return o
        if o == b:
            return t
        if t == b:
            return o
        atomic = depth >= 3 or (depth >= 1 and path.split("/")[0] != CONFIGS_DIR)
        both_trees = o is not None and t is not None and o[1] == TREE and t[1] == TREE
        if atomic or not both_trees:
            conflicts.append(path)
            return o
        assert o is not None and t is not None  # both_trees
        be = entries(b[0]) if b is not None and b[1] == TREE else {}
        oe, te = entries(o[0]), entries(t[0])
        tb = repo.TreeBuilder()
        for name in sorted(oe.keys() | te.keys()):
            sub = merge(f"{path}/{name}" if path else name, depth + 1, be.get(name), oe.get(name), te.get(name))
            if sub is not None:
                tb.insert(name, sub[0], sub[1])
        return (tb.write(), TREE) if len(tb) or depth == 0 else None

    base_entry = (base, TREE) if base is not None else None
    out = merge("", 0, base_entry, (ours, TREE), (theirs, TREE))
    assert out is not None
    return out[0], conflicts
