"""Checking the audit history (`p4kube audit verify`) and intent commits (like Flux's spec.verify).

verify_history walks every commit of the audit branch and checks:
  - each config directory in its tree parses and matches the schema and its digest (each
    distinct directory, file and blob checked once: unchanged ones are shared by id), and its
    index (index.py), when it has one, describes exactly its service files;
  - a record commit's trailers name a known outcome and the version and digest its tree holds;
  - a commit changes only the config its trailers name (a merge only what its parents held),
    so a snapshot cannot be slipped into the history under another record;
  - with trusted keys: every commit carries a good signature by one of them;
  - per config, the version sequence has no gaps ("v5 missing between v4 and v6": a record
    removed by rewriting history), and every pending record has an outcome after it (applied,
    degraded, rolled-back, interrupted); the newest record of a config may be pending (a
    transaction in flight): a warning, not a failure.

verify_intent_commit is the gate before apply: only intent whose HEAD commit is signed by a
trusted key passes; the caller records the refusal (its reason is one line, for the Reason
trailer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pygit2

from ..snapshot import SnapshotError
from .errors import AuditError
from .message import OUTCOMES, AuditEntry
from .repo import AuditRepo
from .signing import TrustedKeys, commit_signature
from .trees import config_paths
from .trust import check_commit


@dataclass(frozen=True)
class VerifyFailure:
    commit: str
    message: str

    def __str__(self) -> str:
        return f"{self.commit[:12]}: {self.message}"


@dataclass(frozen=True)
class VerifyReport:
    commits: int = 0
    records: int = 0
    snapshots: int = 0  # distinct config directories checked
    signatures: int = 0  # good signatures (when keys were given)
    failures: tuple[VerifyFailure, ...] = field(default=())
    warnings: tuple[VerifyFailure, ...] = field(default=())  # not failures: e.g. a transaction in flight

    @property
    def ok(self) -> bool:
        return not self.failures

    def format(self) -> str:
        head = (
            f"{self.commits} commits ({self.records} records), {self.snapshots} distinct snapshots checked"
            + (f", {self.signatures} good signatures" if self.signatures else "")
        )
        warnings = [f"  warning: {w}" for w in self.warnings]
        if self.ok:
            return "\n".join([f"audit history OK: {head}"] + warnings) + "\n"
        lines = [f"audit history FAILED: {len(self.failures)} problem(s) in {head}"]
        lines += [f"  {f}" for f in self.failures]
        return "\n".join(lines + warnings) + "\n"


def verify_history(audit: AuditRepo, trusted: TrustedKeys | None = None) -> VerifyReport:
    failures: list[VerifyFailure] = []
    # config tree id -> (version, digest, intent commit, cluster rv), or the error it fails with
    checked: dict[pygit2.Oid, tuple[int, str, str | None, str | None] | str] = {}
    commits = records = signatures = 0
    repo = audit.repo
    sequence: dict[str, list[AuditEntry]] = {}  # config -> its records, newest first
    for commit, entry in audit.commits():
        commits += 1
        cid = entry.commit
        if entry.is_record and entry.config is not None:
            sequence.setdefault(entry.config, []).append(entry)

        def fail(msg: str) -> None:
            failures.append(VerifyFailure(cid, msg))

        configs = config_paths(repo, commit.tree_id)
        for config, tree_id in sorted(configs.items()):
            if tree_id in checked:
                continue  # reported (if broken) at the newest commit holding it
            try:
                snap = audit.read_config_tree(tree_id, config, f"configs/{config}", full=True)
                checked[tree_id] = (snap.version, snap.digest, snap.intent_commit, snap.cluster_resource_version)
                for problem in audit.index_problems(tree_id, snap, f"configs/{config}"):
                    fail(f"index: {problem}")
            except (SnapshotError, AuditError) as e:
                checked[tree_id] = str(e)
                fail(str(e))

        parents = [config_paths(repo, p.tree_id) for p in commit.parents]
        every = set(configs).union(*(p.keys() for p in parents))
        # A config "changed" here when the commit holds it differently from every parent.
        changed = sorted(c for c in every if not parents or all(p.get(c) != configs.get(c) for p in parents))
        if entry.is_record:
            records += 1
            if entry.outcome not in OUTCOMES:
                fail(f"Outcome {entry.outcome!r} is not one of {', '.join(OUTCOMES)}")
            held = checked.get(configs[entry.config]) if entry.config in configs else None
            if entry.config not in configs:
                fail(f"trailers name config {entry.config}, which is not in the tree")
            elif isinstance(held, tuple):
                version, digest, intent, rv = held
                if (version, digest) != (entry.version, entry.digest):
                    fail(
                        f"trailers name {entry.config} v{entry.trailers.get('Snapshot-Version')} {entry.digest}; "
                        f"the tree holds v{version} {digest}"
                    )
                elif (intent, rv) != (entry.intent_commit, entry.cluster_resource_version):
                    fail("Intent-Commit/Cluster-Resource-Version trailers differ from the snapshot's sources")
            others = [c for c in changed if c != entry.config]
            if others:
                fail(f"record of {entry.config} also changes {', '.join(others)}")
        elif changed:
            what = "merge holds a version of" if len(commit.parents) > 1 else "changes"
            fail(f"{what} {', '.join(changed)} that no record commit wrote (no Config/Outcome trailers)")

        if trusted is not None:
            check = check_commit(commit, trusted)
            if check.ok:
                signatures += 1
            else:
                fail(f"signature: {check.reason}")
    warnings: list[VerifyFailure] = []
    for config, entries in sorted(sequence.items()):
        sequence_failures, sequence_warnings = check_sequence(config, entries, repo)
        failures += sequence_failures
        warnings += sequence_warnings
    return VerifyReport(commits, records, len(checked), signatures, tuple(failures), tuple(warnings))


def _versions_text(first: int, last: int) -> str:
    return f"v{first}" if first == last else f"v{first}-v{last}"


def check_sequence(
    config: str, entries: list[AuditEntry], repo: pygit2.Repository | None = None
) -> tuple[list[VerifyFailure], list[VerifyFailure]]:
    """(failures, warnings) for one config's records, given newest first: gaps in the version
    sequence, a version recorded with two snapshots, versions first recorded out of order, a
    new version whose first record is not `pending` (a transaction always writes pending
    first: an "applied" out of nowhere is forged or hand-made), a version whose first record
    does not descend from the previous version's (with `repo`: the chain of parents broken),
    and pending records without an outcome after them (the newest record excepted: a warning)."""
    failures: list[VerifyFailure] = []
    warnings: list[VerifyFailure] = []
    first_of: dict[int, AuditEntry] = {}  # version -> its oldest record
    doubled: set[tuple[int, str | None]] = set()
    newest_seen = 0
    for e in reversed(entries):  # oldest first
        if e.version is None:
            continue
        first = first_of.get(e.version)
        if first is not None:
            if first.digest != e.digest and (e.version, e.digest) not in doubled:
                doubled.add((e.version, e.digest))  # once per other snapshot, at its oldest record
                failures.append(VerifyFailure(
                    e.commit, f"{config}: v{e.version} recorded with two snapshots ({first.digest} in "
                    f"{first.commit[:12]}, {e.digest} here): a version means one snapshot"))
            continue
        first_of[e.version] = e
        if e.version < newest_seen:
            failures.append(VerifyFailure(
                e.commit, f"{config}: v{e.version} first recorded after v{newest_seen} (versions out of sequence)"))
        elif e.outcome != "pending" and e.version > newest_seen:
            # A warning: records written by hand or by tools are legitimate; with keys the
            # signature check is what refuses a forged record.
            warnings.append(VerifyFailure(
                e.commit, f"{config}: v{e.version} first recorded as {e.outcome}, with no pending record before it "
                f"(a transaction records pending first: forged or hand-made?)"))
        newest_seen = max(newest_seen, e.version)
    versions = sorted(first_of)
    if repo is not None:
        for a, b in zip(versions, versions[1:]):
            if not repo.descendant_of(first_of[b].commit, first_of[a].commit):
                failures.append(VerifyFailure(
                    first_of[b].commit, f"{config}: v{b}'s first record does not descend from v{a}'s "
                    f"({first_of[a].commit[:12]}): the chain of parents is broken"))
    for a, b in zip(versions, versions[1:]):
        if b > a + 1:
            failures.append(VerifyFailure(
                first_of[b].commit,
                f"{config}: {_versions_text(a + 1, b - 1)} missing between v{a} and v{b} "
                f"(records removed from the history?)",
            ))
    open_pending: dict[int | None, AuditEntry] = {}  # version -> its newest pending record not yet closed
    for e in reversed(entries):  # oldest first
        if e.outcome == "pending":
            open_pending[e.version] = e
        else:
            open_pending.pop(e.version, None)
    newest = entries[0] if entries else None
    for version, e in sorted(open_pending.items(), key=lambda kv: kv[1].time):
        if newest is not None and e.commit == newest.commit:
            warnings.append(VerifyFailure(
                e.commit,
                f"{config}: v{version} is pending without an outcome yet (the newest record: a transaction in "
                f"flight, or a reconciler stopped; the next start records it as interrupted)",
            ))
        else:
            failures.append(VerifyFailure(
                e.commit,
                f"{config}: v{version} pending has no outcome after it (the transaction was never closed)",
            ))
    return failures, warnings


def verify_intent_commit(repo_path: str | os.PathLike[str], trusted: TrustedKeys, ref: str = "HEAD") -> tuple[bool, str]:
    """(True, who signed it) when the intent checkout's `ref` commit is signed by a trusted
    key, else (False, why not). Tool failures (ssh-keygen or gpg missing) raise SignatureError:
    they are not the intent's fault."""
    found = pygit2.discover_repository(str(repo_path))
    if found is None:
        return False, f"{repo_path} is not a Git checkout: intent verification needs the commit it came from"
    repo = pygit2.Repository(found)
    try:
        commit = repo.revparse_single(ref).peel(pygit2.Commit)
    except (KeyError, pygit2.GitError, ValueError) as e:
        return False, f"{repo_path}: no commit at {ref} ({e})"
    short = str(commit.id)[:12]
    summary = commit.message.split("\n", 1)[0][:60]
    sig = commit_signature(commit)
    if sig is None:
        return False, (
            f"intent commit {short} ({summary!r} by {commit.author.name} <{commit.author.email}>) is not signed; "
            f"only commits signed by a trusted key are applied"
        )
    check = trusted.verify(sig[1], sig[0])
    if check.ok:
        return True, check.signer or check.reason
    return False, f"intent commit {short} ({summary!r}) refused: {check.reason}"


def trusted_keys(allowed_signers: str | Path | None, gpg_home: str | Path | None) -> TrustedKeys | None:
    """TrustedKeys from optional CLI/config values; None when neither is given."""
    if allowed_signers is None and gpg_home is None:
        return None
    return TrustedKeys(Path(allowed_signers) if allowed_signers else None, Path(gpg_home) if gpg_home else None)
