"""The intent examples: the valid ones load into the expected model, the invalid ones give
exactly the errors in their expected-error.txt (as `p4kube validate` prints them)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler.diagnostics import InputError
from reconciler.intent.loader import load_intent, validate_paths
from reconciler.intent.model import (
    AuditConfig,
    HealthCheck,
    LoadBalancerConfig,
    Route,
    ServiceSelector,
    SwitchConfig,
    SwitchSpec,
    TLSConfig,
    VipPool,
)
from reconciler.paths import REPO_ROOT

EXAMPLES = REPO_ROOT / "intent-examples"
INVALID = sorted(p.name for p in (EXAMPLES / "invalid").iterdir() if p.is_dir())
# The lead's copy of the recorded cluster (shared/fixtures/recorded-cluster) beside the intent.
RECORDED_CLUSTER = EXAMPLES / "multi-service" / "cluster.yaml"


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # Diagnostics name files as given; the expected errors are relative to the repo root.
    monkeypatch.chdir(REPO_ROOT)


def ip(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


def test_minimal_is_all_defaults() -> None:
    intent = load_intent(["intent-examples/minimal"])
    (config,) = intent.configs
    assert config == LoadBalancerConfig(
        namespace="p4kube-system",
        name="p4kube-config",
        switch_config=SwitchConfig(
            device_config="bmv2/load_balancer.json",  # the one field a managed pipeline needs
            switches=(SwitchSpec("leaf-1", "primary", "127.0.0.1:9559", 1),),
        ),
    )
    assert config.source is not None and config.source.file == "intent-examples/minimal/lbconfig.yaml"
    assert (config.source.line, config.source.column) == (3, 1)
    assert intent.root == "intent-examples/minimal"


def test_production() -> None:
    intent = load_intent(["intent-examples/production"])
    assert [c.key for c in intent.configs] == ["p4kube-system/edge", "p4kube-system/internal"]
    edge = intent.config("edge")
    assert edge.algorithm == "replica-weighted"
    assert edge.update_interval_s == 2.0
    assert edge.buckets_per_service == 256
    assert edge.backend_mode == "nodePort"
    assert edge.health_check == HealthCheck(True, 10.0, 3.0, 3, 2)
    assert edge.vip_pools == (
        VipPool("public", ((ip("203.0.113.0"), ip("203.0.113.31")), (ip("203.0.113.64"), ip("203.0.113.79"))), True),
        VipPool("reserved", ((ip("203.0.113.100"), ip("203.0.113.100")), (ip("203.0.113.101"), ip("203.0.113.101"))), False),
    )
    assert edge.service_selector == ServiceSelector(("payments", "web"), (), ("p4kube.io/switch",))
    assert edge.switch_config == SwitchConfig(
        p4_program="load_balancer.p4",
        switch_type="tofino",
        p4info=None,
        device_config="tofino/load_balancer.tofino.bin",
        switches=(
            SwitchSpec("edge-a", "primary", "edge-a.net.example.com:9339", 1),
            SwitchSpec("edge-b", "standby", "edge-b.net.example.com:9339", 1),
        ),
        routes=(
            Route(ipaddress.IPv4Network("10.20.0.0/16"), 1, "02:00:0a:14:00:01"),
            Route(ipaddress.IPv4Network("0.0.0.0/0"), 0, "02:00:c0:00:02:01"),
        ),
        tls=TLSConfig("ca.crt", "tls.crt", "tls.key", "p4rt.net.example.com"),
        batch_size=200,
        standby_unreachable="apply-primary",
    )
    assert edge.audit == AuditConfig("https://git.example.com/network/p4kube-audit.git", "edge")

    internal = intent.config("p4kube-system/internal")
    assert internal.algorithm == "least-connections"
    assert internal.update_interval_s == 0.5
    assert internal.backend_mode == "podIP"
    assert internal.health_check == HealthCheck(True, 5.0, 1.5, 3, 1)  # thresholds defaulted
    assert internal.vip_pools == (VipPool("internal", ((ip("10.30.200.0"), ip("10.30.200.255")),), True),)
    assert internal.service_selector.match_labels == (("p4kube.io/tier", "internal"),)
    assert internal.switch_config.standby_unreachable == "abort"
    assert internal.switch_config.batch_size == 500
    assert internal.switch_config.tls is None
    assert internal.audit == AuditConfig(None, "internal")
    # The Namespace in internal.yaml and the Kustomization were skipped, not loaded.
    assert internal.source is not None and internal.source.line == 10


def _opted_in_services(cluster_file: Path) -> list[tuple[str, str]]:
    doc = YAML(typ="safe", pure=True).load(cluster_file.read_text())
    return [
        (s["metadata"]["namespace"], s["metadata"]["name"])
        for s in doc["items"]
        if s["kind"] == "Service"
        and s["spec"].get("type") == "LoadBalancer"
        and s["metadata"].get("annotations", {}).get("loadbalancer.k8s.io/p4kube") == "enabled"
    ]


def test_multi_service_fits_the_recorded_cluster() -> None:
    config = load_intent(["intent-examples/multi-service"]).config()
    services = _opted_in_services(RECORDED_CLUSTER)
    assert len(services) == 4
    # Every opted-in Service is selected and can get its own auto-assigned VIP.
    assert {ns for ns, _ in services} <= set(config.service_selector.namespaces)
    auto = [p for p in config.vip_pools if p.auto_assign]
    assert sum(int(hi) - int(lo) + 1 for p in auto for lo, hi in p.ranges) >= len(services)
    # VIPs must not collide with node addresses: route the node network, keep VIPs out of it.
    node_net = ipaddress.IPv4Network("172.20.0.0/24")
    assert [r.prefix for r in config.switch_config.routes] == [node_net]
    assert not any(lo in node_net or hi in node_net for p in config.vip_pools for lo, hi in p.ranges)
    assert [s.role for s in config.switch_config.switches] == ["primary", "standby"]
    assert config.vip_pools == (VipPool("demo", ((ip("198.51.100.10"), ip("198.51.100.19")),), True),)
    assert [s.address for s in config.switch_config.switches] == ["127.0.0.1:9559", "127.0.0.1:9560"]


@pytest.mark.parametrize("case", INVALID)
def test_invalid_example(case: str) -> None:
    folder = Path("intent-examples/invalid") / case
    expected = (folder / "expected-error.txt").read_text(encoding="utf-8").splitlines()
    assert expected, f"{folder}/expected-error.txt is empty"
    assert [str(d) for d in validate_paths([str(folder)])] == expected
    with pytest.raises(InputError) as raised:
        load_intent([str(folder)])
    assert [str(d) for d in raised.value.diagnostics] == expected


def test_there_are_enough_invalid_cases() -> None:
    assert len(INVALID) >= 12
    for case in INVALID:
        assert (EXAMPLES / "invalid" / case / "expected-error.txt").is_file(), case


def test_valid_examples_have_no_diagnostics() -> None:
    for folder in ("intent-examples/minimal", "intent-examples/production", "intent-examples/multi-service"):
        assert validate_paths([folder]) == [], folder
