"""IntentSet.commit and .dirty from a real repository made with pygit2."""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest

from reconciler.intent.loader import load_intent

CONFIG = """apiVersion: networking.p4kube.io/v1alpha1
kind: LoadBalancerConfig
metadata:
  name: lb
spec:
  switchConfig:
    switches:
      - {name: leaf-1, role: primary, address: "10.0.0.1:9559"}
    deviceConfig: bmv2/load_balancer.json
"""


def commit_all(repo: pygit2.Repository, message: str) -> str:
    repo.index.add_all()
    repo.index.write()
    tree = repo.index.write_tree()
    sig = pygit2.Signature("Test", "test@example.com", 1_700_000_000, 0)
    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", sig, sig, message, tree, parents))


@pytest.fixture
def repo(tmp_path: Path) -> pygit2.Repository:
    repo = pygit2.init_repository(str(tmp_path / "repo"), initial_head="main")
    (tmp_path / "repo" / "intent").mkdir()
    (tmp_path / "repo" / "intent" / "lb.yaml").write_text(CONFIG)
    return repo


def workdir(repo: pygit2.Repository) -> Path:
    assert repo.workdir is not None
    return Path(repo.workdir)


def test_repository_without_commits(repo: pygit2.Repository) -> None:
    intent = load_intent([workdir(repo) / "intent"])
    assert intent.commit is None
    assert intent.dirty is True  # the intent file is untracked: HEAD does not hold it


def test_clean_checkout_reports_head(repo: pygit2.Repository) -> None:
    sha = commit_all(repo, "intent")
    intent = load_intent([workdir(repo) / "intent"])
    assert (intent.commit, intent.dirty) == (sha, False)
    # A file path inside the repository finds it too.
    assert load_intent([workdir(repo) / "intent" / "lb.yaml"]).commit == sha


def test_modified_staged_untracked_and_deleted_intent_is_dirty(repo: pygit2.Repository) -> None:
    sha = commit_all(repo, "intent")
    lb = workdir(repo) / "intent" / "lb.yaml"
    intent_dir = workdir(repo) / "intent"

    lb.write_text(CONFIG.replace("10.0.0.1", "10.0.0.9"))
    assert (load_intent([intent_dir]).commit, load_intent([intent_dir]).dirty) == (sha, True)

    repo.index.add("intent/lb.yaml")
    repo.index.write()
    assert load_intent([intent_dir]).dirty is True  # staged but not committed

    sha2 = commit_all(repo, "change")
    assert (load_intent([intent_dir]).commit, load_intent([intent_dir]).dirty) == (sha2, False)

    extra = intent_dir / "sub" / "other.yml"
    extra.parent.mkdir()
    extra.write_text(CONFIG.replace("name: lb", "name: lb2").replace("leaf-1", "leaf-2").replace("10.0.0.1", "10.0.0.2"))
    assert load_intent([intent_dir]).dirty is True  # untracked intent
    commit_all(repo, "add")

    extra.unlink()
    assert load_intent([intent_dir]).dirty is True  # a tracked intent file is gone


def test_unrelated_changes_do_not_make_intent_dirty(repo: pygit2.Repository) -> None:
    sha = commit_all(repo, "intent")
    root = workdir(repo)
    (root / "README.md").write_text("changed\n")  # outside the intent path
    (root / "intent" / "notes.txt").write_text("not YAML\n")  # not read by the loader
    (root / "intent" / ".drafts").mkdir()
    (root / "intent" / ".drafts" / "wip.yaml").write_text("x: [\n")  # hidden: not read
    (root / ".gitignore").write_text("ignored.yaml\n")
    repo.index.add("README.md")  # staged elsewhere: still not the intent's business
    repo.index.write()
    intent = load_intent([root / "intent"])
    assert (intent.commit, intent.dirty) == (sha, False)


def test_ignored_intent_files_that_were_read_count(repo: pygit2.Repository) -> None:
    root = workdir(repo)
    (root / ".gitignore").write_text("intent/local-*.yaml\n")
    sha = commit_all(repo, "intent")
    (root / "intent" / "local-override.yaml").write_text(
        CONFIG.replace("name: lb", "name: local").replace("leaf-1", "leaf-9").replace("10.0.0.1", "10.0.0.99")
    )
    intent = load_intent([root / "intent"])
    # The loader reads the ignored file, so the intent is not what HEAD holds, although
    # `git status` would show nothing.
    assert [c.name for c in intent.configs] == ["lb", "local"]
    assert (intent.commit, intent.dirty) == (sha, True)


def test_outside_any_repository(tmp_path: Path) -> None:
    (tmp_path / "lb.yaml").write_text(CONFIG)
    # tmp_path lives under /tmp, outside any repository (discover stops at the filesystem root).
    assert pygit2.discover_repository(str(tmp_path)) is None
    intent = load_intent([tmp_path])
    assert (intent.commit, intent.dirty) == (None, False)
