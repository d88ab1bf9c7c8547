"""LoadBalancerConfig CRs as intent: the same checks as files, diagnostics naming the CR."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from reconciler.intent.loader import load_intent
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
    result = intent_from_objects([as_cr(path, generation=4)])
    assert result.diagnostics == []
    (config,) = result.intent.configs
    # Everything but the generation (files have none) and the source is the same.
    assert config.generation == 4
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


def test_relative_pipeline_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "custom.p4info.txtpb").write_text("")
    cr = as_cr(REPO / "intent-examples" / "minimal" / "lbconfig.yaml")
    cr["spec"]["switchConfig"]["p4Info"] = "custom.p4info.txtpb"
    result = intent_from_objects([cr], base_dir=tmp_path)
    assert result.intent.configs[0].switch_config.p4info == str(tmp_path / "custom.p4info.txtpb")
    missing = intent_from_objects([cr], base_dir=tmp_path / "nowhere")
    assert any("file not found: custom.p4info.txtpb" in d.message for d in missing.diagnostics)
