"""LoadBalancerConfig CRs as intent: the same checks as files, diagnostics naming the CR."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from reconciler.intent.loader import load_intent
from reconciler.intent.files import OperatorDirs
from reconciler.kube.intent_source import intent_document, intent_from_objects, describe

REPO = Path(__file__).resolve().parents[1]


def as_cr(path: Path, *, namespace: str = "p4kube-system", created: str = "2026-11-22T10:00:00Z", generation: int = 1) -> dict[str, Any]:
    """An intent file's document as the API server returns the CR: server metadata added."""
    doc = YAML(typ="safe").load(path.read_text())
    doc["metadata"] = {
        **doc["metadata"],
        "namespace": doc["metadata"].get("namespace", namespace),
        "uid": "5ee71cf3-7e4b-41b4-a278-a73ee2d19ff0",
        "resourceVersion": "1096",
        "generation": generation,
        "creationTimestamp": created,
        "managedFields": [{"manager": "argocd-controller", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
        "finalizers": ["example.com/keep"],
    }
    doc["status"] = {"observedGeneration": 1, "conditions": []}
    return doc


def test_a_cr_builds_the_same_model_as_its_file() -> None:
    path = REPO / "intent-examples" / "multi-service" / "lbconfig.yaml"
    from_file = load_intent([path]).config()
    # A CR's file names are checked in the operator's --pipeline-dir (here the example's folder).
    result = intent_from_objects([as_cr(path, generation=4)], dirs=OperatorDirs(pipeline_dir=path.parent))
    assert result.diagnostics == []
    (config,) = result.intent.configs
    # Everything but the generation (files have none) and the source is the same: names stay names.
    assert config.generation == 4
    assert config.switch_config.device_config == "sim-device-config.json"
    assert config == type(config)(**{**from_file.__dict__, "generation": 4})
    res = result.resources["p4kube-system/p4kube-config"]
    assert res.valid and res.generation == 4 and res.status["observedGeneration"] == 1
    assert config.source is not None and config.source.file == "LoadBalancerConfig p4kube-system/p4kube-config"


def test_server_metadata_and_status_are_not_intent() -> None:
    doc = intent_document(as_cr(REPO / "intent-examples" / "minimal" / "lbconfig.yaml"))
    assert set(doc.data["metadata"]) == {"name", "namespace", "generation"}
    assert "status" not in doc.data
    assert doc.has(("spec", "switchConfig", "switches", 0, "address"))
    assert not doc.has(("spec", "algorithm"))  # defaulted, not written


def test_invalid_cr_is_reported_by_name_and_field_while_valid_ones_load() -> None:
    good = as_cr(REPO / "intent-examples" / "minimal" / "lbconfig.yaml")
    bad = copy.deepcopy(good)
    bad["metadata"]["name"] = "broken"
    bad["spec"]["algorithm"] = "Maglev!"
    bad["spec"]["healthCheck"] = {"interval": "2s", "timeout": "5s"}
    bad["spec"]["switchConfig"]["switches"][0] = {"name": "leaf-9", "role": "primary", "address": "10.9.9.9"}
    result = intent_from_objects([good, bad])
    assert [c.key for c in result.intent.configs] == ["p4kube-system/p4kube-config"]
    (invalid,) = result.invalid
    assert invalid.key == "p4kube-system/broken" and invalid.config is None
    fields = {d.field for d in invalid.diagnostics}
    assert {"spec.algorithm", "spec.healthCheck.timeout", "spec.switchConfig.switches[0].address"} <= fields
    for d in invalid.diagnostics:
        assert d.file == "LoadBalancerConfig p4kube-system/broken" and (d.line, d.column) == (0, 0)
    timeout = next(d for d in invalid.diagnostics if d.field == "spec.healthCheck.timeout")
    assert describe(timeout) == "spec.healthCheck.timeout: timeout 5s must be shorter than interval 2s"


def test_conflicts_between_crs_blame_the_newer_one() -> None:
    a = as_cr(REPO / "intent-examples" / "invalid" / "overlapping-vip-pools" / "a.yaml", created="2026-11-22T09:00:00Z")
    b = as_cr(REPO / "intent-examples" / "invalid" / "overlapping-vip-pools" / "b.yaml", created="2026-11-21T09:00:00Z")
    a["spec"]["vipPools"][1]["addresses"].pop()  # a.yaml also overlaps itself; keep only the cross-CR clash
    result = intent_from_objects([a, b])
    # b ("internal") is older: it keeps its pool; a ("edge") is refused for overlapping it.
    assert [c.name for c in result.intent.configs] == ["internal"]
    (invalid,) = result.invalid
    assert invalid.name == "edge"
    assert any("overlaps" in d.message and "internal" in d.message for d in invalid.diagnostics)


def test_an_invalid_cr_holds_no_claims_against_a_valid_one() -> None:
    """Same second (creationTimestamp ties, names decide), same pool and switch: the broken CR,
    invalid on its own, must not keep the valid one out."""
    edge = as_cr(REPO / "intent-examples" / "minimal" / "lbconfig.yaml")
    edge["metadata"]["name"] = "edge"
    edge["spec"]["vipPools"] = [{"name": "test", "addresses": ["203.0.113.10-203.0.113.20"]}]
    broken = copy.deepcopy(edge)
    broken["metadata"]["name"] = "broken"  # sorts first
    broken["spec"]["healthCheck"] = {"interval": "1s", "timeout": "2s"}
    result = intent_from_objects([edge, broken])
    assert [c.name for c in result.intent.configs] == ["edge"]
    (invalid,) = result.invalid
    assert invalid.name == "broken" and [d.field for d in invalid.diagnostics] == ["spec.healthCheck.timeout"]


def test_pipeline_file_names_are_checked_in_the_pipeline_dir(tmp_path: Path) -> None:
    (tmp_path / "custom.p4info.txtpb").write_text("")
    (tmp_path / "bmv2").mkdir()
    (tmp_path / "bmv2" / "load_balancer.json").write_text("{}")
    cr = as_cr(REPO / "intent-examples" / "minimal" / "lbconfig.yaml")
    cr["spec"]["switchConfig"]["p4Info"] = "custom.p4info.txtpb"
    result = intent_from_objects([cr], dirs=OperatorDirs(pipeline_dir=tmp_path))
    assert result.intent.configs[0].switch_config.p4info == "custom.p4info.txtpb"
    missing = intent_from_objects([cr], dirs=OperatorDirs(pipeline_dir=tmp_path / "nowhere"))
    assert any(d.field == "spec.switchConfig.p4Info" and d.message.startswith("--pipeline-dir") and "no such file" in d.message
               for d in missing.diagnostics)
    cr["spec"]["switchConfig"]["p4Info"] = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    (diag,) = intent_from_objects([cr]).diagnostics
    assert diag.field == "spec.switchConfig.p4Info" and diag.message.startswith('absolute path "/var/run/secrets')


# --- against the test API server: the generated CRD, live CRs, and their status ------------------------

import asyncio  # noqa: E402
import json  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402
from kubeapi.server import KubeApiServer  # noqa: E402
from kubernetes import client as k8s  # noqa: E402

from reconciler.crd import generate_crd  # noqa: E402
from reconciler.kube.client import build_api_client  # noqa: E402
from reconciler.kube.crstatus import READY, STALLED, ConfigStatusWriter, Outcome, SwitchState, condition  # noqa: E402
from reconciler.kube.intent_source import GROUP, PLURAL, VERSION, CRIntentSource  # noqa: E402

NS = "p4kube-system"
MERGE = "application/merge-patch+json"


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    with KubeApiServer() as srv:
        srv.load([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        api = build_api_client(configuration=srv.client_configuration())
        try:
            k8s.ApiextensionsV1Api(api).create_custom_resource_definition(generate_crd(), _preload_content=False)
        finally:
            api.close()
        yield srv


def _cr(name: str, switch: str, port: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoadBalancerConfig",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"switchConfig": {"switches": [{"name": switch, "role": "primary", "address": f"10.0.0.1:{port}"}],
                                  "deviceConfig": "bmv2/load_balancer.json"}, **spec},
    }


def _get_cr(api: k8s.ApiClient, name: str) -> dict[str, Any]:
    raw = k8s.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name, _preload_content=False)
    return json.loads(raw.data)


def test_live_crs_become_intent_and_an_invalid_one_is_stalled(server: KubeApiServer, api: k8s.ApiClient) -> None:
    custom = k8s.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, _cr("edge", "leaf-1", 9559))
    # Valid for the CRD's schema, invalid for the semantic checks: the API server accepts it.
    broken = _cr("broken", "leaf-2", 9560)
    broken["spec"]["switchConfig"]["switches"][0]["address"] = "10.0.0.1"  # no port
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, broken)
    digest = "sha256:" + "ab" * 32

    async def go() -> None:
        source = CRIntentSource(api)
        writer = ConfigStatusWriter(api)
        await source.start()
        try:
            crs = await source.wait_synced(timeout=10)
            assert [c.key for c in crs.intent.configs] == [f"{NS}/edge"]
            (bad,) = crs.invalid
            assert bad.key == f"{NS}/broken" and bad.generation == 1
            (diag,) = bad.diagnostics
            assert diag.file == f"LoadBalancerConfig {NS}/broken" and diag.field == "spec.switchConfig.switches[0].address"
            problems = [describe(d) for d in bad.diagnostics]
            assert await writer.report(NS, "broken", bad.generation, Outcome.invalid(problems), bad.status)
            good = crs.resources[f"{NS}/edge"]
            applied = Outcome("applied", "snapshot 1 applied", applied_version=1, applied_digest=digest,
                              switches=(SwitchState("leaf-1", "primary", "InSync"),))
            assert await writer.report(NS, "edge", good.generation, applied, good.status)

            # The watch brings the status writes back; the same status is then not written again.
            changes = source.changes().__aiter__()
            while True:
                crs = await asyncio.wait_for(changes.__anext__(), 10)
                if crs.resources[f"{NS}/broken"].status and crs.resources[f"{NS}/edge"].status:
                    break
            bad = crs.resources[f"{NS}/broken"]
            assert not await writer.report(NS, "broken", bad.generation, Outcome.invalid(problems), bad.status)

            # Fixing the spec bumps the generation; the CR becomes intent.
            await asyncio.to_thread(
                custom.patch_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "broken",
                {"spec": {"switchConfig": {"switches": [{"name": "leaf-2", "role": "primary", "address": "10.0.0.1:9560"}]}}},
                _content_type=MERGE,
            )
            while True:
                crs = await asyncio.wait_for(changes.__anext__(), 10)
                if crs.resources[f"{NS}/broken"].valid:
                    break
            assert crs.resources[f"{NS}/broken"].generation == 2
            assert sorted(c.name for c in crs.intent.configs) == ["broken", "edge"]
        finally:
            await source.aclose()
        assert writer.writes == 2

    asyncio.run(asyncio.wait_for(go(), 30))
    stalled = _get_cr(api, "broken")["status"]
    assert condition(stalled, STALLED)["status"] == "True" and condition(stalled, STALLED)["reason"] == "InvalidSpec"
    assert 'spec.switchConfig.switches[0].address: missing port in "10.0.0.1"' in condition(stalled, STALLED)["message"]
    assert condition(stalled, READY)["status"] == "False" and stalled["observedGeneration"] == 1
    ready = _get_cr(api, "edge")["status"]
    assert condition(ready, READY)["status"] == "True" and ready["appliedVersion"] == 1 and ready["appliedDigest"] == digest
    assert ready["switches"] == [{"name": "leaf-1", "role": "primary", "state": "InSync"}]
    patches = [r for r in server.requests if r.resource == PLURAL and r.verb == "patch"]
    assert {(r.subresource, r.code) for r in patches} == {("status", 200), ("", 200)}
