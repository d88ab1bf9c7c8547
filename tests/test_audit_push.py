"""The audit remote: pushes to real bare repositories (over the local transport and over smart
HTTP with Basic auth), retry with backoff, and a concurrent writer's rejection resolved."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pygit2
import pytest
from helpers import needs_git
from test_audit_support import Clock, series

from reconciler.audit import AuditError, AuditRepo, Credentials, PushError, RetryPolicy, verify_history
from reconciler.audit.push import CredentialType, _Callbacks, looks_like_url, redact, redact_url


class Sleeper:
    """Records the delays asked for instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def remote(tmp_path) -> Path:
    path = tmp_path / "remote.git"
    pygit2.init_repository(str(path), bare=True, initial_head="main")
    return path


def _remote_log(path: Path) -> list[str]:
    repo = pygit2.Repository(str(path))
    ref = repo.references.get("refs/heads/main")
    if ref is None:
        return []
    return [str(c.id) for c in repo.walk(ref.target)]


def _open(remote: Path, workdir: Path, **kw) -> AuditRepo:
    kw.setdefault("clock", Clock())
    kw.setdefault("sleep", Sleeper())
    return AuditRepo.open_or_init(str(remote), workdir=workdir, **kw)


def test_each_record_is_pushed_to_the_bare_remote(tmp_path, remote) -> None:
    s = series()
    audit = _open(remote, tmp_path / "work")
    c1 = audit.record(s.snap, "pending")
    c2 = audit.record(s.snap, "applied")
    assert _remote_log(remote) == [c2, c1]
    assert audit.last_push_error is None
    # a second reconciler clones the remote into its own (missing) work directory
    other = _open(remote, tmp_path / "elsewhere" / "work")
    assert other.head == c2
    assert other.last_applied(s.snap.config) == s.snap
    assert verify_history(other).ok


def test_a_clone_catches_up_then_pushes_fast_forward(tmp_path, remote) -> None:
    s = series()
    first = _open(remote, tmp_path / "a")
    first.record(s.snap, "applied")
    second = _open(remote, tmp_path / "b")  # cloned at v1
    first.record(s.scale(), "pending")  # the remote moves on
    reopened = _open(remote, tmp_path / "b")  # fetches: fast-forward, no merge
    assert reopened.head == first.head
    reopened.record(s.snap, "applied")
    log = _remote_log(remote)
    assert log[0] == reopened.head and len(log) == 3
    assert all(len(pygit2.Repository(str(remote))[c].parents) <= 1 for c in log)
    del second


def test_concurrent_writer_rejection_is_merged_keeping_both_sides(tmp_path, remote) -> None:
    a, b = series(name="lb-a"), series(name="lb-b", seed=4)
    one = _open(remote, tmp_path / "one")
    one.record(a.snap, "applied")
    sleeper = Sleeper()
    two = _open(remote, tmp_path / "two", sleep=sleeper)  # clone at one's first commit
    theirs = [one.record(a.scale(), "pending"), one.record(a.snap, "applied")]  # pushed
    ours = two.record(b.snap, "pending")  # rejected (non-fast-forward), fetched, merged, pushed
    remote_repo = pygit2.Repository(str(remote))
    tip = remote_repo.references["refs/heads/main"].target
    assert str(tip) == two.head
    merge = remote_repo[tip]
    assert [str(p.id) for p in merge.parents] == [ours, theirs[-1]]
    log = set(_remote_log(remote))
    assert set(theirs) | {ours} <= log
    assert sleeper.delays == []  # a first merge is progress, not a reason to wait
    # the merged tree holds both configs' newest snapshots
    assert two.snapshot_at(2, a.snap.config) == a.snap
    assert two.snapshot_at(1, b.snap.config) == b.snap
    assert two.last_applied(a.snap.config) == a.snap
    report = verify_history(two)
    assert report.ok, report.format()
    # and the other writer merges nothing back: it just fast-forwards on its next record
    one.record(a.scale(), "pending")
    assert remote_repo.references["refs/heads/main"].target == pygit2.Oid(hex=one.head)
    assert pygit2.Oid(hex=two.head) in [p.id for p in remote_repo[pygit2.Oid(hex=one.head)].parents]


def test_same_config_changed_on_both_sides_keeps_ours_and_both_commits(tmp_path, remote, caplog) -> None:
    s = series()
    one = _open(remote, tmp_path / "one")
    one.record(s.snap, "applied")
    two = _open(remote, tmp_path / "two")
    theirs = one.record(s.scale(s.keys[0]), "pending")
    mine_snap = series().scale(s.keys[1])  # another v2 of the same config (a deposed leader's)
    with caplog.at_level(logging.WARNING, logger="p4kube.audit"):
        ours = two.record(mine_snap, "pending")
    assert "both sides changed configs/" in caplog.text
    merge = two.repo[two.head]
    assert [str(p.id) for p in merge.parents] == [ours, theirs]
    assert "this side's version is in the tree" in merge.message
    cfg = f"configs/{s.snap.config}"
    assert merge.tree[cfg].id == two.repo[ours].tree[cfg].id
    assert {ours, theirs} <= set(_remote_log(remote))


def test_unreachable_remote_retries_with_backoff_then_keeps_the_commit(tmp_path, remote, caplog) -> None:
    s = series()
    sleeper = Sleeper()
    audit = _open(remote, tmp_path / "w", sleep=sleeper, retry=RetryPolicy(attempts=4, initial_delay=0.5, multiplier=2, max_delay=1.5))
    audit.record(s.snap, "pending")
    moved = remote.with_name("moved.git")
    remote.rename(moved)
    with caplog.at_level(logging.WARNING, logger="p4kube.audit"):
        cid = audit.record(s.snap, "applied")
    assert sleeper.delays == [0.5, 1.0, 1.5]
    assert "push of main" in audit.last_push_error and "after 4 attempts" in audit.last_push_error
    assert f"audit commit {cid[:12]} is recorded locally but not pushed yet" in caplog.text
    assert audit.head == cid
    moved.rename(remote)
    assert audit.push().attempts == 1
    assert _remote_log(remote)[0] == cid
    assert audit.last_push_error is None


def test_strict_push_raises_with_the_commit(tmp_path, remote) -> None:
    s = series()
    audit = _open(remote, tmp_path / "w", strict_push=True, retry=RetryPolicy(attempts=2, initial_delay=0))
    audit.record(s.snap, "pending")
    shutil.rmtree(remote)
    with pytest.raises(PushError) as info:
        audit.record(s.snap, "applied")
    assert info.value.commit == audit.head
    assert "failed after 2 attempts" in str(info.value)


def test_open_fails_clearly_when_the_remote_cannot_be_fetched(tmp_path) -> None:
    with pytest.raises(AuditError, match=r"cannot fetch main from .*nowhere"):
        AuditRepo.open_or_init(str(tmp_path / "nowhere.git"), workdir=tmp_path / "w")


def test_retry_policy_delays() -> None:
    d = RetryPolicy(attempts=6, initial_delay=0.25, multiplier=3, max_delay=5).delays()
    assert [next(d) for _ in range(5)] == [0.25, 0.75, 2.25, 5, 5]
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


# --- credentials ---------------------------------------------------------------------------------


def test_credentials_from_env_and_files(tmp_path) -> None:
    pw = tmp_path / "password"
    pw.write_text("first-token\n")
    creds = Credentials.from_env({"P4KUBE_AUDIT_USERNAME": "bot", "P4KUBE_AUDIT_PASSWORD_FILE": str(pw)})
    cb = _Callbacks(creds, "https://git.example.com/audit.git")
    up = cb.credentials("https://git.example.com/audit.git", None, CredentialType.USERPASS_PLAINTEXT)
    assert isinstance(up, pygit2.UserPass) and up.credential_tuple == ("bot", "first-token")
    pw.write_text("rotated-token\n")  # a rotated Secret is read on the next request
    up = _Callbacks(creds, "u").credentials("https://git.example.com/audit.git", None, CredentialType.USERPASS_PLAINTEXT)
    assert up.credential_tuple == ("bot", "rotated-token")
    with pytest.raises(AuditError, match="refused the configured credentials"):
        cb.credentials("https://git.example.com/audit.git", None, CredentialType.USERPASS_PLAINTEXT)

    key = tmp_path / "id_ed25519"
    ssh = Credentials.from_env({"P4KUBE_AUDIT_SSH_KEY": str(key)})
    kp = _Callbacks(ssh, "git@example.com:ops/audit.git").credentials("ssh://git@example.com/ops/audit.git", "git", CredentialType.SSH_KEY)
    assert isinstance(kp, pygit2.Keypair)
    assert kp.credential_tuple == ("git", f"{key}.pub", str(key), "")

    with pytest.raises(AuditError, match="none are configured: set P4KUBE_AUDIT_PASSWORD"):
        _Callbacks(Credentials(), "x").credentials("https://h/x.git", None, CredentialType.USERPASS_PLAINTEXT)


def test_secrets_never_show() -> None:
    creds = Credentials(username="bot", password="s3cr3t-value")
    assert "s3cr3t-value" not in repr(creds)
    assert redact_url("https://bot:s3cr3t@git.example.com/a.git") == "https://***@git.example.com/a.git"
    assert redact("failed for https://bot:tok@h/x.git with s3cr3t-value", creds.secrets()) == "failed for https://***@h/x.git with ***"
    assert looks_like_url("git@github.com:org/audit.git") and looks_like_url("https://h/a.git")
    assert not looks_like_url("/var/lib/p4kube/audit") and not looks_like_url("relative/dir")


# --- over smart HTTP with Basic auth ---------------------------------------------------------------


class _GitHttp(BaseHTTPRequestHandler):
    """`git http-backend` behind Basic auth: what a Git server does, on 127.0.0.1."""

    root: str = ""
    user, password = "audit-bot", "tok-8f3a1c"
    requests: list[str] = []

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        self.requests.append(self.headers.get("Authorization") or "")
        body = self._body() if self.command == "POST" else b""
        want = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if self.headers.get("Authorization") != want:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="audit"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": self.user,
            "REMOTE_ADDR": "127.0.0.1",
        }
        p = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, timeout=30)
        head, _, payload = p.stdout.replace(b"\r\n", b"\n").partition(b"\n\n") if b"\r\n\r\n" not in p.stdout else p.stdout.partition(b"\r\n\r\n")
        headers = [line.split(":", 1) for line in head.decode().splitlines() if ":" in line]
        status = next((int(v.split()[0]) for k, v in headers if k.lower() == "status"), 200)
        self.send_response(status)
        for k, v in headers:
            if k.lower() != "status":
                self.send_header(k, v.strip())
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def http_remote(tmp_path):
    root = tmp_path / "srv"
    pygit2.init_repository(str(root / "audit.git"), bare=True, initial_head="main")
    handler = type("Handler", (_GitHttp,), {"root": str(root), "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/audit.git", root / "audit.git", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@needs_git  # its http-backend serves the remote
def test_push_over_http_with_credentials_from_env(tmp_path, http_remote, monkeypatch, caplog) -> None:
    url, bare, handler = http_remote
    monkeypatch.setenv("P4KUBE_AUDIT_USERNAME", handler.user)
    monkeypatch.setenv("P4KUBE_AUDIT_PASSWORD", handler.password)
    s = series()
    with caplog.at_level(logging.DEBUG):
        audit = AuditRepo.open_or_init(url, workdir=tmp_path / "w", clock=Clock(), sleep=Sleeper())
        cid = audit.record(s.snap, "applied")
    assert _remote_log(bare) == [cid]
    assert any(r.startswith("Basic ") for r in handler.requests)
    assert handler.password not in caplog.text
    assert handler.password not in (audit.repo.path and Path(audit.repo.path, "config").read_text())

    monkeypatch.setenv("P4KUBE_AUDIT_PASSWORD", "wrong-password-123")
    with pytest.raises(AuditError) as info:
        AuditRepo.open_or_init(url, workdir=tmp_path / "w2", sleep=Sleeper())
    assert "wrong-password-123" not in str(info.value)
    assert "refused the configured credentials" in str(info.value)
