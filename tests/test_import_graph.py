"""The package's import graph has no cycle, counting lazy imports inside functions.

Every `import` / `from ... import` statement anywhere in a module (top level or inside a
function) is an edge to the module it names, and to that module's parent packages, whose
`__init__` runs first. A strongly connected component of more than one module is a
cycle; a cycle means some layer reaches up to a layer above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"faircalib_export": ROOT / "faircalib_export",
            "faircalib_runtime": ROOT / "runtimes" / "faircalib_runtime"}


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__)."""
    out = {}
    for root in PACKAGES.values():
        for file in root.rglob("*.py"):
            parts = list(file.relative_to(root.parent).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (file, is_pkg)
    return out


def imported(module: str, is_pkg: bool, node: ast.AST, known: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    # `from pkg import name` imports the submodule pkg.name when there is one
    return [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix
            for a in node.names]


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for module, (file, is_pkg) in known.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in imported(module, is_pkg, node, known):
                if target.split(".")[0] not in PACKAGES:
                    continue
                while target not in known and "." in target:  # a name inside a module
                    target = target.rsplit(".", 1)[0]
                while True:  # the module and every package above it
                    if target != module and not module.startswith(target + "."):
                        deps.add(target)
                    if "." not in target:
                        break
                    target = target.rsplit(".", 1)[0]
        graph[module] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    graph = import_graph()
    assert "faircalib_export.opener" in graph and len(graph) > 50
    assert cycles(graph) == []


def test_the_scan_finds_lazy_and_relative_cycles():
    """A lazy import inside a function closing a loop is reported (the scan can fail)."""
    graph = import_graph()
    graph["faircalib_export.artifacts"] = graph["faircalib_export.artifacts"] | {
        "faircalib_export.opener"}  # as if artifacts lazily imported the opener
    assert any("faircalib_export.opener" in c and "faircalib_export.artifacts" in c
               for c in cycles(graph))
    tree = ast.parse("def f():\n    from ..opener import open_model\n")
    node = tree.body[0].body[0]
    assert imported("faircalib_export.probe.artifact", False, node, modules()) == [
        "faircalib_export.opener"]


def test_the_cli_imports_no_torch_until_a_command_needs_it():
    """`--help` and the exported-model paths stay light: importing the CLI loads no torch."""
    import subprocess
    import sys

    code = "import sys, faircalib_export.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
