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
