"""The import-layers contract (docs/architecture.md): the house is built one way, and this test is its proof.

Reads every import in reconciler/ with `ast` (module level and inside functions alike: a function-local
import is still a dependency, it only hides a cycle until run time) and checks that

- every module has a place in LAYERS (a new module must be placed, not slip in unchecked);
- no module imports a module of a higher layer: faces > app > controller > stages > model > util;
- no two modules import each other, directly or round a longer circle;
- the software switch (reconciler.sim) shares nothing with the product's switch client or renderer:
  a stand-in that shared the product's model would agree with the product's bugs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reconciler"
ROOT = "reconciler"

# Highest first. A module belongs to the layer of the longest name below that is itself or one of its
# packages (reconciler.intent.model is model, the rest of reconciler.intent is a stage). The root
# package (its __version__) counts as util, but only itself: a module no entry names fails the test.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # The thin faces: argparse and printing over the library, which never imports them.
    ("faces", ("reconciler.cli", "reconciler.demo")),
    # The composition root: settings -> worker, sources, sinks.
    ("app", ("reconciler.app",)),
    # The loop and what watches it from outside.
    ("controller", ("reconciler.controller", "reconciler.health", "reconciler.metrics", "reconciler.httpserver")),
    # One job each (DESIGN.md 2); they may use each other, but never in a circle.
    ("stages", (
        "reconciler.intent", "reconciler.cluster", "reconciler.render", "reconciler.plan", "reconciler.plan_summary",
        "reconciler.diff",
        "reconciler.guard", "reconciler.apply", "reconciler.switch", "reconciler.audit", "reconciler.kube",
        "reconciler.fallback", "reconciler.pipeline_io", "reconciler.state", "reconciler.crd", "reconciler.rendered_from",
        "reconciler.pass_cache",
        "reconciler.generated", "reconciler.sim",
    )),
    # The values that flow between stages.
    ("model", (
        "reconciler.snapshot", "reconciler.snapshot_schema", "reconciler.intent.model", "reconciler.cluster.model", "reconciler.p4names",
        "reconciler.p4info", "reconciler.outcome", "reconciler.status", "reconciler.drain_progress",
    )),
    # Knows nothing of load balancing.
    ("util", (
        ROOT, "reconciler.diagnostics", "reconciler.paths", "reconciler.backoff", "reconciler.changes",
        "reconciler.watching", "reconciler.inputlimits", "reconciler.k8snames", "reconciler.mdsafe",
        "reconciler.ghactions", "reconciler.logsetup", "reconciler.algorithms", "reconciler.gitobjects",
        "reconciler.buildinfo", "reconciler.protowire", "reconciler.gcpause", "reconciler.sources",
    )),
)

# The software switch keeps its own P4Info model and value codec; the P4 program's names
# (reconciler.p4names) are the one thing both sides must agree on by definition.
SIM = "reconciler.sim"
SIM_MUST_NOT_IMPORT = ("reconciler.switch", "reconciler.render", "reconciler.p4info")


def _within(name: str, prefix: str) -> bool:
    """Whether the module is the prefix or inside it; the root only ever names itself (see LAYERS)."""
    return name == prefix or (prefix != ROOT and name.startswith(prefix + "."))


def _ours(name: str) -> bool:
    return name == ROOT or name.startswith(ROOT + ".")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module an imported name lives in: itself if a module, else its nearest package."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports_in(source: str, filename: str, package: str) -> Iterator[tuple[int, str]]:
    """(line, imported reconciler module) for every import in the source, wherever it stands;
    `package` is what a relative import is relative to."""
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    yield node.lineno, _resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                source_name = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                source_name = node.module or ""
            if not _ours(source_name):
                continue
            for alias in node.names:
                # `from reconciler.intent import model` imports a module; `... import load` a name in one
                yield node.lineno, _resolve(f"{source_name}.{alias.name}")


def _imports(module: str) -> Iterator[tuple[int, str]]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return _imports_in(path.read_text(encoding="utf-8"), str(path), package)


GRAPH: dict[str, dict[str, int]] = {
    module: {target: line for line, target in sorted(_imports(module), reverse=True) if target != module}
    for module in MODULES
}


def layer_of(module: str) -> int | None:
    """Index into LAYERS (0 is the highest), or None where no entry names the module."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if _within(module, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank)
    return None if best is None else best[1]


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}"


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in MODULES if layer_of(m) is None)
    assert not unplaced, f"modules with no layer: add each to LAYERS in {Path(__file__).name}: {unplaced}"


def test_every_layer_entry_names_a_module() -> None:
    # A moved or deleted module leaves its entry behind: the table must stay the house as built.
    stale = sorted(p for _, prefixes in LAYERS for p in prefixes if not any(_within(m, p) for m in MODULES))
    assert not stale, f"entries in LAYERS that name no module: {stale}"


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for module, targets in sorted(GRAPH.items()):
        own = layer_of(module)
        for target, line in sorted(targets.items()):
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs < own:
                upward.append(f"{_where(module, line)}: {module} ({LAYERS[own][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    described = []
    for component in _cycles():
        members = set(component)
        edges = [
            f"  {_where(m, line)}: {m} imports {t}"
            for m in component for t, line in sorted(GRAPH[m].items()) if t in members
        ]
        described.append(f"{' <-> '.join(component)}\n" + "\n".join(edges))
    assert not described, "modules that import each other:\n" + "\n".join(described)


def test_software_switch_keeps_its_own_model() -> None:
    shared = [
        f"{_where(module, line)}: {module} imports {target}"
        for module, targets in sorted(GRAPH.items()) if _within(module, SIM)
        for target, line in sorted(targets.items())
        if any(_within(target, banned) for banned in SIM_MUST_NOT_IMPORT)
    ]
    assert not shared, "the software switch uses the product's own code:\n" + "\n".join(shared)


def test_the_contract_sees_local_and_relative_imports() -> None:
    # The circles this contract exists for hid behind function-local imports: it must see them.
    source = (
        "import json\n"
        "from . import snapshot\n"
        "def f():\n"
        "    from reconciler.cli import main\n"
        "    from ..intent import model\n"
        "    import reconciler.render.engine\n"
    )
    seen = [target for _, target in _imports_in(source, "probe.py", "reconciler.switch")]
    assert sorted(seen) == ["reconciler.cli", "reconciler.intent.model", "reconciler.render.engine", "reconciler.switch"]
