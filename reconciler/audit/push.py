"""The audit repository's remote: fetch, push with bounded exponential backoff, and a rejected
non-fast-forward resolved by fetching and merging, so that neither side's commits are lost.

Credentials come from the environment or from files (a mounted Kubernetes Secret): files are
read when the remote asks, so a rotated Secret is picked up without a restart. They never
appear in logs, errors or reprs; URLs are shown with any user:password@ part replaced.

    P4KUBE_AUDIT_USERNAME                  HTTPS user name (default: the one in the URL, else "git")
    P4KUBE_AUDIT_PASSWORD                  HTTPS password or token
    P4KUBE_AUDIT_PASSWORD_FILE             ... or a file holding it
    P4KUBE_AUDIT_SSH_KEY                   SSH private key file
    P4KUBE_AUDIT_SSH_PUBLIC_KEY            its public key file (default: SSH_KEY + ".pub")
    P4KUBE_AUDIT_SSH_PASSPHRASE_FILE       a file holding the private key's passphrase
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, cast

import pygit2

from .errors import AuditError, AuditUnavailable, PushError, fault_errno

log = logging.getLogger("p4kube.audit")
ORIGIN = "origin"
CredentialType = pygit2.enums.CredentialType


class RemoteRewritten(AuditError):
    """The remote's branch no longer descends from what this reconciler last saw there."""


def redact_url(url: str) -> str:
    """The URL with any userinfo (user:password@) replaced, for logs and errors."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1***@", str(url))


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Text from libgit2 with URLs' userinfo and the given secrets removed."""
    out = re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@", r"\1***@", str(text))
    for s in secrets:
        if s:
            out = out.replace(s, "***")
    return out


def looks_like_url(location: str) -> bool:
    """scheme://... or scp-like user@host:path (what git itself accepts as a remote)."""
    return "://" in location or re.match(r"^[A-Za-z0-9._-]+@[A-Za-z0-9._-]+:", location) is not None


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None
    ssh_key: Path | None = None
    ssh_public_key: Path | None = None
    ssh_passphrase_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Credentials":
        env = os.environ if environ is None else environ

        def path(name: str) -> Path | None:
            v = env.get(name)
            return Path(v) if v else None

        return cls(
            username=env.get("P4KUBE_AUDIT_USERNAME") or None,
            password=env.get("P4KUBE_AUDIT_PASSWORD") or None,
            password_file=path("P4KUBE_AUDIT_PASSWORD_FILE"),
            ssh_key=path("P4KUBE_AUDIT_SSH_KEY"),
            ssh_public_key=path("P4KUBE_AUDIT_SSH_PUBLIC_KEY"),
            ssh_passphrase_file=path("P4KUBE_AUDIT_SSH_PASSPHRASE_FILE"),
        )

    def read_password(self) -> str | None:
        if self.password is not None:
            return self.password
        if self.password_file is not None:
            return _read_secret(self.password_file, "password file")
        return None

    def secrets(self) -> tuple[str, ...]:
        """Values to scrub from any text shown to people."""
        out = []
        try:
            pw = self.read_password()
        except AuditError:
            pw = None
        if pw:
            out.append(pw)
        return tuple(out)


def _read_secret(path: Path, what: str) -> str:
    try:
        return Path(path).read_text().strip("\r\n")
    except OSError as e:
        raise AuditError(f"cannot read the audit remote's {what} {path}: {e.strerror}") from e


class _Callbacks(pygit2.RemoteCallbacks):
    """Answers credential requests (once per kind, so a wrong secret fails instead of looping)
    and collects references the remote refused."""

    def __init__(self, creds: Credentials, url: str) -> None:
        super().__init__()
        self._creds = creds
        self._url = url
        self._asked: set[int] = set()
        self.rejected: list[tuple[str, str]] = []

    def credentials(
        self, url: str, username_from_url: str | None, allowed_types: CredentialType
    ) -> pygit2.UserPass | pygit2.Keypair:
        c = self._creds
        where = redact_url(url)
        if allowed_types & CredentialType.USERPASS_PLAINTEXT and CredentialType.USERPASS_PLAINTEXT not in self._asked:
            password = c.read_password()
            if password is not None:
                self._asked.add(CredentialType.USERPASS_PLAINTEXT)
                return pygit2.UserPass(c.username or username_from_url or "git", password)
        if allowed_types & CredentialType.SSH_KEY and CredentialType.SSH_KEY not in self._asked and c.ssh_key is not None:
            self._asked.add(CredentialType.SSH_KEY)
            pub = c.ssh_public_key or Path(f"{c.ssh_key}.pub")
            passphrase = _read_secret(c.ssh_passphrase_file, "SSH passphrase file") if c.ssh_passphrase_file else ""
            return pygit2.Keypair(username_from_url or c.username or "git", str(pub), str(c.ssh_key), passphrase)
        if self._asked:
            raise AuditError(f"{where} refused the configured credentials")
        raise AuditError(
            f"{where} asks for credentials ({_kinds(allowed_types)}) and none are configured: set "
            "P4KUBE_AUDIT_PASSWORD(_FILE) for HTTPS or P4KUBE_AUDIT_SSH_KEY for SSH"
        )

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message:
            self.rejected.append((refname, message))


def _kinds(allowed: CredentialType) -> str:
    names = [n.lower().replace("_", " ") for n, v in CredentialType.__members__.items() if allowed & v]
    return ", ".join(names) or "unknown"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: attempts in all, delays initial * multiplier**n, capped."""

    attempts: int = 5
    initial_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_delay < 0 or self.multiplier < 1 or self.max_delay < 0:
            raise ValueError("RetryPolicy needs attempts >= 1, delays >= 0 and multiplier >= 1")

    def delays(self) -> Iterator[float]:
        d = self.initial_delay
        while True:
            yield min(d, self.max_delay)
            d *= self.multiplier


@dataclass(frozen=True)
class PushResult:
    attempts: int
    merges: int  # remote histories merged in to resolve rejections


class RemoteSync:
    """The remote of one branch of a local (bare) repository."""

    def __init__(
        self,
        repo: pygit2.Repository,
        url: str,
        branch: str,
        credentials: Credentials | None = None,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
        *,
        refuse_rewrites: bool = True,
    ) -> None:
        self.repo = repo
        self.refuse_rewrites = refuse_rewrites
        self.rewritten: str | None = None  # why the remote's history is refused, once seen
        self.url = url
        self.branch = branch
        self.credentials = credentials if credentials is not None else Credentials.from_env()
        self.retry = retry
        self.sleep = sleep
        self.where = redact_url(url)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*:[^/@]*@", url):
            log.warning("the audit remote URL %s carries a password, which Git stores in %s/config; "
                        "prefer P4KUBE_AUDIT_PASSWORD_FILE", self.where, repo.path.rstrip("/"))
        names = list(repo.remotes.names())
        if ORIGIN not in names:
            repo.remotes.create(ORIGIN, url)
        elif repo.remotes[ORIGIN].url != url:
            repo.remotes.set_url(ORIGIN, url)

    @property
    def tracking_ref(self) -> str:
        return sys.intern(f"refs/remotes/{ORIGIN}/{self.branch}")  # a pygit2 lookup key: see trees.git_name

    def _callbacks(self) -> _Callbacks:
        return _Callbacks(self.credentials, self.url)

    def _error(self, e: BaseException) -> str:
        return redact(str(e), self.credentials.secrets())

    def fetch(self) -> pygit2.Oid | None:
        """Fetch the branch into refs/remotes/origin/<branch>; its tip, or None if the remote
        has no such branch yet. Raises AuditError when the remote cannot be reached."""
        spec = f"+refs/heads/{self.branch}:{self.tracking_ref}"
        before = self.repo.references.get(self.tracking_ref)
        seen = before.target if before is not None else None  # what we last saw (or pushed) there
        try:
            self.repo.remotes[ORIGIN].fetch([spec], callbacks=self._callbacks())
        except (pygit2.GitError, OSError) as e:
            cause = self._error(e)
            if "Connection refused" in cause:
                cause += " (nothing listens there: is the Git server up, and the URL's host and port right?)"
            raise AuditUnavailable(f"audit remote {self.where}: cannot fetch {self.branch} from {self.where}: {cause}", fault_errno(e)) from None
        except AuditError as e:  # raised by our credentials callback, through libgit2
            raise AuditUnavailable(f"audit remote {self.where}: cannot fetch {self.branch} from {self.where}: {e}") from None
        ref = self.repo.references.get(self.tracking_ref)
        theirs = cast(pygit2.Oid, ref.target) if ref is not None else None  # a branch ref is direct: an Oid
        if self.refuse_rewrites and seen is not None and theirs != seen and (
                theirs is None or not self.repo.descendant_of(theirs, seen)):
            # History we saw (and may have pushed) is gone from the remote: a force-push or a
            # deleted branch. Merging it would adopt whatever replaced it; refuse, and keep the
            # tracking ref where it was so that every later fetch refuses too.
            self.repo.references.create(self.tracking_ref, seen, force=True)
            now = f"now at {str(theirs)[:12]}" if theirs is not None else "deleted"
            self.rewritten = (
                f"audit remote {self.where}: branch {self.branch} was rewritten ({now}, which does not descend from "
                f"{str(seen)[:12]}, its tip when this reconciler last fetched or pushed; a force-push?); refusing to "
                f"merge it: nothing recorded. Restore the remote's history, or point --audit-repo at a new branch"
            )
            raise RemoteRewritten(self.rewritten)
        return theirs

    def push(self, local_tip: Callable[[], pygit2.Oid | None], integrate: Callable[[pygit2.Oid], None]) -> PushResult:
        """Push the branch. On failure: fetch; if the remote has commits we lack, `integrate`
        them (merge) and push again; otherwise wait (backoff) and retry. Bounded."""
        delays = self.retry.delays()
        merges = 0
        last = ""
        spec = f"refs/heads/{self.branch}:refs/heads/{self.branch}"
        for attempt in range(1, self.retry.attempts + 1):
            cb = self._callbacks()
            try:
                self.repo.remotes[ORIGIN].push([spec], callbacks=cb)
                if not cb.rejected:
                    self.repo.references.create(self.tracking_ref, cast(pygit2.Oid, local_tip()), force=True)  # pushed: a tip
                    if attempt > 1:
                        log.info("pushed %s to %s after %d attempts (%d merges)", self.branch, self.where, attempt, merges)
                    return PushResult(attempt, merges)
                last = "; ".join(f"{ref}: {msg}" for ref, msg in cb.rejected)
            except (pygit2.GitError, OSError, AuditError) as e:
                last = self._error(e)
            log.warning("push of %s to %s failed (attempt %d/%d): %s", self.branch, self.where, attempt, self.retry.attempts, last)
            merged_now = False
            try:
                theirs = self.fetch()
                ours = local_tip()
                if theirs is not None and ours is not None and theirs != ours and not self.repo.descendant_of(ours, theirs):
                    integrate(theirs)
                    merges += 1
                    merged_now = True
            except RemoteRewritten as e:
                raise PushError(str(e)) from None  # retrying cannot help: never merged
            except AuditError as e:
                last = str(e)
                log.warning("%s", last)
            if attempt < self.retry.attempts and not (merged_now and merges == 1):
                self.sleep(next(delays))  # a first merge is progress: push it at once
        raise PushError(f"push of {self.branch} to {self.where} failed after {self.retry.attempts} attempts: {last}")
