"""Dependencies point one way: ledger <- market <- agents <- simulation <- analyses <- cli.

Every import in a package's modules (at any depth, lazy ones inside functions too) names
only its own package or one below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["ledger", "market", "agents", "simulation", "analyses", "cli"]
"""Lowest first: a layer may import the ones before it."""


def imported(path: Path) -> set[str]:
    """The top-level names of the project's packages that `path` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(LAYERS)


def sources(layer: str) -> list[Path]:
    single = ROOT / f"{layer}.py"
    return [single] if single.is_file() else sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_itself_and_those_below(layer: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources(layer)
        for name in imported(path) - allowed
    }
    assert not wrong, sorted(wrong)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule is not vacuous: a module importing a higher layer is named."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from cli import app\n    import analyses.report\n")
    assert imported(module) == {"cli", "analyses"}
