"""Untrusted input files other than the intent are parsed within limits: the cluster recording
(size, nesting depth, aliases), the followed recording and the least-connections JSON. Each
refusal names the file (and line where known), is quick, and is an error, never a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.cluster.followed import FollowedRecording
from reconciler.cluster.recorded import load_cluster_file
from reconciler.diagnostics import InputError
from reconciler.inputlimits import (
    DEFAULT_RECORDING_MAX_BYTES,
    RECORDING_MAX_BYTES_ENV,
    recording_max_bytes,
)
from reconciler.intent.yamlsafe import DEFAULT_MAX_FILE_BYTES

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"
P4KUBE = Path(sys.executable).with_name("p4kube")
DEEP = 100_000


def _refused(path: Path) -> str:
    with pytest.raises(InputError) as e:
        load_cluster_file(path)
    return str(e.value)


def test_plan_refuses_a_100000_deep_flow_recording_quickly(tmp_path: Path) -> None:
    # 200 KB that used to take `p4kube plan` 30 s and then crash the process.
    f = tmp_path / "deep.yaml"
    f.write_text("kind: List\nitems: " + "[" * DEEP + "]" * DEEP + "\n")
    t0 = time.monotonic()
    r = subprocess.run(
        [str(P4KUBE), "plan", "--intent", str(MULTI), "--cluster", str(f)],
        check=False, capture_output=True, text=True, timeout=60,
    )
    elapsed = time.monotonic() - t0
    assert r.returncode == 1 and r.returncode >= 0  # an error exit, not a signal
    assert f"{f}:2:107: invalid YAML: nests deeper than 100 levels" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert elapsed < 10  # measured: about 1 s, most of it the command's start


@pytest.mark.parametrize(
    "text, where",
    [
        ("kind: List\nitems:\n" + "- " * DEEP + "x\n", "3:199"),  # block sequences on one line
        ("kind: List\nitems: [" + "{a: " * DEEP + "1" + "}" * DEEP + "]\n", "2:401"),
        ("[" * DEEP + "]" * DEEP, "1:101"),  # JSON: was an uncaught RecursionError
        ('{"kind": "List", "items": ' + "[" * 5000 + "]" * 5000 + "}", "1:126"),
    ],
    ids=["block", "flow-mappings", "json", "json-in-list"],
)
def test_deep_recordings_are_refused_with_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    t0 = time.monotonic()
    msg = _refused(f)
    assert time.monotonic() - t0 < 2
    assert msg.startswith(f"{f}:{where}: ") and "nests deeper than 100 levels" in msg


def test_a_json_recording_too_deep_through_main_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.json"
    f.write_text("[" * DEEP + "]" * DEEP)
    assert main(["plan", "--intent", str(MULTI), "--cluster", str(f)]) == 1
    err = capsys.readouterr().err
    assert f"{f}:1:101: JSON nests deeper than 100 levels; refused" in err and "RecursionError" not in err


@pytest.mark.parametrize(
    "text, words",
    [
        # A billion laughs: nine levels of ten aliases each.
        (
            "kind: List\nitems: []\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)),
            "aliases expand the document by more than 1000000 nodes",
        ),
        ("kind: List\nitems: &x [*x]\n", "recursive alias: *x is inside its own anchor"),
        # Shallow where written, 150 deep through aliases.
        (
            "kind: List\nitems: []\nd0: &d0 [x]\n" + "".join(f"d{i}: &d{i} [[[*d{i - 1}]]]\n" for i in range(1, 51)),
            "nests deeper than 100 levels through alias *d",
        ),
    ],
    ids=["billion-laughs", "recursive", "deep-through-aliases"],
)
def test_alias_abuse_is_refused(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    t0 = time.monotonic()
    msg = _refused(f)
    assert time.monotonic() - t0 < 2
    assert msg.startswith(f"{f}:") and words in msg


def test_recording_size_limit_is_its_own_and_settable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Measured (reconciler.cluster.synthetic, 10,000 Services, 100,000 endpoints): 27 MB of YAML,
    # 69 MB of kubectl's indented JSON. The intent's 1 MiB limit would refuse it.
    assert DEFAULT_RECORDING_MAX_BYTES >= 4 * 69_000_000 // 2 and DEFAULT_RECORDING_MAX_BYTES > DEFAULT_MAX_FILE_BYTES
    assert recording_max_bytes() == DEFAULT_RECORDING_MAX_BYTES
    size = (MULTI / "cluster.yaml").stat().st_size
    monkeypatch.setenv(RECORDING_MAX_BYTES_ENV, "2000")
    msg = _refused(MULTI / "cluster.yaml")
    assert msg == (
        f"{MULTI / 'cluster.yaml'}:1:1: file too large: {size} bytes, the limit is 2000 bytes "
        f"(set {RECORDING_MAX_BYTES_ENV} to raise it)"
    )
    monkeypatch.setenv(RECORDING_MAX_BYTES_ENV, str(size))
    assert load_cluster_file(MULTI / "cluster.yaml").services


def test_plan_through_the_command_refuses_an_oversized_recording(tmp_path: Path) -> None:
    env = {**os.environ, RECORDING_MAX_BYTES_ENV: "1000"}
    r = subprocess.run(
        [str(P4KUBE), "plan", "--intent", str(MULTI), "--cluster", str(MULTI / "cluster.yaml")],
        check=False, capture_output=True, text=True, timeout=60, env=env,
    )
    assert r.returncode == 1 and "file too large" in r.stderr and r.stdout == ""


def test_followed_recording_refuses_an_oversized_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "cluster.yaml"
    f.write_bytes((MULTI / "cluster.yaml").read_bytes())
    monkeypatch.setenv(RECORDING_MAX_BYTES_ENV, "1000")
    with pytest.raises(InputError) as e:
        FollowedRecording(f)
    assert str(e.value).startswith(f"{f}:1:1: file too large: ")


@pytest.mark.parametrize(
    "content, words",
    [
        ("[" * DEEP + "]" * DEEP, ":1:9: JSON nests deeper than 8 levels; refused"),
        ('{"web/api": ' + '{"a": ' * 20 + "1" + "}" * 21, ":1:55: JSON nests deeper than 8 levels"),
        (" " * (16 << 20) + "{}", ": file too large: 16777218 bytes, the limit is 16777216 bytes"),
    ],
    ids=["deep", "deep-in-object", "too-large"],
)
def test_connections_json_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, words: str) -> None:
    f = tmp_path / "connections.json"
    f.write_text(content)
    code = main(["plan", "--intent", str(MULTI), "--cluster", str(MULTI / "cluster.yaml"), "--connections", str(f)])
    assert code == 1
    captured = capsys.readouterr()
    assert f"{f}{words}" in captured.err and captured.out == ""
    assert "RecursionError" not in captured.err


def test_valid_connections_json_is_still_read(tmp_path: Path) -> None:
    f = tmp_path / "connections.json"
    f.write_text(json.dumps({"web/api": {"node-c": 3}}))
    assert main(["plan", "--intent", str(MULTI), "--cluster", str(MULTI / "cluster.yaml"), "--connections", str(f)]) == 2
