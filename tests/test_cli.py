"""The `p4kube` command through its real entry point: exit codes, outputs, error messages."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import console_script, run_cli

from reconciler.cli import main
from reconciler.demo import run_demo
from reconciler.snapshot import load_snapshot, schema_errors

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "intent-examples"
MULTI = EX / "multi-service"
CLUSTER = MULTI / "cluster.yaml"


def test_validate_valid_examples(capsys):
    for name in ("minimal", "production", "multi-service"):
        code, out, err = run_cli(capsys, "validate", str(EX / name))
        assert code == 0, out + err
        assert out == ""
        assert "valid" in err


def test_validate_invalid_prints_file_line_col(capsys):
    case = EX / "invalid" / "overlapping-vip-pools"
    code, out, err = run_cli(capsys, "validate", str(case.relative_to(ROOT)))
    assert code == 1
    expected = (case / "expected-error.txt").read_text().strip().splitlines()
    assert out.strip().splitlines() == expected
    assert "error(s)" in err


def test_validate_json_format(capsys):
    code, out, _ = run_cli(capsys, "validate", "--format", "json", str(EX / "invalid" / "bad-ip"))
    assert code == 1
    doc = json.loads(out)
    assert doc["valid"] is False
    assert {"file", "line", "column", "field", "message"} <= set(doc["diagnostics"][0])


def test_render_is_deterministic_and_schema_valid(capsys, tmp_path):
    code, out1, _ = run_cli(capsys, "render", "--intent", str(MULTI), "--cluster", str(CLUSTER))
    assert code == 0
    code, out2, _ = run_cli(capsys, "render", "--intent", str(MULTI), "--cluster", str(CLUSTER))
    assert out1 == out2
    doc = json.loads(out1)
    assert schema_errors(doc) == []
    assert [s["name"] for s in doc["services"]] == ["payments/dns-cache", "payments/ledger", "web/api", "web/frontend"]


def test_render_out_and_previous_keeps_version(capsys, tmp_path):
    first = tmp_path / "v1.json"
    code, _, err = run_cli(capsys, "render", "--intent", str(MULTI), "--cluster", str(CLUSTER), "--out", str(first))
    assert code == 0 and "version 1" in err
    second = tmp_path / "v2.json"
    code, _, _ = run_cli(
        capsys, "render", "--intent", str(MULTI), "--cluster", str(CLUSTER), "--previous", str(first), "--out", str(second)
    )
    assert code == 0
    a, b = load_snapshot(first), load_snapshot(second)
    assert (a.version, a.digest) == (b.version, b.digest)
    assert first.read_text() == second.read_text()


def test_plan_exit_codes(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "plan", "--intent", str(MULTI), "--cluster", str(CLUSTER))
    assert code == 2
    assert "Plan: 4 to add, 0 to change, 0 to remove" in out
    snap = tmp_path / "s.json"
    run_cli(capsys, "render", "--intent", str(MULTI), "--cluster", str(CLUSTER), "--out", str(snap))
    code, out, _ = run_cli(capsys, "plan", "--intent", str(MULTI), "--cluster", str(CLUSTER), "--previous", str(snap))
    assert code == 0
    assert "No changes" in out
    code, _, err = run_cli(capsys, "plan", "--intent", str(EX / "invalid" / "bad-ip"), "--cluster", str(CLUSTER))
    assert code == 1
    assert "bad-ip/lbconfig.yaml:10:11" in err


def test_plan_formats(capsys, tmp_path):
    code, md, _ = run_cli(capsys, "plan", "--intent", str(MULTI), "--cluster", str(CLUSTER), "--format", "markdown")
    assert code == 2 and md.startswith("<!-- p4kube-plan -->")
    assert "| + | `web/frontend` |" in md
    out = tmp_path / "plan.json"
    code, js, _ = run_cli(capsys, "plan", "--intent", str(MULTI), "--cluster", str(CLUSTER), "--format", "json", "--out", str(out))
    doc = json.loads(js)
    assert doc["changed"] is True and doc["summary"]["added"] == 4
    assert json.loads(out.read_text()) == doc


def test_missing_and_corrupt_inputs_name_the_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "plan", "--intent", str(MULTI), "--cluster", str(tmp_path / "nope.yaml"))
    assert code == 1 and "nope.yaml" in err
    snap = tmp_path / "s.json"
    run_cli(capsys, "render", "--intent", str(MULTI), "--cluster", str(CLUSTER), "--out", str(snap))
    doc = json.loads(snap.read_text())
    doc["tables"]["MyIngress.backend_table"][0]["params"]["node_port"] = 1  # tampered
    snap.write_text(json.dumps(doc))
    code, _, err = run_cli(capsys, "plan", "--intent", str(MULTI), "--cluster", str(CLUSTER), "--previous", str(snap))
    assert code == 1
    assert "s.json" in err and "bucket 0" in err and "not a listed backend" in err


def test_previous_for_another_config_is_refused(capsys, tmp_path):
    snap = tmp_path / "s.json"
    run_cli(capsys, "render", "--intent", str(MULTI), "--cluster", str(CLUSTER), "--out", str(snap))
    code, _, err = run_cli(capsys, "plan", "--intent", str(EX / "production"), "--cluster", str(CLUSTER), "--previous", str(snap))
    assert code == 1 and "snapshot is for config p4kube-system/p4kube-config" in err


def test_several_configs_need_config_for_render(capsys):
    code, _, err = run_cli(capsys, "render", "--intent", str(EX / "production"), "--cluster", str(CLUSTER))
    assert code == 1 and "--config" in err


def test_usage_error_exit_64(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "--intent", "x"])
    assert e.value.code == 64


def test_console_script_help():
    exe = console_script()
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "exit codes" in r.stdout and "plan" in r.stdout


def test_demo_refuses_a_workdir_holding_an_earlier_demo(capsys, tmp_path):
    # The demo itself runs in tests/test_demo.py; here: the command's wiring and its refusal.
    (tmp_path / "intent").mkdir()
    code, out, err = run_cli(capsys, "demo", "--workdir", str(tmp_path))
    assert code == 1 and out == ""
    assert f"{tmp_path / 'intent'} already exists" in err and "--workdir" in err
    assert run_demo(workdir=str(tmp_path), out=io.StringIO(), err=io.StringIO()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["intent"]


def test_invalid_intent_changes_nothing(capsys, tmp_path):
    out = tmp_path / "snap.json"
    prev = tmp_path / "prev.json"
    run_cli(capsys, "render", "--intent", str(MULTI), "--cluster", str(CLUSTER), "--out", str(prev))
    before = prev.read_bytes()
    for case in sorted((EX / "invalid").iterdir()):
        code, _, err = run_cli(capsys, "render", "--intent", str(case), "--cluster", str(CLUSTER), "--previous", str(prev), "--out", str(out))
        assert code == 1, case.name
        assert not out.exists(), f"{case.name}: an invalid intent wrote a snapshot"
    assert prev.read_bytes() == before


def _misspelt_algorithm(tmp_path: Path) -> tuple[Path, str]:
    """The multi-service intent with `algorithm: round-robn`, and where that value is (line:col)."""
    intent = tmp_path / "intent"
    intent.mkdir()
    text = (MULTI / "lbconfig.yaml").read_text()
    lines = text.splitlines(keepends=True)
    (line,) = [i for i, s in enumerate(lines) if s.startswith("  algorithm: ")]
    lines[line] = "  algorithm: round-robn\n"
    (intent / "lbconfig.yaml").write_text("".join(lines))
    shutil.copy(MULTI / "sim-device-config.json", intent)  # its deviceConfig (a placeholder for the software switch)
    return intent, f"{intent}/lbconfig.yaml:{line + 1}:14: spec.algorithm: "


def test_render_refuses_an_unknown_algorithm_and_writes_nothing(capsys, tmp_path):
    # Without the check, every Service failed to render and the snapshot held none of them.
    intent, at = _misspelt_algorithm(tmp_path)
    out = tmp_path / "snap.json"
    code, stdout, err = run_cli(capsys, "render", "--intent", str(intent), "--cluster", str(CLUSTER), "--out", str(out))
    assert code == 1
    assert stdout == ""
    assert err.splitlines() == [
        at + 'unknown algorithm "round-robn": not built in (replica-weighted, least-connections, round-robin) and not '
        'an installed plugin (p4kube.algorithms entry points: none installed); did you mean "round-robin"?',
        "1 error(s); nothing was rendered",
    ]
    assert not out.exists()
    code, _, _ = run_cli(capsys, "validate", str(intent))
    assert code == 1


def test_plan_and_check_refuse_an_unknown_algorithm_and_write_nothing(capsys, tmp_path):
    intent, at = _misspelt_algorithm(tmp_path)
    plan = tmp_path / "plan.txt"
    code, stdout, err = run_cli(capsys, "plan", "--intent", str(intent), "--cluster", str(CLUSTER), "--out", str(plan))
    assert (code, stdout) == (1, "")
    assert err.splitlines()[0].startswith(at + 'unknown algorithm "round-robn"')
    out_dir = tmp_path / "check-out"
    code, stdout, err = run_cli(capsys, "check", "--intent", str(intent), "--cluster", str(CLUSTER), "--out-dir", str(out_dir))
    assert code == 1
    assert stdout.splitlines()[0].startswith(at + 'unknown algorithm "round-robn"')
    # The pull request's comment must show the errors (issue 12): check writes plan.md with them
    # and nothing else, no snapshot or plan of switch tables.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check-out", "intent"]
    assert "no plan" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["plan.md"]
    comment = (out_dir / "plan.md").read_text()
    assert "invalid intent" in comment and at + 'unknown algorithm "round-robn"' in comment


def test_render_and_plan_pin_the_drain_clock_with_now(capsys, tmp_path):
    """A moved bucket drains until --now + connectionDrainTimeout (60s here): with --now pinned
    the output is the same byte for byte whenever it runs; a time without a zone is refused."""
    from helpers import scale_recording

    cluster = tmp_path / "cluster.yaml"
    shutil.copy(CLUSTER, cluster)
    v1 = tmp_path / "v1.json"
    assert run_cli(capsys, "render", "--intent", str(MULTI), "--cluster", str(cluster), "--out", str(v1))[0] == 0
    scale_recording(cluster, "web/frontend", "node-c", +2)
    args = ("--intent", str(MULTI), "--cluster", str(cluster), "--previous", str(v1), "--now", "2026-12-06T04:00:00Z")
    code, out1, _ = run_cli(capsys, "render", *args)
    assert code == 0
    _, out2, _ = run_cli(capsys, "render", *args)
    assert out1 == out2
    drains = [d for s in json.loads(out1)["services"] for d in s.get("drains", ())]
    assert drains and {d["until"] for d in drains} == {"2026-12-06T04:01:00Z"}
    code, plan, _ = run_cli(capsys, "plan", *args[:6], "--now", "1796529600")  # the same instant, epoch seconds
    assert code == 2 and "until 2026-12-06T04:01:00Z" in plan
    with pytest.raises(SystemExit) as usage:
        main(["render", *args[:6], "--now", "2026-12-06T04:00:00"])
    assert usage.value.code == 64 and "RFC 3339 with a zone" in capsys.readouterr().err


def test_render_out_writes_into_special_files_and_symlink_targets(capsys, tmp_path):
    """--out renames a temporary file over a regular file only: a FIFO (like /dev/null, a
    device) keeps being what it is and receives the text, and a symlink keeps pointing at its
    target, which gets the new text. (Renaming over /dev/null once made it a regular file.)"""
    import os
    import stat
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    code, _, _ = run_cli(capsys, "render", "--intent", str(MULTI), "--cluster", str(CLUSTER), "--out", str(fifo))
    reader.join(timeout=30)
    assert code == 0 and not reader.is_alive()
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and json.loads(got[0])["kind"] == "SwitchSnapshot"
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    assert run_cli(capsys, "render", "--intent", str(MULTI), "--cluster", str(CLUSTER), "--out", str(link))[0] == 0
    assert link.is_symlink() and json.loads(target.read_text())["kind"] == "SwitchSnapshot"
