"""The pull-request check of intent repositories: `p4kube check`, the workflow and the hook."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pygit2
from ruamel.yaml import YAML

from reconciler.cli import main

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"


def make_intent_repo(path: Path) -> str:
    """A real Git repository holding the multi-service intent and a recorded cluster."""
    (path / "cluster").mkdir(parents=True)
    shutil.copy(MULTI / "lbconfig.yaml", path / "lbconfig.yaml")
    shutil.copy(MULTI / "sim-device-config.json", path)  # its deviceConfig (a placeholder for the software switch)
    shutil.copy(MULTI / "cluster.yaml", path / "cluster" / "recorded.yaml")
    repo = pygit2.init_repository(str(path), initial_head="main")
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("ci", "ci@example.com", 1700000000, 0)
    oid = repo.create_commit("HEAD", sig, sig, "intent", repo.index.write_tree(), [])
    return str(oid)


def test_check_writes_plans_and_summary(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "intent"
    head = make_intent_repo(repo)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    out = tmp_path / "out"
    code = main(["check", "--intent", str(repo), "--cluster", str(repo / "cluster" / "recorded.yaml"), "--out-dir", str(out)])
    assert code == 2
    plan = json.loads((out / "plan.json").read_text())
    assert plan["configs"][0]["intentCommit"] == head
    assert plan["configs"][0]["intentDirty"] is False
    md = (out / "plan.md").read_text()
    assert md.startswith("<!-- p4kube-plan -->") and summary.read_text() == md
    assert "Plan: 4 to add" in (out / "plan.txt").read_text()
    assert "Plan: 4 to add" in capsys.readouterr().out


def test_check_invalid_intent_annotates_and_fails(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "intent"
    make_intent_repo(repo)
    text = (repo / "lbconfig.yaml").read_text().replace("bucketsPerService: 64", "bucketsPerService: 63")
    (repo / "lbconfig.yaml").write_text(text)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    out = tmp_path / "out"
    code = main(["check", "--intent", str(repo), "--cluster", str(repo / "cluster" / "recorded.yaml"), "--out-dir", str(out)])
    assert code == 1
    stdout = capsys.readouterr().out
    assert "::error file=" in stdout and "bucketsPerService" in stdout
    assert not (out / "plan.md").exists()


def test_workflow_runs_p4kube_check_and_passes_on_0_or_2():
    wf = YAML(typ="safe").load((ROOT / "ci" / "github" / "p4kube-plan.yml").read_text())
    assert "pull_request" in wf["on"]
    steps = wf["jobs"]["plan"]["steps"]
    script = next(s["run"] for s in steps if s.get("id") == "plan")
    assert "p4kube check" in script and "--out-dir ../p4kube-out" in script
    assert "[ $rc -eq 0 ] || [ $rc -eq 2 ]" in script
    comment = next(s for s in wf["jobs"]["comment"]["steps"] if s.get("uses", "").startswith("actions/github-script"))
    assert "<!-- p4kube-plan -->" in comment["with"]["script"]


def test_pre_commit_hook_command_validates(tmp_path, capsys, monkeypatch):
    hooks = YAML(typ="safe").load((ROOT / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "p4kube-validate")
    assert hook["pass_filenames"] is False
    argv = hook["entry"].split()
    assert argv[0] == "p4kube"
    repo = tmp_path / "intent"
    make_intent_repo(repo)
    monkeypatch.chdir(repo)
    assert main(argv[1:]) == 0
    (repo / "lbconfig.yaml").write_text((repo / "lbconfig.yaml").read_text() + "  bogus: 1\n")
    assert main(argv[1:]) == 1
    assert "bogus" in capsys.readouterr().out
