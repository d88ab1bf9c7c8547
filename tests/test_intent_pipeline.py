"""spec.switchConfig.pipeline and deviceConfig: a pipeline is never pushed with an empty device
config. `validate` refuses a managed pipeline without deviceConfig at spec.switchConfig; with
`pipeline: external` the reconciler never pushes, it only checks that the switch runs our P4Info
(pushed by another tool, under that tool's cookie) and writes nothing to a switch that does not.
Two software switches over gRPC on 127.0.0.1, the CLI as an operator runs it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from finsy.proto import p4r, p4r_grpc

from reconciler.cli import main
from reconciler.diagnostics import InputError
from reconciler.intent.loader import load_intent, validate_paths
from reconciler.p4info import load_p4info, pipeline_info_from_message
from reconciler.pipeline_io import P4INFO_PATH
from reconciler.switch import SwitchSession
from reconciler.switch.pipeline import p4info_difference

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "intent-examples" / "multi-service"
FIXTURES = ROOT.parent / "shared" / "fixtures" / "p4runtime-bmv2"
FOREIGN_COOKIE = 0x0BADC0FFEE


def config_text(switch_config: str, switches: str = '      - {name: leaf-1, role: primary, address: "127.0.0.1:9559"}\n') -> str:
    return (
        "apiVersion: networking.p4kube.io/v1alpha1\nkind: LoadBalancerConfig\nmetadata:\n  name: lb\nspec:\n"
        "  switchConfig:\n" + switch_config + "    switches:\n" + switches
    )


@pytest.mark.parametrize("switch_type", ["bmv2", "tofino"])
def test_a_managed_pipeline_without_device_config_is_refused_at_switch_config(tmp_path, switch_type):
    (tmp_path / "lb.yaml").write_text(config_text(f"    switchType: {switch_type}\n"))
    (diag,) = validate_paths([tmp_path])
    assert (diag.line, diag.column, diag.field) == (6, 3, "spec.switchConfig")
    assert diag.message.startswith(f"no deviceConfig: switchType {switch_type} would get the pipeline pushed with an empty device config")
    assert "set deviceConfig to" in diag.message and "or set pipeline: external" in diag.message
    # The same with pipeline: managed spelled out.
    (tmp_path / "lb.yaml").write_text(config_text(f"    switchType: {switch_type}\n    pipeline: managed\n"))
    assert [d.field for d in validate_paths([tmp_path])] == ["spec.switchConfig"]


def test_external_or_a_device_config_is_valid(tmp_path):
    (tmp_path / "lb.yaml").write_text(config_text("    pipeline: external\n"))
    sc = load_intent([tmp_path]).config().switch_config
    assert (sc.pipeline, sc.device_config) == ("external", None)
    (tmp_path / "lb.json").write_text("{}")
    (tmp_path / "lb.yaml").write_text(config_text("    deviceConfig: lb.json\n"))
    sc = load_intent([tmp_path]).config().switch_config
    assert (sc.pipeline, sc.device_config) == ("managed", "lb.json")
    (tmp_path / "lb.yaml").write_text(config_text("    pipeline: elsewhere\n"))
    with pytest.raises(InputError) as raised:
        load_intent([tmp_path])
    assert "spec.switchConfig.pipeline: unsupported value \"elsewhere\": must be one of managed, external" in str(raised.value)


def test_p4info_difference():
    ours = load_p4info(P4INFO_PATH)
    assert p4info_difference(ours, ours) == ""
    other = type(ours)()
    other.CopyFrom(ours)
    other.pkg_info.arch = "psa"  # compiler and arch strings are not the pipeline
    other.tables[0].preamble.doc.brief = "documented elsewhere"
    assert p4info_difference(ours, other) == ""
    other.tables[0].size += 1
    assert p4info_difference(ours, other).startswith("same tables and actions, but other")
    variant = load_p4info(FIXTURES / "lb_nocounter.p4info.txtpb")
    # The variant was recorded from the program before dnat_draining/conn_gen (issue 15).
    difference = p4info_difference(ours, variant)
    assert difference.startswith("missing action MyIngress.dnat_draining, counter MyIngress.backend_")


async def _install_externally(port: int, p4info) -> None:
    """Another tool installs a pipeline with its own device config and cookie."""
    info = pipeline_info_from_message(load_p4info(P4INFO_PATH))
    async with SwitchSession(f"127.0.0.1:{port}", device_id=1, election_id=5, info=info) as s:
        await s.ensure_pipeline(p4info, b'{"installed": "by another tool"}', FOREIGN_COOKIE)


def _cookie(port: int) -> int | None:
    """The switch's pipeline cookie (GetForwardingPipelineConfig needs no arbitration)."""
    Req = p4r.GetForwardingPipelineConfigRequest
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            reply = p4r_grpc.P4RuntimeStub(ch).GetForwardingPipelineConfig(Req(device_id=1, response_type=Req.COOKIE_ONLY), timeout=10)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
            return None
    return reply.config.cookie.cookie if reply.config.HasField("cookie") else None


def _external_intent(tmp_path: Path, ports: tuple[int, int]) -> Path:
    """The multi-service intent with pipeline: external instead of its deviceConfig."""
    intent = tmp_path / "intent"
    intent.mkdir()
    text = (MULTI / "lbconfig.yaml").read_text()
    text = text.replace("127.0.0.1:9559", f"127.0.0.1:{ports[1]}").replace("127.0.0.1:9560", f"127.0.0.1:{ports[0]}")
    assert "    deviceConfig: sim-device-config.json\n" in text
    text = text.replace("    deviceConfig: sim-device-config.json\n", "    pipeline: external\n")
    (intent / "lbconfig.yaml").write_text(text)
    return intent


def test_external_pipeline_missing_is_an_error_not_a_push(tmp_path, switch_pair, capsys):
    standby, primary = switch_pair
    intent = _external_intent(tmp_path, (standby.port, primary.port))
    argv = ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--cluster", str(MULTI / "cluster.yaml"), "--state", str(tmp_path / "state")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "primary sim-primary cannot be used: nothing was written" in err
    assert "runs no pipeline, and switchConfig.pipeline is external" in err and "Traceback" not in err
    assert _cookie(primary.port) is None and _cookie(standby.port) is None


def test_external_pipeline_is_checked_never_pushed(tmp_path, switch_pair, capsys):
    standby, primary = switch_pair
    intent = _external_intent(tmp_path, (standby.port, primary.port))
    ours = load_p4info(P4INFO_PATH)
    argv = ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--cluster", str(MULTI / "cluster.yaml"), "--state", str(tmp_path / "state")]
    # Installed by another tool with our P4Info: entries are written under that tool's cookie.
    for sw in (standby, primary):
        asyncio.run(_install_externally(sw.port, ours))
    assert main(argv) == 0
    capsys.readouterr()
    for sw in (standby, primary):
        assert (_cookie(sw.port)) == FOREIGN_COOKIE  # never pushed again
        assert len(sw.entries(1, "MyIngress.vip_table")) == 4
    assert main(argv) == 0  # the next pass reads back and finds it up to date
    assert "up to date" in capsys.readouterr().out


def test_external_pipeline_with_another_p4info_is_refused_without_writes(tmp_path, switch_pair, capsys):
    standby, primary = switch_pair
    intent = _external_intent(tmp_path, (standby.port, primary.port))
    theirs = load_p4info(P4INFO_PATH)
    theirs.tables[0].size += 1  # a program that is not ours (its tables differ)
    for sw in (standby, primary):
        asyncio.run(_install_externally(sw.port, theirs))
    argv = ["reconcile", "--once", "--allow-insecure-switches", "--intent", str(intent), "--pipeline-dir", str(intent), "--cluster", str(MULTI / "cluster.yaml"), "--state", str(tmp_path / "state")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "(switchConfig.pipeline: external) is not ours: its P4Info differs" in err and "Traceback" not in err
    for sw in (standby, primary):
        assert (_cookie(sw.port)) == FOREIGN_COOKIE
        assert sw.entries(1, "MyIngress.vip_table") == [] and sw.entries(1, "MyIngress.backend_table") == []


def test_a_managed_config_without_device_config_is_never_applied(tmp_path, switch_pair, capsys):
    """A config that skipped validation (built in code): the applier is never built."""
    from reconciler.app import Settings, SettingsError, build_applier

    standby, primary = switch_pair
    intent = _external_intent(tmp_path, (standby.port, primary.port))
    config = load_intent([intent]).config()
    managed = type(config)(**{**config.__dict__, "switch_config": type(config.switch_config)(
        **{**config.switch_config.__dict__, "pipeline": "managed"})})
    args = Settings(timeout=5.0, election_id=1, batch_size=None)
    with pytest.raises(SettingsError, match="no deviceConfig: the pipeline would be pushed with an empty device config"):
        build_applier(managed, args)
