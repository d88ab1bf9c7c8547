"""kube-proxy fallback: the patches (pure) and their application to live Services through the
test API server (merge patches under field manager p4kube, Events, a person's "disabled")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from reconciler.cluster.convert import service_from_dict
from reconciler.fallback import (
    FALLBACK_BY_ANNOTATION,
    FALLBACK_REASON_ANNOTATION,
    FALLBACK_TIME_ANNOTATION,
    PROXY_NAME_LABEL,
    fallback_patch,
    is_auto_fallback,
    is_person_disabled,
    recover_patch,
    release_patch,
    take_patch,
)

OPT_IN = "loadbalancer.k8s.io/p4kube"
NOW = datetime(2026, 11, 22, 10, 23, 48, 123456, tzinfo=UTC)


def svc(annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "web", "name": "frontend", "annotations": annotations or {}, "labels": labels or {}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30080}]},
    }


def apply_merge(obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge patch (what the API server does with it)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(obj) if isinstance(obj, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = apply_merge(out.get(k, {}), v)
    return out


def test_fallback_marks_itself_and_drops_only_p4kubes_proxy_label() -> None:
    s = svc({OPT_IN: "enabled"}, {PROXY_NAME_LABEL: "p4kube", "app": "web"})
    patch = fallback_patch(s, "probe failed:\n  VIP 203.0.113.10:80 unreachable", NOW)
    after = apply_merge(s, patch)
    ann = after["metadata"]["annotations"]
    assert ann[OPT_IN] == "disabled" and ann[FALLBACK_BY_ANNOTATION] == "p4kube"
    assert ann[FALLBACK_REASON_ANNOTATION] == "probe failed: VIP 203.0.113.10:80 unreachable"
    assert ann[FALLBACK_TIME_ANNOTATION] == "2026-11-22T10:23:48Z"
    assert after["metadata"]["labels"] == {"app": "web"}
    assert is_auto_fallback(after) and not is_person_disabled(after)
    # The model Service (what the controller holds) answers the same.
    assert is_auto_fallback(service_from_dict(after))
    # Another proxy's label stays.
    other = svc({OPT_IN: "enabled"}, {PROXY_NAME_LABEL: "cilium"})
    assert "labels" not in fallback_patch(other, "x", NOW)["metadata"]


def test_fallback_leaves_a_persons_disabled_and_services_not_opted_in() -> None:
    person = svc({OPT_IN: "disabled"})
    assert is_person_disabled(person) and not is_auto_fallback(person)
    assert fallback_patch(person, "x", NOW) is None
    assert recover_patch(person) is None
    assert fallback_patch(svc(), "x", NOW) is None
    already = apply_merge(svc({OPT_IN: "enabled"}), fallback_patch(svc({OPT_IN: "enabled"}), "x", NOW))
    assert fallback_patch(already, "again", NOW) is None


def test_recover_undoes_exactly_the_automatic_fallback() -> None:
    original = svc({OPT_IN: "enabled", "team": "web"})
    fallen = apply_merge(original, fallback_patch(original, "rollback", NOW))
    recovered = apply_merge(fallen, recover_patch(fallen))
    assert recovered["metadata"]["annotations"] == {OPT_IN: "enabled", "team": "web"}
    assert recover_patch(recovered) is None
    # A person re-enabled it by hand: only p4kube's leftovers are cleaned.
    by_hand = apply_merge(fallen, {"metadata": {"annotations": {OPT_IN: "enabled"}}})
    cleaned = apply_merge(by_hand, recover_patch(by_hand))
    assert cleaned["metadata"]["annotations"] == {OPT_IN: "enabled", "team": "web"}


def test_proxy_label_take_and_release() -> None:
    enabled = svc({OPT_IN: "enabled"})
    taken = apply_merge(enabled, take_patch(enabled))
    assert taken["metadata"]["labels"] == {PROXY_NAME_LABEL: "p4kube"}
    assert take_patch(taken) is None
    assert take_patch(svc({OPT_IN: "disabled"})) is None
    assert take_patch(svc({OPT_IN: "enabled"}, {PROXY_NAME_LABEL: "cilium"})) is None
    assert apply_merge(taken, release_patch(taken))["metadata"]["labels"] == {}
    assert release_patch(svc({OPT_IN: "enabled"}, {PROXY_NAME_LABEL: "cilium"})) is None


# --- against the test API server, with the official client -------------------------------------------

import json  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from helpers import run  # noqa: E402
from kubeapi.server import KubeApiServer  # noqa: E402
from kubernetes import client as k8s  # noqa: E402
from ruamel.yaml import YAML  # noqa: E402

from reconciler.kube.fallback import Fallback  # noqa: E402
from reconciler.kube.events import EventRecorder  # noqa: E402

CLUSTER = Path(__file__).resolve().parents[1] / "intent-examples" / "multi-service" / "cluster.yaml"
MERGE = "application/merge-patch+json"


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    with KubeApiServer() as srv:
        srv.load(YAML(typ="safe").load(CLUSTER.read_text())["items"])
        yield srv


@pytest.fixture
def fallback(api: k8s.ApiClient) -> Fallback:
    return Fallback(api, EventRecorder(api, instance="test"), now=lambda: NOW)


def get(api: k8s.ApiClient, ns: str, name: str) -> dict[str, Any]:
    return json.loads(k8s.CoreV1Api(api).read_namespaced_service(name, ns, _preload_content=False).data)


def patch(api: k8s.ApiClient, ns: str, name: str, body: dict[str, Any], manager: str = "kubectl-edit") -> None:
    k8s.CoreV1Api(api).patch_namespaced_service(name, ns, body, field_manager=manager, _content_type=MERGE)


def events(api: k8s.ApiClient, ns: str, name: str) -> list[dict[str, Any]]:
    raw = k8s.EventsV1Api(api).list_namespaced_event(ns, field_selector=f"regarding.name={name}", _preload_content=False)
    return json.loads(raw.data)["items"]


def writes(server: KubeApiServer, name: str) -> list[str]:
    return [r.verb for r in server.requests if r.resource == "services" and r.name == name and r.verb == "patch"]


def test_fall_back_and_recover_on_a_live_service(server: KubeApiServer, api: k8s.ApiClient, fallback: Fallback) -> None:
    patch(api, "web", "frontend", {"metadata": {"labels": {PROXY_NAME_LABEL: "p4kube"}}}, manager="p4kube")
    out = run(fallback.fall_back("web/frontend", "rolled back: standby read-back differs"))
    assert out.action == "fell-back" and out.changed
    obj = get(api, "web", "frontend")
    ann, labels = obj["metadata"]["annotations"], obj["metadata"].get("labels") or {}
    assert ann[OPT_IN] == "disabled" and ann[FALLBACK_BY_ANNOTATION] == "p4kube"
    assert ann[FALLBACK_REASON_ANNOTATION] == "rolled back: standby read-back differs"
    assert ann[FALLBACK_TIME_ANNOTATION] == "2026-11-22T10:23:48Z"
    assert PROXY_NAME_LABEL not in labels
    assert is_auto_fallback(obj)
    assert any(m["manager"] == "p4kube" and m["operation"] == "Update" for m in obj["metadata"]["managedFields"])
    # Falling back again changes nothing and writes nothing.
    assert run(fallback.fall_back("web/frontend", "again")).action == "unchanged"
    assert writes(server, "frontend").count("patch") == 2  # the label set above, the fallback

    back = run(fallback.recover("web/frontend"))
    assert back.action == "recovered" and "rolled back" in back.detail
    ann = get(api, "web", "frontend")["metadata"]["annotations"]
    assert ann[OPT_IN] == "enabled"
    assert not {FALLBACK_BY_ANNOTATION, FALLBACK_REASON_ANNOTATION, FALLBACK_TIME_ANNOTATION} & set(ann)
    reasons = [(e["type"], e["reason"]) for e in events(api, "web", "frontend")]
    assert ("Warning", "FellBackToKubeProxy") in reasons and ("Normal", "RecoveredFromFallback") in reasons


def test_a_persons_disabled_is_never_touched(server: KubeApiServer, api: k8s.ApiClient, fallback: Fallback) -> None:
    patch(api, "web", "api", {"metadata": {"annotations": {OPT_IN: "disabled"}}})
    before = get(api, "web", "api")
    assert run(fallback.fall_back("web/api", "probe failed")).detail == "disabled by a person: left alone"
    assert run(fallback.recover("web/api")).action == "unchanged"
    after = get(api, "web", "api")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert writes(server, "api") == ["patch"]  # only the person's own
    assert events(api, "web", "api") == []


def test_a_person_disabling_at_the_same_moment_wins(server: KubeApiServer, api: k8s.ApiClient, fallback: Fallback) -> None:
    """The decision is made on a read; a concurrent edit makes the write 409 (the patch carries
    the resourceVersion read) and the decision is taken again on the new object."""
    core = fallback._core
    real_read = core.read_namespaced_service
    raced = []

    def read_then_person_edits(name: str, ns: str, **kw: Any) -> Any:
        resp = real_read(name, ns, **kw)
        if not raced:
            raced.append(True)
            patch(api, ns, name, {"metadata": {"annotations": {OPT_IN: "disabled"}}})
        return resp

    core.read_namespaced_service = read_then_person_edits  # type: ignore[method-assign]
    out = run(fallback.fall_back("payments/ledger", "probe failed"))
    assert out.action == "unchanged" and "person" in out.detail
    ann = get(api, "payments", "ledger")["metadata"]["annotations"]
    assert ann[OPT_IN] == "disabled" and FALLBACK_BY_ANNOTATION not in ann
    codes = [r.code for r in server.requests if r.resource == "services" and r.name == "ledger" and r.verb == "patch"]
    assert codes == [200, 409]  # the person's edit, then ours refused


def test_proxy_label_is_managed_only_where_p4kube_owns_it(server: KubeApiServer, api: k8s.ApiClient, fallback: Fallback) -> None:
    assert run(fallback.take_from_kube_proxy("web/api")).action == "took-from-kube-proxy"
    assert get(api, "web", "api")["metadata"]["labels"][PROXY_NAME_LABEL] == "p4kube"
    assert run(fallback.return_to_kube_proxy("web/api")).action == "returned-to-kube-proxy"
    assert PROXY_NAME_LABEL not in (get(api, "web", "api")["metadata"].get("labels") or {})
    # Another proxy's label, and a Service that does not opt in, are left alone.
    patch(api, "web", "frontend", {"metadata": {"labels": {PROXY_NAME_LABEL: "cilium"}}})
    assert "another service proxy" in run(fallback.take_from_kube_proxy("web/frontend")).detail
    assert run(fallback.return_to_kube_proxy("web/frontend")).action == "unchanged"
    assert get(api, "web", "frontend")["metadata"]["labels"][PROXY_NAME_LABEL] == "cilium"
    assert run(fallback.take_from_kube_proxy("web/admin")).action == "unchanged"
    assert run(fallback.fall_back("web/gone", "x")).action == "gone"
