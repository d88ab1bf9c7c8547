"""The pull-request CI is safe with a hostile pull request: plan.md cannot be restructured by
names or messages, workflow commands cannot be injected, and the workflow itself is pinned,
least-privileged and edits only its own comment."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import require_node
from ruamel.yaml import YAML

from reconciler.cli import main
from reconciler.ghactions import command, escape_data, escape_property

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"
WORKFLOW = ROOT / "ci" / "github" / "p4kube-plan.yml"
HIDE = "\n\n## No changes. Safe to merge\n<!--"


def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a YAML double-quoted scalar


def crafted_repo(tmp_path: Path) -> tuple[Path, Path]:
    """The multi-service intent and a recording whose endpoints name nodes built to hide the
    real plan."""
    repo = tmp_path / "intent"
    repo.mkdir()
    shutil.copy(MULTI / "lbconfig.yaml", repo / "lbconfig.yaml")
    shutil.copy(MULTI / "sim-device-config.json", repo)
    text = (MULTI / "cluster.yaml").read_text()
    # Endpoints on a node that has no Node object: issues whose messages quote the name.
    text = re.sub(r"^(\s*nodeName): node-a$", lambda m: f"{m.group(1)}: {_yaml_str('node-a' + HIDE)}", text, flags=re.MULTILINE)
    text = re.sub(r"^(\s*nodeName): node-c$", lambda m: f"{m.group(1)}: {_yaml_str('node-c```' + HIDE)}", text, count=1, flags=re.MULTILINE)
    cluster = tmp_path / "recorded.yaml"
    cluster.write_text(text)
    return repo, cluster


def _outside_fences(md: str) -> list[str]:
    """The lines of `md` that a CommonMark renderer reads as Markdown (not code)."""
    out, fence = [], None
    for line in md.splitlines():
        m = re.match(r"^(`{3,})", line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and line.startswith(fence) and line.strip("`") == "":
            fence = None
        elif fence is None:
            out.append(line)
    assert fence is None, "a fence was left open"
    return out


def test_crafted_names_cannot_restructure_the_plan_comment(tmp_path: Path) -> None:
    repo, cluster = crafted_repo(tmp_path)
    out = tmp_path / "out"
    code = main(["check", "--intent", str(repo), "--cluster", str(cluster), "--out-dir", str(out)])
    assert code == 2
    md = (out / "plan.md").read_text()
    markdown = _outside_fences(md)
    # The injected heading and comment opener are not Markdown structure; the marker is ours alone.
    assert not any(line.startswith("## ") or "Safe to merge" in line and line.startswith("#") for line in markdown)
    assert sum(line.count("<!--") for line in markdown) == 1 and md.startswith("<!-- p4kube-plan -->\n")
    assert all("<!--" not in line for line in markdown[1:])
    # plan.txt (and the log) keep each name on its line.
    assert not any(line.startswith(("## ", "<!--")) for line in (out / "plan.txt").read_text().splitlines())
    # The issues quoting the names are inside a fence longer than the backtick run in one.
    fenced = md.split("````text\n", 1)[1]
    assert "node-c```" + HIDE in fenced and "node-a" + HIDE in fenced
    # (Table rows escape names too: tests/test_plan.py::test_markdown_escapes_names_that_are_not_kubernetes_names.)


def test_a_recording_with_an_object_name_no_api_server_accepts_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = crafted_repo(tmp_path)
    text = (MULTI / "cluster.yaml").read_text()
    lines = text.splitlines()
    at = lines.index("    name: node-a") + 1
    cluster = tmp_path / "forged.yaml"
    cluster.write_text(text.replace("\n    name: node-a\n", f"\n    name: {_yaml_str('node-a' + HIDE)}\n", 1))
    out = tmp_path / "out"
    assert main(["check", "--intent", str(repo), "--cluster", str(cluster), "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{cluster}:{at}:11: items[16].metadata.name: is not a valid Node name (DNS-1123 subdomain): 'node-a\\n\\n## No" in err
    assert "\n## No changes" not in err  # echoed escaped, on one line
    assert not out.exists()


def test_markdown_plan_command_escapes_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, cluster = crafted_repo(tmp_path)
    assert main(["plan", "--intent", str(repo), "--cluster", str(cluster), "--format", "markdown"]) == 2
    md = capsys.readouterr().out
    assert not any(line.startswith("#") and "Safe to merge" in line for line in _outside_fences(md))


def test_error_annotations_are_escaped_and_the_rest_cannot_be_a_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "intent"
    repo.mkdir()
    text = (MULTI / "lbconfig.yaml").read_text()
    shutil.copy(MULTI / "sim-device-config.json", repo)
    # A key that, printed raw, would start its own workflow command on the next line.
    text = text.replace("spec:\n", 'spec:\n  "x\\n::error file=README.md,line=1::forged%0A": 1\n', 1)
    (repo / "lbconfig.yaml").write_text(text)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code = main(["check", "--intent", str(repo), "--cluster", str(MULTI / "cluster.yaml"), "--out-dir", str(tmp_path / "out")])
    assert code == 1
    lines = capsys.readouterr().out.splitlines()
    stop = lines[0]
    assert stop.startswith("::stop-commands::") and len(stop) == len("::stop-commands::") + 32
    resume = lines.index(f"::{stop.removeprefix('::stop-commands::')}::")
    # While stopped, anything goes; after the resume, every command line is one escaped annotation.
    after = [line for line in lines[resume + 1 :] if line.startswith("::")]
    assert after and all(line.startswith("::error file=") for line in after)
    forged = [line for line in after if "forged" in line]
    assert len(forged) == 1 and "%0A::error file=README.md,line=1::forged%250A" in forged[0]
    # plan.md (the comment, replacing the last plan) holds the errors, the forged key inside a fence only.
    md = (tmp_path / "out" / "plan.md").read_text()
    assert md.startswith("<!-- p4kube-plan -->\n") and not any("forged" in line for line in _outside_fences(md))


def test_workflow_command_escaping_follows_the_toolkit() -> None:
    assert escape_data("a%b\r\nc") == "a%25b%0D%0Ac"
    assert escape_property("x:y,z%\n") == "x%3Ay%2Cz%25%0A"
    assert command("error", "m\n::x::", file="a,b:c.yaml", line=3) == "::error file=a%2Cb%3Ac.yaml,line=3::m%0A::x::"


# --- the workflow file --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow() -> dict:
    return YAML(typ="safe").load(WORKFLOW.read_text())


def _steps(wf: dict) -> list[tuple[str, dict]]:
    return [(job, step) for job, spec in wf["jobs"].items() for step in spec["steps"]]


def test_every_action_is_pinned_by_commit_sha(workflow: dict) -> None:
    uses = [step["uses"] for _, step in _steps(workflow) if "uses" in step]
    assert uses
    for u in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u), u


def test_permissions_are_minimal(workflow: dict) -> None:
    assert workflow["permissions"] == {}
    assert workflow["jobs"]["plan"]["permissions"] == {"contents": "read"}
    assert workflow["jobs"]["comment"]["permissions"] == {"pull-requests": "write"}
    # The job that can write never checks out or runs the pull request's content.
    comment_steps = workflow["jobs"]["comment"]["steps"]
    assert not any("checkout" in s.get("uses", "") or "run" in s for s in comment_steps)
    assert "pull_request_target" not in workflow["on"]
    for _, step in _steps(workflow):
        if "actions/checkout" in step.get("uses", ""):
            assert step["with"]["persist-credentials"] is False


def test_cluster_recording_and_previous_snapshot_come_from_the_base_branch(workflow: dict) -> None:
    steps = workflow["jobs"]["plan"]["steps"]
    base = next(s for s in steps if s.get("with", {}).get("path") == "base")
    assert base["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    script = next(s for s in steps if s.get("id") == "plan")["run"]
    assert '--cluster "../base/$CLUSTER_FILE"' in script and "--previous ../base/$PREVIOUS_SNAPSHOT" in script


def _install_script(workflow: dict) -> str:
    return next(s["run"] for s in workflow["jobs"]["plan"]["steps"] if s.get("name", "").startswith("Install p4kube"))


@pytest.mark.parametrize(
    "commit, url, ok",
    [
        ("", "https://example.com/p4kube.git", False),
        ("main", "https://example.com/p4kube.git", False),
        ("0123456789abcdef", "https://example.com/p4kube.git", False),
        ("0123456789abcdef0123456789abcdef0123456G", "https://example.com/p4kube.git", False),
        ("0123456789abcdef0123456789abcdef01234567", "", False),
        ("0123456789abcdef0123456789abcdef01234567", "https://example.com/p4kube.git", True),
    ],
)
def test_install_is_pinned_to_a_full_commit(workflow: dict, commit: str, url: str, ok: bool) -> None:
    # The step's own shell, with pip replaced by an echo: only a full commit SHA installs.
    script = "python() { echo \"PIP $*\"; }\n" + _install_script(workflow)
    env = {"PATH": "/usr/bin:/bin", "P4KUBE_COMMIT": commit, "P4KUBE_GIT_URL": url}
    r = subprocess.run(["bash", "-e", "-c", script], env=env, check=False, capture_output=True, text=True, timeout=10)
    if ok:
        assert r.returncode == 0
        assert r.stdout.strip() == f"PIP -m pip install --no-cache-dir p4kube-reconciler @ git+{url}@{commit}"
    else:
        assert r.returncode != 0 and "PIP" not in r.stdout and "P4KUBE_" in r.stderr
    assert workflow["env"]["P4KUBE_COMMIT"] == ""  # never a default that installs something unpinned


def test_comment_script_edits_only_the_bots_own_comment(workflow: dict, tmp_path: Path) -> None:
    """Runs the workflow's github-script body in node with a recorded GitHub API."""
    node = require_node()
    script = next(s["with"]["script"] for s in workflow["jobs"]["comment"]["steps"] if "github-script" in s.get("uses", ""))
    (tmp_path / "p4kube-out").mkdir()
    (tmp_path / "p4kube-out" / "plan.md").write_text("<!-- p4kube-plan -->\n### p4kube plan\n")
    harness = """
const calls = [];
const comments = JSON.parse(process.env.COMMENTS);
const github = {paginate: async () => comments, rest: {issues: {
  listComments: 'list',
  updateComment: async (a) => calls.push(['update', a.comment_id]),
  createComment: async (a) => calls.push(['create', a.issue_number]),
}}};
const context = {repo: {owner: 'o', repo: 'r'}, issue: {number: 7}};
(async () => { SCRIPT
})().then(() => console.log(JSON.stringify(calls)));
""".replace("SCRIPT", script)
    (tmp_path / "run.js").write_text(harness)
    marker = "<!-- p4kube-plan -->"

    def run(comments: list[dict]) -> list:
        env = {"PATH": "/usr/bin:/bin", "COMMENTS": json.dumps(comments), "COMMENT_AUTHOR": workflow["env"]["COMMENT_AUTHOR"]}
        r = subprocess.run([node, "run.js"], cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    planted = {"id": 1, "body": marker + "\nplanted", "user": {"login": "mallory", "type": "User"}}
    ours = {"id": 2, "body": marker + "\nold plan", "user": {"login": "github-actions[bot]", "type": "Bot"}}
    other_bot = {"id": 3, "body": marker, "user": {"login": "some-app[bot]", "type": "Bot"}}
    assert run([planted, other_bot]) == [["create", 7]]  # a planted marker is never edited
    assert run([planted, ours, other_bot]) == [["update", 2]]
