"""Whatever junk a field holds, validation reports diagnostics and never crashes."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from reconciler.diagnostics import InputError
from reconciler.intent.loader import load_intent, validate_paths
from reconciler.paths import REPO_ROOT

EXAMPLE = (REPO_ROOT / "intent-examples" / "production" / "edge.yaml").read_text(encoding="utf-8")
BASE = YAML(typ="safe", pure=True).load(EXAMPLE)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


PATHS = paths(BASE)
junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(PATHS), junk), min_size=1, max_size=3))
def test_junk_values_give_diagnostics_not_crashes(tmp_path: Path, edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    data = copy.deepcopy(BASE)
    for path, value in edits:
        target = data
        try:
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced the parent
    out = io.StringIO()
    YAML(typ="safe", pure=True).dump(data, out)
    file = tmp_path / "lb.yaml"
    file.write_text(out.getvalue(), encoding="utf-8")
    diags = validate_paths([file])
    for d in diags:
        assert d.line >= 1 and d.column >= 1 and d.message
    if diags:
        try:
            load_intent([file])
        except InputError as e:
            assert e.diagnostics == diags
        else:
            raise AssertionError("load_intent accepted what validate_paths rejected")
    else:
        assert load_intent([file]).configs
