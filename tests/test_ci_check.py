"""The pull-request check of intent repositories: `p4kube check`, the workflow and the hook."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pygit2
from ruamel.yaml import YAML

from reconciler.audit.repo import AuditRepo
from reconciler.cli import main
from reconciler.snapshot import load_snapshot

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
    md = (out / "plan.md").read_text()  # the comment: the summary
    full = (out / "plan-full.md").read_text()
    assert md.startswith("<!-- p4kube-plan -->") and "**4 to add, 0 to change, 0 to remove**" in md
    assert "#### Added (4)" in md and "`web/frontend`" in md and "p4kube-plan-full" in md
    assert summary.read_text() == full and "| + | `web/frontend` | 198.51.100.13:80/TCP | `node-c` | 1 | 21 |" in full
    assert "Plan: 4 to add" in (out / "plan.txt").read_text()
    assert "Plan: 4 to add" in capsys.readouterr().out


def test_check_invalid_intent_annotates_and_fails(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "intent"
    make_intent_repo(repo)
    text = (repo / "lbconfig.yaml").read_text().replace("bucketsPerService: 64", "bucketsPerService: 63")
    (repo / "lbconfig.yaml").write_text(text)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    out = tmp_path / "out"
    code = main(["check", "--intent", str(repo), "--cluster", str(repo / "cluster" / "recorded.yaml"), "--out-dir", str(out)])
    assert code == 1
    stdout = capsys.readouterr().out
    assert "::error file=" in stdout and "bucketsPerService" in stdout
    # plan.md replaces the last plan comment with the errors, in a code block; no plan files.
    md = (out / "plan.md").read_text()
    assert md.startswith("<!-- p4kube-plan -->\n### p4kube plan: invalid intent\n") and "**1 error(s)**" in md
    fenced = md.split("```text\n", 1)[1]
    assert f"{repo / 'lbconfig.yaml'}:" in fenced and "bucketsPerService" in fenced
    assert summary.read_text() == md
    assert not (out / "plan.json").exists() and not (out / "plan-full.md").exists()


def record_applied(intent: Path, audit_path: Path, tmp_path: Path) -> int:
    """Render the intent as `run` would and record it in a real audit repository as applied; its version."""
    snap = tmp_path / "v1.json"
    assert main(["render", "--intent", str(intent), "--cluster", str(intent / "cluster" / "recorded.yaml"), "--out", str(snap)]) == 0
    v1 = load_snapshot(snap)
    audit = AuditRepo.open_or_init(audit_path)
    audit.record(v1, "pending")
    audit.record(v1, "applied")
    return v1.version


def test_check_plans_against_the_last_applied_snapshot_in_the_audit_repository(tmp_path, capsys):
    repo = tmp_path / "intent"
    make_intent_repo(repo)
    audit = tmp_path / "audit.git"
    cluster = str(repo / "cluster" / "recorded.yaml")
    version = record_applied(repo, audit, tmp_path)
    out = tmp_path / "out"
    # What was applied is what the intent and recording give: no changes, exit 0.
    assert main(["check", "--intent", str(repo), "--cluster", cluster, "--previous-from-audit", str(audit), "--out-dir", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["configs"][0]["fromVersion"] == version and plan["summary"]["added"] == 0
    assert "**No changes.**" in (out / "plan.md").read_text()
    # A pod of web/api moved from node-d to node-c in the recording: one change against v1, not four new Services.
    text = Path(cluster).read_text()
    moved = "    nodeName: node-d\n    targetRef:\n      kind: Pod\n      name: api-1\n"
    assert moved in text
    Path(cluster).write_text(text.replace(moved, moved.replace("node-d", "node-c")))
    assert main(["check", "--intent", str(repo), "--cluster", cluster, "--previous-from-audit", str(audit), "--out-dir", str(out)]) == 2
    md = (out / "plan.md").read_text()
    assert "**0 to add, 1 to change, 0 to remove**" in md
    assert "#### Largest share moves (top 1 of 1 changed)" in md and "| `web/api` | 198.51.100.12:8443/TCP |" in md
    capsys.readouterr()


def test_check_previous_from_audit_refuses_what_it_cannot_trust_or_read(tmp_path, capsys):
    repo = tmp_path / "intent"
    make_intent_repo(repo)
    audit = tmp_path / "audit.git"
    record_applied(repo, audit, tmp_path)
    cluster = str(repo / "cluster" / "recorded.yaml")
    signers = tmp_path / "allowed_signers"
    signers.write_text("")  # trusts no key: the unsigned record is not what the switches hold
    args = ["check", "--intent", str(repo), "--cluster", cluster, "--out-dir", str(tmp_path / "out")]
    assert main(args + ["--previous-from-audit", str(audit), "--audit-allowed-signers", str(signers)]) == 1
    assert "not trusted" in capsys.readouterr().err
    assert main(args + ["--previous-from-audit", str(tmp_path / "missing.git")]) == 1
    assert "missing.git" in capsys.readouterr().err
    # An audit repository with no record of the config: planned as new, and said so.
    empty = tmp_path / "empty.git"
    pygit2.init_repository(str(empty), bare=True, initial_head="main")
    assert main(args + ["--previous-from-audit", str(empty)]) == 2
    assert "no applied snapshot of p4kube-system/p4kube-config" in capsys.readouterr().err


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


def _plan_step(wf: dict) -> str:
    return next(s["run"] for s in wf["jobs"]["plan"]["steps"] if s.get("id") == "plan")


def test_workflow_plan_step_plans_against_the_audit_repository(tmp_path):
    """The workflow's own plan step, run by bash as the runner would, with the real p4kube, in
    the runner's layout (head/ the pull request, base/ the base branch, a local audit repository
    standing for P4KUBE_AUDIT_REPO)."""
    wf = YAML(typ="safe").load((ROOT / "ci" / "github" / "p4kube-plan.yml").read_text())
    assert wf["env"]["P4KUBE_AUDIT_REPO"] == "${{ vars.P4KUBE_AUDIT_REPO }}"  # a repository variable, not the PR
    head, base = tmp_path / "head", tmp_path / "base"
    make_intent_repo(head)
    (base / "cluster").mkdir(parents=True)
    shutil.copy(head / "cluster" / "recorded.yaml", base / "cluster" / "recorded.yaml")
    audit = tmp_path / "audit.git"
    record_applied(head, audit, tmp_path)
    output = tmp_path / "github_output"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "INTENT_DIR": ".", "CLUSTER_FILE": "cluster/recorded.yaml", "PREVIOUS_SNAPSHOT": "",
        "P4KUBE_AUDIT_REPO": str(audit), "P4KUBE_AUDIT_BRANCH": "main",
        "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
    }
    r = subprocess.run(["bash", "-e", "-c", _plan_step(wf)], cwd=head, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert output.read_text() == "exit=0\n"  # planned against v1: no changes (without it: 4 to add, exit 2)
    assert "**No changes.**" in (tmp_path / "p4kube-out" / "plan.md").read_text()
    assert (tmp_path / "summary.md").read_text() == (tmp_path / "p4kube-out" / "plan-full.md").read_text()


def test_workflow_keeps_the_full_plan_as_an_artifact():
    wf = YAML(typ="safe").load((ROOT / "ci" / "github" / "p4kube-plan.yml").read_text())
    uploads = [s for s in wf["jobs"]["plan"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
    by_name = {s["with"]["name"]: s for s in uploads}
    assert by_name["p4kube-plan"]["with"]["path"] == "p4kube-out/plan.md"  # what the comment job posts
    full = by_name["p4kube-plan-full"]
    assert full["if"] == "always()" and full["uses"] == by_name["p4kube-plan"]["uses"]  # the same pinned SHA
    assert full["with"]["path"].split() == ["p4kube-out/plan-full.md", "p4kube-out/plan.json", "p4kube-out/plan.txt"]
