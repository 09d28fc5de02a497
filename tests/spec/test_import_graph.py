"""The import graph of slotref/: no cycle among module-level imports, and the specification
imports nothing from the kernels, training, the command line or the benchmarks.

Read from the source with ``ast`` (nothing is imported): an edge A -> B for every
``import``/``from ... import`` at the top level of module A (not inside a function,
where a lazy import may break a cycle on purpose; ``slotref.dispatch`` imports the
kernel modules by name, the one arrow from the registry to the kernels).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "slotref"

# The specification: the paper's model, loss, metrics and optimiser.
SPEC = {"layers", "convolution", "slot_attention", "models", "losses", "metrics", "optim", "paper"}
# What the specification may not import (packages, or modules at the top of slotref/).
NOT_FROM_SPEC = {"kernels", "training", "cli", "bench", "experiments", "distributed", "curriculum"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """The slotref modules ``path`` imports at module level (``from a import b`` counts a.b
    when that is a module, else a), less the packages that hold it."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    # A module's own packages are always initialised before it: not an edge.
    own = module_name(path)
    return {name for name in names if name in MODULES and not own.startswith(name + ".")}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    return {name: top_level_imports(path) - {name} for name, path in MODULES.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component that has one (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def forbidden(name: str) -> bool:
    parts = name.split(".")
    return len(parts) > 1 and parts[1] in NOT_FROM_SPEC


def test_the_module_level_imports_of_slotref_have_no_cycle():
    assert cycles(graph()) == []


def test_the_specification_imports_no_kernel_training_cli_or_benchmark():
    edges = graph()
    bad = sorted((f"slotref.{spec}", target) for spec in SPEC for target in edges.get(f"slotref.{spec}", ())
                 if forbidden(target))
    assert bad == []


def test_the_kernel_registry_imports_no_kernel():
    assert not any(target.startswith("slotref.kernels") for target in graph()["slotref.dispatch"])


def test_the_graph_sees_the_imports_it_should():
    edges = graph()
    assert "slotref.dispatch" in edges["slotref.layers"]
    assert "slotref.convolution" in edges["slotref.kernels.conv"]
    assert "slotref.layers" in edges["slotref.kernels.fused_cupy"]
