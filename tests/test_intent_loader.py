"""load_intent / validate_paths: discovery, documents, defaults, limits, error collection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reconciler.diagnostics import Diagnostic, InputError
from reconciler.intent.files import OperatorDirs
from reconciler.intent.loader import load_intent, validate_paths
from reconciler.intent.schema import load_schema
from reconciler.intent.yamlsafe import parse_yaml_text

HEADER = "apiVersion: networking.p4kube.io/v1alpha1\nkind: LoadBalancerConfig\n"
# Where the compiled pipeline is (an absolute path is not checked at validation): a managed
# pipeline is never pushed without a device config.
DEVICE_CONFIG = "    deviceConfig: bmv2/load_balancer.json\n"


def config_text(name: str = "lb", switch: str = "leaf-1", address: str = "10.0.0.1:9559", extra_spec: str = "") -> str:
    return (
        f"{HEADER}metadata:\n  name: {name}\nspec:\n{extra_spec}"
        f"  switchConfig:\n    switches:\n      - name: {switch}\n        role: primary\n        address: {address}\n"
        f"{DEVICE_CONFIG}"
    )


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def messages(paths: list[Path]) -> list[str]:
    return [d.message for d in validate_paths(paths)]


def test_defaults_come_from_the_schema(tmp_path: Path) -> None:
    write(tmp_path / "lb.yaml", config_text())
    config = load_intent([tmp_path]).config()
    spec = load_schema()["properties"]["spec"]["properties"]
    hc, sc = spec["healthCheck"]["properties"], spec["switchConfig"]["properties"]
    assert config.namespace == load_schema()["properties"]["metadata"]["properties"]["namespace"]["default"]
    assert config.algorithm == spec["algorithm"]["default"]
    assert config.update_interval_s == 1.0 and spec["updateInterval"]["default"] == "1s"
    assert config.buckets_per_service == spec["bucketsPerService"]["default"]
    assert config.backend_mode == spec["backendMode"]["default"]
    assert config.health_check.enabled is hc["enabled"]["default"]
    assert (config.health_check.interval_s, config.health_check.timeout_s) == (5.0, 2.0)
    assert (hc["interval"]["default"], hc["timeout"]["default"]) == ("5s", "2s")
    assert config.health_check.failure_threshold == hc["failureThreshold"]["default"]
    assert config.health_check.success_threshold == hc["successThreshold"]["default"]
    assert config.switch_config.p4_program == sc["p4Program"]["default"]
    assert config.switch_config.switch_type == sc["switchType"]["default"]
    assert config.switch_config.batch_size == sc["batchSize"]["default"]
    assert config.switch_config.standby_unreachable == sc["standbyUnreachable"]["default"]
    assert config.switch_config.pipeline == sc["pipeline"]["default"] == "managed"
    assert config.switch_config.switches[0].device_id == sc["switches"]["items"]["properties"]["deviceId"]["default"]
    assert config.audit.branch == spec["audit"]["properties"]["branch"]["default"]
    assert config.audit.repository is None
    assert config.switch_config.tls is None
    assert config.vip_pools == () and config.switch_config.routes == ()


def test_defaults_inside_list_items(tmp_path: Path) -> None:
    extra = "  vipPools:\n    - name: p\n      addresses: [192.0.2.1]\n"
    text = config_text(extra_spec=extra) + "    routes:\n      - prefix: 10.0.0.0/8\n        port: 3\n"
    write(tmp_path / "lb.yaml", text)
    config = load_intent([tmp_path]).config()
    assert config.vip_pools[0].auto_assign is True
    assert config.switch_config.routes[0].next_hop_mac == "00:00:00:00:00:00"


def test_directory_walk_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    write(tmp_path / "b" / "two.yml", config_text("two", "s2", "10.0.0.2:1"))
    write(tmp_path / "a.yaml", config_text("one", "s1", "10.0.0.1:1"))
    write(tmp_path / "b" / "a" / "three.yaml", config_text("three", "s3", "10.0.0.3:1"))
    write(tmp_path / ".git" / "x.yaml", "not: [valid")
    write(tmp_path / ".hidden.yaml", "not: [valid")
    write(tmp_path / "notes.txt", "not: [valid")
    intent = load_intent([tmp_path])
    assert [c.name for c in intent.configs] == ["one", "three", "two"]


def test_explicit_file_of_any_name_and_repeats_are_read_once(tmp_path: Path) -> None:
    f = write(tmp_path / "intent.conf", config_text())
    assert [c.name for c in load_intent([f, tmp_path / "intent.conf"]).configs] == ["lb"]


def test_multi_document_files_and_other_groups_are_skipped(tmp_path: Path) -> None:
    text = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n"
        + config_text("a", "s1", "10.0.0.1:1")
        + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: y}\n---\n"
        + config_text("b", "s2", "10.0.0.2:1")
        + "---\n"
    )
    write(tmp_path / "all.yaml", text)
    configs = load_intent([tmp_path]).configs
    assert [(c.name, c.source.line if c.source else 0) for c in configs] == [("a", 5), ("b", 21)]


def test_empty_directory_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    diags = validate_paths([tmp_path / "empty", tmp_path / "nope"])
    assert [(Path(d.file).name, d.message) for d in diags] == [
        ("empty", "no YAML files (*.yaml, *.yml) in this directory"),
        ("nope", "no such file or directory"),
    ]


def test_no_configs_among_documents(tmp_path: Path) -> None:
    write(tmp_path / "x.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    (diag,) = validate_paths([tmp_path])
    assert diag.message.startswith("no LoadBalancerConfig (networking.p4kube.io/v1alpha1) found")


def test_all_problems_are_reported_not_only_the_first(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", config_text(extra_spec="  backendMode: nope\n  bucketsPerService: 3\n"))
    write(tmp_path / "b.yaml", "a: [")
    write(tmp_path / "c.yaml", config_text("c", "s3", "10.0.0.3"))
    with pytest.raises(InputError) as raised:
        load_intent([tmp_path])
    fields = [(Path(d.file).name, d.field) for d in raised.value.diagnostics]
    assert fields == [
        ("a.yaml", "spec.backendMode"),
        ("a.yaml", "spec.bucketsPerService"),
        ("b.yaml", ""),
        ("c.yaml", "spec.switchConfig.switches[0].address"),
    ]
    assert str(raised.value).count("\n") == 3  # one line per diagnostic


def test_oversized_file_is_refused_before_parsing_and_fast(tmp_path: Path) -> None:
    big = write(tmp_path / "big.yaml", b"# " + b"x" * (2 << 20) + b"\n: [")  # would be a syntax error
    started = time.perf_counter()
    (diag,) = validate_paths([big])
    assert time.perf_counter() - started < 1.0
    assert diag == Diagnostic(str(big), 1, 1, f"file too large: {(2 << 20) + 6} bytes, the limit is 1048576 bytes")
    # The limit is a parameter.
    small = write(tmp_path / "small.yaml", config_text())
    assert "file too large" in messages_with_limit(small, 100)[0]


def messages_with_limit(path: Path, limit: int) -> list[str]:
    return [d.message for d in validate_paths([path], max_file_bytes=limit)]


def test_alias_bomb_is_refused_fast(tmp_path: Path) -> None:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    for i in range(1, 20):  # 10^20 nodes once expanded
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    path = write(tmp_path / "bomb.yaml", "\n".join(lines) + "\n")
    started = time.perf_counter()
    (diag,) = validate_paths([path])
    assert time.perf_counter() - started < 1.0
    assert "over the limit of 100000" in diag.message and "alias bomb" in diag.message
    assert (diag.line, diag.field) == (5, "a4")  # a4 alone expands to 111111 nodes


def test_recursive_alias() -> None:
    result = parse_yaml_text("a: &x\n  b: *x\n", "f.yaml")
    assert result.documents == ()
    (diag,) = result.diagnostics
    assert "recursive alias" in diag.message and diag.field == "a.b"


def test_aliases_and_merge_keys_below_the_limit_work(tmp_path: Path) -> None:
    text = (
        f"{HEADER}metadata:\n  name: lb\nspec:\n"
        "  healthCheck: &hc {interval: 10s, timeout: 1s}\n"
        "  switchConfig:\n    switches:\n"
        "      - &sw {name: leaf-1, role: primary, address: '10.0.0.1:9559', deviceId: 4}\n"
        "      - <<: *sw\n        name: leaf-2\n        role: standby\n        deviceId: 5\n"
        + DEVICE_CONFIG
    )
    write(tmp_path / "lb.yaml", text)
    config = load_intent([tmp_path]).config()
    assert [(s.name, s.role, s.address, s.device_id) for s in config.switch_config.switches] == [
        ("leaf-1", "primary", "10.0.0.1:9559", 4),
        ("leaf-2", "standby", "10.0.0.1:9559", 5),
    ]
    assert config.health_check.interval_s == 10.0


def test_yaml_1_2_scalars_and_unsupported_tags(tmp_path: Path) -> None:
    # "on"/"yes" are strings in YAML 1.2, so a boolean field rejects them instead of guessing.
    text = config_text(extra_spec="  healthCheck:\n    enabled: on\n  algorithm: !!python/name:os.system ''\n")
    write(tmp_path / "lb.yaml", text)
    diags = validate_paths([tmp_path])
    assert [(d.field, d.message.split(":")[0]) for d in diags] == [
        ("spec.healthCheck.enabled", 'expected boolean, got string "on"'),
        ("spec.algorithm", "unsupported YAML tag !!python/name"),
    ]


def test_integers_are_not_floats_or_booleans(tmp_path: Path) -> None:
    write(tmp_path / "lb.yaml", config_text(extra_spec="  bucketsPerService: 64.0\n"))
    (diag,) = validate_paths([tmp_path])
    assert (diag.field, diag.message) == ("spec.bucketsPerService", "expected integer, got number 64.0")


def test_duplicate_keys_are_all_reported(tmp_path: Path) -> None:
    text = config_text().replace("  name: lb\n", "  name: lb\n  name: lb2\n  name: lb3\n")
    write(tmp_path / "lb.yaml", text)
    diags = validate_paths([tmp_path])
    assert [(d.line, d.message) for d in diags] == [
        (5, 'duplicate key "name" (first defined at line 4, column 3)'),
        (6, 'duplicate key "name" (first defined at line 4, column 3)'),
    ]


def test_non_utf8_and_bom(tmp_path: Path) -> None:
    write(tmp_path / "bad.yaml", b"a: 1\nb: \xc3\x28\n")
    (diag,) = validate_paths([tmp_path / "bad.yaml"])
    assert (diag.line, diag.column, diag.message) == (2, 4, "invalid UTF-8 byte 0xc3: intent files must be UTF-8 encoded")
    write(tmp_path / "bom.yaml", "\ufeff" + config_text())
    assert [c.name for c in load_intent([tmp_path / "bom.yaml"]).configs] == ["lb"]


def test_tab_after_a_colon(tmp_path: Path) -> None:
    write(tmp_path / "lb.yaml", config_text().replace("name: lb", "name:\tlb"))
    (diag,) = validate_paths([tmp_path])
    assert (diag.line, diag.column) == (4, 8)
    assert diag.message.startswith("tab character")


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "deep.yaml", "a: " + "[" * 100 + "]" * 100 + "\n")
    write(tmp_path / "deeper.yaml", "a: " + "[\n" * 20000 + "]" * 20000 + "\n")
    nested = "".join("  " * k + "a:\n" for k in range(1000))  # block nesting: ruamel recurses
    write(tmp_path / "deepest.yaml", nested + "  " * 1000 + "b: 1\n")
    diags = validate_paths([tmp_path])  # refused, not parsed for minutes (pytest-timeout guards a hang)
    got = [(Path(d.file).name, d.line, d.message) for d in diags]
    assert got[:2] == [
        ("deep.yaml", 1, "document nests deeper than 64 levels"),
        ("deeper.yaml", 65, "document nests deeper than 64 levels"),
    ]
    # Block nesting is refused either by the depth limit or, when the parser's recursion gives
    # out first (it depends on the stack already in use), as unparseable: both are refusals.
    assert got[2:] in (
        [("deepest.yaml", 64, "document nests deeper than 64 levels")],
        [("deepest.yaml", 1, "document nests too deeply to parse")],
    ), got


def test_unknown_field_suggestions(tmp_path: Path) -> None:
    write(tmp_path / "lb.yaml", config_text(extra_spec="  bucketsPerServce: 64\n  zzz: 1\n"))
    diags = validate_paths([tmp_path])
    assert [(d.field, d.line, d.column, d.message) for d in diags] == [
        ("spec.bucketsPerServce", 6, 3, 'unknown field "bucketsPerServce"; did you mean "bucketsPerService"?'),
        (
            "spec.zzz",
            7,
            3,
            'unknown field "zzz"; allowed fields: algorithm, audit, backendMode, bucketsPerService, '
            "connectionDrainTimeout, healthCheck, podCIDRs, safety, serviceSelector, switchConfig, trafficPolicy, "
            "updateInterval, vipPools",
        ),
    ]


def test_label_keys_in_paths_are_quoted(tmp_path: Path) -> None:
    text = config_text(extra_spec="  serviceSelector:\n    matchLabels:\n      app.kubernetes.io/name: 7\n      -bad-: x\n")
    write(tmp_path / "lb.yaml", text)
    diags = validate_paths([tmp_path])
    assert [(d.field, d.message) for d in diags] == [
        ('spec.serviceSelector.matchLabels["app.kubernetes.io/name"]', "expected string, got integer 7"),
        (
            'spec.serviceSelector.matchLabels["-bad-"]',
            "invalid label key \"-bad-\": the name part must be at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit",
        ),
    ]


def test_generation_and_algorithm(tmp_path: Path) -> None:
    # Plugin algorithms (installed or not) are covered in test_intent_semantic.py.
    text = config_text(extra_spec="  algorithm: round-robin\n").replace("  name: lb\n", "  name: lb\n  generation: 7\n")
    write(tmp_path / "lb.yaml", text)
    config = load_intent([tmp_path]).config()
    assert (config.generation, config.algorithm) == (7, "round-robin")


def test_pipeline_files_are_names_in_the_pipeline_dir_not_beside_the_intent(tmp_path: Path) -> None:
    write(tmp_path / "repo" / "p4" / "lb.p4info.txtpb", "")
    text = config_text() + "    p4Info: ../p4/lb.p4info.txtpb\n"
    write(tmp_path / "repo" / "intent" / "lb.yaml", text)
    (diag,) = validate_paths([tmp_path / "repo" / "intent"])  # '..' would leave the operator's directory
    assert diag.field == "spec.switchConfig.p4Info" and "may not contain '.' or '..' components" in diag.message
    write(tmp_path / "repo" / "intent" / "lb.yaml", text.replace("../p4/", ""))
    dirs = OperatorDirs(pipeline_dir=tmp_path / "repo" / "p4")
    config = load_intent([tmp_path / "repo" / "intent"], dirs=OperatorDirs()).config()
    assert config.switch_config.p4info == "lb.p4info.txtpb"  # kept as written
    (diag,) = [d for d in validate_paths([tmp_path / "repo" / "intent"], dirs=OperatorDirs(pipeline_dir=tmp_path / "repo" / "intent"))
               if d.field.endswith("p4Info")]
    assert diag.message.startswith('file not found: "lb.p4info.txtpb" in --pipeline-dir')
    assert not [d for d in validate_paths([tmp_path / "repo" / "intent"], dirs=dirs) if d.field.endswith("p4Info")]


def test_validate_paths_never_raises_for_input(tmp_path: Path) -> None:
    write(tmp_path / "x.yaml", b"\x00\x01\x02")
    write(tmp_path / "y.yaml", "- 1\n- 2\n")
    write(tmp_path / "z.yaml", "'just a string'\n")
    diags = validate_paths([tmp_path])
    assert [(Path(d.file).name, d.message) for d in diags] == [
        ("x.yaml", "unacceptable character #x0000: only printable characters are allowed"),
        ("y.yaml", "expected a mapping (a Kubernetes object), got a list"),
        ("z.yaml", 'expected a mapping (a Kubernetes object), got the scalar "just a string"'),
    ]


def test_a_config_with_a_mistyped_group_does_not_vanish(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", config_text())
    write(tmp_path / "b.yaml", config_text("b", "s2", "10.0.0.2:1").replace("networking.p4kube.io/", ""))
    (diag,) = validate_paths([tmp_path])
    assert (Path(diag.file).name, diag.field, diag.message) == (
        "b.yaml",
        "apiVersion",
        'no API group in "v1alpha1" for a LoadBalancerConfig: use networking.p4kube.io/v1alpha1',
    )


def test_vip_probe_is_off_by_default_and_can_be_turned_on(tmp_path) -> None:
    from reconciler.intent.loader import load_intent

    base = (Path(__file__).resolve().parents[1] / "intent-examples" / "minimal" / "lbconfig.yaml").read_text()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "lbconfig.yaml").write_text(base)
    assert load_intent([tmp_path / "a"]).config().health_check.vip_probe is False
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "lbconfig.yaml").write_text(base.replace("spec:\n", "spec:\n  healthCheck:\n    vipProbe: true\n", 1))
    assert load_intent([tmp_path / "b"]).config().health_check.vip_probe is True
