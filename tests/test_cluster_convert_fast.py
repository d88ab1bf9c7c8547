"""endpoint_slice_from_dict's fast reading of plain endpoints (_plain_endpoint) gives exactly
what the full reading gives, errors included, over endpoints of every shape."""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any

import pytest

from reconciler.cluster import convert
from reconciler.cluster.convert import ConversionError, endpoint_slice_from_dict

VALUES: dict[str, list[Any]] = {
    "addresses": [["10.0.0.1"], ["10.0.0.2", "10.0.0.3"], [], [""], [1], "10.0.0.1", None, ("10.0.0.4",)],
    "conditions": [{}, {"ready": True}, {"ready": False}, {"ready": None}, {"terminating": True}, {"terminating": False},
                   {"ready": 1}, {"terminating": 0}, {"ready": "true"}, [], None, OrderedDict(ready=True)],
    "nodeName": ["node-1", "", None, 5, ["node-1"]],
    "targetRef": [{"kind": "Pod", "name": "web-1"}, {"kind": "Pod"}, {"kind": "Pod", "name": 3}, {"kind": "Node"},
                  {"kind": 7}, {}, {"name": "x"}, None, "Pod", OrderedDict(kind="Pod", name="p")],
}


def endpoint(rng: random.Random) -> Any:
    if rng.random() < 0.05:
        return rng.choice(["not a mapping", 3, None, OrderedDict(addresses=["10.0.0.9"], nodeName="node-2")])
    # the first value of each field is the plain one: mostly plain endpoints, some odd fields
    return {k: (v[0] if rng.random() < 0.6 else rng.choice(v)) for k, v in VALUES.items() if rng.random() < 0.95}


def read(slice_: dict[str, Any]) -> object:
    try:
        return endpoint_slice_from_dict(slice_)
    except ConversionError as e:
        return ("error", str(e), e.path if hasattr(e, "path") else None)


def test_fast_reading_equals_full_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(13)
    slices = []
    for i in range(600):
        slices.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"s{i}", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [endpoint(rng) for _ in range(rng.randrange(1, 3))],
        })
    fast = [read(s) for s in slices]
    monkeypatch.setattr(convert, "_plain_endpoint", lambda ep: None)
    full = [read(s) for s in slices]
    assert fast == full
    counted = sum(len(r.endpoints) for r in full if isinstance(r, convert.SliceEndpoints))
    assert counted > 100 and sum(1 for r in full if isinstance(r, tuple)) > 50  # both outcomes exercised
