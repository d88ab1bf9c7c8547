"""cluster.model.endpoint, the constructor convert.py reads 50,000 endpoints with at 5,000
Services (issue 13): the very object Endpoint(...) makes, equal, hashing alike, frozen."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.cluster.model import Endpoint, endpoint

_PORTS = st.lists(st.tuples(st.text(max_size=5), st.integers(0, 65535)), max_size=3).map(tuple)


@given(st.text(max_size=15), st.text(max_size=10), _PORTS, st.none() | st.text(max_size=10), st.booleans())
def test_endpoint_is_what_the_dataclass_makes(address: str, node: str, ports: tuple, pod: str | None, managed: bool) -> None:
    made, fast = Endpoint(address, node, ports, pod, managed), endpoint(address, node, ports, pod, managed)
    assert type(fast) is Endpoint
    assert fast == made and hash(fast) == hash(made) and repr(fast) == repr(made)
    assert dataclasses.asdict(fast) == dataclasses.asdict(made) and vars(fast) == vars(made)
    assert dataclasses.replace(fast, node="x") == dataclasses.replace(made, node="x")
    # orjson writes a dataclass from its __dict__: the render fingerprint's bytes are the same
    assert orjson.dumps(fast) == orjson.dumps(made)


def test_it_is_frozen_as_the_dataclass_is() -> None:
    fast = endpoint("10.0.0.1", "n", (), None, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.node = "m"  # type: ignore[misc]
