"""Module boundaries, read from the source with `ast` (imports inside functions count too): library code never
imports the CLI, and no module sets a private attribute of an object it does not own."""

from __future__ import annotations

import ast
from pathlib import Path

import wdmoe

SRC = Path(wdmoe.__file__).resolve().parent


def _modules() -> dict[str, ast.Module]:
    paths = sorted(SRC.rglob("*.py"))
    return {str(path.relative_to(SRC)): ast.parse(path.read_text(encoding="utf-8")) for path in paths}


def _imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_library_module_imports_the_cli() -> None:
    modules = _modules()
    assert "cli/main.py" in modules and "experiments/inputs.py" in modules  # the scan sees the whole package
    offenders = {
        name: sorted(n for n in _imported(tree) if n == "wdmoe.cli" or n.startswith("wdmoe.cli."))
        for name, tree in modules.items()
        if not name.startswith("cli/")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def _private_assignments(tree: ast.Module) -> list[str]:
    """`x._name = ...` (or +=, or annotated) where x is not self or cls."""
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if (isinstance(sub, ast.Attribute) and sub.attr.startswith("_") and not sub.attr.startswith("__")
                        and not (isinstance(sub.value, ast.Name) and sub.value.id in ("self", "cls"))):
                    found.append(f"line {node.lineno}: {ast.unparse(sub)}")
    return found


def test_no_module_sets_another_objects_private_attributes() -> None:
    sample = ast.parse("model._tmp = tmp\nself._ok = 1\ncontroller._source_model: object = hf\n")
    assert _private_assignments(sample) == ["line 1: model._tmp", "line 3: controller._source_model"]

    offenders = {name: found for name, tree in _modules().items() if (found := _private_assignments(tree))}
    assert offenders == {}
