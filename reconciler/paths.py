"""Where the repository's shared artefacts live (schemas/, p4/).

They are kept at the top of the repository, as DESIGN.md 9 lays out, and are the single
source of truth; the package reads them from there (installs are editable or from a checkout).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(os.environ.get("P4KUBE_HOME", Path(__file__).resolve().parents[1]))
SCHEMAS_DIR = REPO_ROOT / "schemas"
P4_DIR = REPO_ROOT / "p4"
P4INFO_PATH = P4_DIR / "load_balancer.p4info.txtpb"
LBCONFIG_SCHEMA_PATH = SCHEMAS_DIR / "loadbalancerconfig.schema.json"
SNAPSHOT_SCHEMA_PATH = SCHEMAS_DIR / "snapshot.schema.json"
