"""Parsers and cross-config checks of reconciler.intent.semantic."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.intent.semantic import (
    DocumentFacts,
    SwitchClaim,
    VipRange,
    Where,
    check_across,
    parse_endpoint,
    parse_ipv4_network,
    parse_vip_entry,
)


def ip(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10.0.0.1:9559", ("10.0.0.1", 9559)),
        ("Leaf-1.Example.COM:1", ("leaf-1.example.com", 1)),
        ("switch.example.com.:65535", ("switch.example.com", 65535)),
        ("[2001:DB8::1]:9559", ("2001:db8::1", 9559)),
        ("localhost:9559", ("localhost", 9559)),
    ],
)
def test_parse_endpoint_valid(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("10.0.0.1", 'missing port in "10.0.0.1": use host:port, e.g. 10.0.0.1:9559'),
        ("10.0.0.1:0", 'invalid port "0" in "10.0.0.1:0": must be 1 to 65535'),
        ("10.0.0.1:65536", 'invalid port "65536" in "10.0.0.1:65536": must be 1 to 65535'),
        ("10.0.0.1:http", 'invalid port "http" in "10.0.0.1:http": must be 1 to 65535'),
        ("10.0.0.256:1", 'invalid IPv4 address "10.0.0.256"'),
        ("2001:db8::1:9559", "an IPv6 address needs brackets: use [2001:db8::1]:9559"),
        ("[2001:db8::zz]:1", 'invalid IPv6 address "2001:db8::zz" in "[2001:db8::zz]:1"'),
        ("[2001:db8::1]", 'invalid address "[2001:db8::1]": use [IPv6]:port, e.g. [2001:db8::1]:9559'),
        (":9559", 'missing host in ":9559"'),
        ("bad_host:1", 'invalid host "bad_host": expected an IPv4 address, [IPv6] or a DNS name'),
    ],
)
def test_parse_endpoint_errors(text: str, message: str) -> None:
    assert parse_endpoint(text) == message


def test_parse_vip_entry_forms() -> None:
    assert parse_vip_entry("203.0.113.0/30") == (ip("203.0.113.0"), ip("203.0.113.3"))
    assert parse_vip_entry("203.0.113.9/32") == (ip("203.0.113.9"), ip("203.0.113.9"))
    assert parse_vip_entry("203.0.113.10-203.0.113.20") == (ip("203.0.113.10"), ip("203.0.113.20"))
    assert parse_vip_entry("203.0.113.7") == (ip("203.0.113.7"), ip("203.0.113.7"))
    assert parse_vip_entry("203.0.113.7-203.0.113.7") == (ip("203.0.113.7"), ip("203.0.113.7"))
    assert parse_vip_entry("203.0.113.007") == 'invalid IPv4 address "203.0.113.007"'  # ambiguous octal
    assert parse_vip_entry("2001:db8::1") == 'IPv6 address "2001:db8::1" is not supported: only IPv4'
    assert parse_vip_entry("203.0.113.1/") == 'invalid prefix length / in "203.0.113.1/": must be 0 to 32'


def test_host_bits_message_names_the_fix() -> None:
    assert parse_ipv4_network("10.1.2.3/16") == "10.1.2.3/16 has host bits set: use 10.1.0.0/16 for the whole network, or 10.1.2.3/32 for one address"
    assert parse_ipv4_network("10.1.0.0/16") == ipaddress.IPv4Network("10.1.0.0/16")


def where(n: int, file: str = "f.yaml") -> Where:
    return Where(file, n, 1, f"spec.vipPools[0].addresses[{n}]")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), min_size=1, max_size=12))
def test_overlaps_are_reported_at_the_later_range(spans: list[tuple[int, int]]) -> None:
    base = int(ip("198.51.100.0"))
    ranges = [
        VipRange(ipaddress.IPv4Address(base + lo), ipaddress.IPv4Address(base + lo + n), f"r{i}", "p", "ns/c", where(i))
        for i, (lo, n) in enumerate(spans)
    ]
    facts = [DocumentFacts("ns/c", where(100), tuple(ranges[:5])), DocumentFacts("ns/d", where(101), tuple(ranges[5:]))]
    reported = {d.line for d in check_across(facts)}
    expected = {i for i, (lo, n) in enumerate(spans) if any(lo <= lo2 + n2 and lo2 <= lo + n for lo2, n2 in spans[:i])}
    assert reported == expected


def test_switch_claims_by_name_and_by_endpoint() -> None:
    def claim(name: str, host: str, device: int, config: str, line: int) -> SwitchClaim:
        at = Where("f.yaml", line, 1, "spec.switchConfig.switches[0].name")
        return SwitchClaim(name, (host, 9559, device), f"{host}:9559", device, config, at, at)

    facts = [
        DocumentFacts("ns/a", Where("f.yaml", 1, 1, "metadata.name"), (), (claim("s1", "10.0.0.1", 1, "ns/a", 10),)),
        DocumentFacts(
            "ns/b",
            Where("f.yaml", 2, 1, "metadata.name"),
            (),
            (
                claim("s2", "10.0.0.1", 2, "ns/b", 20),  # other device id on the same address: fine
                claim("s3", "10.0.0.1", 1, "ns/b", 30),  # same address and device as s1
                claim("s1", "10.0.0.9", 1, "ns/b", 40),  # same name as s1
            ),
        ),
        DocumentFacts("ns/a", Where("g.yaml", 3, 1, "metadata.name")),
    ]
    assert [str(d) for d in check_across(facts)] == [
        "g.yaml:3:1: metadata.name: LoadBalancerConfig ns/a is already defined at f.yaml:1",
        'f.yaml:30:1: spec.switchConfig.switches[0].name: switch 10.0.0.1:9559 device 1 is already claimed as "s1" by ns/a (f.yaml:10)',
        'f.yaml:40:1: spec.switchConfig.switches[0].name: switch "s1" is already claimed by ns/a (f.yaml:10)',
    ]


# --- spec.algorithm: built in or an installed plugin -------------------------------------------------

import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

from reconciler.diagnostics import InputError  # noqa: E402
from reconciler.intent.files import OperatorDirs
from reconciler.intent.loader import load_intent, validate_paths  # noqa: E402
from reconciler.kube.intent_source import intent_from_objects  # noqa: E402
from reconciler.paths import P4INFO_PATH, REPO_ROOT  # noqa: E402

KNOWN = "not built in (replica-weighted, least-connections, round-robin) and not an installed plugin"
DEVICE_CONFIG = "    deviceConfig: bmv2/load_balancer.json\n"  # a managed pipeline needs one


def lbconfig(algorithm: str | None = None, switch_config: str = "") -> str:
    """A LoadBalancerConfig whose spec.algorithm (when given) is on line 6, column 14."""
    return (
        "apiVersion: networking.p4kube.io/v1alpha1\nkind: LoadBalancerConfig\nmetadata:\n  name: lb\nspec:\n"
        + (f"  algorithm: {algorithm}\n" if algorithm is not None else "")
        + "  switchConfig:\n"
        + switch_config
        + "    switches:\n      - name: leaf-1\n        role: primary\n        address: 10.0.0.1:9559\n"
        + ("" if "deviceConfig:" in switch_config or "pipeline:" in switch_config else DEVICE_CONFIG)
    )


def intent_dir(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "intent"
    folder.mkdir(exist_ok=True)
    (folder / "lb.yaml").write_text(text, encoding="utf-8")
    return folder


def shown(folder: Path, pipeline_dir: Path | None = None) -> list[str]:
    dirs = OperatorDirs(pipeline_dir=pipeline_dir) if pipeline_dir is not None else None
    return [f"{d.line}:{d.column}: {d.field}: {d.message}" for d in validate_paths([folder], dirs=dirs)]


@pytest.fixture
def algorithm_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real installed plugin: a distribution on sys.path whose entry_points.txt declares
    `example.com-maglev` in the p4kube.algorithms group (its code is never imported)."""
    site = tmp_path / "site"
    info = site / "p4kube_maglev_example-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: p4kube-maglev-example\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[p4kube.algorithms]\nexample.com-maglev = p4kube_maglev_example:assign\n")
    monkeypatch.syspath_prepend(str(site))
    yield "example.com-maglev"


@pytest.mark.parametrize("name", ["replica-weighted", "least-connections", "round-robin", None])
def test_built_in_algorithms_are_valid(tmp_path: Path, name: str | None) -> None:
    config = load_intent([intent_dir(tmp_path, lbconfig(name))]).config()
    assert config.algorithm == (name or "replica-weighted")


def test_a_misspelt_algorithm_is_refused_with_the_closest_name(tmp_path: Path) -> None:
    folder = intent_dir(tmp_path, lbconfig("round-robn"))
    expected = [
        f'6:14: spec.algorithm: unknown algorithm "round-robn": {KNOWN} '
        '(p4kube.algorithms entry points: none installed); did you mean "round-robin"?'
    ]
    assert shown(folder) == expected
    with pytest.raises(InputError) as raised:
        load_intent([folder])
    assert [f"{d.line}:{d.column}: {d.field}: {d.message}" for d in raised.value.diagnostics] == expected


def test_an_algorithm_far_from_every_name_gets_no_suggestion(tmp_path: Path) -> None:
    (line,) = shown(intent_dir(tmp_path, lbconfig("maglev")))
    assert line.endswith('"maglev": ' + KNOWN + " (p4kube.algorithms entry points: none installed)")


def test_a_plugin_algorithm_is_valid_only_when_installed(tmp_path: Path, algorithm_plugin: str) -> None:
    folder = intent_dir(tmp_path, lbconfig(algorithm_plugin))
    assert load_intent([folder]).config().algorithm == "example.com-maglev"


def test_a_plugin_that_is_not_installed_is_refused(tmp_path: Path) -> None:
    (line,) = shown(intent_dir(tmp_path, lbconfig("example.com-maglev")))
    assert line.startswith('6:14: spec.algorithm: unknown algorithm "example.com-maglev": ' + KNOWN)


def test_installed_plugins_are_named_and_suggested(tmp_path: Path, algorithm_plugin: str) -> None:
    assert shown(intent_dir(tmp_path, lbconfig("example.com-maglv"))) == [
        f'6:14: spec.algorithm: unknown algorithm "example.com-maglv": {KNOWN} '
        '(p4kube.algorithms entry points: example.com-maglev); did you mean "example.com-maglev"?'
    ]


def test_an_algorithm_the_schema_refuses_is_reported_once(tmp_path: Path) -> None:
    (line,) = shown(intent_dir(tmp_path, lbconfig("Round_Robin")))
    assert line == '6:14: spec.algorithm: invalid value "Round_Robin": must match the pattern ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$'


def test_custom_resources_get_the_same_algorithm_check(algorithm_plugin: str) -> None:
    def cr(name: str, algorithm: str) -> dict:
        return {
            "apiVersion": "networking.p4kube.io/v1alpha1",
            "kind": "LoadBalancerConfig",
            "metadata": {"name": name, "namespace": "p4kube-system"},
            "spec": {
                "algorithm": algorithm,
                "switchConfig": {"switches": [{"name": f"{name}-sw", "role": "primary", "address": f"{name}.example.com:9559"}],
                                 "deviceConfig": "bmv2/load_balancer.json"},
            },
        }

    result = intent_from_objects([cr("typo", "round-robn"), cr("plugin", algorithm_plugin)])
    assert [c.name for c in result.intent.configs] == ["plugin"]
    (invalid,) = result.invalid
    (diag,) = invalid.diagnostics
    assert (invalid.name, diag.field) == ("typo", "spec.algorithm")
    assert diag.message.endswith('(p4kube.algorithms entry points: example.com-maglev); did you mean "round-robin"?')


# --- switchConfig.p4Info / deviceConfig: files that exist must be usable ------------------------------


def pipeline(p4info: str | None = None, device_config: str | None = None) -> str:
    """switchConfig lines: p4Info (when given) on line 7, deviceConfig on the line after, at column 5."""
    lines = ""
    if p4info is not None:
        lines += f"    p4Info: {p4info}\n"
    if device_config is not None:
        lines += f"    deviceConfig: {device_config}\n"
    return lbconfig(switch_config=lines)


def test_readable_pipeline_files_are_valid(tmp_path: Path) -> None:
    folder = intent_dir(tmp_path, pipeline("p4/lb.p4info.txtpb", "p4/lb.json"))
    (folder / "p4").mkdir()
    shutil.copy(P4INFO_PATH, folder / "p4" / "lb.p4info.txtpb")
    (folder / "p4" / "lb.json").write_text("{}")
    sc = load_intent([folder], dirs=OperatorDirs(pipeline_dir=folder)).config().switch_config
    assert (sc.p4info, sc.device_config) == ("p4/lb.p4info.txtpb", "p4/lb.json")


def test_a_directory_is_not_a_pipeline_file(tmp_path: Path) -> None:
    folder = intent_dir(tmp_path, pipeline("p4", "p4/lb"))
    (folder / "p4" / "lb").mkdir(parents=True)
    assert shown(folder, folder) == [
        '7:13: spec.switchConfig.p4Info: "p4" is not a regular file',
        '8:19: spec.switchConfig.deviceConfig: "p4/lb" is not a regular file',
    ]


def test_an_empty_device_config_is_refused(tmp_path: Path) -> None:
    folder = intent_dir(tmp_path, pipeline(device_config="lb.json"))
    (folder / "lb.json").write_bytes(b"")
    assert shown(folder, folder) == [
        '7:19: spec.switchConfig.deviceConfig: "lb.json" is empty: the deviceConfig is the compiled pipeline (BMv2 JSON or Tofino binary)'
    ]


def test_a_p4info_that_is_not_p4info_text_is_refused_at_its_field(tmp_path: Path) -> None:
    folder = intent_dir(tmp_path, pipeline("lb.p4info.txtpb"))
    (folder / "lb.p4info.txtpb").write_text('pkg_info {\n  arch: "v1model"\n}\ntables {\n  colour: 1\n}\n')
    (folder / "bmv2").mkdir()
    (folder / "bmv2" / "load_balancer.json").write_text("{}")  # the config's deviceConfig
    # Line and column, and none of the file's content (intent may name any file).
    assert shown(folder, folder) == ['7:13: spec.switchConfig.p4Info: "lb.p4info.txtpb" is not P4Info text format: line 5, column 3']
    (folder / "lb.p4info.txtpb").write_bytes(b'pkg_info { arch: "\xff" }\n')
    assert shown(folder, folder) == ['7:13: spec.switchConfig.p4Info: "lb.p4info.txtpb" is not P4Info text format: not UTF-8 text']


def test_an_absolute_path_is_refused_with_how_to_migrate(tmp_path: Path) -> None:
    # Files are found by name in the operator's --pipeline-dir: an absolute path is refused, existing or not.
    # Fixed paths (not tmp_path, whose length varies): the echoed value is clipped at ~80 characters.
    folder = intent_dir(tmp_path, pipeline("/opt/p4/nowhere.txtpb", "/var/run/secrets/token"))
    assert shown(folder) == [
        '7:13: spec.switchConfig.p4Info: absolute path "/opt/p4/nowhere.txtpb" is not allowed: files are found by '
        "name in the operator's --pipeline-dir; name it relative to --pipeline-dir, e.g. p4Info: nowhere.txtpb",
        '8:19: spec.switchConfig.deviceConfig: absolute path "/var/run/secrets/token" is not allowed: files are found by name in '
        "the operator's --pipeline-dir; name it relative to --pipeline-dir, e.g. deviceConfig: token",
    ]


def test_an_unreadable_p4info_is_refused(tmp_path: Path) -> None:
    # The check runs as an unprivileged user: root reads a file whatever its mode says.
    folder = Path(tempfile.mkdtemp(prefix="p4kube-unreadable-"))
    try:
        os.chmod(folder, 0o755)
        (folder / "lb.yaml").write_text(pipeline("lb.p4info.txtpb", "lb.json"), encoding="utf-8")
        shutil.copy(P4INFO_PATH, folder / "lb.p4info.txtpb")
        (folder / "lb.json").write_text("{}")
        os.chmod(folder / "lb.p4info.txtpb", 0o000)
        os.chmod(folder / "lb.json", 0o000)
        as_user = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
        done = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "validate", "--pipeline-dir", str(folder), str(folder)],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False, **as_user,
        )
        assert done.returncode == 1, done.stderr
        assert done.stdout.splitlines() == [
            f'{folder}/lb.yaml:7:13: spec.switchConfig.p4Info: cannot read "lb.p4info.txtpb": permission denied',
            f'{folder}/lb.yaml:8:19: spec.switchConfig.deviceConfig: cannot read "lb.json": permission denied',
        ]
    finally:
        shutil.rmtree(folder)


# --- connection draining and traffic policy (issue 15) ---------------------------------------


def _with_spec(line: str) -> str:
    """lbconfig() with `line` as the first line of spec (line 6, column 3)."""
    return lbconfig().replace("spec:\n", f"spec:\n  {line}\n", 1)


@pytest.mark.parametrize(("text", "seconds"), [(None, 60.0), ("0s", 0.0), ("90s", 90.0), ("1h", 3600.0)])
def test_connection_drain_timeout_loads(tmp_path: Path, text: str | None, seconds: float) -> None:
    source = lbconfig() if text is None else _with_spec(f"connectionDrainTimeout: {text}")
    config = load_intent([intent_dir(tmp_path, source)]).config()
    assert config.connection_drain_timeout_s == seconds and config.traffic_policy.require_local is False


def test_connection_drain_timeout_over_an_hour_is_refused_at_its_field(tmp_path: Path) -> None:
    (line,) = shown(intent_dir(tmp_path, _with_spec("connectionDrainTimeout: 61m")))
    assert line == "6:27: spec.connectionDrainTimeout: duration 61m is longer than the maximum of 1h"


def test_connection_drain_timeout_must_be_a_duration(tmp_path: Path) -> None:
    (line,) = shown(intent_dir(tmp_path, _with_spec("connectionDrainTimeout: 1d")))
    assert line.startswith("6:27: spec.connectionDrainTimeout:") and "Go duration" in line


def test_require_local_loads(tmp_path: Path) -> None:
    config = load_intent([intent_dir(tmp_path, _with_spec("trafficPolicy: {requireLocal: true}"))]).config()
    assert config.traffic_policy.require_local is True
    (line,) = shown(intent_dir(tmp_path, _with_spec("trafficPolicy: {requireLocl: true}")))
    assert line.startswith("6:") and "requireLocl" in line
