"""The JSON plan's text (plan.indented_json, through orjson when it gives the same bytes) is
json.dumps(doc, indent=2, sort_keys=True) + newline, byte for byte, for plans and for documents
orjson would write differently (which then take json's way)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.plan import ConfigPlan, indented_json, plan_to_json


def reference(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def test_plans_are_byte_identical(change_plan: ConfigPlan, install_plan: ConfigPlan, noop_plan: ConfigPlan) -> None:
    for plans in ([change_plan], [install_plan], [noop_plan], [change_plan, install_plan], []):
        doc = plan_to_json(plans)
        assert indented_json(doc) == reference(doc)


@pytest.mark.parametrize(
    "doc",
    [
        {"name": "café", "n": 1},  # non-ASCII: json escapes it
        {"del": "a\x7fb"},  # DEL: json escapes it
        {"ctl": "a\x01b\n\t\"\\/"},
        {"f": 1.0, "g": 1e16, "h": 0.1},  # floats: repr differs (1e+16)
        {"nan": float("nan")},
        {"big": 1 << 70},  # past 64 bits: orjson refuses
        {1: "int key"},  # json turns it into "1"; orjson refuses
        {"t": (1, 2)},  # a tuple: written as a list by both, read back as a list
        {"b": True, "one": 1, "z": None, "e": [], "d": {}, "nested": [{"b": [1, {"a": []}]}]},
        [],
        "text",
        {"surrogate": "\ud800"},
    ],
)
def test_other_documents_are_byte_identical(doc: Any) -> None:
    assert indented_json(doc) == reference(doc)


from test_plan import change_plan, install_plan, noop_plan  # noqa: E402,F401  (the fixtures)
