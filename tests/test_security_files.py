"""H1: files named by intent are untrusted. p4Info/deviceConfig (and the TLS files) are found
only by name inside the operator's --pipeline-dir / --tls-dir; absolute paths, '..', symlinks
leading out, non-regular and oversized files are refused with an error at the intent's
file:line:col, and nothing reaches a switch. Intent YAML that is a symlink is never read.
P4Info parse errors name the file and line and echo none of its content."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli


REPO = Path(__file__).resolve().parents[1]
MULTI = REPO / "intent-examples" / "multi-service"
CLUSTER = MULTI / "cluster.yaml"
SECRET = "eyJhbGciOiJSUzI1NiJ9.SECRET-SERVICEACCOUNT-TOKEN-DO-NOT-ECHO"


def intent_with(tmp_path: Path, ports: tuple[int, int], device_config: str, extra: str = "") -> Path:
    """The multi-service intent pointed at two switches (standby, primary), naming `device_config`."""
    intent = tmp_path / "intent"
    intent.mkdir(exist_ok=True)
    text = (MULTI / "lbconfig.yaml").read_text()
    text = text.replace("127.0.0.1:9559", f"127.0.0.1:{ports[1]}").replace("127.0.0.1:9560", f"127.0.0.1:{ports[0]}")
    text = text.replace("deviceConfig: sim-device-config.json", f"deviceConfig: {device_config}{extra}")
    (intent / "lbconfig.yaml").write_text(text)
    return intent


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def untouched(*switches) -> bool:  # type: ignore[no-untyped-def]
    """No pipeline was pushed and no write reached any of the software switches."""
    return all(sw.device(1)._config is None and sw.writes_processed == 0 for sw in switches)


def reconcile(intent: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--cluster", str(CLUSTER),
            "--state", str(tmp_path / "state"), "--timeout", "5", *extra]


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A file the intent must never reach (stands in for the pod's ServiceAccount token)."""
    path = tmp_path / "outside" / "token"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


@pytest.fixture
def pipeline_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pipeline"
    d.mkdir()
    shutil.copy(MULTI / "sim-device-config.json", d / "load_balancer.json")
    return d


def test_an_absolute_device_config_is_refused_at_its_line_and_nothing_is_pushed(
    tmp_path: Path, switch_pair, secret_file: Path, pipeline_dir: Path, capsys
) -> None:
    standby, primary = switch_pair
    intent = intent_with(tmp_path, (standby.port, primary.port), str(secret_file))
    at = line_of(intent / "lbconfig.yaml", "deviceConfig:")
    code, out, err = run_cli(capsys, "validate", str(intent))
    assert code == 1
    (line,) = out.splitlines()
    assert line.startswith(f"{intent}/lbconfig.yaml:{at}:19: spec.switchConfig.deviceConfig: absolute path ")
    assert "name it relative to --pipeline-dir, e.g. deviceConfig: token" in line
    code, out, err = run_cli(capsys, *reconcile(intent, tmp_path, "--pipeline-dir", str(pipeline_dir)))
    assert code == 1 and f"lbconfig.yaml:{at}:19: spec.switchConfig.deviceConfig: absolute path" in err
    assert SECRET not in out + err
    assert untouched(standby, primary)


def test_names_that_leave_the_pipeline_dir_are_refused(
    tmp_path: Path, switch_pair, secret_file: Path, pipeline_dir: Path, capsys
) -> None:
    standby, primary = switch_pair
    (pipeline_dir / "innocent.json").symlink_to(secret_file)  # a link inside, pointing out
    cases = {
        "../outside/token": "may not contain '.' or '..' components",
        "innocent.json": "leads outside --pipeline-dir (through a symbolic link): refused",
    }
    for name, why in cases.items():
        intent = intent_with(tmp_path, (standby.port, primary.port), name)
        code, out, err = run_cli(capsys, "validate", "--pipeline-dir", str(pipeline_dir), str(intent))
        assert code == 1 and why in out, out
        code, out, err = run_cli(capsys, *reconcile(intent, tmp_path, "--pipeline-dir", str(pipeline_dir)))
        assert code == 1 and why in err, err
        assert SECRET not in out + err
    assert untouched(standby, primary)


def test_a_named_file_without_pipeline_dir_is_a_warning_in_validate_and_an_error_where_it_is_read(
    tmp_path: Path, switch_pair, capsys
) -> None:
    standby, primary = switch_pair
    intent = intent_with(tmp_path, (standby.port, primary.port), "load_balancer.json")
    code, out, err = run_cli(capsys, "validate", str(intent))
    assert (code, out) == (0, "")
    assert 'warning: spec.switchConfig.deviceConfig: "load_balancer.json" not checked: give --pipeline-dir DIR' in err
    code, out, err = run_cli(capsys, *reconcile(intent, tmp_path))
    assert code == 1
    assert err.strip() == (
        'p4kube reconcile: error: p4kube-system/p4kube-config: spec.switchConfig.deviceConfig: "load_balancer.json" '
        "names a file in --pipeline-dir, which is not set: give --pipeline-dir DIR (the directory holding it)"
    )
    assert untouched(standby, primary)


def test_a_named_file_in_the_pipeline_dir_is_pushed(tmp_path: Path, switch_pair, pipeline_dir: Path, capsys) -> None:
    standby, primary = switch_pair
    intent = intent_with(tmp_path, (standby.port, primary.port), "load_balancer.json")
    code, out, err = run_cli(capsys, *reconcile(intent, tmp_path, "--pipeline-dir", str(pipeline_dir)))
    assert code == 0, out + err
    assert primary.device(1)._config.p4_device_config == (pipeline_dir / "load_balancer.json").read_bytes()


def test_oversized_and_special_files_are_refused(tmp_path: Path, pipeline_dir: Path, capsys) -> None:
    with open(pipeline_dir / "huge.p4info.txtpb", "wb") as f:  # sparse: 17 MiB of size, no disk
        f.truncate(17 * 1024 * 1024)
    os.mkfifo(pipeline_dir / "fifo.json")
    intent = intent_with(tmp_path, (1, 2), "fifo.json", "\n    p4Info: huge.p4info.txtpb")
    code, out, _ = run_cli(capsys, "validate", "--pipeline-dir", str(pipeline_dir), str(intent))
    assert code == 1
    assert [line.split(": ", 1)[1] for line in out.splitlines()] == [
        'spec.switchConfig.deviceConfig: "fifo.json" is not a regular file',
        'spec.switchConfig.p4Info: "huge.p4info.txtpb" is 17825792 bytes, over the limit of 16 MiB',
    ]


def test_a_p4info_that_does_not_parse_is_named_with_its_line_and_no_content(
    tmp_path: Path, pipeline_dir: Path, capsys
) -> None:
    (pipeline_dir / "bad.p4info.txtpb").write_text(f'pkg_info {{ arch: "v1model" }}\n{SECRET}\n')
    intent = intent_with(tmp_path, (1, 2), "load_balancer.json", "\n    p4Info: bad.p4info.txtpb")
    code, out, _ = run_cli(capsys, "validate", "--pipeline-dir", str(pipeline_dir), str(intent))
    assert code == 1
    assert out.splitlines()[0].endswith('spec.switchConfig.p4Info: "bad.p4info.txtpb" is not P4Info text format: line 2, column 1')
    # render reads the P4Info (its digest goes into the snapshot): a clear error, no traceback.
    done = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "render", "--intent", str(intent), "--cluster", str(CLUSTER),
         "--pipeline-dir", str(pipeline_dir)],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback" not in done.stderr and "SECRET" not in done.stderr
    assert done.stderr.splitlines() == [
        f'{intent}/lbconfig.yaml:33:13: spec.switchConfig.p4Info: "bad.p4info.txtpb" is not P4Info text format: line 2, column 1',
        "1 error(s); nothing was rendered",
    ]


# A fixed absolute path (tmp_path's length varies, and the echo is clipped at ~80 characters).
TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_tls_files_are_names_in_the_tls_dir(tmp_path: Path, secret_file: Path, capsys) -> None:
    intent = intent_with(tmp_path, (1, 2), "load_balancer.json",
                         f"\n    tls:\n      caFile: {TOKEN}\n      certFile: ../x.crt\n      keyFile: k.key")
    at = line_of(intent / "lbconfig.yaml", "caFile:")
    code, out, _ = run_cli(capsys, "validate", str(intent))
    assert code == 1
    assert out.splitlines()[:2] == [
        f'{intent}/lbconfig.yaml:{at}:15: spec.switchConfig.tls.caFile: absolute path "{TOKEN}" is not allowed: '
        "files are found by name in the operator's --tls-dir; name it relative to --tls-dir, e.g. caFile: token",
        f"{intent}/lbconfig.yaml:{at + 1}:17: spec.switchConfig.tls.certFile: \"../x.crt\" may not contain '.' or '..' "
        "components: name a file inside --tls-dir",
    ]


def test_intent_yaml_behind_a_symlink_is_refused_without_being_read(tmp_path: Path, capsys) -> None:
    intent = tmp_path / "repo"
    intent.mkdir()
    shutil.copy(MULTI / "lbconfig.yaml", intent / "lbconfig.yaml")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "token.yaml").write_text(f"{SECRET}: [\n")  # would be a YAML error echoing it, if read
    (intent / "linked.yaml").symlink_to(outside / "token.yaml")
    (intent / "sub").symlink_to(outside, target_is_directory=True)
    code, out, _ = run_cli(capsys, "validate", str(intent))
    assert code == 1
    assert out.splitlines() == [
        f"{intent}/linked.yaml:1:1: a symbolic link: intent files must be regular files; refused, not read",
        f"{intent}/sub:1:1: a symbolic link to a directory outside the intent: refused, not followed",
    ]
    assert SECRET not in out


def test_p4info_parse_errors_carry_file_and_line_but_no_content(tmp_path: Path) -> None:
    from reconciler.p4info import P4InfoError, load_p4info

    path = tmp_path / "token"
    path.write_text(f"{SECRET}\n")
    with pytest.raises(P4InfoError) as raised:
        load_p4info(path)
    assert str(raised.value) == f"{path}:1:1: not P4Info text format (protobuf text, as p4c --p4runtime-files writes it)"


def test_render_with_a_named_p4info_needs_the_pipeline_dir(tmp_path: Path, capsys) -> None:
    intent = intent_with(tmp_path, (1, 2), "load_balancer.json", "\n    p4Info: load_balancer.p4info.txtpb")
    code, out, err = run_cli(capsys, "render", "--intent", str(intent), "--cluster", str(CLUSTER))
    assert (code, out) == (1, "")
    assert err.strip().endswith(
        'spec.switchConfig.p4Info: "load_balancer.p4info.txtpb" names a file in --pipeline-dir, which is not set: '
        "give --pipeline-dir DIR (the directory holding it)"
    )
