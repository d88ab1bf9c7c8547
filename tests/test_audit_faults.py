"""Faults of the audit repository, made for real on disk: each is one AuditError naming what and
where, never a traceback, and a failed record leaves the branch as it was.

The tests run as root, where chmod does not stop writes. The mechanisms used instead:
  - permission denied: a child process run as uid 65534 (setpriv) against a root-owned repository;
  - immutable: `chattr +i` on the objects and refs directories (EPERM even for root);
  - read-only: a read-only bind mount of the repository (EROFS);
  - disk full: a 256 KiB tmpfs mounted under the test directory, filled up (ENOSPC);
  - deleted: the repository directory removed while an AuditRepo holds it;
  - a file where a directory is expected;
  - unreachable remotes: a file:// path that does not exist, git:// and http:// to a port on
    127.0.0.1 where nothing listens.
Each mechanism that the machine does not allow (not root, no setpriv, no mount) skips its test.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import console_script
from test_audit_support import Clock, series

from reconciler import cli
from reconciler.audit import AuditCorrupt, AuditError, AuditRepo, AuditUnavailable

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NOBODY = 65534


def _run(*cmd: str) -> bool:
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def _branch(repo_path: Path) -> str | None:
    """The branch's commit, read from the ref file (the repository may be too broken to open)."""
    ref = repo_path / "refs" / "heads" / "main"
    return ref.read_text().strip() if ref.exists() else None


@pytest.fixture
def recorded(tmp_path):
    """A repository with v1 pending + applied, and the series to make more snapshots."""
    s = series(services=2)
    audit = AuditRepo.open_or_init(tmp_path / "audit", clock=Clock(), pack_every=0)
    audit.record(s.snap, "pending")
    audit.record(s.snap, "applied")
    return audit, s, tmp_path / "audit"


def test_deleted_repository_is_unavailable_for_every_operation(recorded) -> None:
    audit, s, path = recorded
    shutil.rmtree(path)
    config = s.snap.config
    ops = {
        "record": lambda: audit.record(s.scale(), "pending"),
        "last_applied": lambda: audit.last_applied(config),
        "next_version": lambda: audit.next_version(config),
        "history": lambda: audit.history(),
        "snapshot_at": lambda: audit.snapshot_at(1, config),
        "close_interrupted": lambda: audit.close_interrupted(config),
        "head": lambda: audit.head,
        "push": lambda: audit.push(),
    }
    for name, op in ops.items():
        with pytest.raises(AuditUnavailable) as info:
            op()
        msg = str(info.value)
        assert msg.startswith(f"audit repository {path}: cannot "), (name, msg)
        assert msg.endswith(f"{path} no longer exists (deleted or unmounted while in use?)"), (name, msg)
        assert info.value.errno == errno.ENOENT
    # a deleted repository never reads as an empty history
    with pytest.raises(AuditUnavailable):
        audit.last_applied(config)
    with pytest.raises(AuditUnavailable, match="no audit repository at"):
        AuditRepo.open_or_init(path, read_only=True)


def test_a_file_where_a_directory_is_expected(tmp_path) -> None:
    f = tmp_path / "plain-file"
    f.write_text("not a repository\n")
    with pytest.raises(AuditUnavailable, match=f"audit repository {f}: cannot create it: {f} is a file, not a directory"):
        AuditRepo.open_or_init(f)
    with pytest.raises(AuditUnavailable, match=f"{f} is a file, where a directory is expected") as info:
        AuditRepo.open_or_init(f / "audit")
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(AuditUnavailable, match="is a file, not a directory"):
        AuditRepo.open_or_init("file:///nowhere.git", workdir=f)


def test_objects_directory_replaced_by_a_file_is_damage_not_a_traceback(recorded) -> None:
    audit, s, path = recorded
    before = _branch(path)
    shutil.rmtree(path / "objects")
    (path / "objects").write_text("")
    with pytest.raises(AuditError) as info:
        audit.record(s.scale(), "pending")
    assert str(info.value).startswith(f"audit repository {path}: cannot record {s.snap.config} v2 pending: ")
    assert isinstance(info.value, (AuditCorrupt, AuditUnavailable))
    assert _branch(path) == before


@pytest.mark.skipif(not IS_ROOT or shutil.which("chattr") is None, reason="needs root and chattr")
def test_immutable_directories_refuse_the_record_and_leave_the_branch(recorded) -> None:
    audit, s, path = recorded
    v1 = s.snap
    before = _branch(path)
    targets = [str(path / "objects"), str(path / "refs" / "heads")]
    if not _run("chattr", "+i", *targets):
        pytest.skip("the file system does not support chattr +i")
    try:
        with pytest.raises(AuditUnavailable) as info:
            audit.record(s.scale(), "pending")
        msg = str(info.value)
        assert msg.startswith(f"audit repository {path}: cannot record {s.snap.config} v2 pending: ")
        assert "Operation not permitted" in msg and "this process runs as uid 0" in msg
        assert "immutable" in msg
        assert info.value.errno == errno.EPERM
        # reading still works
        assert audit.last_applied(v1.config) == v1
    finally:
        _run("chattr", "-i", *targets)
    assert _branch(path) == before
    audit.record(s.snap, "pending")  # writable again: the same snapshot records
    assert audit.history()[0].version == 2


@pytest.mark.skipif(not IS_ROOT, reason="needs root to mount")
def test_read_only_mount(recorded) -> None:
    audit, s, path = recorded
    before = _branch(path)
    if not (_run("mount", "--bind", str(path), str(path))):
        pytest.skip("bind mounts are not allowed here")
    try:
        if not _run("mount", "-o", "remount,ro,bind", str(path)):
            pytest.skip("read-only remounts are not allowed here")
        with pytest.raises(AuditUnavailable) as info:
            audit.record(s.scale(), "pending")
        assert "Read-only file system (the file system is mounted read-only)" in str(info.value)
        assert info.value.errno == errno.EROFS
        with pytest.raises(AuditUnavailable, match="cannot open or create it: .*Read-only file system"):
            AuditRepo.open_or_init(path / "inner")
        assert audit.next_version(s.snap.config) == 2  # reading works
    finally:
        _run("umount", str(path))
    assert _branch(path) == before


@pytest.mark.skipif(not IS_ROOT, reason="needs root to mount a tmpfs")
def test_disk_full_record_fails_whole_and_recovers(tmp_path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _run("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)):
        pytest.skip("tmpfs mounts are not allowed here")
    try:
        s = series(services=2)
        audit = AuditRepo.open_or_init(disk / "audit", clock=Clock(), pack_every=0)
        audit.record(s.snap, "pending")
        audit.record(s.snap, "applied")
        before = _branch(disk / "audit")
        fill = open(disk / "fill", "wb", buffering=0)
        try:
            while True:
                fill.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        fill.close()
        v2 = s.scale()
        with pytest.raises(AuditUnavailable) as info:
            audit.record(v2, "pending")
        msg = str(info.value)
        assert msg.startswith(f"audit repository {disk / 'audit'}: cannot record {v2.config} v2 pending: ")
        assert "No space left on device (0 bytes free of 262144 on the file system of " in msg
        assert info.value.errno == errno.ENOSPC
        assert _branch(disk / "audit") == before  # no half-written ref
        assert sorted(os.listdir(disk / "audit" / "refs" / "heads")) == ["main"]  # no main.lock left
        assert audit.history()[0].outcome == "applied" and audit.next_version(v2.config) == 2
        (disk / "fill").unlink()
        audit.record(v2, "pending")  # space again: the same record goes through
        assert [e.outcome for e in audit.history()] == ["pending", "applied", "pending"]
        assert AuditRepo.open_or_init(disk / "audit").history()[0].version == 2
    finally:
        _run("umount", str(disk))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed on exit: nothing listens there


@pytest.mark.parametrize("scheme", ["file", "git", "http"])
def test_unreachable_remote_at_start(tmp_path, scheme) -> None:
    url = {
        "file": f"file://{tmp_path}/no-such-remote.git",
        "git": f"git://127.0.0.1:{_free_port()}/audit.git",
        "http": f"http://127.0.0.1:{_free_port()}/audit.git",
    }[scheme]
    with pytest.raises(AuditUnavailable) as info:
        AuditRepo.open_or_init(url, workdir=tmp_path / "clone")
    msg = str(info.value)
    assert msg.startswith(f"audit remote {url}: cannot fetch main from {url}: ")
    if scheme == "file":
        assert "No such file or directory" in msg
    else:
        assert "Connection refused (nothing listens there" in msg


def test_audit_commands_and_main_print_one_line(recorded, capsys) -> None:
    audit, s, path = recorded
    shutil.rmtree(path / "objects")
    (path / "objects").mkdir()  # every object gone: damage
    for argv in (["audit", "log", "--repo", str(path)], ["audit", "show", "1", "--repo", str(path)],
                 ["audit", "diff", "1", "1", "--repo", str(path)], ["audit", "verify", "--repo", str(path)]):
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == 1, argv
        assert err.count("\n") == 1 and err.startswith(f"p4kube audit: error: audit repository {path}: cannot "), (argv, err)
    shutil.rmtree(path)
    for argv in (["audit", "log", "--repo", str(path)], ["audit", "verify", "--repo", str(path)]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err == f"p4kube audit: error: no audit repository at {path} (the path does not exist or is not a Git repository)\n"


def test_main_reports_an_audit_error_from_any_command(capsys, tmp_path) -> None:
    """cli.main turns AuditError from commands it does not own (reconcile, rollback, run) into
    one line and exit 1: the product's parser, one more command on it, the product's runner."""
    audit = AuditRepo.open_or_init(tmp_path / "audit")
    shutil.rmtree(tmp_path / "audit")
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.add_parser("uses-audit").set_defaults(func=lambda args: audit.next_version("ns/lb") and 0)
    assert cli.run_command(parser.parse_args(["uses-audit"])) == 1
    err = capsys.readouterr().err
    assert err == f"p4kube uses-audit: error: audit repository {tmp_path / 'audit'}: cannot read the versions of ns/lb: {tmp_path / 'audit'} no longer exists (deleted or unmounted while in use?)\n"


@pytest.fixture
def shared_dir():
    """A directory other users can read (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="p4kube-audit-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_permission_denied_for_another_user(shared_dir) -> None:
    s = series(services=2)
    repo = shared_dir / "audit"
    audit = AuditRepo.open_or_init(repo, clock=Clock())
    audit.record(s.snap, "pending")
    audit.record(s.snap, "applied")
    (shared_dir / "snap.json").write_text(s.snap.to_json_text())
    before = _branch(repo)
    for p in [shared_dir, *shared_dir.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    code = f"""
from reconciler.audit import AuditRepo, AuditUnavailable
from reconciler.snapshot import load_snapshot
snap = load_snapshot({str(shared_dir / 'snap.json')!r})
audit = AuditRepo.open_or_init({str(repo)!r})
print("last applied", audit.last_applied(snap.config).version)
try:
    audit.record(snap.with_version(2), "pending")
except AuditUnavailable as e:
    print("unavailable", e.errno, e)
"""
    home = shared_dir / "home"
    home.mkdir(mode=0o755)
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT)}
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    # libgit2 (like git's safe.directory) opens no repository owned by another user
    out = subprocess.run([*as_nobody, sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 1 and out.stderr.splitlines()[-1] == (
        f"reconciler.audit.errors.AuditUnavailable: audit repository {repo}: cannot open or create it: {repo}/: "
        f"repository path '{repo}' is not owned by current user ({repo} owned by uid 0 with mode 0755; this process "
        f"runs as uid {NOBODY}; libgit2 opens only repositories owned by the process's user: run as the owner, or "
        f"list the path under [safe] directory in that user's git config)"
    )
    # trusted by that user's git config: it reads, and writing is refused by the file system
    (home / ".gitconfig").write_text(f"[safe]\n\tdirectory = {repo}\n")
    out = subprocess.run([*as_nobody, sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "last applied 1"
    assert lines[1].startswith(f"unavailable {errno.EACCES} audit repository {repo}: cannot record {s.snap.config} v2 pending: ")
    assert f"Permission denied ({repo}/objects owned by uid 0 with mode 0755; this process runs as uid {NOBODY})" in lines[1]
    assert _branch(repo) == before

    # the command line, as that user, on a repository it may not even read
    repo.chmod(0o700)
    p4kube = console_script()
    out = subprocess.run([*as_nobody, str(p4kube), "audit", "log", "--repo", str(repo)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr == (
        f"p4kube audit: error: audit repository {repo}: cannot open it: {repo}: Permission denied "
        f"({repo} owned by uid 0 with mode 0700; this process runs as uid {NOBODY})\n"
    )
