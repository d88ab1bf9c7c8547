"""Where the files the package reads at run time are: inside the package (DESIGN.md 8).

They ship in reconciler/data/ and are found with importlib.resources, so an installed wheel
(pip, pre-commit's Git-URL install, a container image) works exactly as a checkout does:

    reconciler/data/schemas/                        LoadBalancerConfig and snapshot JSON Schemas
    reconciler/data/p4/                             load_balancer.p4, its P4Info, how to compile it
    reconciler/data/intent-examples/multi-service/  the intent and cluster `p4kube demo` starts from

Each file has one copy. In a checkout the top-level schemas/ and p4/ of DESIGN.md 9 are
symlinks to reconciler/data/schemas and reconciler/data/p4 (edit, and `git add`, the files
under reconciler/data/); reconciler/data/intent-examples/multi-service is a symlink to the
checkout's intent-examples/multi-service, which setuptools follows (copies) into the wheel.
tests/test_install.py builds the wheel and runs the installed commands outside the checkout.

P4KUBE_HOME, when set, names a tree laid out like a checkout (schemas/, p4/, intent-examples/)
to read these files from instead. REPO_ROOT is that tree or the checkout this module sits in:
for tests and development tools only; the package itself reads nothing through it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path

_HOME = os.environ.get("P4KUBE_HOME")
REPO_ROOT = Path(_HOME) if _HOME else Path(__file__).resolve().parents[1]
DATA: Traversable = Path(_HOME) if _HOME else files("reconciler") / "data"

_extracted = contextlib.ExitStack()  # only used when the package is imported from a zip
atexit.register(_extracted.close)


def resource(*parts: str) -> Traversable:
    """A file or folder in DATA, as importlib.resources sees it (read_text, open, iterdir)."""
    item = DATA
    for part in parts:
        item = item / part
    return item


def resource_path(*parts: str) -> Path:
    """A real file system path for a file or folder in DATA: the file itself for a package
    on disk (checkout, editable or wheel install), else a copy kept for the process's life."""
    item = resource(*parts)
    if isinstance(item, Path):
        return item
    return _extracted.enter_context(as_file(item))


SCHEMAS_DIR = resource_path("schemas")
P4_DIR = resource_path("p4")
P4_PROGRAM_PATH = P4_DIR / "load_balancer.p4"
P4INFO_PATH = P4_DIR / "load_balancer.p4info.txtpb"
LBCONFIG_SCHEMA_PATH = SCHEMAS_DIR / "loadbalancerconfig.schema.json"
SNAPSHOT_SCHEMA_PATH = SCHEMAS_DIR / "snapshot.schema.json"
DEMO_EXAMPLE_DIR = resource_path("intent-examples", "multi-service")
