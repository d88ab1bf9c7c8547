"""The audit repository: every snapshot and transaction outcome as a commit (DESIGN.md 6).

One branch (default "main") in a local repository, or in a bare clone of a remote that each
record is pushed to. Each commit holds, for the config it names, the snapshot its trailers name
(see layout.py for the files, message.py for the trailers):

    record(snap, "pending")                  the tree change: the snapshot about to be applied
    record(snap, "applied" | "degraded")     same tree, the outcome
    record(snap, "rolled-back", reason=...)  same tree (the refused snapshot), the outcome; the
                                             switches are back on last_applied(config)
    close_interrupted(config)                "interrupted" for a pending record nothing followed
                                             (the reconciler was killed): call at start

Every operation raises AuditError only (errors.py: AuditUnavailable when the repository cannot
be reached, opened or written now; AuditCorrupt for damage), or SnapshotError for an invalid
snapshot; a failed record() leaves the branch as it was. Memory is bounded: see the caches'
limits below.

`last_applied(config)` is what the switches hold: the snapshot of the newest commit for the
config whose outcome is applied or degraded. A restarted reconciler renders against it, so
it does not rewrite tables that are already right.

Versions are unique per config: record() refuses a snapshot whose version was already
recorded with another digest (`audit show 12` and `rollback --to 12` must mean one thing);
`next_version(config)` gives the version a new snapshot should carry.

pygit2 blocks; callers on the asyncio loop use asyncio.to_thread. A lock serialises records
within the process; the branch is updated compare-and-swap, so a second process writing the
same local repository makes one of the two fail instead of losing a commit.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypedDict, cast

import pygit2

from ..gitobjects import blob_data, commit_at, entries_at, tree_at
from ..snapshot import ServiceSnapshot, Snapshot, SnapshotError, global_tables, header_document, schema_errors
from ..snapshot import service_schema_errors as snapshot_service_schema_errors
from .index import INDEX_DIR, IndexEntry, buckets_of, mismatches, parse_shard, rebuild, shard_of
from .errors import AuditCorrupt, AuditError, AuditUnavailable, PushError, describe_fault, is_corruption
from .layout import MANIFEST, SERVICES_DIR, Manifest, assemble, config_dir, parse_manifest, parse_service_file
from .maintenance import pack_loose_objects, roll_up_packs
from .message import (
    APPLIED_OUTCOMES,
    AuditEntry,
    build_message,
    check_extra_trailers,
    check_outcome,
    entry_from_commit,
)
from .push import Credentials, PushResult, RemoteRewritten, RemoteSync, RetryPolicy, looks_like_url, redact_url
from .signing import Signer, TrustedKeys
from .trust import UntrustedRecord, check_commit, untrusted
from .trees import BLOB, TREE, ConfigIndex, config_paths, entry_id, git_name, index_config_tree, merge_by_config, replace_path, write_config_tree

log = logging.getLogger("p4kube.audit")

# libgit2's defaults let a long-running writer keep up to 8 GiB of pack windows mapped and 256 MiB
# of objects cached; the audit repository grows with every record, so both are bounded here
# (process-wide settings; bench/bench_soak.py measures the loop's memory over many passes).
pygit2.settings.mwindow_mapped_limit = 64 << 20
pygit2.settings.cache_max_size(16 << 20)

README = """\
# p4kube audit repository

Written by the p4kube reconciler: every switch snapshot it rendered and the outcome of applying
it, one commit each. `configs/<namespace>/<name>/manifest.json` holds a snapshot's header and
routes, `services/<namespace>/<service>.json` one file per Service (one table entry per line),
`index/` what rebuilds the Services without reading their files (derived from them).
The commit trailers (`git log --format='%h %(trailers:only,unfold)'`) name the config, the
snapshot version and digest, the intent commit, the cluster resourceVersion and the outcome.
`p4kube audit log|show|diff|verify --repo <this repository>` reads it.
"""


@dataclass(frozen=True)
class Identity:
    name: str = "p4kube-reconciler"
    email: str = "p4kube-reconciler@localhost"

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


def default_workdir(url: str) -> Path:
    """Where a remote's clone lives when no work directory is given: the user's cache."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "p4kube" / "audit" / hashlib.sha256(url.encode()).hexdigest()[:16]


# In-memory caches are bounded (DESIGN.md 6.1 "Bounded"): a long-running reconciler records
# thousands of commits, and memory must not grow with them.
_SERVICE_CACHE_MIN = 4096  # parsed service files kept by blob id (~5 KB each); at least 3x the largest snapshot
_SNAPSHOT_CACHE = 4
_NAMESPACE_CACHE_LIMIT = 2048
_RECENT_ENTRIES = 1024  # newest commits' entries kept; older ones are read from the repository when asked
_VERSION_CACHE = 1024  # (config, version) -> newest record, for the newest versions (~1.5 KB each)
_SPOT_CHECKS = 32  # Services of an indexed read whose fragment digest is recomputed (~1 ms each)
_SHARD_CACHE = 4096  # index shards audit verify has checked, by blob id

INTERRUPTED_REASON = (
    "the reconciler stopped before recording an outcome (killed or crashed); "
    "the switches were read back at start"
)


def fault(location: str, repo_path: str, what: str, e: BaseException) -> AuditError:
    """The AuditError for an OSError, pygit2.GitError or KeyError (a missing object) met while
    doing `what` in the repository at `location`: one line, concrete."""
    if isinstance(e, KeyError):
        return AuditCorrupt(f"audit repository {location}: cannot {what}: object {e} is missing from the repository (damaged?)")
    cause, code, path = describe_fault(e, repo_path)
    if code is None and is_corruption(e):
        return AuditCorrupt(f"audit repository {location}: cannot {what}: the repository is damaged: {cause}")
    if code is not None or isinstance(e, OSError):
        return AuditUnavailable(f"audit repository {location}: cannot {what}: {cause}", code, path)
    return AuditError(f"audit repository {location}: cannot {what}: {cause}")


class _Options(TypedDict):
    """What AuditRepo() takes besides the repository, its remote and its location."""

    branch: str
    author: Identity
    committer: Identity | None
    signer: Signer | None
    clock: Callable[[], float]
    strict_push: bool
    pack_every: int
    read_only: bool
    trust: TrustedKeys | None


class AuditRepo:
    def __init__(
        self,
        repo: pygit2.Repository,
        *,
        branch: str = "main",
        author: Identity = Identity(),
        committer: Identity | None = None,
        signer: Signer | None = None,
        remote: RemoteSync | None = None,
        clock: Callable[[], float] = time.time,
        strict_push: bool = False,
        pack_every: int = 256,
        location: str | None = None,
        read_only: bool = False,
        trust: TrustedKeys | None = None,
    ) -> None:
        if not pygit2.reference_is_valid_name(f"refs/heads/{branch}"):
            raise AuditError(f"{branch!r} is not a valid branch name")
        self.repo = repo
        self.branch = branch
        self.author = author
        self.committer = committer or author
        self.signer = signer
        self.remote = remote
        self.clock = clock
        self.strict_push = strict_push
        self.pack_every = pack_every
        self.location = location or repo.path
        self.read_only = read_only
        # With keys: a record's snapshot is used only when its commit's signature verifies
        # (trust.py); verified commit ids are remembered, bounded.
        self.trust = trust
        self._verified: OrderedDict[str, None] = OrderedDict()
        self.last_push_error: str | None = None
        self._lock = threading.RLock()
        self._indexes: dict[str, ConfigIndex] = {}
        self._services: OrderedDict[pygit2.Oid, ServiceSnapshot] = OrderedDict()  # blob id -> parsed, checked service
        self._largest_snapshot = 0  # services in the largest snapshot seen: sizes the service cache
        self._snapshots: dict[pygit2.Oid, Snapshot] = {}  # config tree id -> snapshot
        self._from_index: set[pygit2.Oid] = set()  # those of _snapshots rebuilt from the index, not the files
        self._no_index_noted: set[str] = set()  # configs whose missing index was logged (once each)
        self._checked_shards: OrderedDict[pygit2.Oid, dict[str, str]] = OrderedDict()  # shard blob -> name -> blob hex
        self._listings: OrderedDict[pygit2.Oid, dict[str, str]] = OrderedDict()  # namespace tree -> name -> blob hex
        self._namespaces: OrderedDict[pygit2.Oid, tuple[ServiceSnapshot, ...]] = OrderedDict()  # namespace tree id -> services
        # The branch's history, bounded: the newest _RECENT_ENTRIES entries (newest first), whether
        # they are all of it, the highest version per config, the newest versions' records, and
        # per config its newest applied record. Valid for _entries_tip; rebuilt by one walk when
        # the branch moved otherwise than by this object's record().
        self._entries: list[AuditEntry] = []
        self._entries_tip: pygit2.Oid | None = None
        self._entries_complete = True
        self._scanned = False
        self._max_version: dict[str, int] = {}
        self._versions: OrderedDict[tuple[str, int], AuditEntry] = OrderedDict()
        self._applied: dict[str, AuditEntry] = {}
        self._commits_since_pack = 0

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def open_or_init(
        cls,
        path_or_url: str | os.PathLike[str],
        branch: str = "main",
        author: Identity = Identity(),
        committer: Identity | None = None,
        signer: Signer | None = None,
        workdir: str | os.PathLike[str] | None = None,
        *,
        credentials: Credentials | None = None,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        strict_push: bool = False,
        pack_every: int = 256,
        read_only: bool = False,
        trust: TrustedKeys | None = None,
    ) -> "AuditRepo":
        """A local repository (created when missing, bare), or with `workdir` (or a URL) a bare
        clone of a remote in `workdir` (created when missing), brought up to date with it.

        read_only: for the audit commands: a local repository must exist, a clone follows the
        remote exactly, and record() is refused.

        Raises AuditError only: AuditUnavailable when the repository (or remote, or work
        directory) cannot be opened, created or reached, with the path and the reason."""
        location = str(path_or_url)
        shown = redact_url(location)
        try:
            return cls._open_or_init(
                location, branch, author, committer, signer, workdir, credentials, retry, sleep, clock,
                strict_push, pack_every, read_only, trust,
            )
        except AuditError:
            raise
        except (pygit2.GitError, OSError, KeyError) as e:
            what = "open it" if read_only else "open or create it"
            raise fault(shown, location, what, e) from e

    @classmethod
    def _open_or_init(
        cls,
        location: str,
        branch: str,
        author: Identity,
        committer: Identity | None,
        signer: Signer | None,
        workdir: str | os.PathLike[str] | None,
        credentials: Credentials | None,
        retry: RetryPolicy,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        strict_push: bool,
        pack_every: int,
        read_only: bool,
        trust: TrustedKeys | None = None,
    ) -> "AuditRepo":
        kwargs = _Options(
            branch=branch, author=author, committer=committer, signer=signer, clock=clock,
            strict_push=strict_push, pack_every=pack_every, read_only=read_only, trust=trust,
        )
        if workdir is None and not looks_like_url(location):
            path = Path(location)
            if path.is_dir():
                os.listdir(path)  # PermissionError here, named, rather than "not a repository" below
            found = pygit2.discover_repository(str(path)) if path.exists() else None
            if found is not None and Path(found).resolve() in (path.resolve(), (path / ".git").resolve()):
                return cls(pygit2.Repository(found), location=location, **kwargs)
            for parent in path.absolute().parents:
                if parent.exists():
                    if not parent.is_dir():
                        raise AuditUnavailable(
                            f"audit repository {path}: cannot open or create it: {parent} is a file, where a directory is expected",
                            errno.ENOTDIR, str(parent),
                        )
                    break
            if read_only:
                raise AuditUnavailable(f"no audit repository at {path} (the path does not exist or is not a Git repository)", errno.ENOENT, str(path))
            if path.exists() and not path.is_dir():
                raise AuditUnavailable(f"audit repository {path}: cannot create it: {path} is a file, not a directory", errno.ENOTDIR, str(path))
            if path.exists() and any(path.iterdir()):
                raise AuditError(f"audit repository {path}: exists, is not empty, and is not a Git repository")
            repo = pygit2.init_repository(str(path), bare=True, initial_head=branch)
            log.info("created audit repository %s (branch %s)", path, branch)
            return cls(repo, location=location, **kwargs)

        wd = Path(workdir) if workdir is not None else default_workdir(location)
        if (wd / "HEAD").exists() or (wd / ".git").exists():
            repo = pygit2.Repository(str(wd))
        else:
            if wd.exists() and not wd.is_dir():
                raise AuditUnavailable(f"audit work directory {wd}: is a file, not a directory", errno.ENOTDIR, str(wd))
            if wd.exists() and any(wd.iterdir()):
                raise AuditError(f"audit work directory {wd}: exists, is not empty, and is not a Git repository")
            repo = pygit2.init_repository(str(wd), bare=True, initial_head=branch)
        remote = RemoteSync(repo, location, branch, credentials, retry, sleep, refuse_rewrites=not read_only)
        audit = cls(repo, remote=remote, location=redact_url(location), **kwargs)
        audit._sync_from_remote()
        return audit

    def _sync_from_remote(self) -> None:
        """Bring the local branch up to date with the remote: fast-forward, or merge when both
        moved; local commits not yet pushed are pushed."""
        assert self.remote is not None
        theirs = self.remote.fetch()
        ours = self._tip()
        if self.read_only:  # a reading clone is a cache of the remote: follow it exactly
            if theirs is None:
                raise AuditError(f"{self.location} has no branch {self.branch}")
            self.repo.references.create(self.ref, theirs, force=True)
            return
        if theirs is None or theirs == ours:
            pass
        elif ours is None or self.repo.descendant_of(theirs, ours):
            self._set_tip(theirs, ours, "fast-forward from remote")
        elif not self.repo.descendant_of(ours, theirs):
            self._merge(theirs)
        tip = self._tip()
        if tip is not None and tip != self.remote_tip():
            self._push_or_warn(tip)

    def remote_tip(self) -> pygit2.Oid | None:
        if self.remote is None:
            return None
        ref = self.repo.references.get(self.remote.tracking_ref)
        return cast(pygit2.Oid, ref.target) if ref is not None else None  # a branch ref is direct: an Oid

    # --- faults -------------------------------------------------------------------------------

    @contextmanager
    def _faults(self, what: str) -> Iterator[None]:
        """Every fault of the repository inside as an AuditError naming `what` and where: the
        repository gone, permission denied, read-only, disk full, a missing object."""
        self._check_present(what)
        try:
            yield
        except AuditError:
            raise
        except (pygit2.GitError, OSError, KeyError) as e:
            raise fault(self.location, self.repo.path, what, e) from e

    def _check_present(self, what: str) -> None:
        """The repository is still there: a deleted directory would otherwise read as an empty
        history (last_applied None) instead of an error."""
        head = os.path.join(self.repo.path, "HEAD")
        try:
            os.stat(head)
        except FileNotFoundError as e:
            where = self.repo.path.rstrip("/")
            if os.path.isdir(where):
                cause = f"{where} is no longer a Git repository (no HEAD file)"
            else:
                cause = f"{where} no longer exists (deleted or unmounted while in use?)"
            raise AuditUnavailable(f"audit repository {self.location}: cannot {what}: {cause}", errno.ENOENT, where) from e
        except OSError as e:
            raise fault(self.location, self.repo.path, what, e) from e

    # --- the branch ---------------------------------------------------------------------------

    @property
    def ref(self) -> str:
        return git_name(f"refs/heads/{self.branch}")  # interned: see trees.git_name

    def _tip(self) -> pygit2.Oid | None:
        ref = self.repo.references.get(self.ref)
        return cast(pygit2.Oid, ref.target) if ref is not None else None  # a branch ref is direct: an Oid

    @property
    def head(self) -> str | None:
        """The branch's newest commit id, or None before the first record."""
        with self._faults("read the branch"):
            tip = self._tip()
        return str(tip) if tip is not None else None

    def _set_tip(self, new: pygit2.Oid, expected: pygit2.Oid | None, why: str) -> None:
        """Move the branch compare-and-swap: fails if another writer moved it meanwhile."""
        try:
            if expected is None:
                self.repo.references.create(self.ref, new, force=False)
            else:
                ref = self.repo.references[self.ref]
                if ref.target != expected:
                    raise pygit2.GitError("reference moved")
                ref.set_target(new, why)
        except (pygit2.GitError, pygit2.AlreadyExistsError) as e:
            raise AuditError(f"{self.location}: branch {self.branch} was moved by another writer during {why}; nothing recorded ({e})") from e

    def _signature(self, who: Identity, when: int) -> pygit2.Signature:
        return pygit2.Signature(who.name, who.email, when, 0)

    def _commit(self, tree: pygit2.Oid, parents: Sequence[pygit2.Oid], message: str) -> pygit2.Oid:
        when = int(self.clock())
        author, committer = self._signature(self.author, when), self._signature(self.committer, when)
        if self.signer is None:
            return self.repo.create_commit(None, author, committer, message, tree, list(parents))
        # pygit2's types say Oid; it returns the commit's text, which is what gets signed
        content = cast(str, self.repo.create_commit_string(author, committer, message, tree, list(parents)))
        signature = self.signer.sign(content.encode())
        return self.repo.create_commit_with_signature(content, signature)

    # --- recording ----------------------------------------------------------------------------

    def record(
        self,
        snapshot: Snapshot,
        outcome: str,
        reason: str = "",
        extra_trailers: Iterable[tuple[str, str]] = (),
    ) -> str:
        """Commit the snapshot (its config's directory) with the outcome; returns the commit id.

        Only changed Services' files are written. The commit is pushed when there is a remote;
        a push that fails after every retry leaves the commit local (pushed with the next
        record, or by push()), logs a warning and sets last_push_error, or with strict_push
        raises PushError carrying the commit id.

        A repository fault raises AuditUnavailable (or AuditCorrupt) and leaves the branch as
        it was: the branch moves last, compare-and-swap, after every object is written."""
        check_outcome(outcome)
        extra = check_extra_trailers(extra_trailers)
        if self.read_only:
            raise AuditError(f"audit repository {self.location}: opened read-only; nothing recorded")
        if self.remote is not None and self.remote.rewritten:
            raise RemoteRewritten(self.remote.rewritten)
        what = f"record {snapshot.config} v{snapshot.version} {outcome}"
        with self._lock, self._faults(what):
            tip = self._tip()
            self._check_version(snapshot)
            root = commit_at(self.repo, tip).tree_id if tip is not None else None
            path = config_dir(snapshot.config)
            old_tree = entry_id(self.repo, root, path)
            index = self._index(snapshot.config, old_tree)
            new_tree, new_index, change, written = write_config_tree(self.repo, index, snapshot)
            self._check_schema(snapshot, [svc for svc, _ in written], new_index.manifest != index.manifest)
            new_root = root if (new_tree == old_tree and root is not None) else replace_path(self.repo, root, path, new_tree)
            if tip is None:
                new_root = self._with_readme(new_root)
            message = build_message(snapshot, outcome, reason, extra, change)
            oid = self._commit(new_root, [tip] if tip is not None else [], message)
            self._set_tip(oid, tip, f"record {snapshot.config} v{snapshot.version} {outcome}")
            self._indexes[snapshot.config] = new_index
            self._largest_snapshot = max(self._largest_snapshot, len(snapshot.services))
            for svc, blob in written:
                self._remember_service(blob, svc)
            self._snapshots[new_tree] = snapshot
            self._from_index.discard(new_tree)
            self._trim_snapshots()
            self._note_commit(oid, tip)
            log.info(
                "audit %s: %s v%d %s (%d service files written)",
                str(oid)[:12], snapshot.config, snapshot.version, outcome, change.blobs_written,
            )
            self._after_commit(oid)
            return str(oid)

    record_outcome = record  # the name the apply engine uses for outcome commits: same operation

    def _with_readme(self, root: pygit2.Oid) -> pygit2.Oid:
        tb = self.repo.TreeBuilder(tree_at(self.repo, root))
        if tb.get("README.md") is None:
            tb.insert("README.md", self.repo.create_blob(README.encode()), BLOB)
        return tb.write()

    def _after_commit(self, oid: pygit2.Oid) -> None:
        self._commits_since_pack += 1
        if self.pack_every and self._commits_since_pack >= self.pack_every:
            try:  # the commit is recorded: packing failing (disk full) must not say otherwise
                self.compact()
            except AuditError as e:
                self._commits_since_pack = 0  # try again after another pack_every commits
                log.warning("audit commit %s is recorded; packing loose objects failed: %s", str(oid)[:12], e)
        if self.remote is not None:
            self._push_or_warn(oid)

    def _push_or_warn(self, oid: pygit2.Oid) -> None:
        """Push; on failure keep the commit local and warn (or raise, with strict_push)."""
        try:
            self._push()
        except PushError as e:
            self.last_push_error = str(e)
            if self.strict_push or (self.remote is not None and self.remote.rewritten):
                e.commit = str(oid)
                raise
            log.warning("audit commit %s is recorded locally but not pushed yet: %s", str(oid)[:12], e)

    def _check_version(self, snap: Snapshot) -> None:
        if not isinstance(snap.version, int) or snap.version < 1:
            raise SnapshotError(f"{snap.config}: version {snap.version!r} must be an integer >= 1")
        e = self._version_record(snap.config, snap.version)
        if e is not None and e.digest != snap.digest:
            raise AuditError(
                f"{snap.config} version {snap.version} was already recorded with digest {e.digest} "
                f"(commit {e.commit[:12]}); this snapshot's digest is {snap.digest}. A new snapshot needs "
                f"a new version: next_version() = {self.next_version(snap.config)}"
            )

    def _check_schema(self, snap: Snapshot, written: Sequence[ServiceSnapshot], new_manifest: bool) -> None:
        """The snapshot schema, checked for what this commit adds: the header and routes (when
        the manifest changed) and each Service object written (entries are generated from the
        objects, and the render's encodings are tested against the schema)."""
        errors: list[str] = []
        if new_manifest:
            errors += schema_errors(header_document(snap, [], global_tables(snap), snap.digest))
        for svc in written:
            # Cached by fragment digest: render (or the read of the previous record) checked most.
            errors += [f"service {svc.name}: {m}" for m in snapshot_service_schema_errors(svc)]
        if errors:
            raise SnapshotError(f"{snap.config} v{snap.version}: not recorded, the snapshot fails its schema:\n  " + "\n  ".join(errors[:20]))

    def _index(self, config: str, tree_id: pygit2.Oid | None) -> ConfigIndex:
        index = self._indexes.get(config)
        if index is not None and index.tree_id == tree_id:
            return index
        known = {blob: svc.fragment_digest for blob, svc in self._services.items()}
        index = index_config_tree(self.repo, tree_id, known)
        read = self._snapshots.get(tree_id) if tree_id is not None else None
        if read is not None:  # read by last_applied() after a restart: its objects are the renderer's
            index.services, index.digest = read.services, read.digest
            index.digests.update((svc.name, svc.fragment_digest) for svc in read.services)
            index.index_ok = tree_id in self._from_index  # else the next commit writes the whole index
        self._indexes[config] = index
        return index

    def _service_cache_limit(self) -> int:
        return max(_SERVICE_CACHE_MIN, 3 * self._largest_snapshot)

    def _remember_service(self, blob: pygit2.Oid, svc: ServiceSnapshot) -> None:
        self._services[blob] = svc
        self._services.move_to_end(blob)
        limit = self._service_cache_limit()
        while len(self._services) > limit:  # the least recently used go first
            self._services.popitem(last=False)

    def _trim_snapshots(self) -> None:
        while len(self._snapshots) > _SNAPSHOT_CACHE:
            oldest = next(iter(self._snapshots))
            del self._snapshots[oldest]
            self._from_index.discard(oldest)

    # --- pushing and merging ------------------------------------------------------------------

    def push(self) -> PushResult | None:
        """Push commits not yet on the remote (None without a remote); raises PushError."""
        with self._lock, self._faults(f"push to {self.remote.where if self.remote else 'the remote'}"):
            if self.remote is None:
                return None
            return self._push()

    def _push(self) -> PushResult:
        assert self.remote is not None
        result = self.remote.push(self._tip, self._merge)
        self.last_push_error = None
        return result

    def _merge(self, theirs: pygit2.Oid) -> None:
        """Merge the remote's commits into the branch: a merge commit with both tips as parents;
        each config directory is taken whole from the side that changed it (ours when both did)."""
        ours = self._tip()
        if ours is None:
            self._set_tip(theirs, None, "adopt the remote branch")
            self._scanned = False
            return
        base = self.repo.merge_base(ours, theirs)
        base_tree = commit_at(self.repo, base).tree_id if base is not None else None
        tree, conflicts = merge_by_config(self.repo, base_tree, commit_at(self.repo, ours).tree_id, commit_at(self.repo, theirs).tree_id)
        lines = [f"Merge {self.branch} from {self.remote.where if self.remote else 'the remote'}", ""]
        lines.append(f"Another writer committed to {self.branch} since this reconciler last fetched; both histories are kept.")
        if conflicts:
            lines += ["", "Both sides changed these; this side's version is in the tree, the other's in its commits:"]
            lines += [f"  {c}" for c in conflicts]
            log.warning("audit merge: both sides changed %s; kept ours", ", ".join(conflicts))
        oid = self._commit(tree, [ours, theirs], "\n".join(lines) + "\n")
        self._set_tip(oid, ours, "merge remote audit history")
        self._scanned = False  # history order changed: walk again when next asked

    # --- reading ------------------------------------------------------------------------------

    def _sync_entries(self) -> None:
        """Bring the bounded history state up to the branch's tip: one streaming walk when the
        branch moved otherwise than by record() (a restart, a merge, another writer)."""
        tip = self._tip()
        if self._scanned and tip == self._entries_tip:
            return
        recent: list[AuditEntry] = []
        versions: OrderedDict[tuple[str, int], AuditEntry] = OrderedDict()
        max_version: dict[str, int] = {}
        applied: dict[str, AuditEntry] = {}
        complete = True
        for c in self._walk(tip):  # newest first: the first record of a version seen is its newest
            e = entry_from_commit(c)
            if len(recent) < _RECENT_ENTRIES:
                recent.append(e)
            else:
                complete = False
            if not e.is_record or e.config is None:
                continue
            if e.version is not None:
                if e.version > max_version.get(e.config, 0):
                    max_version[e.config] = e.version
                if (e.config, e.version) not in versions and len(versions) < _VERSION_CACHE:
                    versions[(e.config, e.version)] = e
            if e.outcome in APPLIED_OUTCOMES and e.config not in applied:
                applied[e.config] = e
        versions = OrderedDict(reversed(versions.items()))  # oldest first: evicted first
        self._entries, self._entries_complete = recent, complete
        self._versions, self._max_version, self._applied = versions, max_version, applied
        self._entries_tip, self._scanned = tip, True

    def _iter_entries(self) -> Iterator[AuditEntry]:
        """Every commit's entry, newest first: the kept ones, then (when the history is longer)
        the rest read from the repository. Call with the lock held, and finish or drop it
        before releasing the lock."""
        self._sync_entries()
        kept = list(self._entries)
        yield from kept
        if self._entries_complete:
            return
        seen = {e.commit for e in kept}
        for c in self._walk(self._entries_tip):
            if str(c.id) not in seen:
                yield entry_from_commit(c)

    def _history_entries(self) -> list[AuditEntry]:
        """The whole history as a list (newest first): a temporary, not kept."""
        return list(self._iter_entries())

    def _note_version(self, e: AuditEntry) -> None:
        if e.is_record and e.config is not None and e.version is not None:
            key = (e.config, e.version)
            self._versions[key] = e  # the newest record of a version wins
            self._versions.move_to_end(key)
            while len(self._versions) > _VERSION_CACHE:
                self._versions.popitem(last=False)
            if e.version > self._max_version.get(e.config, 0):
                self._max_version[e.config] = e.version
            if e.outcome in APPLIED_OUTCOMES:
                self._applied[e.config] = e

    def _note_commit(self, oid: pygit2.Oid, parent: pygit2.Oid | None) -> None:
        if self._scanned and self._entries_tip == parent:
            entry = entry_from_commit(self.repo[oid])
            self._entries.insert(0, entry)
            if len(self._entries) > _RECENT_ENTRIES:
                del self._entries[_RECENT_ENTRIES:]
                self._entries_complete = False
            self._note_version(entry)
            self._entries_tip = oid

    def _version_record(self, config: str, version: int) -> AuditEntry | None:
        """The newest record of `version` of the config, or None: from the cache of the newest
        versions, else (an old version) from the repository."""
        self._sync_entries()
        e = self._versions.get((config, version))
        if e is not None or self._entries_complete or version > self._max_version.get(config, 0):
            return e
        for e in self._iter_entries():
            if e.is_record and e.config == config and e.version == version:
                return e
        return None

    def _walk(self, tip: pygit2.Oid | None) -> Iterator[pygit2.Commit]:
        if tip is None:
            return iter(())
        return iter(self.repo.walk(tip, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.TIME))

    def commits(self) -> Iterator[tuple[pygit2.Commit, AuditEntry]]:
        """Every commit of the branch with its entry, newest first."""
        with self._lock, self._faults("read the history"):
            entries = self._history_entries()
        for e in entries:
            with self._faults(f"read commit {e.commit[:12]}"):
                commit = commit_at(self.repo, e.commit)
            yield commit, e

    def history(
        self,
        config: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AuditEntry]:
        """Record commits, newest first, filtered by config, outcome and committer time
        (since and until inclusive; give timezone-aware datetimes)."""
        if outcome is not None:
            check_outcome(outcome)
        since, until = _aware(since), _aware(until)
        out = []
        with self._lock, self._faults("read the history"):
            for e in self._iter_entries():
                if not e.is_record:
                    continue
                if (config is not None and e.config != config) or (outcome is not None and e.outcome != outcome):
                    continue
                if (since is not None and e.time < since) or (until is not None and e.time > until):
                    continue
                out.append(e)
        return out

    def configs(self) -> list[str]:
        """The configs the branch's newest tree holds."""
        with self._lock, self._faults("read the configs"):
            tip = self._tip()
            root = commit_at(self.repo, tip).tree_id if tip is not None else None
            return sorted(config_paths(self.repo, root))

    def next_version(self, config: str) -> int:
        """One more than the highest version recorded for the config (1 when none)."""
        with self._lock, self._faults(f"read the versions of {config}"):
            self._sync_entries()
            return self._max_version.get(config, 0) + 1

    def last_applied_entry(self, config: str) -> AuditEntry | None:
        """The newest applied or degraded record of the config (pending, interrupted and
        rolled-back records are not what the switches hold)."""
        with self._lock, self._faults(f"read the last applied snapshot of {config}"):
            self._sync_entries()
            return self._applied.get(config)

    def last_applied(self, config: str) -> Snapshot | None:
        """The snapshot the switches hold: that of the newest applied or degraded record of
        the config; None when nothing was applied yet."""
        e = self.last_applied_entry(config)
        return self.snapshot_of(e) if e is not None else None

    def newest_entry(self, config: str) -> AuditEntry | None:
        """The newest record of the config, whatever its outcome."""
        with self._lock, self._faults(f"read the history of {config}"):
            for e in self._iter_entries():
                if e.is_record and e.config == config:
                    return e
        return None

    def close_interrupted(self, config: str, reason: str = INTERRUPTED_REASON) -> AuditEntry | None:
        """Close a transaction a killed reconciler left open: when the newest record of the
        config is `pending` (no outcome after it), record `interrupted` for the same version
        and snapshot, with the reason and a Pending-Commit trailer naming the pending record;
        return its entry. Otherwise (nothing pending) None. Call at start, before the first
        transaction."""
        with self._lock:
            pending = self.newest_entry(config)
            if pending is None or pending.outcome != "pending":
                return None
            try:
                snap = self.snapshot_of(pending)
            except UntrustedRecord as e:  # not re-signed as ours: the switches are read back anyway
                log.warning("audit: %s v%s left pending, not closed: %s", config, pending.version, e)
                return None
            self.record(snap, "interrupted", reason=reason, extra_trailers=[("Pending-Commit", pending.commit)])
            log.warning("audit: closed %s v%s left pending by commit %s: %s",
                        config, pending.version, pending.commit[:12], reason)
            return self.newest_entry(config)

    def snapshot_at(self, version: int, config: str | None = None) -> Snapshot:
        """The snapshot recorded as `version` of the config (the only config when None)."""
        config = config or self._only_config()
        with self._lock, self._faults(f"read version {version} of {config}"):
            e = self._version_record(config, version)
        if e is not None:
            return self.snapshot_of(e)
        known = sorted({e.version for e in self.history(config=config) if e.version is not None})
        shown = ", ".join(map(str, known[-10:])) or "none"
        raise AuditError(f"{self.location}: no version {version} of {config} (recorded versions: {shown})")

    def _only_config(self) -> str:
        with self._lock, self._faults("read the history"):
            self._sync_entries()
            configs = sorted(self._max_version)
        if len(configs) == 1:
            return configs[0]
        if not configs:
            raise AuditError(f"{self.location}: the audit branch {self.branch} has no records yet")
        raise AuditError(f"{self.location} holds several configs; name one with --config: {', '.join(configs)}")

    def snapshot_of(self, entry: AuditEntry) -> Snapshot:
        """The snapshot a record commit holds, checked against its trailers."""
        if entry.config is None:
            raise AuditError(f"commit {entry.commit[:12]} is not an audit record (no Config trailer)")
        with self._lock, self._faults(f"read {entry.config} v{entry.version} (commit {entry.commit[:12]})"):
            commit = commit_at(self.repo, entry.commit)
            self._check_trusted(commit, f"{entry.config} v{entry.version} {entry.outcome}")
            snap = self.read_config(commit.tree_id, entry.config, f"commit {entry.commit[:12]}")
        if snap.version != entry.version or snap.digest != entry.digest:
            raise SnapshotError(
                f"commit {entry.commit[:12]}: trailers name {entry.config} v{entry.version} {entry.digest}, "
                f"its tree holds v{snap.version} {snap.digest}"
            )
        return snap

    def _check_trusted(self, commit: pygit2.Commit, what: str) -> None:
        """UntrustedRecord unless the commit is signed by a trusted key (with trust set)."""
        if self.trust is None:
            return
        cid = str(commit.id)
        if cid in self._verified:
            self._verified.move_to_end(cid)
            return
        check = check_commit(commit, self.trust)
        if not check.ok:
            refused = untrusted(commit, what, check)
            log.error("audit: %s", refused)
            raise refused
        self._verified[cid] = None
        while len(self._verified) > _VERSION_CACHE:
            self._verified.popitem(last=False)

    def read_config(self, root: pygit2.Oid, config: str, where: str) -> Snapshot:
        """The snapshot of one config directory in a root tree; every file checked (and each
        file checked once per process: cached by blob id)."""
        path = config_dir(config)
        tree_id = entry_id(self.repo, root, path)
        if tree_id is None:
            raise SnapshotError(f"{where}: no {path}/ in the tree")
        return self.read_config_tree(tree_id, config, f"{where}: {path}")

    def read_config_tree(self, tree_id: pygit2.Oid, config: str, where: str, *, full: bool = False) -> Snapshot:
        """The snapshot of a config directory tree: from its index when it has a good one (see
        _read_indexed), else from every service file; `full`: from the files, always (audit
        verify)."""
        with self._lock, self._faults(f"read {where}"):
            return self._read_config_tree(tree_id, config, where, full)

    def _read_config_tree(self, tree_id: pygit2.Oid, config: str, where: str, full: bool = False) -> Snapshot:
        cached = self._snapshots.get(tree_id)
        if cached is not None and not (full and tree_id in self._from_index):
            return cached
        manifest_id = entry_id(self.repo, tree_id, MANIFEST)
        if manifest_id is None:
            raise SnapshotError(f"{where}: no {MANIFEST}")
        manifest = parse_manifest(blob_data(self.repo, manifest_id), f"{where}/{MANIFEST}")
        if manifest.config != config:
            raise SnapshotError(f"{where}/{MANIFEST}: holds config {manifest.config!r}, not {config!r}")
        services: list[ServiceSnapshot] = []
        for entry_name, _ in entries_at(self.repo, tree_id):
            if entry_name not in (MANIFEST, SERVICES_DIR, INDEX_DIR):
                raise SnapshotError(f"{where}/{entry_name}: unexpected file in a config directory")
        services_tree = entry_id(self.repo, tree_id, SERVICES_DIR)
        indexed = None if full else self._read_indexed(manifest, services_tree, entry_id(self.repo, tree_id, INDEX_DIR), where)
        if indexed is not None:
            self._snapshots[tree_id] = indexed
            self._from_index.add(tree_id)
            self._trim_snapshots()
            return indexed
        if services_tree is not None:
            for ns_name, ns in entries_at(self.repo, services_tree):
                if ns.filemode != TREE:
                    raise SnapshotError(f"{where}/{SERVICES_DIR}/{ns_name}: expected a namespace directory")
                services.extend(self._read_namespace(ns.id, ns_name, f"{where}/{SERVICES_DIR}/{ns_name}"))
        snap = assemble(manifest, services, where)
        self._largest_snapshot = max(self._largest_snapshot, len(snap.services))
        self._snapshots[tree_id] = snap
        self._from_index.discard(tree_id)
        self._trim_snapshots()
        return snap

    def _service_blobs(self, services_tree: pygit2.Oid | None, where: str) -> dict[str, str]:
        """Service name -> blob id (hex) of every service file under services/ (no blob read);
        each namespace directory listed once (cached by tree id, as _read_namespace)."""
        out: dict[str, str] = {}
        if services_tree is None:
            return out
        for ns_name, ns in entries_at(self.repo, services_tree):
            if ns.filemode != TREE:
                raise SnapshotError(f"{where}/{SERVICES_DIR}/{ns_name}: expected a namespace directory")
            listed = self._listings.get(ns.id)
            if listed is None:
                listed = {}
                for f_name, f in entries_at(self.repo, ns.id):
                    if f.filemode != BLOB or not f_name.endswith(".json"):
                        raise SnapshotError(f"{where}/{SERVICES_DIR}/{ns_name}/{f_name}: expected a service .json file")
                    listed[f"{ns_name}/{f_name[:-5]}"] = str(f.id)
                self._listings[ns.id] = listed
                while len(self._listings) > _NAMESPACE_CACHE_LIMIT:
                    self._listings.popitem(last=False)
            out.update(listed)
        return out

    def _index_entries(
        self, index_tree: pygit2.Oid, where: str, skip_checked: bool = False
    ) -> Iterator[tuple[pygit2.Oid, str, dict[str, IndexEntry] | None]]:
        """(blob id, path, entries) of each shard of an index tree; SnapshotError for anything
        that is not a shard in its place. With skip_checked, a shard audit verify has checked
        before is not read: its entries are None."""
        for top, t in entries_at(self.repo, index_tree):
            if t.filemode != TREE:
                raise SnapshotError(f"{where}/{INDEX_DIR}/{top}: expected a directory of shards")
            for file, f in entries_at(self.repo, t.id):
                path = f"{where}/{INDEX_DIR}/{top}/{file}"
                if skip_checked and f.id in self._checked_shards:
                    self._checked_shards.move_to_end(f.id)
                    yield f.id, path, None
                    continue
                if f.filemode != BLOB:
                    raise SnapshotError(f"{path}: expected a shard file")
                parsed = parse_shard(blob_data(self.repo, f.id), path)
                misplaced = [name for name in parsed if shard_of(name) != (top, file)]
                if misplaced:
                    raise SnapshotError(f"{path}: lists {misplaced[0]}, which belongs in another shard")
                yield f.id, path, parsed

    def _read_indexed(
        self, manifest: Manifest, services_tree: pygit2.Oid | None, index_tree: pygit2.Oid | None, where: str
    ) -> Snapshot | None:
        """The snapshot rebuilt from the index without reading a service file, or None (logged)
        when there is none or it is not believed. Believed when its shards list exactly the
        tree's service files (names and blob ids), every entry rebuilds a Service that
        serialises back to the entry's object, the fragment digests combine to the manifest's
        digest (snapshot_of then checks that against the record's trailers, after the trust
        check), and the sampled Services' digests recompute to the ones listed."""
        if index_tree is None:
            if manifest.config not in self._no_index_noted:
                self._no_index_noted.add(manifest.config)
                log.warning(
                    "audit repository %s: %s has no snapshot index (recorded before it existed): reading all %d "
                    "service files; the next record writes the index", self.location, manifest.config, manifest.service_count,
                )
            return None
        try:
            files = self._service_blobs(services_tree, where)
            listed: dict[str, IndexEntry] = {}
            for _, _, parsed in self._index_entries(index_tree, where):
                listed.update(parsed or {})
            wrong = mismatches(listed, files)
            if wrong:
                raise SnapshotError(f"{where}/{INDEX_DIR}: does not match the service files: {'; '.join(wrong)}")
            snap = assemble(manifest, [rebuild(e, f"{where}/{INDEX_DIR}") for e in listed.values()], f"{where}/{INDEX_DIR}")
            # Which Services: a pick seeded by the snapshot's digest, so a read of the same record
            # checks the same ones every time (deterministic, as tests and bug reports need).
            sample = random.Random(manifest.digest).sample(snap.services, min(_SPOT_CHECKS, len(snap.services)))
            for svc in sample:
                actual = hashlib.sha256(svc.fragment_text().encode()).hexdigest()
                if actual != svc.fragment_digest:
                    raise SnapshotError(
                        f"{where}/{INDEX_DIR}: {svc.name}: listed with fragment digest {svc.fragment_digest[:12]}, "
                        f"its object hashes to {actual[:12]}"
                    )
        except SnapshotError as e:
            log.warning("audit repository %s: the index is not used: %s; reading every service file instead", self.location, e)
            return None
        self._largest_snapshot = max(self._largest_snapshot, len(snap.services))
        return snap

    def index_problems(self, tree_id: pygit2.Oid, snap: Snapshot, where: str) -> list[str]:
        """How a config directory's index differs from its service files, `snap` being the
        snapshot read from those files (read_config_tree(full=True)); [] when it matches or
        there is none. For audit verify: each shard's entries are checked once (by blob id)."""
        with self._lock, self._faults(f"check the index of {where}"):
            index_tree = entry_id(self.repo, tree_id, INDEX_DIR)
            if index_tree is None:
                return []
            try:
                files = self._service_blobs(entry_id(self.repo, tree_id, SERVICES_DIR), where)
                listed: dict[str, str] = {}  # name -> blob id the index names
                problems: list[str] = []
                for shard_id, path, parsed in self._index_entries(index_tree, where, skip_checked=True):
                    if parsed is None:
                        listed.update(self._checked_shards[shard_id])
                        continue
                    names = {name: e.blob for name, e in parsed.items()}
                    listed.update(names)
                    wrong = [
                        f"{path}: {name}: the entry is not what its service file holds"
                        for name, e in sorted(parsed.items())
                        if files.get(name) == e.blob and not _describes(e, snap.by_name.get(name))
                    ]
                    problems += wrong[:3]
                    if not wrong and all(files.get(name) == blob for name, blob in names.items()):
                        self._remember_shard(shard_id, names)
                problems += [f"{where}/{INDEX_DIR}: {m}" for m in mismatches(listed, files)]
                return problems
            except SnapshotError as e:
                return [str(e)]

    def _remember_shard(self, shard_id: pygit2.Oid, names: dict[str, str]) -> None:
        self._checked_shards[shard_id] = names
        while len(self._checked_shards) > _SHARD_CACHE:
            self._checked_shards.popitem(last=False)

    def _read_namespace(self, tree_id: pygit2.Oid, ns: str, where: str) -> tuple[ServiceSnapshot, ...]:
        """The services of one namespace directory, cached by its tree id: consecutive
        snapshots share all but the namespaces that changed."""
        cached = self._namespaces.get(tree_id)
        if cached is not None:
            return cached
        out = []
        for f_name, f in entries_at(self.repo, tree_id):
            file_where = f"{where}/{f_name}"
            if f.filemode != BLOB or not f_name.endswith(".json"):
                raise SnapshotError(f"{file_where}: expected a service .json file")
            name = f"{ns}/{f_name[:-5]}"
            svc = self._services.get(f.id)
            if svc is None:
                svc = parse_service_file(blob_data(self.repo, f.id), file_where, name)
                self._remember_service(f.id, svc)
            else:
                self._services.move_to_end(f.id)
                if svc.name != name:
                    raise SnapshotError(f"{file_where}: the file holds service {svc.name!r}, not {name!r}")
            out.append(svc)
        self._namespaces[tree_id] = result = tuple(out)
        while len(self._namespaces) > _NAMESPACE_CACHE_LIMIT:  # the oldest read go first
            self._namespaces.popitem(last=False)
        return result

    # --- maintenance --------------------------------------------------------------------------

    def compact(self, max_packs: int = 32) -> int:
        """Pack loose objects, and roll small packs up past max_packs (see maintenance.py);
        returns how many objects were packed."""
        with self._lock, self._faults("pack loose objects"):
            n = pack_loose_objects(self.repo)
            self._commits_since_pack = 0
            roll_up_packs(self.repo, max_packs)
            # A fresh handle each time: libgit2 must not keep looking in packs that were rolled
            # up, and the old handle's native caches (object cache, pack windows and indexes)
            # are released, so a long-running writer's memory stays level (bench/bench_soak.py).
            self.repo = pygit2.Repository(self.repo.path)
            if self.remote is not None:
                self.remote.repo = self.repo
            return n


def _describes(e: IndexEntry, svc: ServiceSnapshot | None) -> bool:
    """Whether an index entry is exactly the Service its file holds (read and checked)."""
    return svc is not None and (e.digest, e.service, e.buckets) == (svc.fragment_digest, svc.to_json(), buckets_of(svc))


def _aware(t: datetime | None) -> datetime | None:
    """Naive datetimes are taken as UTC, so they compare with commit times."""
    return t.replace(tzinfo=timezone.utc) if t is not None and t.tzinfo is None else t
