"""The package layers of docs/ARCHITECTURE.md, checked on the source: every ``kdlab`` import (at module level
or inside a function) goes from a package to one it may import, and the packages form no cycle."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "kdlab"

_BELOW_CORE = {"config", "data", "models"}
_METHODS = {"registry", "distillers", "objectives"}
#: package -> the kdlab packages it may import (a package may always import itself)
ALLOWED: dict[str, set[str]] = {
    "models": set(),
    "config": {"models"},
    "data": {"config", "models"},
    "engine": _BELOW_CORE,
    "registry": {"config"},
    "distillers": _BELOW_CORE | {"engine", "registry"},
    "objectives": _BELOW_CORE | {"engine", "registry"},
    "losses": _BELOW_CORE | _METHODS | {"engine"},  # methods layer: the losses as plain functions
    "analysis": _BELOW_CORE | {"engine"},
    "experiment": _BELOW_CORE | _METHODS | {"engine", "analysis"},
    "sweep": _BELOW_CORE | _METHODS | {"engine", "analysis", "experiment"},
    "ablation": _BELOW_CORE | _METHODS | {"engine", "analysis", "experiment", "sweep"},
}
#: the application layer: may import anything below it, and nothing imports it but itself
TOP = {"runs", "report", "recipes", "demo", "api", "cli"}


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    """kdlab packages imported anywhere in a module (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "kdlab":
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "kdlab" and len(parts) > 1:
                    found.add(parts[1])
    return found


@lru_cache(maxsize=1)
def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        unit = _unit(path)
        if unit == "__init__":
            continue
        graph.setdefault(unit, set()).update(_imports(path) - {unit, "__version__"})
    return graph


def test_every_package_is_placed_in_a_layer():
    assert set(_graph()) <= set(ALLOWED) | TOP, "a new package: give it a layer in ALLOWED or TOP (and ARCHITECTURE.md)"


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(unit):
    graph = _graph()
    wrong = graph.get(unit, set()) - ALLOWED[unit]
    assert not wrong, f"kdlab.{unit} imports {sorted(wrong)}, which it may not (docs/ARCHITECTURE.md)"


def test_no_import_cycle_between_packages():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [u, v]))
            if v not in state:
                visit(v, path + [u])
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u, [])


def test_the_checker_sees_imports_inside_functions(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from kdlab.runs import x\n    import kdlab.cli\n")
    assert _imports(mod) == {"runs", "cli"}


def test_kdlab_methods_lists_every_registered_plugin(capsys):
    from kdlab import registry
    from kdlab.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert names == [s.name for s in registry.objectives()] + [s.name for s in registry.distillers()]
    assert {"ce", "intra", "kd", "cocord"} <= set(names)
