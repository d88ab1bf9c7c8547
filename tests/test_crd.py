"""The LoadBalancerConfig CRD generated from schemas/: current in deploy/, structural (what the
API server accepts, fixture 10 and surprise 22), and enforcing what the JSON Schema enforces,
except the differences the CRD form forces (reconciler/crd.py lists them)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kubeapi.server import KubeApiServer
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from ruamel.yaml import YAML

from reconciler import crd
from reconciler.cli import main
from reconciler.intent.schema import validate_document
from reconciler.intent.yamlsafe import parse_yaml_text, read_yaml_file
from reconciler.kube.client import build_api_client
from reconciler.paths import LBCONFIG_SCHEMA_PATH, REPO_ROOT

DEPLOY_CRD = REPO_ROOT / "deploy" / "base" / "crd.yaml"
EXAMPLES = REPO_ROOT / "intent-examples"
from shared_fixtures import KUBE_API

FIXTURE_CRD = KUBE_API / "10-crd-loadbalancerconfig.json"

# Integers are integers (not 1.0, not True), as both Kubernetes and the intent validator see it.
_CHECKER = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _c, x: isinstance(x, int) and not isinstance(x, bool)
).redefine("number", lambda _c, x: isinstance(x, (int, float)) and not isinstance(x, bool))
Strict = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_CHECKER)

# What apiextensions.k8s.io/v1 JSONSchemaProps can hold (minus $ref/definitions, which CRDs forbid).
JSON_SCHEMA_PROPS = {
    "type", "format", "title", "description", "default", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
    "multipleOf", "enum", "maxProperties", "minProperties", "required", "items", "allOf", "oneOf",
    "anyOf", "not", "properties", "additionalProperties", "nullable", "example", "externalDocs",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys", "x-kubernetes-list-type", "x-kubernetes-map-type", "x-kubernetes-validations",
}  # fmt: skip
PY_TYPES = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list, "number": (int, float)}


@pytest.fixture(scope="module")
def source_schema() -> dict[str, Any]:
    return json.loads(LBCONFIG_SCHEMA_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return crd.generate_crd()


@pytest.fixture(scope="module")
def openapi(generated: dict[str, Any]) -> dict[str, Any]:
    return generated["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def nodes(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every schema node with its path (property names, "[]" for items, "*" for map values)."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, (*path, name))
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], (*path, "[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], (*path, "*"))


# --- the generated file ----------------------------------------------------------------------


def test_deploy_crd_yaml_is_the_generated_crd() -> None:
    assert DEPLOY_CRD.read_text(encoding="utf-8") == crd.crd_yaml(), (
        "deploy/base/crd.yaml is stale: regenerate it with `p4kube crd --out deploy/base/crd.yaml`"
    )


def test_yaml_round_trips_to_the_generated_object(generated: dict[str, Any]) -> None:
    loaded = YAML(typ="safe", pure=True).load(crd.crd_yaml())
    assert loaded == generated
    assert not re.search(r"[&*]id\d+", crd.crd_yaml())  # shared sub-schemas are not YAML anchors


def test_generation_is_deterministic_and_pure(source_schema: dict[str, Any]) -> None:
    before = copy.deepcopy(source_schema)
    assert crd.crd_yaml(source_schema) == crd.crd_yaml(copy.deepcopy(source_schema)) == crd.crd_yaml()
    assert source_schema == before  # the source is not mutated


def test_header_says_what_the_crd_form_changed() -> None:
    header = [line for line in crd.crd_yaml().splitlines() if line.startswith("#")]
    assert any("do not edit" in line for line in header)
    (clamp,) = [line for line in header if "deviceId" in line]
    assert "18446744073709551615" in clamp and str(2**63 - 1024) in clamp


# --- names, version, subresources, columns (mirroring fixture 10) ----------------------------


def test_names_scope_and_version(generated: dict[str, Any]) -> None:
    assert generated["apiVersion"] == "apiextensions.k8s.io/v1"
    assert generated["kind"] == "CustomResourceDefinition"
    assert generated["metadata"]["name"] == "loadbalancerconfigs.networking.p4kube.io"
    spec = generated["spec"]
    assert spec["group"] == "networking.p4kube.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "LoadBalancerConfig",
        "listKind": "LoadBalancerConfigList",
        "plural": "loadbalancerconfigs",
        "singular": "loadbalancerconfig",
        "shortNames": ["lbc"],
        "categories": ["p4kube", "all"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_same_shape_as_the_crd_a_real_api_server_accepted(generated: dict[str, Any]) -> None:
    """Fixture 10's 201 for the same CRD (under group tx.networking.p4kube.io): same names,
    same version layout, same condition schema for the kstatus conditions."""
    exchanges = json.loads(FIXTURE_CRD.read_text())["exchanges"]
    created = next(e for e in exchanges if e["request"]["method"] == "POST" and e["response"]["status"] == 201)
    real = created["request"]["body"]["spec"]
    ours = generated["spec"]
    assert {k: v for k, v in ours["names"].items() if k != "categories"} == real["names"]  # categories: ours only
    assert ours["scope"] == real["scope"]
    assert set(ours["versions"][0]) >= set(real["versions"][0])
    real_cond = real["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    our_cond = ours["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    for key in ("type", "x-kubernetes-list-type", "x-kubernetes-list-map-keys"):
        assert our_cond[key] == real_cond[key]
    assert our_cond["items"]["required"] == real_cond["items"]["required"]
    for name, prop in real_cond["items"]["properties"].items():
        ours_prop = our_cond["items"]["properties"][name]
        for key, value in prop.items():
            assert ours_prop[key] == value, f"conditions[].{name}.{key}"
    real_columns = {c["name"]: c for c in real["versions"][0]["additionalPrinterColumns"]}
    our_columns = {c["name"]: c for c in ours["versions"][0]["additionalPrinterColumns"]}
    for name, column in real_columns.items():
        assert our_columns[name] == column


def test_printer_columns(generated: dict[str, Any], openapi: dict[str, Any]) -> None:
    columns = generated["spec"]["versions"][0]["additionalPrinterColumns"]
    by_name = {c["name"]: c for c in columns}
    assert [c["name"] for c in columns if c.get("priority", 0) == 0] == ["Algorithm", "Ready", "Version", "Age"]
    assert by_name["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert by_name["Version"] == {**by_name["Version"], "type": "integer", "jsonPath": ".status.appliedVersion"}
    assert by_name["Age"]["type"] == "date" and by_name["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    for column in columns:
        assert column["type"] in {"integer", "number", "string", "boolean", "date"}
        # Every column points at a field the schema has (a typo would show an empty column).
        path = column["jsonPath"].split("[", 1)[0].lstrip(".").split(".")
        if path[0] == "metadata":
            continue
        node = openapi
        for part in path:
            node = node["properties"][part]
        if "[" not in column["jsonPath"]:
            assert {"integer": "integer", "string": "string", "date": "string"}[column["type"]] == node["type"]


def test_status_schema(openapi: dict[str, Any]) -> None:
    status = openapi["properties"]["status"]
    props = status["properties"]
    assert set(props) == {"observedGeneration", "conditions", "appliedVersion", "appliedDigest", "switches"}
    assert props["observedGeneration"]["type"] == "integer"
    conditions = props["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]
    cond = conditions["items"]
    assert set(cond["properties"]) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
    assert cond["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    switches = props["switches"]
    assert switches["x-kubernetes-list-map-keys"] == ["name"] and switches["items"]["required"] == ["name"]
    assert set(switches["items"]["properties"]) == {"name", "role", "state", "message", "lastWriteTime"}
    # A status as the reconciler writes it validates; a bad one does not (422 on a real server).
    good = {
        "observedGeneration": 3,
        "appliedVersion": 12,
        "appliedDigest": "sha256:" + "ab" * 32,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Applied", "message": "version 12 applied",
             "lastTransitionTime": "2026-11-22T10:00:00Z", "observedGeneration": 3},
            {"type": "Stalled", "status": "False", "reason": "Applied", "message": "",
             "lastTransitionTime": "2026-11-22T10:00:00Z"},
        ],
        "switches": [{"name": "leaf-1", "role": "primary", "state": "InSync", "lastWriteTime": "2026-11-22T10:00:00Z"}],
    }  # fmt: skip
    assert list(Strict(status).iter_errors(good)) == []
    for bad in (
        {"conditions": [{**good["conditions"][0], "status": "Yes"}]},
        {"conditions": [{"type": "Ready", "status": "True"}]},
        {"conditions": [{**good["conditions"][0], "reason": "not a word"}]},
        {"appliedDigest": "sha256:xyz"},
        {"appliedVersion": -1},
        {"switches": [{"role": "primary"}]},
        {"switches": [{"name": "leaf-1", "role": "master"}]},
    ):
        assert list(Strict(status).iter_errors(bad)), bad


# --- structural: what the API server accepts -------------------------------------------------


def test_schema_is_structural(openapi: dict[str, Any]) -> None:
    for path, node in nodes(openapi):
        where = ".".join(path) or "(root)"
        assert set(node) <= JSON_SCHEMA_PROPS, f"{where}: {sorted(set(node) - JSON_SCHEMA_PROPS)}"
        # Surprise 22: an explicit false is rejected ("must be true or undefined").
        assert node.get("x-kubernetes-preserve-unknown-fields", True) is True, where
        assert isinstance(node.get("type"), str), f"{where}: every node needs a type"
        assert not ("properties" in node and "additionalProperties" in node), where
        assert node.get("uniqueItems") is not True, f"{where}: uniqueItems: true is forbidden"
        for key in ("allOf", "oneOf", "anyOf", "not"):
            assert key not in node, f"{where}: {key} needs care in structural schemas; none expected"
        if node["type"] == "array":
            assert isinstance(node.get("items"), dict), where
        if node["type"] == "object" and "required" in node:
            assert set(node["required"]) <= set(node.get("properties", {})), where


def test_root_metadata_and_type_fields(openapi: dict[str, Any]) -> None:
    assert not {"$schema", "$id", "title"} & set(openapi)
    props = openapi["properties"]
    # Only {type: object}: the API server forbids anything else under metadata.
    assert props["metadata"] == {"type": "object"}
    assert props["apiVersion"]["type"] == "string" and props["kind"]["type"] == "string"
    assert openapi["required"] == ["spec"]
    for path, node in nodes(openapi):
        if path[:1] == ("metadata",) and path != ("metadata",):
            pytest.fail(f"{'.'.join(path)}: nothing may be declared under metadata")


def test_defaults_validate_against_their_own_schema(openapi: dict[str, Any]) -> None:
    """The API server rejects a CRD whose defaults do not validate (or would be pruned)."""
    checked = 0
    for path, node in nodes(openapi):
        if "default" in node:
            errors = [e.message for e in Strict(node).iter_errors(node["default"])]
            assert errors == [], f"{'.'.join(path)}: {errors}"
            checked += 1
    assert checked >= 10


def test_patterns_are_re2_compatible(openapi: dict[str, Any]) -> None:
    patterns = [(p, n["pattern"]) for p, n in nodes(openapi) if "pattern" in n]
    assert len(patterns) >= 8
    for path, pattern in patterns:
        # Go's RE2 has no \u escapes, lookarounds or back-references.
        assert "\\u" not in pattern, path
        assert not re.search(r"\(\?<?[=!]|\\[1-9]", pattern), path
        re.compile(pattern)
    duration = openapi["properties"]["spec"]["properties"]["updateInterval"]["pattern"]
    assert re.fullmatch(duration, "5\u00b5s") and re.fullmatch(duration, "5\u03bcs")  # both micro signs


def test_integer_bounds_are_ones_the_api_server_can_hold(openapi: dict[str, Any]) -> None:
    """The API server keeps bounds as float64 and wants an int64 back from an integer's bound:
    2^63-1 is 2^63 as a float64 and was refused (DESIGN.md 7); 2^63-1024 is exact."""
    for path, node in nodes(openapi):
        for key in ("minimum", "maximum"):
            if node.get("type") == "integer" and key in node:
                assert crd.representable_bound(node[key], "integer", node.get("format")), f"{'.'.join(path)}.{key}"
        if node.get("type") == "integer" and isinstance(node.get("default"), int):
            assert -(2**63) <= node["default"] <= 2**63 - 1, f"{'.'.join(path)}.default"
    device = openapi["properties"]["spec"]["properties"]["switchConfig"]["properties"]["switches"]["items"][
        "properties"
    ]["deviceId"]
    assert device["maximum"] == 2**63 - 1024 == crd.FLOAT64_EXACT_INT64_MAX
    assert "float64" in device["description"] and "18446744073709551615" in device["description"]
    assert not crd.representable_bound(2**63 - 1, "integer", None)
    assert not crd.representable_bound(2**64 - 1, "integer", None)
    assert not crd.representable_bound(-(2**63), "integer", None)  # "-9223372036854776000"
    assert not crd.representable_bound(1.5, "integer", None)
    assert crd.representable_bound(2**31 - 1, "integer", "int32") and not crd.representable_bound(2**31, "integer", "int32")


def test_enum_values_have_their_node_type(openapi: dict[str, Any]) -> None:
    for path, node in nodes(openapi):
        for value in node.get("enum", []):
            assert isinstance(value, PY_TYPES[node["type"]]) and not (
                node["type"] == "integer" and isinstance(value, bool)
            ), f"{'.'.join(path)}: {value!r}"


def test_formats_are_known_to_kubernetes(openapi: dict[str, Any]) -> None:
    formats = {n["format"] for _, n in nodes(openapi) if "format" in n}
    assert formats and formats <= crd.K8S_FORMATS


def test_list_map_keys_are_required_scalars(openapi: dict[str, Any]) -> None:
    found = []
    for path, node in nodes(openapi):
        if node.get("x-kubernetes-list-type") == "map":
            items = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                assert items["properties"][key]["type"] in {"string", "integer", "boolean", "number"}
                assert key in items.get("required", []) or "default" in items["properties"][key]
            found.append(".".join(path))
    assert sorted(found) == sorted(
        ["spec.vipPools", "spec.switchConfig.switches", "spec.switchConfig.routes", "status.conditions", "status.switches"]
    )


# --- the JSON Schema's keywords carried over -------------------------------------------------


def test_descriptions_defaults_and_constraints_come_from_the_json_schema(
    source_schema: dict[str, Any], openapi: dict[str, Any]
) -> None:
    ours = dict(nodes(openapi))
    compared = 0
    for path, src in nodes(source_schema):
        if not path or path[0] == "metadata":
            continue
        node = ours[path]
        assert node["type"] == src["type"], path
        for key in ("default", "minLength", "maxLength", "minItems", "maxItems", "format", "required"):
            assert node.get(key) == src.get(key), f"{'.'.join(path)}.{key}"
        if path not in (("apiVersion",), ("kind",)):  # the API server routes on these
            assert node.get("enum") == src.get("enum"), path
        if "pattern" in src:
            decoded = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), src["pattern"])
            assert node["pattern"] == decoded, path
        if "description" in src:
            assert node["description"].startswith(src["description"]), path
        if node.get("maximum") != src.get("maximum"):
            assert src["maximum"] > 2**63 - 1 and node["maximum"] == crd.FLOAT64_EXACT_INT64_MAX, path
        assert node.get("minimum") == src.get("minimum"), path
        compared += 1
    assert compared >= 40
    # And nothing in spec that the JSON Schema does not have.
    spec_paths = {p for p in ours if p[:1] == ("spec",)}
    assert spec_paths == {p for p, _ in nodes(source_schema) if p[:1] == ("spec",)}


def test_untranslatable_keywords_are_errors(source_schema: dict[str, Any]) -> None:
    def with_spec_change(**change: Any) -> dict[str, Any]:
        s = copy.deepcopy(source_schema)
        s["properties"]["spec"]["properties"]["algorithm"].update(change)
        return s

    cases = {
        "const": with_spec_change(const="x"),
        "type": with_spec_change(type=["string", "null"]),
        "format": with_spec_change(format="semver"),
        "lookahead": with_spec_change(pattern="^(?=a)a$"),
    }
    for what, schema in cases.items():
        with pytest.raises(crd.CRDGenerationError, match=r"spec\.algorithm") as info:
            crd.generate_crd(schema)
        assert what in str(info.value), str(info.value)
    s = copy.deepcopy(source_schema)
    s["properties"]["status"] = {"type": "object"}
    with pytest.raises(crd.CRDGenerationError, match="status"):
        crd.generate_crd(s)
    s = copy.deepcopy(source_schema)
    del s["properties"]["spec"]["properties"]["vipPools"]
    with pytest.raises(crd.CRDGenerationError, match="spec.vipPools"):
        crd.generate_crd(s)  # a list-map overlay for a property that is gone


# --- examples validate against the CRD as they do against the JSON Schema ---------------------


def lbc_documents(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """LoadBalancerConfig documents under `root`, read with the intent loader's safe reader
    (so the alias bomb and the other unreadable examples are refused, not expanded)."""
    out = []
    for path in sorted(root.rglob("*.y*ml")):
        for doc in read_yaml_file(path).documents:
            data = doc.data
            if isinstance(data, dict) and data.get("kind") == "LoadBalancerConfig":
                out.append((f"{path.relative_to(EXAMPLES)}#{doc.index}", data))
    return out


def source_errors_the_crd_must_share(schema: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """The JSON Schema's errors for `data`, less the ones a CRD does not (and cannot) raise:
    unknown fields (pruned), metadata (the API server's own rules), apiVersion/kind (routing;
    the API server fills them in)."""
    out = []
    for e in Strict(schema).iter_errors(data):
        path = tuple(e.absolute_path)
        if e.validator == "additionalProperties" or path[:1] in (("metadata",), ("apiVersion",), ("kind",)):
            continue
        if e.validator == "required" and not path:
            missing = {k for k in e.validator_value if k not in e.instance}
            if missing <= {"apiVersion", "kind", "metadata"}:  # always there on a stored object
                continue
        out.append(f"{'.'.join(map(str, path))}: {e.message}")
    return out


def test_valid_examples_validate_against_the_crd(openapi: dict[str, Any]) -> None:
    docs = [d for name in ("minimal", "multi-service", "production") for d in lbc_documents(EXAMPLES / name)]
    assert len(docs) >= 4
    for name, data in docs:
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in Strict(openapi).iter_errors(data)]
        assert errors == [], name


def test_invalid_examples_fail_the_crd_exactly_where_the_schema_does(
    source_schema: dict[str, Any], openapi: dict[str, Any]
) -> None:
    rejected = set()
    for name, data in lbc_documents(EXAMPLES / "invalid"):
        expected = source_errors_the_crd_must_share(source_schema, data)
        got = [e.message for e in Strict(openapi).iter_errors(data)]
        assert bool(got) == bool(expected), f"{name}: schema says {expected}, CRD says {got}"
        if got:
            rejected.add(name.split("/", 2)[1])
    # The schema-violation examples are among them (not a vacuous comparison).
    assert {"bad-duration", "bad-enum", "bad-pattern", "missing-required", "switch-roles", "wrong-type"} <= rejected


def _violations(schema: dict[str, Any], value: Any) -> Iterator[tuple[str, Any]]:
    """Values that break one keyword of `schema`, each with the keyword's name."""
    t = schema.get("type")
    swap = {"string": 7, "integer": "7", "boolean": "yes", "object": [], "array": {}, "number": "7"}
    if t in swap:
        yield "type", swap[t]
    if "enum" in schema:
        yield "enum", "not-in-enum" if t == "string" else 3
    if "pattern" in schema:
        yield "pattern", "!! bad !!"
    if "minimum" in schema:
        yield "minimum", schema["minimum"] - 1
    if "maximum" in schema:
        yield "maximum", schema["maximum"] + 1
    if schema.get("minLength", 0) >= 1:
        yield "minLength", ""
    if "maxLength" in schema:
        yield "maxLength", "a" * (schema["maxLength"] + 1)
    if schema.get("minItems", 0) >= 1:
        yield "minItems", []
    if "maxItems" in schema and isinstance(value, list) and value:
        yield "maxItems", value + [value[0]] * (schema["maxItems"] + 1 - len(value))
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key in value:
                yield "required", {k: v for k, v in value.items() if k != key}


def _walk_values(schema: dict[str, Any], value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], dict[str, Any], Any]]:
    yield path, schema, value
    if isinstance(value, dict):
        for key, sub in value.items():
            if key in schema.get("properties", {}):
                yield from _walk_values(schema["properties"][key], sub, (*path, key))
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from _walk_values(schema["additionalProperties"], sub, (*path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            yield from _walk_values(schema["items"], sub, (*path, i))


def _replace(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(data)
    if not path:
        return value
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def test_every_constraint_of_the_schema_is_enforced_by_the_crd(
    source_schema: dict[str, Any], openapi: dict[str, Any]
) -> None:
    """Break each constraint of each field of the richest example, one at a time: the CRD
    rejects the document exactly when the JSON Schema does (less the known differences)."""
    (_, base), *_ = [d for d in lbc_documents(EXAMPLES / "production") if d[1]["metadata"]["name"] == "edge"]
    assert list(Strict(openapi).iter_errors(base)) == []
    tried = 0
    for path, schema, value in _walk_values(source_schema, base):
        if path[:1] in (("metadata",), ("apiVersion",), ("kind",)):
            continue
        for keyword, bad in _violations(schema, value):
            doc = _replace(base, path, bad)
            expected = source_errors_the_crd_must_share(source_schema, doc)
            got = [e.message for e in Strict(openapi).iter_errors(doc)]
            assert bool(got) == bool(expected), f"{path} {keyword}={bad!r}: schema {expected}, CRD {got}"
            tried += 1
    assert tried >= 100, tried


def test_known_differences(source_schema: dict[str, Any], openapi: dict[str, Any]) -> None:
    (_, base), *_ = lbc_documents(EXAMPLES / "minimal")
    # Unknown fields: the JSON Schema refuses them, the API server prunes them.
    unknown = copy.deepcopy(base)
    unknown["spec"]["healtCheck"] = {}
    assert list(Strict(source_schema).iter_errors(unknown))
    assert not list(Strict(openapi).iter_errors(unknown))
    # deviceId: uint64 in Git, int64 in a custom resource.
    big = copy.deepcopy(base)
    big["spec"]["switchConfig"]["switches"][0]["deviceId"] = 2**64 - 1
    assert not list(Strict(source_schema).iter_errors(big))
    assert [e.validator for e in Strict(openapi).iter_errors(big)] == ["maximum"]
    big["spec"]["switchConfig"]["switches"][0]["deviceId"] = 2**63 - 1
    assert [e.validator for e in Strict(openapi).iter_errors(big)] == ["maximum"]
    big["spec"]["switchConfig"]["switches"][0]["deviceId"] = 2**63 - 1024
    assert not list(Strict(openapi).iter_errors(big))


# --- `p4kube crd` ------------------------------------------------------------------------------


def run_crd(argv: list[str]) -> int:
    """`p4kube crd *argv` through the product's own entry point."""
    return main(["crd", *argv])


def test_cli_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_crd([]) == 0
    assert capsys.readouterr().out == crd.crd_yaml()


def test_cli_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "crd.yaml"
    assert run_crd(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == crd.crd_yaml()
    assert run_crd(["--check", str(out)]) == 0
    out.write_text(out.read_text().replace("maxItems: 2", "maxItems: 3"))
    capsys.readouterr()
    assert run_crd(["--check", str(out)]) == 1
    assert "p4kube crd --out" in capsys.readouterr().err
    assert run_crd(["--check", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


# --- what a real API server refuses, through the test API server (tests/kubeapi/celrules.py) ---

NS = "p4kube-system"
DEVICE_ID_PATH = (
    "spec.validation.openAPIV3Schema.properties[spec].properties[switchConfig].properties[switches]"
    ".items.properties[deviceId]"
)
BOUND_MESSAGE = 'Invalid value: "": Maximum boundary value must be of type integer (default format) in '


@pytest.fixture
def kube() -> Iterator[k8s.ApiClient]:
    with KubeApiServer() as srv:
        srv.load([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        api = build_api_client(configuration=srv.client_configuration())
        try:
            yield api
        finally:
            api.close()


def _device_id(crd_obj: dict[str, Any]) -> dict[str, Any]:
    spec = crd_obj["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec["properties"]["switchConfig"]["properties"]["switches"]["items"]["properties"]["deviceId"]


def _refused(call: Any, *args: Any) -> dict[str, Any]:
    with pytest.raises(ApiException) as info:
        call(*args)
    assert info.value.status == 422, info.value.body
    body = json.loads(info.value.body)
    assert body["reason"] == "Invalid"
    return body


def _causes(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c.get("field", ""), c["message"]) for c in body["details"]["causes"]]


def _cr(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("switchConfig", {"switches": [{"name": "leaf-1", "role": "primary", "address": "10.0.0.1:9559"}]})
    return {
        "apiVersion": f"{crd.GROUP}/{crd.VERSION}",
        "kind": crd.KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def _install(api: k8s.ApiClient, crd_obj: dict[str, Any]) -> None:
    k8s.ApiextensionsV1Api(api).create_custom_resource_definition(crd_obj, _preload_content=False)


def _create(api: k8s.ApiClient, cr: dict[str, Any]) -> Any:
    return k8s.CustomObjectsApi(api).create_namespaced_custom_object(crd.GROUP, crd.VERSION, NS, crd.PLURAL, cr)


@pytest.mark.parametrize("maximum", [2**64 - 1, 2**63 - 1], ids=["uint64-max", "int64-max-as-shipped"])
def test_the_api_server_refuses_a_bound_it_cannot_hold(kube: k8s.ApiClient, maximum: int) -> None:
    """kube-apiserver v1.36 refused deploy/base/crd.yaml with deviceId's maximum 2^63-1 (DESIGN.md 7):
    the bound is a float64 there, 2^63, not an int64; checked when validating the default."""
    old = crd.generate_crd()
    _device_id(old)["maximum"] = maximum
    body = _refused(k8s.ApiextensionsV1Api(kube).create_custom_resource_definition, old)
    assert _causes(body) == [(f"{DEVICE_ID_PATH}.default", BOUND_MESSAGE)]
    assert f"{DEVICE_ID_PATH}.default: {BOUND_MESSAGE}" in body["message"]
    # The generated CRD (maximum 2^63-1024) is accepted, and so is a custom resource using it.
    _install(kube, crd.generate_crd())
    cr = _cr("edge")
    cr["spec"]["switchConfig"]["switches"][0]["deviceId"] = crd.FLOAT64_EXACT_INT64_MAX
    assert _create(kube, cr)["spec"]["switchConfig"]["switches"][0]["deviceId"] == crd.FLOAT64_EXACT_INT64_MAX


def test_without_a_default_the_bad_bound_fails_every_custom_resource_instead(kube: k8s.ApiClient) -> None:
    old = crd.generate_crd()
    del _device_id(old)["default"]
    _device_id(old)["maximum"] = 2**63 - 1
    _install(kube, old)
    body = _refused(_create, kube, _cr("edge", switchConfig={"switches": [
        {"name": "leaf-1", "role": "primary", "address": "10.0.0.1:9559", "deviceId": 7}]}))
    assert _causes(body) == [("<nil>", BOUND_MESSAGE + "spec.switchConfig.switches[0].deviceId")]
    _create(kube, _cr("no-device-id"))  # nothing to check without the field


def test_git_intent_keeps_the_uint64_range() -> None:
    """The clamp is the CRD's only: the intent validator still takes uint64 and refuses beyond."""
    text = (EXAMPLES / "minimal" / "lbconfig.yaml").read_text(encoding="utf-8")
    text = text.replace("address: 127.0.0.1:9559", "address: 127.0.0.1:9559\n        deviceId: {}")
    fields = {}
    for value in (2**64 - 1, 2**64):
        (doc,) = parse_yaml_text(text.format(value), "lbconfig.yaml").documents
        fields[value] = [(d.field, d.message) for d in validate_document(doc)]
    assert fields[2**64 - 1] == []
    ((field, message),) = fields[2**64]
    assert field == "spec.switchConfig.switches[0].deviceId" and "18446744073709551615" in message


def test_defaults_rules_and_categories_the_api_server_refuses(kube: k8s.ApiClient) -> None:
    bad = crd.generate_crd()
    spec = bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["healthCheck"]["default"] = {"interval": "5s", "intervall": "5s"}  # would be pruned
    spec["properties"]["algorithm"]["default"] = "Not A Name"  # fails its own pattern
    spec["properties"]["updateInterval"]["default"] = "2h"  # fails its own CEL rule
    tls = spec["properties"]["switchConfig"]["properties"]["tls"]
    tls["x-kubernetes-validations"] = [{"rule": "has(self.certFil)", "message": "typo"}]
    bad["spec"]["names"]["categories"] = ["p4kube", "All"]
    body = _refused(k8s.ApiextensionsV1Api(kube).create_custom_resource_definition, bad)
    causes = dict(_causes(body))
    root = "spec.validation.openAPIV3Schema.properties[spec]"
    assert causes[f"{root}.properties[healthCheck].default"].endswith(": must not have unknown fields")
    assert "should match" in causes[f"{root}.properties[algorithm].default"]
    assert causes[f"{root}.properties[updateInterval].default"] == 'Invalid value: "2h": must be at most 1h'
    rule = causes[f"{root}.properties[switchConfig].properties[tls].x-kubernetes-validations[0].rule"]
    assert "undefined field 'certFil'" in rule
    assert "spec.names.categories[1]" in causes


def test_cel_rules_refuse_what_the_intent_validator_refuses(kube: k8s.ApiClient) -> None:
    _install(kube, crd.generate_crd())
    custom = k8s.CustomObjectsApi(kube)
    two = [{"name": "leaf-1", "role": "primary", "address": "10.0.0.1:9559"},
           {"name": "leaf-2", "role": "primary", "address": "10.0.0.2:9559"}]
    body = _refused(_create, kube, _cr("twins", switchConfig={"switches": two}))
    message = "exactly one switch must have role primary (the other one, if any, standby)"
    assert _causes(body) == [("spec.switchConfig.switches", f"Invalid value: {message}")]
    assert body["details"]["kind"] == crd.KIND and body["code"] == 422
    none = [{**two[0], "role": "standby"}]
    assert _causes(_refused(_create, kube, _cr("orphan", switchConfig={"switches": none}))) == [
        ("spec.switchConfig.switches", f"Invalid value: {message}")]

    # A valid pair is created; an update making both primary is refused the same way.
    pair = [two[0], {**two[1], "role": "standby"}]
    _create(kube, _cr("pair", switchConfig={"switches": pair}))
    patch = {"spec": {"switchConfig": {"switches": two}}}
    body = _refused(custom.patch_namespaced_custom_object, crd.GROUP, crd.VERSION, NS, crd.PLURAL, "pair", patch)
    assert _causes(body) == [("spec.switchConfig.switches", f"Invalid value: {message}")]

    body = _refused(_create, kube, _cr("half-tls", switchConfig={"switches": pair, "tls": {"certFile": "c.pem"}}))
    tls_message = "Invalid value: certFile and keyFile must be set together (a client certificate needs its key)"
    assert _causes(body) == [("spec.switchConfig.tls", tls_message)]
    body = _refused(_create, kube, _cr("slow", updateInterval="90m", healthCheck={"interval": "0s"}))
    assert sorted(_causes(body)) == [
        ("spec.healthCheck.interval", 'Invalid value: "0s": must be longer than 0s'),
        ("spec.healthCheck.timeout", "Invalid value: timeout must be shorter than interval"),  # the default 2s
        ("spec.updateInterval", 'Invalid value: "90m": must be at most 1h'),
    ]
    # Durations are compared as durations, not strings: 59m59.5s < 1h, 1h0m0.001s is not.
    _create(kube, _cr("edge", updateInterval="59m59.5s", healthCheck={"interval": "1m30s", "timeout": "500ms"}))
    assert _causes(_refused(_create, kube, _cr("edge2", updateInterval="1h0m0.001s"))) == [
        ("spec.updateInterval", 'Invalid value: "1h0m0.001s": must be at most 1h')]
    assert _causes(_refused(_create, kube, _cr("long-drain", connectionDrainTimeout="61m"))) == [
        ("spec.connectionDrainTimeout", 'Invalid value: "61m": must be at most 1h')]
    _create(kube, _cr("no-drain", connectionDrainTimeout="0s", trafficPolicy={"requireLocal": True}))


def test_the_timeout_rule_holds_for_the_default(kube: k8s.ApiClient) -> None:
    """The generated CRD refuses timeout >= interval at the timeout, defaults included, and its
    default ({}) passes."""
    generated = crd.generate_crd()
    health = generated["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["healthCheck"]
    assert crd.HEALTH_CHECK_TIMEOUT_RULE in health["x-kubernetes-validations"]
    _install(kube, generated)
    expected = [("spec.healthCheck.timeout", "Invalid value: timeout must be shorter than interval")]
    assert _causes(_refused(_create, kube, _cr("a", healthCheck={"interval": "2s", "timeout": "5s"}))) == expected
    assert _causes(_refused(_create, kube, _cr("b", healthCheck={"timeout": "5s"}))) == expected  # interval 5s
    _create(kube, _cr("c", healthCheck={"timeout": "4999ms"}))
