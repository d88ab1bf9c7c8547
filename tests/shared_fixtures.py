"""Where the recorded ground truth lives for the tests: tests/fixtures/, a byte-for-byte copy of
the files the tests read from ../shared/fixtures (DESIGN.md 7), so that a clone of this repository
alone runs the whole suite. tests/test_fixture_copies.py checks the copy against ../shared/fixtures
whenever that folder is beside the repository (P4KUBE_SHARED overrides the shared/ folder).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
KUBE_API = FIXTURES / "kube-api"
P4RUNTIME_BMV2 = FIXTURES / "p4runtime-bmv2"
RECORDED_CLUSTER = FIXTURES / "recorded-cluster"

# The originals, recorded from the real systems; only the copy check reads them.
SHARED = Path(os.environ.get("P4KUBE_SHARED", REPO.parent / "shared"))
SHARED_FIXTURES = SHARED / "fixtures"
