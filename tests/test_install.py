"""The package as users get it, not as a checkout: a built wheel installed into a fresh venv,
and the pre-commit hook installed from a Git clone (DESIGN.md 8: everything read at run time
ships inside the package and is found with importlib.resources).

Every command runs from a working directory outside the checkout, with no P4KUBE_HOME and no
PYTHONPATH, so a file still read from the repository shows up as a FileNotFoundError here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from switch_process import assert_switch_serves_until_sigterm

from reconciler.crd import crd_yaml
from reconciler.p4info import load_p4info, p4info_digest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "intent-examples" / "multi-service"
INVALID = ROOT / "intent-examples" / "invalid" / "bad-enum"
# What the wheel must carry (paths inside it) and the checkout file each one is.
SHIPPED = {
    "reconciler/data/schemas/loadbalancerconfig.schema.json": ROOT / "schemas" / "loadbalancerconfig.schema.json",
    "reconciler/data/schemas/snapshot.schema.json": ROOT / "schemas" / "snapshot.schema.json",
    "reconciler/data/p4/load_balancer.p4": ROOT / "p4" / "load_balancer.p4",
    "reconciler/data/p4/load_balancer.p4info.txtpb": ROOT / "p4" / "load_balancer.p4info.txtpb",
    "reconciler/data/intent-examples/multi-service/lbconfig.yaml": EXAMPLE / "lbconfig.yaml",
    "reconciler/data/intent-examples/multi-service/cluster.yaml": EXAMPLE / "cluster.yaml",
}
# The wheel is built from a copy of these (symlinks kept), so the build writes no build/ or
# egg-info into a checkout that others are working in.
BUILD_INPUTS = ("pyproject.toml", "README.md", "reconciler", "intent-examples")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("P4KUBE_HOME", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def run_clean_env(argv: list[str], cwd: Path, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run a command with none of this environment's Python or P4KUBE_ settings."""
    return subprocess.run(argv, cwd=cwd, env=clean_env(**extra), capture_output=True, text=True,
                          timeout=timeout, check=False)


def build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(item, src / name)
    dist = tmp / "dist"
    done = run_clean_env([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                "-q", "-w", str(dist), str(src)], cwd=tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = dist.glob("p4kube_reconciler-*.whl")
    return wheel


def make_venv(tmp: Path, wheel: Path) -> Path:
    """A fresh venv holding the wheel; the project venv's dependencies importable through a
    .pth line (its own .pth files, the editable finder among them, are not processed)."""
    venv = tmp / "venv"
    done = run_clean_env([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    assert done.returncode == 0, done.stderr
    python = venv / "bin" / "python"
    purelib = Path(run_clean_env([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       cwd=tmp).stdout.strip())
    deps = sysconfig.get_paths()["purelib"]  # this (the project's) venv
    (purelib / "project-dependencies.pth").write_text(deps + "\n")
    done = run_clean_env([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                "-q", str(wheel)], cwd=tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


@pytest.mark.slow
def test_the_wheel_ships_its_data_and_works_outside_the_checkout(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for inside, source in SHIPPED.items():
            assert inside in names, f"{inside} is not in {wheel.name}"
            assert zf.read(inside) == source.read_bytes(), f"{inside} differs from {source}"
    assert not any(n.startswith(("schemas/", "p4/", "intent-examples/")) for n in names)

    venv = make_venv(tmp_path, wheel)
    p4kube = venv / "bin" / "p4kube"
    work = tmp_path / "work"  # outside the checkout: intent, cluster and outputs live here
    shutil.copytree(EXAMPLE, work / "intent")
    shutil.copytree(INVALID, work / "invalid")

    where = run_clean_env([str(venv / "bin" / "python"), "-c",
                 "import reconciler, reconciler.paths as p; print(reconciler.__file__); "
                 "print(p.LBCONFIG_SCHEMA_PATH); print(p.P4INFO_PATH); print(p.DEMO_EXAMPLE_DIR)"], cwd=work)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():  # the wheel's copy of the package and its data, nothing else
        assert Path(line).is_relative_to(venv), where.stdout
        assert Path(line).exists()

    done = run_clean_env([str(p4kube), "validate", "."], cwd=work / "intent")
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_clean_env([str(p4kube), "validate", "invalid"], cwd=work)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("invalid/"), done.stdout  # file:line:col: field: message, from the schema

    done = run_clean_env([str(p4kube), "render", "--intent", "intent", "--cluster", "intent/cluster.yaml",
                "--out", "snap.json"], cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    snap = json.loads((work / "snap.json").read_text())
    assert snap["pipeline"]["program"] == "load_balancer.p4"
    assert snap["pipeline"]["p4infoDigest"] == p4info_digest(load_p4info(ROOT / "p4" / "load_balancer.p4info.txtpb"))

    done = run_clean_env([str(p4kube), "plan", "--intent", "intent", "--cluster", "intent/cluster.yaml"], cwd=work)
    assert done.returncode == 2, done.stdout + done.stderr  # everything to add
    done = run_clean_env([str(p4kube), "plan", "--intent", "intent", "--cluster", "intent/cluster.yaml",
                "--previous", "snap.json"], cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr  # what the switches hold already

    done = run_clean_env([str(p4kube), "crd"], cwd=work)
    assert done.returncode == 0, done.stderr
    assert done.stdout == crd_yaml()  # generated from the shipped schema, which is the checkout's

    # The demo starts from the example shipped in the package (reconciler/data/intent-examples).
    done = run_clean_env([str(p4kube), "demo", "--workdir", "demo"], cwd=work, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert (work / "demo" / "intent" / "lbconfig.yaml").exists()

    assert_switch_serves_until_sigterm([str(p4kube), "sim", "--listen", "127.0.0.1:0"], cwd=work, env=clean_env())


# --- the pre-commit hook, installed the way an intent repository gets it ---------------------


def index_reachable(tmp: Path) -> bool:
    """Whether pip's configured package index answers (pre-commit installs the hook's
    dependencies from it)."""
    try:
        done = run_clean_env([sys.executable, "-m", "pip", "index", "versions", "finsy"], cwd=tmp, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pre_commit_hook_from_a_git_clone_validates_an_intent_repository(tmp_path):
    if not index_reachable(tmp_path):
        pytest.skip("the package index cannot be reached: pre-commit cannot install the hook's dependencies")
    hook_repo = tmp_path / "p4kube"  # what a Git URL in .pre-commit-config.yaml gets: HEAD, committed files
    done = run_clean_env(["git", "clone", "-q", str(ROOT), str(hook_repo)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    intent = tmp_path / "intent"
    shutil.copytree(EXAMPLE, intent)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "intent"]):
        done = run_clean_env(git + argv, cwd=intent)
        assert done.returncode == 0, done.stderr

    home = str(tmp_path / "pre-commit-home")  # a fresh hook environment, not the user's cache
    hook = [sys.executable, "-m", "pre_commit", "try-repo", str(hook_repo), "p4kube-validate", "--all-files"]
    done = run_clean_env(hook, cwd=intent, timeout=840, PRE_COMMIT_HOME=home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "p4kube validate" in done.stdout and "Passed" in done.stdout, done.stdout

    # An invalid document fails the hook with the schema's file:line:col message.
    shutil.copytree(INVALID, intent / "invalid")
    done = run_clean_env(git + ["add", "-A"], cwd=intent)
    assert done.returncode == 0, done.stderr
    done = run_clean_env(hook, cwd=intent, timeout=300, PRE_COMMIT_HOME=home)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Failed" in done.stdout and "invalid/" in done.stdout, done.stdout
