"""Shared fixtures: the multi-service intent example with its recorded cluster, rendered once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import require_git, require_gpg, require_ssh_keygen
from kubeapi.server import KubeApiServer
from kubernetes import client as k8s

from reconciler.cluster.model import ClusterState
from reconciler.cluster.recorded import load_cluster_file
from reconciler.intent.loader import load_intent
from reconciler.intent.model import LoadBalancerConfig
from reconciler.kube.client import build_api_client
from reconciler.render import RenderResult

REPO = Path(__file__).resolve().parents[1]
MULTI = REPO / "intent-examples" / "multi-service"
from shared_fixtures import RECORDED_CLUSTER as RECORDED_DIR


@pytest.fixture(scope="session")
def multi_config() -> LoadBalancerConfig:
    return load_intent([MULTI / "lbconfig.yaml"]).config()


@pytest.fixture(scope="session")
def recorded_cluster() -> ClusterState:
    return load_cluster_file(MULTI / "cluster.yaml")


@pytest.fixture(scope="session")
def expected_replicas() -> dict[str, dict[str, int]]:
    return json.loads((RECORDED_DIR / "expected-replicas.json").read_text())


@pytest.fixture(scope="session")
def multi_render(multi_config: LoadBalancerConfig, recorded_cluster: ClusterState) -> RenderResult:
    from helpers_render import do_render

    return do_render(multi_config, recorded_cluster)


@pytest.fixture
def switch_pair():
    """Two software switches (standby, primary) on loopback ephemeral ports, stopped afterwards."""
    from reconciler.sim.server import SoftwareSwitch

    sws = [SoftwareSwitch(), SoftwareSwitch()]
    try:
        for sw in sws:
            sw.start()
        yield sws
    finally:
        for sw in sws:
            sw.stop(0)


@pytest.fixture
def loop_world(tmp_path):
    """The loop tests' world (tests/test_controller.py): two software switches, node listeners,
    a config and a cluster state."""
    from test_controller import loop_world as build

    with build(tmp_path) as world:
        yield world


@pytest.fixture
def ssh_keygen_tool() -> str:
    return require_ssh_keygen()


@pytest.fixture
def gpg_tool() -> str:
    return require_gpg()


@pytest.fixture
def git_tool() -> str:
    return require_git()


@pytest.fixture
def api(server: KubeApiServer) -> Iterator[k8s.ApiClient]:
    """A Kubernetes client of the module's own `server` fixture (a test API server loaded with
    what that module needs), closed afterwards."""
    client = build_api_client(configuration=server.client_configuration())
    try:
        yield client
    finally:
        client.close()
