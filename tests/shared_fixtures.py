"""Where the recorded ground truth lives: ../shared/fixtures beside the repository (as CI and
every developer machine lay it out). P4KUBE_SHARED overrides the shared/ folder."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("P4KUBE_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
KUBE_API = FIXTURES / "kube-api"
P4RUNTIME_BMV2 = FIXTURES / "p4runtime-bmv2"
RECORDED_CLUSTER = FIXTURES / "recorded-cluster"
