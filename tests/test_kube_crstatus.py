"""LoadBalancerConfig status (kstatus conditions), built purely; written through the test API
server in test_kube_intent_source.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reconciler.kube.crstatus import (
    READY,
    RECONCILING,
    STALLED,
    Outcome,
    SwitchState,
    build_status,
    condition,
    same_status,
)

T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)


def _statuses(status: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_phases_map_to_kstatus_conditions() -> None:
    expect = {
        "invalid": {READY: "False", RECONCILING: "False", STALLED: "True"},
        "reconciling": {READY: "False", RECONCILING: "True", STALLED: "False"},
        "applied": {READY: "True", RECONCILING: "False", STALLED: "False"},
        "failed": {READY: "False", RECONCILING: "False", STALLED: "True"},
    }
    for phase, want in expect.items():
        status = build_status(3, Outcome(phase, f"{phase} now"), None, T0)  # type: ignore[arg-type]
        assert _statuses(status) == want, phase
        assert status["observedGeneration"] == 3
        for c in status["conditions"]:
            assert c["observedGeneration"] == 3 and c["lastTransitionTime"] == "2026-11-22T10:00:00Z"
            assert c["reason"][0].isupper() and c["message"] == f"{phase} now"


def test_last_transition_time_moves_only_when_the_status_changes() -> None:
    s1 = build_status(1, Outcome("reconciling", "applying"), None, T0)
    s2 = build_status(1, Outcome("applied", "done", applied_version=5, applied_digest="sha256:ab"), s1, T0 + timedelta(seconds=30))
    assert condition(s2, READY)["lastTransitionTime"] == "2026-11-22T10:00:30Z"  # False -> True
    assert condition(s2, STALLED)["lastTransitionTime"] == "2026-11-22T10:00:00Z"  # False -> False
    s3 = build_status(2, Outcome("applied", "done again", applied_version=6, applied_digest="sha256:cd"), s2, T0 + timedelta(minutes=5))
    assert condition(s3, READY)["lastTransitionTime"] == "2026-11-22T10:00:30Z"
    assert condition(s3, READY)["observedGeneration"] == 2 and s3["appliedVersion"] == 6


def test_applied_version_and_switches_carry_over_an_invalid_spec() -> None:
    switches = (SwitchState("leaf-1", "primary", "InSync", last_write_time=T0), SwitchState("leaf-2", "standby", "Unreachable", "connection refused"))
    applied = build_status(1, Outcome("degraded", "standby unreachable", applied_version=7, applied_digest="sha256:ee", switches=switches), None, T0)
    assert applied["switches"] == [
        {"name": "leaf-1", "role": "primary", "state": "InSync", "lastWriteTime": "2026-11-22T10:00:00Z"},
        {"name": "leaf-2", "role": "standby", "state": "Unreachable", "message": "connection refused"},
    ]
    invalid = build_status(2, Outcome.invalid(["spec.algorithm: unsupported value"]), applied, T0)
    assert invalid["appliedVersion"] == 7 and invalid["appliedDigest"] == "sha256:ee"
    assert invalid["switches"] == applied["switches"]
    assert condition(invalid, STALLED)["reason"] == "InvalidSpec"
    assert "spec.algorithm: unsupported value" in condition(invalid, STALLED)["message"]


def test_same_status_ignores_what_p4kube_does_not_write() -> None:
    s = build_status(1, Outcome("applied", "ok", applied_version=1, applied_digest="sha256:aa"), None, T0)
    assert same_status(s, dict(s, somebodyElses="x"))
    assert same_status(s, build_status(1, Outcome("applied", "ok", applied_version=1, applied_digest="sha256:aa"), s, T0 + timedelta(hours=1)))
    assert not same_status(s, build_status(1, Outcome("applied", "ok", applied_version=2, applied_digest="sha256:bb"), s, T0))
