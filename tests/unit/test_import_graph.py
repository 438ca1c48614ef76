"""The modules of src/wdmoe import each other without cycles, and none imports another's private names.

The graph is read from the source with `ast` (every import statement, also those inside functions, which run
too): an edge goes from a module to each wdmoe module it names, `from pkg import name` to the submodule
`pkg.name` when there is one and to `pkg` otherwise. A cycle is a strongly connected component of more than one
module (Tarjan's algorithm). The implicit import of a parent package is not an edge: it is how Python loads a
submodule, not a dependency one module takes on another.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass
class ImportGraph:
    edges: dict[str, set[str]] = field(default_factory=dict)
    private: list[tuple[str, str, str]] = field(default_factory=list)  # (importer, module, private name)


def module_files(src: Path) -> dict[str, tuple[Path, bool]]:
    """module name -> (file, whether it is a package's __init__)."""
    out = {}
    for path in sorted((src / "wdmoe").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def import_graph(src: Path) -> ImportGraph:
    modules = module_files(src)
    graph = ImportGraph({name: set() for name in modules})
    for name, (path, package) in modules.items():
        here = name if package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                graph.edges[name].update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    target = ".".join(parts + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:
                        graph.edges[name].add(f"{target}.{alias.name}")
                    elif target in modules:
                        graph.edges[name].add(target)
                        if alias.name.startswith("_") and target != name:
                            graph.private.append((name, target, alias.name))
    return graph


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the package is deep enough to make recursion a worry)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
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
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out


def test_the_graph_reader_finds_a_cycle_and_a_private_import(tmp_path: Path) -> None:
    package = tmp_path / "wdmoe"
    (package / "pkg").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pkg" / "__init__.py").write_text("")
    (package / "pkg" / "a.py").write_text("from wdmoe.pkg.b import B\n")
    (package / "pkg" / "b.py").write_text("def f():\n    from . import c\n\nB = 1\n")
    (package / "pkg" / "c.py").write_text("from wdmoe.pkg.a import _hidden\nfrom wdmoe import pkg\n")

    graph = import_graph(tmp_path)

    assert graph.edges["wdmoe.pkg.b"] == {"wdmoe.pkg.c"}
    assert graph.edges["wdmoe.pkg.c"] == {"wdmoe.pkg.a", "wdmoe.pkg"}
    assert {"wdmoe.pkg.a", "wdmoe.pkg.b", "wdmoe.pkg.c"} in strongly_connected(graph.edges)
    assert graph.private == [("wdmoe.pkg.c", "wdmoe.pkg.a", "_hidden")]


def test_wdmoe_has_no_import_cycle() -> None:
    cycles = [sorted(c) for c in strongly_connected(import_graph(SRC).edges) if len(c) > 1]

    assert cycles == []


def test_no_module_imports_a_private_name_of_another() -> None:
    assert import_graph(SRC).private == []


def test_the_pure_cores_policy_and_sim_import_nothing_inside_functions() -> None:
    """policy/ and sim/ import no torch, so nothing there needs a lazy import; an import inside a function there
    would hide a dependency (it once kept a cycle alive)."""
    found = []
    for package in ("policy", "sim"):
        for path in sorted((SRC / "wdmoe" / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    found += [f"{path.name}:{inner.lineno}" for inner in ast.walk(node)
                              if isinstance(inner, ast.Import | ast.ImportFrom)]

    assert found == []
