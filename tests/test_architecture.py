"""The code's shape: no import cycle, an ML core free of Dagster and the database, short functions, ruff clean.

The import graph is grimp's (the library behind import-linter): every import of every module,
deferred ones inside functions included, since a deferred import only hides a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "aivo_fl"
MAX_FUNCTION_LINES = 60
# The ML core runs anywhere (benchmarks, simulations): no orchestration, no database.
ML_CORE = "aivo_fl.ml"
KEPT_OUT_OF_ML = ("dagster", "sqlalchemy", "aivo_fl.registry", "aivo_fl.operations", "aivo_fl.defs", "aivo_fl.cli")


def import_cycles(graph: grimp.ImportGraph, package: str) -> list[tuple[str, ...]]:
    """One cycle per import that closes one: `a` imports `b`, and `b` leads back to `a`."""
    cycles = []
    for importer in sorted(graph.find_descendants(package) | {package}):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.append((importer, *back))
    return cycles


def test_no_module_of_the_package_is_part_of_an_import_cycle() -> None:
    graph = grimp.build_graph("aivo_fl", cache_dir=None)
    assert import_cycles(graph, "aivo_fl") == []


def test_a_cycle_closed_by_a_deferred_import_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text("from cyclic.database import connect\n")
    (package / "database.py").write_text("def connect():\n    from cyclic.base import connect as again\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyclic", cache_dir=None)
    assert import_cycles(graph, "cyclic") == [
        ("cyclic.base", "cyclic.database", "cyclic.base"),
        ("cyclic.database", "cyclic.base", "cyclic.database"),
    ]


def test_the_ml_core_imports_neither_dagster_nor_the_database_nor_the_layers_above_it() -> None:
    graph = grimp.build_graph("aivo_fl", cache_dir=None, include_external_packages=True)
    found = {
        forbidden: sorted(graph.find_shortest_chains(importer=ML_CORE, imported=forbidden, as_packages=True))
        for forbidden in KEPT_OUT_OF_ML
    }
    assert {name: chains for name, chains in found.items() if chains} == {}
    # The check sees external packages: the layers above the core do import Dagster.
    assert graph.find_shortest_chains(importer="aivo_fl.defs", imported="dagster", as_packages=True)


def long_functions(root: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_60_lines() -> None:
    assert long_functions(PACKAGE, MAX_FUNCTION_LINES) == []


def test_a_long_function_is_found(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "module.py").write_text(f"def short():\n    pass\n\n\nasync def long():\n{body}")
    assert long_functions(tmp_path / "pkg", MAX_FUNCTION_LINES) == [
        f"pkg/module.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"
    ]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(command: list[str]) -> None:
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run([str(ruff), *command, str(REPO)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
