"""readback_from_held (switch/wire.py): for a switch that holds exactly the last good snapshot,
the read-back against the target computed from the Services that differ equals the one
match_readback computes from every entry; anything else is left to match_readback."""

from __future__ import annotations

import dataclasses
import ipaddress
import random

import pytest
from helpers_render import do_render, make_config
from hypothesis import given, settings
from hypothesis import strategies as st
from test_apply import INFO

from reconciler.cluster.model import ClusterState
from reconciler.cluster.synthetic import synthetic_cluster, with_scaled_service
from reconciler.intent.model import Route, SwitchConfig
from reconciler.snapshot import Snapshot
from reconciler.switch.wire import EncodedEntries, match_readback, readback_from_held

ROUTES = (Route(ipaddress.IPv4Network("10.0.0.0/8"), 1, "02:00:0a:00:00:01"),)


def _config(mode: str, routes: tuple[Route, ...] = ROUTES):
    return dataclasses.replace(make_config(backend_mode=mode, buckets=16, pool_size=64),
                               switch_config=SwitchConfig(routes=routes))


def _without(state: ClusterState, key: str) -> ClusterState:
    return dataclasses.replace(state, services={k: v for k, v in state.services.items() if k != key},
                               endpoints={k: v for k, v in state.endpoints.items() if k != key})


def _changes(base: ClusterState, rnd: random.Random) -> ClusterState:
    """A few Services scaled, removed or left as they are."""
    state = base
    keys = sorted(state.services)
    for key in rnd.sample(keys, rnd.randint(0, 4)):
        if rnd.random() < 0.3:
            state = _without(state, key)
        elif state.endpoints.get(key):
            state = with_scaled_service(state, key, rnd.choice(state.endpoints[key]).node, rnd.choice((-1, 1, 2)))
    return state


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(["nodePort", "podIP"]), routes_change=st.booleans())
def test_the_same_readback_as_matching_every_entry(seed: int, mode: str, routes_change: bool) -> None:
    rnd = random.Random(seed)
    base = synthetic_cluster(services=12, nodes=5, endpoints=60, seed=seed % 7)
    held_snap = do_render(_config(mode), base).snapshot
    target_config = _config(mode, ROUTES + (Route(ipaddress.IPv4Network("0.0.0.0/0"), 0, "02:00:c0:00:02:01"),)) \
        if routes_change else _config(mode)
    target_snap = do_render(target_config, _changes(base, rnd), held_snap).snapshot
    # As the applier makes them: the target first, the last good one reusing its bytes.
    target = EncodedEntries.of(INFO, target_snap)
    held = EncodedEntries.of(INFO, held_snap, target)
    blobs = list(held.blobs)
    rnd.shuffle(blobs)  # a switch answers in its own order
    got = readback_from_held(blobs, set(blobs), held, target)
    assert got is not None
    assert got == match_readback(blobs, target)


def _pair() -> tuple[Snapshot, Snapshot]:
    base = synthetic_cluster(services=10, nodes=4, endpoints=40, seed=1)
    held = do_render(_config("nodePort"), base).snapshot
    key = sorted(base.services)[0]
    return held, do_render(_config("nodePort"), with_scaled_service(base, key, base.endpoints[key][0].node, 1), held).snapshot


def test_one_service_scaled_reads_as_its_old_entries_extra_and_its_new_ones_missing() -> None:
    held_snap, target_snap = _pair()
    target = EncodedEntries.of(INFO, target_snap)
    held = EncodedEntries.of(INFO, held_snap, target)
    blobs = list(reversed(held.blobs))
    got = readback_from_held(blobs, set(blobs), held, target)
    assert got is not None and got.extra and got.missing
    assert got == match_readback(blobs, target)
    assert readback_from_held(list(target.blobs), set(target.blobs), target, target) == match_readback(list(target.blobs), target)


@pytest.mark.parametrize("edit", ["one missing", "one extra", "one read twice", "other bytes"])
def test_a_switch_not_exactly_in_step_is_left_to_match_readback(edit: str) -> None:
    held_snap, target_snap = _pair()
    target = EncodedEntries.of(INFO, target_snap)
    held = EncodedEntries.of(INFO, held_snap, target)
    blobs = list(held.blobs)
    if edit == "one missing":
        blobs.pop(3)
    elif edit == "one extra":
        blobs.append(b"\x08\x01")
    elif edit == "one read twice":
        blobs.append(blobs[0])
    else:
        blobs[5] = blobs[5] + b"\x00"
    assert readback_from_held(blobs, set(blobs), held, target) is None


def test_encodings_not_laid_out_by_service_are_left_to_match_readback() -> None:
    held_snap, target_snap = _pair()
    target = EncodedEntries.of(INFO, target_snap)
    flat = EncodedEntries(INFO, [e for es in held_snap.tables().values() for e in es])  # no per-Service layout
    blobs = list(flat.blobs)
    assert readback_from_held(blobs, set(blobs), flat, target) is None
