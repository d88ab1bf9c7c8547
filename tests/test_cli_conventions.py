"""CLI conventions through the `p4kube` command: a fast --help that loads no library, one
-o/--output text|json|yaml flag, --kubeconfig/--context, shell completion, --version with the
commit, and the progress line of a long apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"
HEAVY = ("kubernetes", "finsy", "grpc", "pygit2", "jsonschema", "ruamel", "prometheus_client", "google.protobuf", "shtab",
         "asyncio")


def _p4kube(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("argv", [["--help"], ["validate", "--help"], ["run", "--help"], ["audit", "log", "--help"]])
def test_help_imports_no_library(argv):
    # The whole process, as a shell runs it: what --help loads is what it costs.
    code = (
        "import sys\nfrom reconciler.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.startswith('google.protobuf'))\n"
        "print('HEAVY', heavy, file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "usage: p4kube" in out.stdout
    assert "HEAVY []" in out.stderr, out.stderr[-500:]


def test_outcome_choices_match_the_audit_records():
    from reconciler.audit.message import OUTCOMES
    from reconciler.cli.audit import OUTCOME_CHOICES

    assert OUTCOME_CHOICES == OUTCOMES


def _yaml(text: str):
    return YAML(typ="safe").load(text)


def test_validate_output_json_yaml_and_the_old_format_flag(capsys):
    for argv in (["-o", "json"], ["--output", "json"], ["--format", "json"]):
        assert main(["validate", str(MULTI), *argv]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["valid"] is True
    assert main(["validate", str(MULTI), "-o", "yaml"]) == 0
    assert _yaml(capsys.readouterr().out)["valid"] is True


def test_render_and_plan_print_yaml_equal_to_their_json(tmp_path, capsys):
    base = ["--intent", str(MULTI), "--cluster", str(MULTI / "cluster.yaml"), "--pipeline-dir", str(MULTI)]
    assert main(["render", *base]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert main(["render", *base, "-o", "yaml"]) == 0
    assert _yaml(capsys.readouterr().out) == as_json
    assert main(["plan", *base, "-o", "json"]) == 2
    plan_json = json.loads(capsys.readouterr().out)
    assert main(["plan", *base, "-o", "yaml"]) == 2
    assert _yaml(capsys.readouterr().out) == plan_json
    with pytest.raises(SystemExit) as e:
        main(["render", *base, "-o", "text"])  # a snapshot has no text form
    assert e.value.code == 64
    # check prints the same plan as plan does, in the asked form; its files are written whatever -o says
    out = tmp_path / "check-out"
    assert main(["check", *base, "--out-dir", str(out), "-o", "yaml"]) == 2
    assert _yaml(capsys.readouterr().out) == plan_json == json.loads((out / "plan.json").read_text())


def test_audit_commands_print_json_and_yaml(tmp_path, capsys):
    audit = tmp_path / "audit"
    snap = tmp_path / "v1.json"
    base = ["--intent", str(MULTI), "--cluster", str(MULTI / "cluster.yaml"), "--pipeline-dir", str(MULTI)]
    assert main(["render", *base, "--out", str(snap)]) == 0
    from reconciler.audit import AuditRepo
    from reconciler.snapshot import load_snapshot

    repo = AuditRepo.open_or_init(str(audit))
    v1 = load_snapshot(snap)
    repo.record(v1, "applied")
    repo.record(v1.with_version(2), "applied")
    capsys.readouterr()
    r = ["--repo", str(audit)]
    assert main(["audit", "log", *r, "-o", "yaml"]) == 0
    entries = _yaml(capsys.readouterr().out)
    assert [e["version"] for e in entries] == [2, 1]
    assert main(["audit", "show", "1", *r, "-o", "yaml"]) == 0
    assert _yaml(capsys.readouterr().out) == json.loads(snap.read_text())
    assert main(["audit", "diff", "1", "2", *r, "-o", "yaml"]) == 0
    assert _yaml(capsys.readouterr().out)["to"]["version"] == 2
    assert main(["audit", "verify", *r, "-o", "json"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["ok"] is True and verified["records"] == 2


def _commands(parser) -> dict[str, object]:
    import argparse

    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub)
                out.update({f"{name} {k}": v for k, v in nested.items()} if nested else {name: sub})
    return out


# Commands that print data (a report, a document); the rest print a result line or run.
PRINTS_DATA = ("validate", "render", "plan", "check", "audit log", "audit show", "audit diff", "audit verify", "apply",
               "reconcile", "rollback", "status", "switch dump", "switch diff")


def test_every_data_command_has_one_output_flag():
    commands = _commands(build_parser())
    for name in PRINTS_DATA:
        flags = {s for a in commands[name]._actions for s in a.option_strings}
        assert {"-o", "--output"} <= flags, name


def test_the_api_commands_take_kubeconfig_and_context():
    commands = _commands(build_parser())
    for name in [n for n in ("run", "status") if n in commands]:
        args = commands[name].parse_args(["--context", "staging", "--kubeconfig", "/k", "--intent", "x"])
        assert (args.kube_context, args.kubeconfig) == ("staging", "/k"), name
    from reconciler.cli.options import settings_from_args

    assert settings_from_args(args).kube_context == "staging"


def test_context_selects_the_kubeconfig_context(tmp_path):
    # Two clusters in one kubeconfig; --context picks the second one's server, as kubectl does.
    from reconciler.kube.client import build_api_client
    from reconciler.kube.intent_source import default_intent_namespace

    kc = tmp_path / "kubeconfig"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "clusters": [{"name": c, "cluster": {"server": f"https://127.0.0.1:{p}"}} for c, p in (("a", 6443), ("b", 7443))],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": c, "context": {"cluster": c, "user": "u", "namespace": f"ns-{c}"}} for c in ("a", "b")],
    }))
    assert build_api_client(str(kc)).configuration.host.endswith(":6443")
    assert build_api_client(str(kc), context="b").configuration.host.endswith(":7443")
    env = os.environ.pop("POD_NAMESPACE", None)
    try:
        assert default_intent_namespace(str(kc), "b") == "ns-b"
        assert default_intent_namespace(str(kc)) == "ns-a"
    finally:
        if env is not None:
            os.environ["POD_NAMESPACE"] = env


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_names_the_commands(shell, tmp_path):
    out = _p4kube("completion", shell)
    assert out.returncode == 0, out.stderr
    for word in ("validate", "reconcile", "audit", "--output", "--context"):
        assert word in out.stdout, word
    if shell == "bash":  # the script is valid bash, and defines the completion function
        script = tmp_path / "p4kube.bash"
        script.write_text(out.stdout)
        check = subprocess.run(["bash", "-c", f"source {script} && complete -p p4kube"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0 and "p4kube" in check.stdout, check.stderr


def test_version_names_the_commit_of_the_checkout():
    out = _p4kube("--version")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert out.returncode == 0
    assert out.stdout.startswith(f"p4kube 0.1.0 (commit {head}"), out.stdout


def test_version_from_a_recorded_build_commit(tmp_path):
    # What a wheel built by setup.py carries: reconciler/_build.py, found before any checkout.
    from reconciler.buildinfo import checkout_commit

    assert checkout_commit(tmp_path) is None  # not a checkout: no commit, no error
    pkg = tmp_path / "reconciler"
    pkg.mkdir()
    (pkg / "_build.py").write_text("COMMIT = 'abc123def456'\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import reconciler, importlib; "
            "sys.modules['reconciler._build'] = importlib.import_module('_build'); "
            "from reconciler.cli import main; main(['--version'])")
    out = subprocess.run([sys.executable, "-c", code, str(pkg)], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.stdout.strip() == "p4kube 0.1.0 (commit abc123def456)", out.stderr


def _big_intent(tmp: Path, ports: tuple[int, int]) -> Path:
    intent = tmp / "intent"
    intent.mkdir()
    (intent / "sim-device-config.json").write_text((MULTI / "sim-device-config.json").read_text())
    (intent / "lbconfig.yaml").write_text(f"""\
apiVersion: networking.p4kube.io/v1alpha1
kind: LoadBalancerConfig
metadata: {{name: big, namespace: p4kube-system}}
spec:
  bucketsPerService: 64
  backendMode: nodePort
  vipPools: [{{name: big, addresses: [198.18.0.1-198.19.255.254]}}]
  switchConfig:
    deviceConfig: sim-device-config.json
    batchSize: 100
    switches:
      - {{name: standby, role: standby, address: "127.0.0.1:{ports[0]}", deviceId: 1}}
      - {{name: primary, role: primary, address: "127.0.0.1:{ports[1]}", deviceId: 1}}
    routes: [{{prefix: 10.0.0.0/8, port: 1, nextHopMac: "02:00:0a:00:00:01"}}]
""")
    return intent


def test_a_long_apply_prints_progress_lines_without_a_tty(tmp_path, switch_pair):
    # 150 Services: ~10,000 writes per switch. The interval is shortened from 2 s so that the test
    # stays fast; stderr is a pipe, so the lines are plain log lines, not a redrawn bar.
    from reconciler.cluster.synthetic import cluster_to_list_yaml, synthetic_cluster

    standby, primary = switch_pair
    intent = _big_intent(tmp_path, (standby.port, primary.port))
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(cluster_to_list_yaml(synthetic_cluster(services=150, nodes=40, endpoints=750)))
    out = _p4kube("reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent),
                  "--cluster", str(cluster), "--state", str(tmp_path / "state"), "-o", "json",
                  env={"P4KUBE_PROGRESS_SECONDS": "0.05"}, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("p4kube: ")]
    assert any("standby: writing [" in ln and " updates, " in ln for ln in lines), out.stderr[-2000:]
    assert any(ln.startswith("p4kube: primary: ") for ln in lines), out.stderr[-2000:]
    assert "\r" not in out.stderr and "\x1b" not in out.stderr
    # -o json: one document on stdout, the command's own lines on stderr
    result = json.loads(out.stdout)
    assert result["outcome"] == "applied" and result["version"] == 1
    assert [(s["name"], s["state"]) for s in result["switches"]] == [("standby", "applied"), ("primary", "applied")]
    assert all(s["writes"] > 5000 and s["pipelinePushed"] for s in result["switches"]), result
    assert "snapshot v1 applied" in out.stderr


def test_progress_line_on_a_terminal_is_redrawn_in_place():
    import io

    from reconciler.apply import Progress
    from reconciler.cli.progress import ProgressLine, describe

    assert describe(Progress("standby", "write", 500, 1000), 8.4) == "standby: writing [############............] 500/1000 updates, 8 s"
    buf = io.StringIO()
    line = ProgressLine(buf, interval=3600, tty=True)
    line(Progress("primary", "read"))
    line._show(Progress("primary", "read"))  # what the ticking thread does each interval
    line.stop()
    assert buf.getvalue().startswith("\r\x1b[2Kprimary: reading back, ") and buf.getvalue().endswith("\r\x1b[2K")
