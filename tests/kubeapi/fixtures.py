"""pytest fixtures for the test API server.

Use in a test module with `from kubeapi.fixtures import kube_api  # noqa: F401` (the tests folder
is on sys.path). `kube_api` yields a running KubeApiServer (allow-all RBAC, token "test-token" for
user "admin" in system:masters) and stops it afterwards, ending its watches and threads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from .server import KubeApiServer


@pytest.fixture
def kube_api() -> Iterator[KubeApiServer]:
    server = KubeApiServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client_configuration(server: KubeApiServer, token: str | None = None) -> Any:
    """A kubernetes.client.Configuration pointing at `server` (host, bearer token, CA when TLS)."""
    return server.client_configuration(token)


def read_list_yaml(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a kubectl-style YAML file (`kind: List`, or several documents), flattened."""
    out: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for doc in yaml.safe_load_all(fh):
            if not isinstance(doc, Mapping):
                continue
            if doc.get("kind") == "List" or (str(doc.get("kind", "")).endswith("List") and "items" in doc):
                out += [dict(item) for item in doc.get("items") or [] if isinstance(item, Mapping)]
            else:
                out.append(dict(doc))
    return out


def load_list_yaml(server: KubeApiServer, path: str | Path, manager: str = "kubectl") -> list[dict[str, Any]]:
    """Load a kubectl-style List YAML (e.g. intent-examples/multi-service/cluster.yaml) into the
    server as recorded: status, clusterIPs and nodePorts kept, namespaces created as needed, every
    object at a new resourceVersion. Returns the stored objects as the API returns them."""
    return server.load(read_list_yaml(path), manager)
